"""The local converger's full pass: every function deployed and reported, a chunk of
functions per reactor turn (10,000 in one turn held the gate for a second)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from faastwist.cluster import converger as converger_module
from faastwist.cluster.converger import LocalConverger, NotServing
from faastwist.gate.routes import RouteTable
from faastwist.model.fsm import FunctionStatus, State
from faastwist.model.spec import FunctionSpec
from faastwist.store.memory import MemoryStore
from tests.support.turns import turn
from tests.support.process import make_provider


class ReportLog:
    """The node session's report side, recorded (the session's etcd writes have their
    own tests on a real etcd in test_session.py)."""

    node_id = "n0"

    def __init__(self) -> None:
        self.reports: dict[str, Any] = {}

    def report(self, name: str, report: Any) -> None:
        self.reports[name] = report


class Local:
    """A route table over a memory store of active fork-mode functions, a real process
    provider and a converger, on a Clock (``stop()`` stops them)."""

    def __init__(self, tmp_path: Path, names: list[str]) -> None:
        self.clock = Clock()
        store = MemoryStore()
        for name in names:
            spec = FunctionSpec.from_dict({"name": name, "mode": "fork",
                                           "command": ["/bin/cat"]})
            store.create(spec, FunctionStatus(spec.name, State.ACTIVE, updated=0.0))
        self.routes = RouteTable(store, self.clock)
        self.routes.startService()
        self.provider = make_provider(self.clock, tmp_path / "data")
        self.session = ReportLog()
        self.converger = LocalConverger(self.routes, self.provider, self.session, self.clock,
                                        10.0)

    def parts(self) -> tuple[Clock, RouteTable, Any, LocalConverger]:
        return self.clock, self.routes, self.provider, self.converger

    def stop(self) -> None:
        if self.converger.running:
            self.converger.stopService()
        self.provider.stopService()
        self.routes.stopService()


def test_full_pass_deploys_everything_a_chunk_per_reactor_turn(tmp_path: Path) -> None:
    count = converger_module.CHUNK * 3 + 7
    local = Local(tmp_path, [f"f{i:04d}" for i in range(count)])
    clock, routes, provider, converger = local.parts()
    session = local.session
    assert routes.synced
    try:
        converger.startService()   # the first full pass starts at once
        # not ready meanwhile: the answer names a few of the functions, and counts them
        try:
            converger.check()
        except NotServing as exc:
            owed = count - converger_module.CHUNK
            named = [f"f{i:04d}" for i in range(converger_module.CHUNK,
                                                converger_module.CHUNK + converger_module.NAMED)]
            assert str(exc) == (f"not yet serving {', '.join(named)} and "
                                f"{owed - converger_module.NAMED} more")
        else:
            raise AssertionError("ready before the functions were deployed")
        first = converger.first_pass()
        fired: list[None] = []
        first.addCallback(fired.append)
        # each reactor turn takes one chunk more, never all of them at once; the first
        # pass reports after its deploys, a chunk per turn too, and only then lets the
        # reconciler judge (first_pass)
        seen, reported = [], []
        for _ in range(6):
            seen.append(len(provider.runtimes))
            reported.append(len(session.reports))
            assert not fired
            turn(clock)
        chunk = converger_module.CHUNK
        assert seen == [chunk, 2 * chunk, 3 * chunk] + [count] * 3
        assert reported == [0, 0, 0, chunk, 2 * chunk, 3 * chunk]
        turn(clock)
        assert fired == [None]
        try:
            converger.check()
        except NotServing as exc:
            raise AssertionError(f"not ready after the pass: {exc}") from None
        assert sorted(session.reports) == sorted(routes.names())
        assert all(r is not None and r.digest == routes.lookup(n).spec.digest()
                   for n, r in session.reports.items())
        after: list[None] = []
        converger.first_pass().addCallback(after.append)
        assert after == [None]   # asked after the first pass: fires at once
        # each deployed fork-mode function counts one ready replica in /metrics
        assert provider.metrics.registry.get_sample_value(
            "gateway_service_count", {"function_name": f"f{count - 1:04d}"}) == 1
        assert len(provider.metrics.replicas) == count
    finally:
        local.stop()


def test_a_stopped_converger_ends_its_pass_at_the_next_chunk(tmp_path: Path) -> None:
    local = Local(tmp_path, [f"g{i:04d}" for i in range(converger_module.CHUNK * 2)])
    clock, routes, provider, converger = local.parts()
    try:
        converger.startService()
        assert len(provider.runtimes) == converger_module.CHUNK
        converger.stopService()
        turn(clock)
        assert len(provider.runtimes) == converger_module.CHUNK
    finally:
        local.stop()


def test_a_later_full_pass_acts_only_where_something_differs(tmp_path: Path) -> None:
    local = Local(tmp_path, [f"h{i:02d}" for i in range(50)])
    clock, routes, provider, converger = local.parts()
    try:
        converger.startService()
        clock.advance(0)
        assert len(provider.runtimes) == 50
        calls: list[str] = []
        deploy = provider.deploy
        provider.deploy = lambda spec: calls.append(spec.name) or deploy(spec)
        started = converger._run
        runs: list[str] = []
        converger._run = lambda name: runs.append(name) or started(name)
        provider.runtimes.pop("h07")   # lost behind the converger's back
        clock.advance(10.0)            # the next full pass
        assert calls == ["h07"] and runs == ["h07"]
        assert "h07" in provider.runtimes
    finally:
        local.stop()


def test_a_function_that_fails_to_converge_does_not_end_the_pass(tmp_path: Path) -> None:
    """One function whose convergence raises is logged; the others are deployed, the
    first pass still ends (the reconciler waits for it) and the next pass runs."""
    local = Local(tmp_path, ["a", "b", "c"])
    clock, routes, provider, converger = local.parts()
    action = converger._action
    failures = []

    def broken(name: str):
        if name == "b":
            failures.append(name)
            raise RuntimeError("b cannot be planned")
        return action(name)
    converger._action = broken
    done: list[None] = []
    converger.first_pass().addCallback(done.append)
    try:
        with capturedLogs() as events:
            converger.startService()
            clock.advance(0)
        assert sorted(provider.runtimes) == ["a", "c"]
        assert done == [None]
        logged = [e for e in events if e.get("log_failure") is not None]
        assert [(e["name"], e["log_failure"].getErrorMessage()) for e in logged] == [
            ("b", "b cannot be planned")]
        converger._action = action
        clock.advance(10.0)                   # the loop still runs: b is deployed now
        assert sorted(provider.runtimes) == ["a", "b", "c"]
        assert failures == ["b"]
    finally:
        local.stop()


def test_a_waiter_that_gave_up_on_the_first_pass_is_left_alone(tmp_path: Path) -> None:
    local = Local(tmp_path, ["a"])
    clock, routes, provider, converger = local.parts()
    impatient = converger.first_pass()
    outcomes: list[Any] = []
    impatient.addBoth(outcomes.append)
    impatient.cancel()                    # what addTimeout does when it gives up
    patient: list[None] = []
    converger.first_pass().addCallback(patient.append)
    try:
        converger.startService()
        clock.advance(0)                  # the first pass ends: no AlreadyCalledError
        assert patient == [None]
        assert len(outcomes) == 1 and outcomes[0].check(CancelledError)
    finally:
        local.stop()


def test_the_provider_observes_every_runtime_a_chunk_per_turn(tmp_path: Path,
                                                              monkeypatch: Any) -> None:
    import faastwist.providers.process as process_module

    monkeypatch.setattr(process_module, "OBSERVE_CHUNK", 100)
    local = Local(tmp_path, [f"o{i:03d}" for i in range(250)])
    clock, routes, provider, converger = local.parts()
    try:
        converger.startService()
        clock.advance(0)
        assert len(provider.runtimes) == 250
        answers: list[dict] = []
        provider.observe().addCallback(answers.append)
        assert answers == []                 # the first chunk only
        provider.runtimes.pop("o249")        # gone before its chunk: not observed
        turn(clock)
        assert answers == []
        turn(clock)
        assert len(answers) == 1 and sorted(answers[0]) == [f"o{i:03d}" for i in range(249)]
        assert all(o.event is not None for o in answers[0].values())
        small: list[dict] = []
        provider.observe(["o001", "nope"]).addCallback(small.append)
        assert [sorted(s) for s in small] == [["o001"]]   # one chunk: at once
    finally:
        local.stop()


def test_a_function_the_provider_refuses_is_its_error_not_the_nodes(tmp_path: Path) -> None:
    """A function naming a secret that does not exist: the node reports its error (the
    leader fails the function, saying why) and /readyz does not wait for it (measured
    on commit 15642f0: 503 for minutes after a restart, the status still "ready")."""
    from faastwist.model.fsm import Event

    local = Local(tmp_path, ["fine"])
    clock, routes, provider, converger = local.parts()
    store = routes.store
    spec = FunctionSpec.from_dict({"name": "lacks", "mode": "fork", "command": ["/bin/cat"],
                                   "secrets": ["nope"]})
    store.create(spec, FunctionStatus("lacks", State.ACTIVE))
    provider.secrets = None   # no secret store: every secret is missing
    try:
        converger.startService()
        for _ in range(4):
            turn(clock)
        converger.check()   # ready: "fine" serves, "lacks" has its answer
        report = local.session.reports["lacks"]
        assert report.event is Event.ERROR and report.digest == spec.digest()
        assert "secrets" in report.message and "lacks" not in provider.runtimes
        assert local.session.reports["fine"].event is Event.READY
        # the next try succeeds once the function names no missing secret
        record = store.get("lacks").result
        store.update(record, spec=FunctionSpec.from_dict(
            {"name": "lacks", "mode": "fork", "command": ["/bin/cat"]}))
        for _ in range(4):
            turn(clock)
        assert local.session.reports["lacks"].event is Event.READY
    finally:
        local.stop()
