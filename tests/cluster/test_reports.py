"""The rule that folds the live nodes' reports into one observation (unit tier)."""

from __future__ import annotations

from twisted.internet.defer import succeed

from faastwist.cluster.reports import ClusterView, Report, aggregate
from faastwist.model.fsm import Event


def report(node: str, event: Event | None = Event.READY, digest: str = "d1",
           stopped: bool = False, message: str = "", **ext: str) -> Report:
    return Report(node, digest, stopped, event, message, ext)


def by_node(*reports: Report) -> dict[str, Report]:
    return {r.node: r for r in reports}


LIVE = ["n0", "n1", "n2"]


def test_ready_only_when_every_live_node_is_ready() -> None:
    folded = aggregate("f", by_node(report("n0", replicas="2"), report("n1", replicas="1"),
                                    report("n2", replicas="3")), LIVE)
    assert folded.event is Event.READY and folded.digest == "d1"
    assert folded.ext_data["nodes"] == "n0=ready n1=ready n2=ready"
    assert folded.ext_data["replicas"] == "1"   # the fewest any gate has
    assert folded.message == "ready on 3 of 3 nodes"


def test_a_missing_live_node_concludes_nothing_and_a_dead_one_does_not_count() -> None:
    two = by_node(report("n0"), report("n1"))
    waiting = aggregate("f", two, LIVE)
    assert waiting.event is None and "waiting for n2" in waiting.message
    assert waiting.ext_data["nodes"] == "n0=ready n1=ready n2=none"
    # n2's lease ran out: its node key is gone, so it is no longer live
    assert aggregate("f", two, ["n0", "n1"]).event is Event.READY
    # a report of a node that is not live (its node key vanished first) is ignored
    assert aggregate("f", by_node(report("n0"), report("gone", Event.ERROR)), ["n0"]).event \
        is Event.READY
    assert aggregate("f", {}, LIVE) is None


def test_error_names_the_node_and_keeps_its_details() -> None:
    folded = aggregate("f", by_node(report("n0"), report("n1", Event.ERROR, message="exit 3",
                                                         exitCode="3"),
                                    report("n2", None)), LIVE)
    assert folded.event is Event.ERROR
    assert folded.message == "node n1: exit 3"
    assert folded.ext_data["exitCode"] == "3" and folded.ext_data["n1.exitCode"] == "3"


def test_disagreeing_digests_or_stop_states_conclude_nothing() -> None:
    assert aggregate("f", by_node(report("n0"), report("n1", digest="d2"), report("n2")),
                     LIVE).event is None
    mixed = aggregate("f", by_node(report("n0", stopped=True), report("n1"), report("n2")),
                      LIVE)
    assert mixed.event is None
    stopped = aggregate("f", by_node(*(report(n, None, stopped=True) for n in LIVE)), LIVE)
    assert stopped.stopped and stopped.event is None


def test_pending_when_some_pending_and_none_failed_or_starting() -> None:
    folded = aggregate("f", by_node(report("n0"), report("n1", Event.PENDING, message="0 of 1"),
                                    report("n2")), LIVE)
    assert folded.event is Event.PENDING and folded.message == "node n1: 0 of 1"
    starting = aggregate("f", by_node(report("n0"), report("n1", None), report("n2")), LIVE)
    assert starting.event is None


def test_report_round_trips_and_checks_its_node() -> None:
    original = report("n1", Event.ERROR, message="boom", exitCode="3")
    assert Report.decode(original.encode()) == original
    assert Report.decode(report("n1", None).encode()).event is None


def test_cluster_view_folds_reports_and_leaves_the_writes_to_the_nodes() -> None:
    class Local:
        kind = "process"

    reports = {"f": by_node(*(report(n) for n in LIVE)), "g": by_node(report("n0"))}
    view = ClusterView(Local(), lambda: succeed((reports, LIVE)))
    observed: dict = {}
    view.observe().addCallback(observed.update)
    assert observed["f"].event is Event.READY and observed["g"].event is None
    only: dict = {}
    view.observe(["g", "absent"]).addCallback(only.update)
    assert set(only) == {"g"}
    done: list = []
    view.deploy(None).addCallback(done.append)
    view.delete("f").addCallback(done.append)
    assert done == [None, None]


def test_a_rollout_that_is_not_live_keeps_serving_previous_through_the_reports() -> None:
    from faastwist.cluster.reports import Report, aggregate
    from faastwist.model.fsm import Event
    from faastwist.providers.base import Observation

    seen = Observation("f", "d1", event=Event.ERROR, message="crash", serving_previous=True)
    report = Report.decode(Report.of("n0", seen).encode())
    assert report.serving_previous
    both = {"n0": report, "n1": Report("n1", "d1", False, Event.ERROR, "crash", {}, True)}
    assert aggregate("f", both, ["n0", "n1"]).serving_previous
    one = {"n0": report, "n1": Report("n1", "d1", False, Event.ERROR, "crash")}
    assert not aggregate("f", one, ["n0", "n1"]).serving_previous   # n1 serves nothing


