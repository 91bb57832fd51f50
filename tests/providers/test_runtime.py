"""Clock-driven tests of the process provider's per-function logic (no processes).

Replicas are FakeReplicas, so every timing rule (cold start hold and timeout, idle to
zero, autoscaling, backoff, crash loop) is checked exactly with task.Clock.
"""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from faastwist.model.fsm import Event
from faastwist.providers.base import NoCapacity
from faastwist.providers.runtime import HttpRuntime, replica_bounds
from tests.support.process import FakeFactory, fast_tuning, function_spec


def make_runtime(clock: Clock, factory: FakeFactory | None = None, tuning=None, **fields):
    counts: list[tuple[str, int]] = []
    runtime = HttpRuntime(function_spec(**fields), clock, tuning or fast_tuning(),
                          factory or FakeFactory(), lambda name, n: counts.append((name, n)))
    runtime.deploy()
    return runtime, counts


def results(deferreds):
    out = []
    for d in deferreds:
        d.addBoth(out.append)
    return out


def test_min_replicas_start_on_deploy_and_pending_until_ready():
    clock, factory = Clock(), FakeFactory()
    runtime, counts = make_runtime(clock, factory, minReplica=2)
    assert len(factory.made) == 2 and all(r.started for r in factory.made)
    assert runtime.observe().event is None          # starting: nothing concluded yet
    factory.made[0].become_ready()
    assert runtime.observe().event is None
    factory.made[1].become_ready()
    observation = runtime.observe()
    assert observation.event is Event.READY and observation.ext_data == {"replicas": "2", "desired": "2"}
    assert counts[-1] == ("fn", 2)


def test_start_that_never_gets_ready_is_pending_after_cold_start_timeout():
    clock = Clock()
    runtime, _ = make_runtime(clock, minReplica=1, tuning=fast_tuning(cold_start_timeout=5))
    clock.advance(4)
    assert runtime.observe().event is None
    clock.advance(2)
    observation = runtime.observe()
    assert observation.event is Event.PENDING
    assert "0 of 1 replicas ready after 6s" in observation.message


def test_zero_min_replicas_is_ready_with_nothing_running():
    clock, factory = Clock(), FakeFactory()
    runtime, _ = make_runtime(clock, factory)
    assert factory.made == []
    observation = runtime.observe()
    assert observation.event is Event.READY and "scaled to zero" in observation.message


def test_concurrent_cold_requests_share_one_start():
    clock, factory = Clock(), FakeFactory()
    runtime, _ = make_runtime(clock, factory, autoScaleValue="100")
    waits = [runtime.acquire() for _ in range(50)]
    assert len(factory.made) == 1
    got = results(waits)
    assert got == []                               # held while the replica starts
    factory.made[0].become_ready()
    assert len(got) == 50
    assert {lease.upstream for lease in got} == {factory.made[0].upstream}
    assert runtime.inflight == 50 and factory.made[0].inflight == 50
    for lease in got:
        lease.release()
        lease.release()                            # idempotent
    assert runtime.inflight == 0


def test_cold_start_timeout_answers_no_capacity_with_retry_after():
    clock, factory = Clock(), FakeFactory()
    runtime, _ = make_runtime(clock, factory, tuning=fast_tuning(cold_start_timeout=3))
    got = results([runtime.acquire()])
    clock.advance(2.9)
    assert got == []
    clock.advance(0.2)
    failure = got[0]
    assert failure.check(NoCapacity)
    assert "did not become ready within 3s" in str(failure.value)
    assert failure.value.retry_after == 1            # ceil(3 / 6), at least 1
    # a replica that becomes ready later serves the next request at once
    factory.made[0].become_ready()
    lease = runtime.acquire()
    assert lease.upstream == factory.made[0].upstream


def test_cancelled_waiter_is_forgotten():
    clock, factory = Clock(), FakeFactory()
    runtime, _ = make_runtime(clock, factory)
    waiting = runtime.acquire()
    waiting.addErrback(lambda f: None)
    waiting.cancel()
    assert runtime.waiters == []
    factory.made[0].become_ready()
    assert runtime.inflight == 0


def test_idle_to_zero_after_idle_timeout_without_requests():
    clock, factory = Clock(), FakeFactory()
    runtime, _ = make_runtime(clock, factory, tuning=fast_tuning(idle_timeout=60))
    lease = results([runtime.acquire()])
    factory.made[0].become_ready()
    lease[0].release()
    clock.advance(30)
    runtime.tick()
    assert factory.made[0].alive
    lease = runtime.acquire()                      # activity restarts the idle clock
    lease.release()
    clock.advance(59)
    runtime.tick()
    assert factory.made[0].alive
    clock.advance(2)
    runtime.tick()
    assert not factory.made[0].alive and runtime.target == 0
    assert runtime.observe().event is Event.READY


def test_idle_never_stops_a_replica_with_requests_in_flight():
    clock, factory = Clock(), FakeFactory()
    runtime, _ = make_runtime(clock, factory, tuning=fast_tuning(idle_timeout=10))
    held = results([runtime.acquire()])
    factory.made[0].become_ready()
    clock.advance(100)
    runtime.tick()
    assert factory.made[0].alive
    held[0].release()
    clock.advance(11)
    runtime.tick()
    assert not factory.made[0].alive


def test_min_replicas_never_idle_away():
    clock, factory = Clock(), FakeFactory()
    runtime, _ = make_runtime(clock, factory, minReplica=1, tuning=fast_tuning(idle_timeout=1))
    factory.made[0].become_ready()
    clock.advance(100)
    runtime.tick()
    assert factory.made[0].alive


def test_concurrency_autoscale_grows_and_shrinks():
    clock, factory = Clock(), FakeFactory()
    runtime, _ = make_runtime(clock, factory, minReplica=1, maxReplica=4,
                              autoScaleValue="2", tuning=fast_tuning(scale_down_delay=10))
    factory.made[0].become_ready()
    leases = [runtime.acquire() for _ in range(7)]   # 7 in flight / 2 per replica -> 4
    assert runtime.target == 4 and len(factory.live()) == 4
    for replica in factory.made[1:]:
        replica.become_ready()
    leases += [runtime.acquire() for _ in range(4)]
    assert len(factory.live()) == 4                  # capped by maxReplica
    served = {lease.upstream for lease in leases[7:]}
    assert len(served) == 4                          # round robin over ready replicas
    for lease in leases:
        lease.release()
    clock.advance(1)
    runtime.tick()                                   # the peak of the last tick still counts
    assert runtime.target == 4
    clock.advance(11)
    runtime.tick()
    clock.advance(1)
    runtime.tick()
    assert runtime.target == 1 and len(factory.live()) == 1


def test_shrinking_drains_busy_replicas_before_stopping_them():
    clock, factory = Clock(), FakeFactory()
    runtime, _ = make_runtime(clock, factory, minReplica=2, maxReplica=2, autoScaleValue="1")
    for replica in factory.made:
        replica.become_ready()
    first, second = runtime.acquire(), runtime.acquire()
    runtime.spec = function_spec(minReplica=1, maxReplica=2, autoScaleValue="1")
    runtime._configure()
    second.release()
    clock.advance(1)
    runtime.tick()                                   # peak 2 still: keep 2
    clock.advance(1)
    runtime.tick()                                   # 1 in flight -> 1 replica
    assert runtime.target == 1
    assert [r.alive for r in factory.made] == [True, False]
    first.release()


def test_rps_autoscale_follows_request_rate():
    clock, factory = Clock(), FakeFactory()
    runtime, _ = make_runtime(clock, factory, minReplica=1, maxReplica=5,
                              autoScaleType="rps", autoScaleValue="10")
    factory.made[0].become_ready()
    for _ in range(35):                              # 35 requests in one second
        runtime.acquire().release()
    clock.advance(1)
    runtime.tick()
    assert runtime.target == 4
    clock.advance(1)
    runtime.tick()                                   # no requests, no scale-down delay
    assert runtime.target == 1


@pytest.mark.parametrize("cold_start_timeout, retry_after", [
    (1, 1), (6, 1), (6.5, 2), (12, 2), (13, 3), (30, 5), (120, 5)])