def test_a_ready_function_keeps_how_it_runs_and_its_oom_kills() -> None:
    limit = "cgroup v1 memory.limit_in_bytes=67108864"
    folded = aggregate("f", by_node(
        report("n0", user="nobody:nogroup", memoryLimit=limit, oomKills="2", reason="OOM"),
        report("n1", user="nobody:nogroup", memoryLimit=limit, oomKills="1", reason="OOM"),
        report("n2", user="nobody:nogroup", memoryLimit="rlimit RLIMIT_AS=67108864")), LIVE)
    assert folded.event is Event.READY
    ext = folded.ext_data
    assert ext["user"] == "nobody:nogroup"                   # alike on every node: once
    assert "memoryLimit" not in ext                           # not alike: per node
    assert ext["n0.memoryLimit"] == ext["n1.memoryLimit"] == limit
    assert ext["n2.memoryLimit"] == "rlimit RLIMIT_AS=67108864"
    assert (ext["oomKills"], ext["reason"]) == ("3", "OOM")
    quiet = aggregate("f", by_node(*(report(n, user="u") for n in LIVE)), LIVE)
    assert "oomKills" not in quiet.ext_data and "reason" not in quiet.ext_data


def test_cluster_view_folds_a_chunk_per_reactor_turn_and_reuses_unchanged_folds() -> None:
    from twisted.internet.task import Clock

    from faastwist.cluster import reports as reports_module

    class Local:
        kind = "process"

    clock = Clock()
    count = reports_module.CHUNK * 2 + 1
    reports = {f"f{i:04d}": by_node(*(report(n) for n in LIVE)) for i in range(count)}
    live = list(LIVE)
    view = ClusterView(Local(), lambda: succeed((reports, live)), clock)
    observed: dict = {}
    view.observe().addCallback(observed.update)
    assert observed == {}                       # one chunk folded, the reactor's turn again
    clock.advance(0)
    assert len(observed) == count and all(o.event is Event.READY for o in observed.values())
    # the same report objects: the same observations; a changed report or live set: new
    reports["f0001"] = by_node(report("n0"), report("n1", Event.ERROR, message="exit 3"),
                               report("n2"))
    again: dict = {}
    view.observe().addCallback(again.update)
    clock.advance(0)
    assert again["f0000"] is observed["f0000"]
    assert again["f0001"].event is Event.ERROR and again["f0001"].message == "node n1: exit 3"
    live.remove("n2")                           # n2's lease ran out
    third: dict = {}
    view.observe().addCallback(third.update)
    clock.advance(0)
    assert third["f0000"] is not observed["f0000"]
    assert third["f0000"].message == "ready on 2 of 2 nodes"   # n2's report no longer counts


def test_each_nodes_last_scaling_decision_is_kept() -> None:
    folded = aggregate("f", by_node(
        report("n0", lastScale="1 -> 2: rps: 60.0 req/s, target 45 per replica"),
        report("n1"), report("n2", lastScale="2 -> 1: alert resolved")), LIVE)
    ext = folded.ext_data
    assert ext["n0.lastScale"] == "1 -> 2: rps: 60.0 req/s, target 45 per replica"
    assert ext["n2.lastScale"] == "2 -> 1: alert resolved" and "lastScale" not in ext
    alike = aggregate("f", by_node(*(report(n, lastScale="1 -> 0: idle") for n in LIVE)),
                      LIVE)
    assert alike.ext_data["lastScale"] == "1 -> 0: idle"


def test_a_report_travels_as_sorted_json_and_back_whole() -> None:
    whole = Report("n1", "d9", False, Event.PENDING, "pulling", {"replicas": "2"}, True, 7)
    data = whole.encode()
    assert data == (b'{"digest": "d9", "epoch": 7, "event": "pending", "extData": '
                    b'{"replicas": "2"}, "message": "pulling", "node": "n1", '
                    b'"servingPrevious": true, "stopped": false}')
    assert Report.decode(data) == whole
    stopped = Report("n2", "d1", True, None)
    assert Report.decode(stopped.encode()) == stopped


def test_an_older_nodes_report_takes_the_defaults() -> None:
    """A node from before a field existed leaves it out: the field's neutral value."""
    old = Report.decode(b'{"node": "n0"}')
    assert old == Report("n0", "", False, None, "", {}, False, None)
    assert old.message == "" and old.serving_previous is False and old.epoch is None


def test_verdicts_name_what_a_node_sees() -> None:
    assert report("n0", stopped=True).verdict == "stopped"
    assert report("n0", None).verdict == "starting"
    assert report("n0", Event.ERROR).verdict == "error"


def test_each_nodes_message_or_verdict_is_in_ext_data() -> None:
    folded = aggregate("f", by_node(report("n0", message="pulling image"), report("n1")),
                       ["n0", "n1"])
    assert folded.ext_data["node.n0"] == "pulling image"
    assert folded.ext_data["node.n1"] == "ready"