def test_retry_after_without_a_pending_restart_is_a_sixth_of_the_cold_start_timeout(
        cold_start_timeout, retry_after):
    """ceil(min(coldStartTimeout, 30s) / 6), at least 1: a client retries about six
    times within one cold start, and never waits more than 5s between tries."""
    clock, factory = Clock(), FakeFactory()
    runtime, _ = make_runtime(clock, factory,
                              tuning=fast_tuning(cold_start_timeout=cold_start_timeout))
    got = results([runtime.acquire()])
    clock.advance(cold_start_timeout + 0.01)
    assert got[0].check(NoCapacity)
    assert got[0].value.retry_after == retry_after


def test_crash_restarts_with_backoff_then_crash_loop_is_an_error():
    clock, factory = Clock(), FakeFactory()
    tuning = fast_tuning(backoff_base=1.0, backoff_max=30.0)
    runtime, _ = make_runtime(clock, factory, minReplica=1, tuning=tuning)
    factory.made[0].crash(2, ("starting", "Traceback: ValueError: bad config"))
    assert len(factory.made) == 1
    clock.advance(0.9)
    assert len(factory.made) == 1                    # waits out the backoff: 1s
    clock.advance(0.2)
    assert len(factory.made) == 2
    factory.made[1].crash(2, ("ValueError: bad config",))
    clock.advance(1.9)
    assert len(factory.made) == 2                    # 2s after the second exit
    clock.advance(0.2)
    assert runtime.observe().event is None
    factory.made[2].crash(2, ("ValueError: bad config",))
    observation = runtime.observe()
    assert observation.event is Event.ERROR
    assert observation.ext_data["exitCode"] == "2"
    assert "ValueError: bad config" in observation.ext_data["stderr"]
    assert observation.ext_data["restarts"] == "3"
    assert "exited with code 2 3 times" in observation.message
    # while failing, requests are refused at once with the reason
    with pytest.raises(NoCapacity) as refused:
        runtime.acquire()
    assert "crash-looping" in str(refused.value)
    assert refused.value.retry_after == 4            # the restart is 1s * 2**2 away
    clock.advance(1.5)
    with pytest.raises(NoCapacity) as refused:
        runtime.acquire()
    assert refused.value.retry_after == 3            # ceil(2.5): rounded up, never early
    # a later successful start recovers
    clock.advance(4.1)
    assert len(factory.made) == 4
    factory.made[3].become_ready()
    assert runtime.observe().event is Event.READY


def test_exits_outside_the_crash_window_do_not_add_up():
    clock, factory = Clock(), FakeFactory()
    runtime, _ = make_runtime(clock, factory, minReplica=1,
                              tuning=fast_tuning(crash_window=60, backoff_base=0.1))
    for index in range(5):
        factory.made[index].crash()
        clock.advance(61)
    assert runtime.observe().event is not Event.ERROR
    assert len(runtime.exits) == 1


def test_crash_loop_fails_waiting_requests_at_once():
    clock, factory = Clock(), FakeFactory()
    runtime, _ = make_runtime(clock, factory, tuning=fast_tuning(backoff_base=0.1))
    got = results([runtime.acquire() for _ in range(3)])
    for index in range(3):
        factory.made[index].crash()
        clock.advance(1)
    assert len(got) == 3 and all(f.check(NoCapacity) for f in got)


def test_stop_ends_replicas_fails_waiters_and_stays_stopped():
    clock, factory = Clock(), FakeFactory()
    runtime, _ = make_runtime(clock, factory, minReplica=1)
    factory.made[0].become_ready()
    held = runtime.acquire()
    stopped = results([runtime.stop()])
    assert stopped == [None] and not factory.made[0].alive
    assert runtime.observe().stopped
    with pytest.raises(NoCapacity):
        runtime.acquire()
    held.release()                                   # a late release is harmless
    assert runtime.inflight == 0
    runtime.start()
    assert len(factory.live()) == 1


def test_stop_waits_for_every_child():
    clock, factory = Clock(), FakeFactory(auto_stop=False)
    runtime, _ = make_runtime(clock, factory, minReplica=2)
    stopped = results([runtime.stop()])
    assert stopped == []
    factory.made[0].exit_after_stop()
    assert stopped == []
    factory.made[1].exit_after_stop()
    assert stopped == [None]


def test_rolling_update_keeps_serving_from_old_replicas_until_a_new_one_is_ready():
    clock, factory = Clock(), FakeFactory()
    runtime, _ = make_runtime(clock, factory, minReplica=1)
    old = factory.made[0]
    old.become_ready()
    runtime.update(function_spec(minReplica=1, env={"V": "2"}))
    assert len(factory.made) == 2 and old.alive
    lease = runtime.acquire()
    assert lease.upstream == old.upstream            # no 503 during the roll
    factory.made[1].become_ready()
    assert old.alive                                 # draining: one request in flight
    assert runtime.acquire().upstream == factory.made[1].upstream
    lease.release()
    assert not old.alive
    assert runtime.observe().digest == function_spec(minReplica=1, env={"V": "2"}).digest()


def test_fixed_port_allows_one_replica():
    assert replica_bounds(function_spec(port=8080, minReplica=0), fast_tuning()) == (0, 1)
    assert replica_bounds(function_spec(maxReplica=0), fast_tuning(max_replicas=8)) == (0, 8)
    assert replica_bounds(function_spec(maxReplica=3), fast_tuning()) == (0, 3)


def test_a_replica_exit_tells_every_request_on_it_at_once():
    clock, factory = Clock(), FakeFactory()
    runtime, _ = make_runtime(clock, factory, minReplica=2, maxReplica=2)
    for replica in factory.made:
        replica.become_ready()
    leases = [runtime.acquire() for _ in range(4)]
    lost: list[tuple[int, str]] = []
    for i, lease in enumerate(leases):
        lease.on_lost = lambda why, i=i: lost.append((i, why))
    leases[0].release()                       # finished before: not told
    dying = leases[1]._replica
    dying.crash(code=137)
    on_dying = [i for i, lease in enumerate(leases) if lease._replica is dying and i != 0]
    assert sorted(i for i, _ in lost) == on_dying and on_dying
    assert all("exited" in why for _, why in lost)
    for lease in leases[1:]:
        lease.release()                       # releasing after the loss is harmless
    assert runtime.inflight == 0 and runtime.leases.get(dying) is None


# -- OpenFaaS's scaling labels, as deployment_to_spec maps them -----------------------

def openfaas_runtime(clock: Clock, factory: FakeFactory, labels: dict, cpu_meter=None,
                     tuning=None):
    from faastwist.admin.openfaas_model import deployment_to_spec

    spec = deployment_to_spec({"service": "fn", "envProcess": "cat", "labels": labels},
                              "openfaas-fn")
    spec = spec.__class__.from_dict({**spec.to_dict(), "command": ["x"], "envProcess": ""})
    extra = {} if cpu_meter is None else {"cpu_meter": cpu_meter}
    runtime = HttpRuntime(spec, clock, tuning or fast_tuning(), factory, lambda *_: None,
                          **extra)
    runtime.deploy()
    for replica in factory.made:
        replica.become_ready()
    return runtime


def test_openfaas_defaults_scale_on_rps_at_90_percent_of_50():
    """No labels: rps, target 50, proportion 0.9 -> 45 req/s per replica."""
    clock, factory = Clock(), FakeFactory()
    runtime = openfaas_runtime(clock, factory, {"com.openfaas.scale.max": "5"})
    assert (runtime.kind.value, runtime.scale_value, runtime.target) == ("rps", 45.0, 1)
    for _ in range(45):
        runtime.acquire().release()
    clock.advance(1)
    runtime.tick()
    assert runtime.target == 1 and runtime.last_scale is None   # 45 fits one replica
    for _ in range(46):
        runtime.acquire().release()
    clock.advance(1)
    runtime.tick()
    assert runtime.target == 2
    decision = runtime.last_scale
    assert (decision.old, decision.new) == (1, 2)
    assert decision.describe().startswith("1 -> 2: rps: 46.0 req/s, target 45 per replica")
    for replica in factory.live():
        replica.become_ready()
    observed = runtime.observe().ext_data
    assert observed["lastScale"] == decision.describe() and observed["desired"] == "2"