def test_nodes_on_different_epochs_are_converging_with_the_newest_epoch() -> None:
    reports = by_node(Report("n0", "d1", False, Event.READY, epoch=3),
                      Report("n1", "d1", False, Event.READY, epoch=4),
                      Report("n2", "d1", False, Event.READY))        # says no epoch
    folded = aggregate("f", reports, LIVE)
    assert folded.event is None and folded.message == "nodes are converging"
    assert folded.epoch == 4
    same = by_node(Report("n0", "d1", False, Event.READY, epoch=4),
                   Report("n1", "d1", False, Event.READY, epoch=4),
                   Report("n2", "d1", False, Event.READY))
    agreed = aggregate("f", same, LIVE)
    assert agreed.event is Event.READY and agreed.epoch == 4
    assert agreed.ext_data["node.n2"] == "ready"        # no message given: the verdict


def test_messages_of_waiting_stopped_failed_and_pending_folds() -> None:
    assert aggregate("f", by_node(report("n0")), LIVE).message == "waiting for n1, n2"
    stopped = aggregate("f", by_node(*(report(n, None, stopped=True) for n in LIVE)), LIVE)
    assert (stopped.stopped, stopped.event, stopped.message) == (
        True, None, "stopped on every node")
    failed = aggregate("f", by_node(report("n0", Event.ERROR, message="crashed"),
                                    report("n1", Event.ERROR, message="oom"),
                                    report("n2")), LIVE)
    assert (failed.stopped, failed.event, failed.message) == (
        False, Event.ERROR, "node n0: crashed; node n1: oom")
    ready = aggregate("f", by_node(*(report(n) for n in LIVE)), LIVE)
    assert ready.stopped is False
    starting = aggregate("f", by_node(report("n0", None), report("n1"), report("n2")), LIVE)
    assert (starting.stopped, starting.event, starting.message) == (False, None, "starting")
    pending = aggregate("f", by_node(report("n0", Event.PENDING, message="pulling"),
                                     report("n1", Event.PENDING, message="queued"),
                                     report("n2")), LIVE)
    assert (pending.stopped, pending.event, pending.message) == (
        False, Event.PENDING, "node n0: pulling; node n1: queued")


def test_every_shared_detail_is_kept_once_when_alike_and_per_node_when_not() -> None:
    shared = {"user": "u", "sandbox": "bwrap", "memoryLimit": "128Mi", "cpuLimit": "500m",
              "pidsLimit": "64", "diskLimit": "1Gi", "network": "none", "lastScale": "1 -> 2"}
    alike = aggregate("f", by_node(*(report(n, **shared) for n in LIVE)), LIVE)
    assert {k: alike.ext_data[k] for k in shared} == shared
    apart = aggregate("f", by_node(report("n0", **shared), report("n1"), report("n2")), LIVE)
    for key, value in shared.items():
        assert key not in apart.ext_data and apart.ext_data[f"n0.{key}"] == value


def test_oom_kills_add_up_and_garbage_counts_nothing() -> None:
    folded = aggregate("f", by_node(report("n0", oomKills="2"), report("n1", oomKills="x"),
                                    report("n2")), LIVE)
    assert (folded.ext_data["oomKills"], folded.ext_data["reason"]) == ("2", "OOM")


def test_the_fold_yields_every_chunk_of_500_functions() -> None:
    from twisted.internet.task import Clock

    from faastwist.cluster import reports as reports_module

    class Local:
        kind = "process"

    assert reports_module.CHUNK == 500
    clock = Clock()
    reports = {f"f{i:04d}": by_node(report("n0")) for i in range(500)}
    view = ClusterView(Local(), lambda: succeed((reports, ["n0"])), clock)
    observed: dict = {}
    view.observe().addCallback(observed.update)
    assert len(observed) == 500                 # one chunk: no turn given back
    reports["f0500"] = by_node(report("n0"))
    later: dict = {}
    view.observe().addCallback(later.update)
    assert later == {}
    clock.advance(0)
    assert len(later) == 501 and later["f0500"].event is Event.READY
    assert view.kind == "process"
    no_clock = ClusterView(Local(), lambda: succeed((reports, ["n0"])))
    whole: dict = {}
    no_clock.observe().addCallback(whole.update)
    assert len(whole) == 501                    # without a clock: all in one go


def test_observing_some_names_keeps_the_others_folded() -> None:
    class Local:
        kind = "process"

        def acquire(self, spec):
            return ("lease", spec)

        def check(self):
            return succeed("checked")

        def check_spec(self, spec):
            self.checked = spec

    reports = {"f": by_node(report("n0")), "g": by_node(report("n0"))}
    local = Local()
    view = ClusterView(local, lambda: succeed((reports, ["n0"])))
    first: dict = {}
    view.observe().addCallback(first.update)
    some: dict = {}
    view.observe(["f"]).addCallback(some.update)
    again: dict = {}
    view.observe().addCallback(again.update)
    assert again["f"] is first["f"] and again["g"] is first["g"]   # g still remembered
    done: list = []
    for write in (view.update, view.stop, view.start):
        write(None).addCallback(done.append)
    assert done == [None, None, None]
    assert view.acquire("spec") == ("lease", "spec")
    view.check_spec("spec")
    assert local.checked == "spec"
    checked: list = []
    view.check().addCallback(checked.append)
    assert checked == ["checked"]