def test_capacity_type_and_target_proportion_labels():
    clock, factory = Clock(), FakeFactory()
    runtime = openfaas_runtime(clock, factory, {
        "com.openfaas.scale.type": "capacity", "com.openfaas.scale.target": "5",
        "com.openfaas.scale.target-proportion": "0.8", "com.openfaas.scale.max": "10"})
    assert (runtime.kind.value, runtime.scale_value) == ("concurrency", 4.0)
    leases = [runtime.acquire() for _ in range(9)]     # 9 in flight / 4 -> 3 replicas
    assert runtime.target == 3
    assert runtime.last_scale.describe() == ("2 -> 3: capacity: 9 in flight, target 4 "
                                             "per replica")
    for lease in leases:
        lease.release()


def test_cpu_type_uses_the_replicas_process_group_cpu():
    """cpu: millicores over the tick from the meter, target 500m * 0.9 = 450m."""
    clock, factory = Clock(), FakeFactory()
    seconds = {"used": 0.0}
    asked: list[list[int]] = []

    def meter(groups):
        asked.append(sorted(groups))
        return {group: seconds["used"] for group in groups}
    runtime = openfaas_runtime(clock, factory, {
        "com.openfaas.scale.type": "cpu", "com.openfaas.scale.target": "500",
        "com.openfaas.scale.max": "4"}, cpu_meter=meter)
    assert (runtime.kind.value, runtime.scale_value) == ("cpu", 450.0)
    clock.advance(1)
    runtime.tick()                                     # first sample: baseline
    assert runtime.target == 1 and asked == [[factory.made[0].pid]]
    seconds["used"] = 1.2                              # 1.2 CPU s in 1 s: 1200m -> 3
    clock.advance(1)
    runtime.tick()
    assert runtime.target == 3
    assert "cpu: 1200.0 millicores, target 450 per replica" in runtime.last_scale.why
    for replica in factory.live():
        replica.become_ready()
    clock.advance(1)
    runtime.tick()                                     # no CPU since: back to min
    assert runtime.target == 1


def test_factor_zero_turns_autoscaling_off_but_not_scale_from_zero():
    clock, factory = Clock(), FakeFactory()
    runtime = openfaas_runtime(clock, factory, {"com.openfaas.scale.factor": "0",
                                                "com.openfaas.scale.max": "5",
                                                "com.openfaas.scale.target": "1"})
    leases = [runtime.acquire() for _ in range(10)]
    clock.advance(1)
    runtime.tick()
    assert runtime.target == 1 and runtime.last_scale is None
    for lease in leases:
        lease.release()


def test_scale_zero_label_starts_at_one_then_idles_to_zero():
    clock, factory = Clock(), FakeFactory()
    runtime = openfaas_runtime(clock, factory, {"com.openfaas.scale.zero": "true"},
                               tuning=fast_tuning(idle_timeout=30))
    assert runtime.minimum == 0 and runtime.target == 1 and len(factory.live()) == 1
    clock.advance(29)
    runtime.tick()
    assert runtime.target == 1
    clock.advance(1)
    runtime.tick()
    assert runtime.target == 0 and factory.live() == []
    assert runtime.last_scale.describe() == "1 -> 0: idle for 30s, scaling to zero"
    # without the label, min 0 stays at zero until a request
    clock2, factory2 = Clock(), FakeFactory()
    make_runtime(clock2, factory2, minReplica=0, maxReplica=3)
    assert factory2.made == []


def test_a_bounds_change_is_a_recorded_decision():
    clock, factory = Clock(), FakeFactory()
    runtime, _ = make_runtime(clock, factory, minReplica=1, maxReplica=4)
    runtime.update(function_spec(minReplica=3, maxReplica=4))
    assert runtime.target == 3
    assert runtime.last_scale.describe().startswith("1 -> 3: replica bounds changed to 3-4")
    runtime.update(function_spec(minReplica=1, maxReplica=4))
    assert runtime.target == 1
