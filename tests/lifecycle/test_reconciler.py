"""The reconciler on a task.Clock with the in-memory store and the fake provider.

Admin operations are done the way admin.py does them: ``fsm.apply_event`` on the
record read from the store, a compare-and-swap write, then ``kick``.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from faastwist.model.fsm import Event, FunctionStatus, State, apply_event
from faastwist.metrics import Metrics
from faastwist.providers.base import Observation
from faastwist.lifecycle.reconciler import PROVIDER_CALLS, Action, Plan, Reconciler, plan
from faastwist.model.spec import FunctionSpec
from faastwist.store.base import FunctionRecord
from faastwist.store.memory import MemoryStore
from faastwist.testing.provider import FakeProvider

INTERVAL = 10.0


def result(d: Deferred[Any]) -> Any:
    """The result of a Deferred that has already fired (everything here is synchronous)."""
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


def spec(name: str = "fn", **fields: Any) -> FunctionSpec:
    return FunctionSpec.from_dict({"name": name, "image": "example/img:1", "port": 8080,
                                   **fields})


@attrs.define
class World:
    clock: Clock
    store: MemoryStore
    provider: FakeProvider
    metrics: Metrics
    reconciler: Reconciler

    def create(self, fn: FunctionSpec) -> FunctionRecord:
        initial = FunctionStatus.initial(fn.name, self.clock.seconds())
        record = result(self.store.create(fn, initial))
        self.reconciler.kick(fn.name)
        return record

    def admin(self, name: str, event: Event, new_spec: FunctionSpec | None = None) -> None:
        record = result(self.store.get(name))
        status = apply_event(record.status, event, self.clock.seconds())
        if status.state is State.DESTROYED:
            result(self.store.delete(record))
        else:
            result(self.store.update(record, spec=new_spec, status=status))
        self.reconciler.kick(name)

    def status(self, name: str) -> FunctionStatus:
        return result(self.store.get(name)).status

    def tick(self, seconds: float = INTERVAL) -> None:
        self.clock.advance(seconds)

    def transitions(self, before: State, after: State, event: Event) -> float:
        return self.metrics.registry.get_sample_value(
            "faastwist_fsm_transitions_total",
            {"from": before.value, "to": after.value, "event": event.value}) or 0.0

    def errors(self, kind: str) -> float:
        return self.metrics.registry.get_sample_value(
            "faastwist_reconcile_errors_total", {"kind": kind}) or 0.0


@pytest.fixture
def world() -> World:
    clock = Clock()
    clock.advance(1_000)
    store = MemoryStore("c1")
    provider = FakeProvider()
    metrics = Metrics()
    reconciler = Reconciler(store, provider, clock, INTERVAL, metrics,
                            wall_clock=clock.seconds)
    w = World(clock, store, provider, metrics, reconciler)
    yield w
    if reconciler.running:
        result(reconciler.stopService())


def active(w: World, name: str = "fn", **fields: Any) -> None:
    """Bring a function to active the normal way."""
    w.create(spec(name, **fields))
    w.tick(0)
    w.provider.report(name, Event.READY, "ready")
    w.reconciler.kick(name)
    w.tick(0)
    assert w.status(name).state is State.ACTIVE


# -- plan(): the decision table ----------------------------------------------------------

def _record(state: State, start_pending: bool = False, fn: FunctionSpec | None = None
            ) -> FunctionRecord:
    fn = fn or spec()
    return FunctionRecord(fn, FunctionStatus(fn.name, state, start_pending=start_pending))


def _obs(fn: FunctionSpec | None = None, stopped: bool = False, event: Event | None = None,
         digest: str | None = None) -> Observation:
    fn = fn or spec()
    return Observation(fn.name, fn.digest() if digest is None else digest, stopped, event,
                       "msg", {"Ready.status": "x"})


@pytest.mark.parametrize("state, pending, observation, expected", [
    (State.INITIAL, False, None, Plan(Action.DEPLOY, message="deploying")),
    (State.ACTIVE, False, None,
     Plan(Action.DEPLOY, message="recreated: the provider had lost the function")),
    (State.FAILED, False, None, Plan(Action.DEPLOY, message="deploying")),
    (State.INACTIVE, False, None, Plan()),
    (State.INACTIVE, True, None, Plan(Action.DEPLOY, message="deploying")),
    (State.DESTROYED, False, None, Plan()),
    (State.DESTROYED, False, _obs(), Plan(Action.DELETE)),
    (State.INITIAL, False, _obs(digest="old"),
     Plan(Action.UPDATE, message="updating to the current spec")),
    (State.INITIAL, False, _obs(digest="old", stopped=True),
     Plan(Action.START, message="starting with the current spec")),
    (State.INACTIVE, False, _obs(digest="old"), Plan(Action.STOP)),
    (State.INACTIVE, False, _obs(digest="old", stopped=True),
     Plan(Action.UPDATE, message="updating to the current spec")),
    (State.ACTIVE, False, _obs(), Plan()),                       # nothing reported yet
    (State.INACTIVE, False, _obs(event=Event.READY), Plan(Action.STOP)),
    (State.INACTIVE, False, _obs(stopped=True, event=Event.READY), Plan()),
    (State.INACTIVE, True, _obs(stopped=True), Plan(Action.START, message="starting")),
    (State.INITIAL, False, _obs(event=Event.READY),
     Plan(events=(Event.READY,), message="msg", ext_data={"Ready.status": "x"})),
    (State.FAILED, False, _obs(event=Event.READY),
     Plan(events=(Event.READY, Event.READY), message="msg", ext_data={"Ready.status": "x"})),
    (State.ACTIVE, False, _obs(event=Event.ERROR),
     Plan(events=(Event.ERROR,), message="msg", ext_data={"Ready.status": "x"})),
    (State.INACTIVE, True, _obs(event=Event.PENDING),
     Plan(events=(Event.PENDING,), message="msg", ext_data={"Ready.status": "x"})),
])
def test_plan(state: State, pending: bool, observation: Observation | None,
              expected: Plan) -> None:
    assert plan(_record(state, pending), observation, now=100.0, start_grace=0.0) == expected


def test_every_action_calls_its_provider_method() -> None:
    """The dispatch table covers every Action and calls the provider method of its name."""
    assert set(PROVIDER_CALLS) == set(Action)
    provider = FakeProvider()
    record = _record(State.INITIAL)
    for action in (Action.DEPLOY, Action.UPDATE, Action.STOP, Action.START, Action.DELETE):
        PROVIDER_CALLS[action](provider, record)
    assert provider.calls == [(action.value, record.name) for action in Action]


def test_plan_holds_a_pending_start_within_the_grace() -> None:
    record = _record(State.INACTIVE, True)   # start asked for at updated = 0.0
    assert plan(record, _obs(event=Event.PENDING), now=10.0, start_grace=60.0) == Plan()
    assert plan(record, _obs(event=Event.PENDING), now=60.0, start_grace=60.0).events == (
        Event.PENDING,)
    assert plan(record, _obs(event=Event.ERROR), now=10.0, start_grace=60.0).events == (
        Event.ERROR,)


AT = {"now": 100.0, "start_grace": 0.0}  # plan() takes both from its caller (main)


def test_plan_keeps_an_active_function_active_while_the_previous_version_serves() -> None:
    record = _record(State.ACTIVE, False)
    base = _obs(event=Event.ERROR)
    failed = plan(record, attrs.evolve(base, message="crash-looping",
                                       ext_data={"exitCode": "7"}, serving_previous=True), **AT)
    assert failed.events == () and failed.action is None
    assert failed.message == "update failed; the previous version keeps serving: crash-looping"
    assert failed.ext_data == {"exitCode": "7", "rollout": "failed"}
    waiting = plan(record, attrs.evolve(_obs(event=Event.PENDING), serving_previous=True), **AT)
    assert waiting.events == () and waiting.ext_data["rollout"] == "in progress"
    assert waiting.message == "update rolling out; the previous version serves meanwhile: msg"
    # nothing serves: the table applies
    assert plan(record, _obs(event=Event.ERROR), **AT).events == (Event.ERROR,)
    # a function that is not active yet has no previous version to keep
    assert plan(_record(State.INITIAL, False),
                attrs.evolve(base, serving_previous=True), **AT).events == (Event.ERROR,)


# -- passes ------------------------------------------------------------------------------

def test_created_function_is_deployed_then_active_when_ready(world: World) -> None:
    world.reconciler.startService()          # first pass at once
    world.create(spec())
    world.tick(0)                            # the kick: no wait for the interval
    assert world.provider.verbs("deploy") == ["fn"]
    assert world.status("fn").state is State.INITIAL
    assert world.status("fn").message == "deploying"
    world.tick()                             # Knative has not looked yet: nothing concluded
    assert world.status("fn").state is State.INITIAL
    world.provider.report("fn", Event.READY, "revision fn-00001 is ready",
                          {"Ready.status": "True"})
    world.tick()
    status = world.status("fn")
    assert status.state is State.ACTIVE
    assert status.event is Event.READY
    assert status.ext_data == {"Ready.status": "True"}
    assert status.updated == world.clock.seconds()
    assert world.provider.verbs("deploy") == ["fn"]


def test_error_keeps_reason_and_message(world: World) -> None:
    world.create(spec())
    world.tick(0)
    world.provider.report("fn", Event.ERROR, "Ready is False: RevisionFailed: bad image",
                          {"Ready.status": "False", "Ready.reason": "RevisionFailed"})
    result(world.reconciler.run_pass())
    status = world.status("fn")
    assert status.state is State.FAILED
    assert status.message == "Ready is False: RevisionFailed: bad image"
    assert status.ext_data["Ready.reason"] == "RevisionFailed"


def test_fix_by_update_goes_initial_then_active(world: World) -> None:
    world.create(spec())
    world.tick(0)
    world.provider.report("fn", Event.ERROR, "bad image")
    result(world.reconciler.run_pass())
    assert world.status("fn").state is State.FAILED
    fixed = spec(image="example/img:2")
    world.admin("fn", Event.UPDATE, fixed)
    world.tick(0)
    assert world.status("fn").state is State.INITIAL
    assert world.provider.verbs("update") == ["fn"]
    assert world.provider.running["fn"].digest == fixed.digest()
    world.provider.report("fn", Event.READY, "ready")
    result(world.reconciler.run_pass())
    assert world.status("fn").state is State.ACTIVE


def test_provider_recovered_goes_failed_initial_active_in_one_pass(world: World) -> None:
    world.create(spec())
    world.tick(0)
    world.provider.report("fn", Event.ERROR, "ProgressDeadlineExceeded")
    result(world.reconciler.run_pass())
    assert world.status("fn").state is State.FAILED
    world.provider.report("fn", Event.READY, "ready")
    writes = world.store.writes
    result(world.reconciler.run_pass())
    assert world.status("fn").state is State.ACTIVE
    assert world.store.writes == writes + 1
    assert world.transitions(State.FAILED, State.INITIAL, Event.READY) == 1
    assert world.transitions(State.INITIAL, State.ACTIVE, Event.READY) == 1


def test_unreachable_provider_marks_nothing_failed_and_converges_later(world: World) -> None:
    active(world, "a")
    active(world, "b")
    world.provider.available = False
    world.create(spec("c"))                  # an admin write while the backend is down
    writes = world.store.writes
    world.reconciler.startService()
    world.tick(0)
    world.tick()
    world.tick()
    assert world.errors("provider") >= 2
    assert world.reconciler.last_error and "unreachable" in world.reconciler.last_error
    assert world.store.writes == writes      # nothing concluded from an error of the API
    assert [world.status(n).state for n in "abc"] == [State.ACTIVE, State.ACTIVE,
                                                      State.INITIAL]
    world.provider.available = True
    world.tick()
    assert world.reconciler.last_error is None
    assert "c" in world.provider.running
    world.provider.report("c", Event.READY)
    world.tick()
    assert [world.status(n).state for n in "abc"] == [State.ACTIVE] * 3


def test_function_lost_by_the_provider_is_recreated_and_recorded(world: World) -> None:
    active(world)
    del world.provider.running["fn"]
    result(world.reconciler.run_pass())
    assert world.provider.verbs("deploy") == ["fn", "fn"]
    status = world.status("fn")
    assert status.state is State.ACTIVE
    assert status.message == "recreated: the provider had lost the function"


def test_orphans_are_deleted(world: World) -> None:
    active(world)
    result(world.provider.deploy(spec("ghost")))
    result(world.reconciler.run_pass())
    assert world.provider.verbs("delete") == ["ghost"]
    assert set(world.provider.running) == {"fn"}


def test_kicked_pass_touches_only_that_function(world: World) -> None:
    world.reconciler.startService()
    result(world.provider.deploy(spec("ghost")))   # an orphan: only a full pass sees it
    world.create(spec("fn"))
    calls = len(world.provider.calls)
    world.tick(0)
    assert world.provider.calls[calls:] == [("observe", "fn"), ("deploy", "fn")]
    world.tick(INTERVAL)
    assert world.provider.verbs("delete") == ["ghost"]


def test_many_kicks_at_once_are_read_with_one_list_and_touch_only_them(world: World) -> None:
    from faastwist.lifecycle import reconciler as reconciler_module

    world.reconciler.startService()
    result(world.provider.deploy(spec("ghost")))   # an orphan: only a full pass sees it
    count = reconciler_module.KICKED_READS + 10
    for i in range(count + 5):   # written by another node: not kicked here
        name = f"k{i:03d}"
        result(world.store.create(spec(name), FunctionStatus.initial(name, 0.0)))
    reads = []
    store_get, store_list = world.store.get, world.store.list
    world.store.get = lambda name: reads.append(("get", name)) or store_get(name)
    world.store.list = lambda: reads.append(("list", None)) or store_list()
    kicked = [f"k{i:03d}" for i in range(count)] + ["gone"]   # one deleted meanwhile
    for name in kicked:
        world.reconciler.kick(name)
    world.tick(0)
    assert reads == [("list", None)]
    assert sorted(world.provider.verbs("deploy")) == ["ghost"] + kicked[:-1]  # not the others
    assert world.provider.verbs("delete") == ["gone"]   # a kicked name the store lacks
    assert "ghost" in world.provider.running


def test_stop_then_start_honours_the_pending_start(world: World) -> None:
    active(world)
    world.admin("fn", Event.STOP)
    world.tick(0)
    assert world.provider.verbs("stop") == ["fn"]
    assert world.provider.running["fn"].stopped
    assert world.status("fn").state is State.INACTIVE
    calls = len(world.provider.calls)
    result(world.reconciler.run_pass())      # stopped and meant to be: nothing to do
    assert world.provider.calls[calls:] == [("observe", "*")]

    world.admin("fn", Event.START)
    assert world.status("fn").start_pending
    world.tick(0)
    assert world.provider.verbs("start") == ["fn"]
    assert not world.provider.running["fn"].stopped
    assert world.status("fn").state is State.INACTIVE   # waits for the verdict
    world.provider.report("fn", Event.READY, "ready")
    result(world.reconciler.run_pass())
    status = world.status("fn")
    assert status.state is State.ACTIVE
    assert not status.start_pending


def test_pending_start_survives_a_restart(world: World) -> None:
    active(world)
    world.admin("fn", Event.STOP)
    world.tick(0)
    world.admin("fn", Event.START)           # kicked, but this reconciler never runs it
    fresh = Reconciler(world.store, world.provider, world.clock, INTERVAL, Metrics(),
                       wall_clock=world.clock.seconds)
    result(fresh.run_pass())
    assert world.provider.verbs("start") == ["fn"]


def test_start_rolling_out_is_not_failed_within_the_grace(world: World) -> None:
    active(world)
    world.admin("fn", Event.STOP)
    world.tick(0)
    world.admin("fn", Event.START)
    world.tick(0)
    world.provider.report("fn", Event.PENDING, "Ready is Unknown: RevisionMissing")
    world.tick(world.reconciler.start_grace - 1)
    result(world.reconciler.run_pass())
    status = world.status("fn")
    assert (status.state, status.start_pending) == (State.INACTIVE, True)
    world.provider.report("fn", Event.READY, "ready")
    result(world.reconciler.run_pass())
    assert world.status("fn").state is State.ACTIVE
    assert world.transitions(State.INACTIVE, State.FAILED, Event.PENDING) == 0


def test_start_that_stays_pending_fails(world: World) -> None:
    active(world)
    world.admin("fn", Event.STOP)
    world.tick(0)
    world.admin("fn", Event.START)
    world.tick(0)
    world.provider.report("fn", Event.PENDING, "Ready is Unknown: RevisionMissing")
    world.tick(world.reconciler.start_grace)
    result(world.reconciler.run_pass())
    status = world.status("fn")
    assert status.state is State.FAILED
    assert not status.start_pending
    assert status.message == "Ready is Unknown: RevisionMissing"


def test_update_of_a_stopped_function_is_one_start_call(world: World) -> None:
    active(world)
    world.admin("fn", Event.STOP)
    world.tick(0)
    newer = spec(image="example/img:2")
    world.admin("fn", Event.UPDATE, newer)   # inactive + update -> initial: run it again
    world.tick(0)
    assert world.provider.verbs("start") == ["fn"]
    assert world.provider.verbs("update") == []
    assert world.provider.running["fn"].digest == newer.digest()
    assert not world.provider.running["fn"].stopped


def test_stopped_function_lost_by_the_provider_stays_gone(world: World) -> None:
    active(world)
    world.admin("fn", Event.STOP)
    world.tick(0)
    del world.provider.running["fn"]
    result(world.reconciler.run_pass())
    assert world.provider.verbs("deploy") == ["fn"]   # only the first one
    world.admin("fn", Event.START)
    world.tick(0)
    assert world.provider.verbs("deploy") == ["fn", "fn"]


def test_delete_removes_what_runs(world: World) -> None:
    active(world)
    world.admin("fn", Event.STOP)
    world.tick(0)
    world.admin("fn", Event.DELETE)
    world.tick(0)
    assert world.provider.verbs("delete") == ["fn"]
    assert world.provider.running == {}


def test_destroyed_record_left_in_the_store_is_cleaned_up(world: World) -> None:
    active(world)
    record = result(world.store.get("fn"))
    destroyed = attrs.evolve(record.status, state=State.DESTROYED)
    result(world.store.update(record, status=destroyed))
    result(world.reconciler.run_pass())
    assert world.provider.verbs("delete") == ["fn"]
    calls = len(world.provider.calls)
    result(world.reconciler.run_pass())
    assert world.provider.calls[calls:] == [("observe", "*")]


def test_refused_spec_fails_at_once_with_the_reason(world: World) -> None:
    world.provider.reject["fn"] = "Kubernetes refused the Knative Service: Invalid: bad port"
    world.create(spec())
    world.tick(0)
    status = world.status("fn")
    assert status.state is State.FAILED
    assert status.message == "Kubernetes refused the Knative Service: Invalid: bad port"
    writes = world.store.writes
    result(world.reconciler.run_pass())      # tried again, same verdict: no new write
    assert world.store.writes == writes
    assert world.provider.verbs("deploy") == ["fn", "fn"]


def test_lost_race_is_retried_next_pass_not_an_error(world: World) -> None:
    active(world)
    world.admin("fn", Event.STOP)
    world.provider.conflict_once.add("fn")
    world.tick(0)
    assert not world.provider.running["fn"].stopped
    assert world.errors("provider") == 0
    result(world.reconciler.run_pass())
    assert world.provider.running["fn"].stopped
    assert world.provider.verbs("stop") == ["fn", "fn"]


def test_steady_pass_is_one_observe_and_no_write(world: World) -> None:
    for i in range(50):
        world.create(spec(f"f{i}"))
    world.tick(0)
    for i in range(50):
        world.provider.report(f"f{i}", Event.READY, "ready")
    result(world.reconciler.run_pass())
    assert all(world.status(f"f{i}").state is State.ACTIVE for i in range(50))
    calls, writes = len(world.provider.calls), world.store.writes
    result(world.reconciler.run_pass())
    assert world.provider.calls[calls:] == [("observe", "*")]
    assert world.store.writes == writes
    for i in range(0, 50, 10):               # 10% change: one status write each
        world.provider.report(f"f{i}", Event.ERROR, "OOMKilled")
    result(world.reconciler.run_pass())
    assert world.provider.calls[calls + 1:] == [("observe", "*")]
    assert world.store.writes == writes + 5


def test_passes_follow_the_interval_on_the_clock(world: World) -> None:
    world.reconciler.startService()
    assert world.reconciler.passes == 1
    world.tick(INTERVAL - 0.1)
    assert world.reconciler.passes == 1
    world.tick(0.1)
    assert world.reconciler.passes == 2


def test_follower_does_not_reconcile(world: World) -> None:
    world.reconciler.is_leader = lambda: False
    world.reconciler.startService()
    world.create(spec())
    world.tick(0)
    world.tick()
    assert world.provider.calls == []


def test_stop_service_waits_for_the_pass_in_flight(world: World) -> None:
    gate: Deferred[dict[str, Observation]] = Deferred()
    world.provider.observe = lambda names=None: gate   # type: ignore[method-assign]
    world.reconciler.startService()
    stopped = world.reconciler.stopService()
    fired: list[object] = []
    stopped.addBoth(fired.append)
    assert fired == []
    gate.callback({})
    assert fired == [None]


class _SlowWrites(MemoryStore):
    """Status writes that wait until released, to see how many a pass has in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[tuple[Deferred, Any]] = []

    def update(self, expected: FunctionRecord, spec: FunctionSpec | None = None,
               status: FunctionStatus | None = None, **kwargs: Any) -> Deferred[FunctionRecord]:
        d: Deferred[FunctionRecord] = Deferred()
        self.held.append((d, lambda: super(_SlowWrites, self).update(expected, spec, status,
                                                                     **kwargs)))
        return d

    def release(self) -> int:
        held, self.held = self.held, []
        for d, write in held:
            write().chainDeferred(d)
        return len(held)


def test_a_pass_keeps_a_window_of_writes_in_flight_and_finishes_them_all() -> None:
    from faastwist.lifecycle.reconciler import WINDOW

    store = _SlowWrites()
    provider = FakeProvider()
    for i in range(WINDOW * 3):
        fn = spec(f"f{i:03d}")
        store.create(fn, FunctionStatus.initial(fn.name, 0.0))
    reconciler = Reconciler(store, provider, Clock(), 10.0, Metrics(), wall_clock=lambda: 5.0)
    finished: list[Any] = []
    reconciler.run_pass().addCallback(finished.append)
    assert len(store.held) == WINDOW            # WINDOW writes at once, not one, not all
    released = 0
    while not finished:
        count = store.release()
        assert 0 < count <= WINDOW
        released += count
    assert released == WINDOW * 3 and reconciler.last_error is None
    assert [verb for verb, _ in provider.calls].count("deploy") == WINDOW * 3
    listing = result(store.list())
    assert all(r.status.message == "deploying" for r in listing.records.values())
# -- leadership: act at once when won, stop at once when lost, fence every write -------

class Leadership:
    def __init__(self) -> None:
        self.leading = False
        self.fences: list[list] = []

    def is_leader(self) -> bool:
        return self.leading

    def fence(self) -> list:
        fence = ["held"]
        self.fences.append(fence)
        return fence


class FencedStore(MemoryStore):
    """Records the fence every status write carried."""

    def __init__(self, controller: str) -> None:
        super().__init__(controller)
        self.fences: list[Any] = []

    def update(self, expected, spec=None, status=None, fence=()):
        self.fences.append(list(fence))
        return super().update(expected, spec=spec, status=status, fence=fence)


def _led_world() -> tuple[World, Leadership, FencedStore]:
    clock = Clock()
    clock.advance(1_000)
    store = FencedStore("c1")
    provider = FakeProvider()
    lead = Leadership()
    reconciler = Reconciler(store, provider, clock, INTERVAL, Metrics(),
                            is_leader=lead.is_leader, fence=lead.fence,
                            wall_clock=clock.seconds)
    return World(clock, store, provider, Metrics(), reconciler), lead, store


def test_a_new_leader_runs_a_full_pass_at_once_and_fences_its_writes() -> None:
    w, lead, store = _led_world()
    w.reconciler.startService()
    w.create(spec("a"))
    w.tick(0)
    assert w.provider.calls == []                    # a follower does nothing
    lead.leading = True
    w.reconciler.leadership_changed(True)            # no wait for the next interval
    assert w.provider.verbs("deploy") == ["a"]
    w.provider.report("a", Event.READY, "ready")
    w.reconciler.kick("a")
    w.tick(0)
    assert w.status("a").state is State.ACTIVE
    assert store.fences and all(f == ["held"] for f in store.fences)
    result(w.reconciler.stopService())


def test_losing_the_lease_stops_the_pass_before_its_next_provider_call() -> None:
    w, lead, store = _led_world()
    lead.leading = True
    for name in ("a", "b"):
        w.create(spec(name))
    calls: list[str] = []
    original = w.provider.deploy

    def deploy_then_lose(fn):
        calls.append(fn.name)
        lead.leading = False                          # the lease ran out meanwhile
        return original(fn)
    w.provider.deploy = deploy_then_lose
    result(w.reconciler.run_pass())
    assert calls == ["a"]                             # b was not touched
    assert store.fences == []                         # and no status was written


def test_kicks_during_a_pass_wait_for_one_pass_over_all_of_them(world: World) -> None:
    """Kicks that arrive one watch batch at a time while a pass runs are handled by one
    pass after it, not by one queued pass per batch (each pass reads every report)."""
    world.reconciler.startService()
    for name in ("a", "b", "c", "d"):
        result(world.store.create(spec(name), FunctionStatus.initial(name, 0.0)))
    held: list[Deferred] = []
    observed: list[Any] = []
    observe = world.provider.observe

    def slow_observe(names=None):
        observed.append(sorted(names) if names is not None else None)
        gate: Deferred = Deferred()
        held.append(gate)
        return gate.addCallback(lambda _: result(observe(names)))

    world.provider.observe = slow_observe
    world.reconciler.kick("a")
    world.tick(0)
    assert observed == [["a"]]              # the first pass runs, held in observe
    for name in ("b", "c", "d"):            # three watch batches, one turn each
        world.reconciler.kick(name)
        world.tick(0)
    assert observed == [["a"]]              # queued behind it, not run yet
    held[0].callback(None)
    assert observed == [["a"], ["b", "c", "d"]]   # one pass for all three
    world.reconciler.kick("a")              # kicked while that one runs: one more after
    world.tick(0)
    held[1].callback(None)
    assert observed == [["a"], ["b", "c", "d"], ["a"]]
    held[2].callback(None)
    world.tick(0)
    assert observed == [["a"], ["b", "c", "d"], ["a"]]   # nothing left over
    assert sorted(world.provider.verbs("deploy")) == ["a", "b", "c", "d"]


def test_no_pass_before_the_warm_up_then_one_full_pass(world: World) -> None:
    """With a warm-up (the node's own functions deployed and reported), passes wait for
    it: scheduled, kicked, asked for or on leadership; then one full pass runs."""
    warmup: Deferred[None] = Deferred()
    leading = [True]
    reconciler = Reconciler(world.store, world.provider, world.clock, INTERVAL, Metrics(),
                            wall_clock=world.clock.seconds, is_leader=lambda: leading[0],
                            warmup=warmup)
    for name in ("a", "b"):
        result(world.store.create(spec(name), FunctionStatus.initial(name, 0.0)))
    observed: list[Any] = []
    observe = world.provider.observe

    def recorded(names=None):
        observed.append(sorted(names) if names is not None else None)
        return observe(names)

    world.provider.observe = recorded
    reconciler.startService()
    try:
        reconciler.leadership_changed(True)
        reconciler.kick("a")
        done: list[None] = []
        reconciler.run_pass().addCallback(done.append)
        assert done == [None]            # answers at once, having done nothing
        world.tick(INTERVAL * 3)         # scheduled passes too
        assert observed == []
        assert reconciler.passes == 0
        warmup.callback(None)
        assert observed == [None]        # one full pass; the kick is part of it
        world.tick(0)
        assert observed == [None]
        assert sorted(world.provider.verbs("deploy")) == ["a", "b"]
        reconciler.kick("b")             # warm: kicks run as usual
        world.tick(0)
        assert observed == [None, ["b"]]
    finally:
        result(reconciler.stopService())


def test_a_follower_warms_up_without_a_pass(world: World) -> None:
    warmup: Deferred[None] = Deferred()
    reconciler = Reconciler(world.store, world.provider, world.clock, INTERVAL, Metrics(),
                            is_leader=lambda: False, warmup=warmup)
    result(world.store.create(spec("a"), FunctionStatus.initial("a", 0.0)))
    reconciler.startService()
    try:
        warmup.callback(None)
        world.tick(INTERVAL)
        assert world.provider.verbs("deploy") == []
        assert reconciler.passes == 0
    finally:
        result(reconciler.stopService())


def test_a_warm_up_that_timed_out_starts_the_passes_too(world: World) -> None:
    warmup: Deferred[None] = Deferred()
    reconciler = Reconciler(world.store, world.provider, world.clock, INTERVAL, Metrics(),
                            wall_clock=world.clock.seconds, warmup=warmup)
    result(world.store.create(spec("a"), FunctionStatus.initial("a", 0.0)))
    reconciler.startService()
    try:
        assert world.provider.verbs("deploy") == []
        warmup.errback(TimeoutError("the node's first pass took too long"))
        assert world.provider.verbs("deploy") == ["a"]
    finally:
        result(reconciler.stopService())


def test_a_failed_function_scaled_to_zero_is_not_recovered_by_a_ready_that_ran_nothing() -> None:
    """A node restart forgets a crash loop, and a function scaled to zero then looks
    ready without running anything: the failed state stays as it was (measured on
    commit 15642f0: it came back active). A replica that became ready is evidence."""
    fn = spec()
    record = _record(State.FAILED)
    vacuous = attrs.evolve(_obs(event=Event.READY),
                           ext_data={"replicas": "0", "desired": "0"})
    assert plan(record, vacuous, 0.0, 120.0) == Plan()
    real = attrs.evolve(vacuous, ext_data={"replicas": "1", "desired": "1"})
    assert plan(record, real, 0.0, 120.0).events == (Event.READY, Event.READY)
    # an active function scaled to zero is simply ready
    assert plan(_record(State.ACTIVE), vacuous, 0.0, 120.0).events == (Event.READY,)
    assert fn.name == record.name


def test_observations_of_an_older_epoch_conclude_nothing() -> None:
    """The leader's fold says which epoch every node acted on: a verdict made before
    the operator's latest event (a ready from before a stop) is no verdict on it."""
    fn = spec()
    record = FunctionRecord(fn, FunctionStatus(fn.name, State.INACTIVE, start_pending=True,
                                               epoch=4))
    assert plan(record, attrs.evolve(_obs(event=Event.READY), epoch=3), 0.0, 120.0) == Plan()
    assert plan(record, attrs.evolve(_obs(event=Event.READY), epoch=4), 0.0,
                120.0).events == (Event.READY,)
    assert plan(record, _obs(event=Event.READY), 0.0, 120.0).events == (Event.READY,)


# -- store conditions are expected outcomes, not bugs --------------------------------------

@pytest.fixture
def logged() -> Any:
    """Every log event published while the test runs."""
    from twisted.logger import globalLogPublisher

    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def retried(w: World, kind: str) -> float:
    return w.metrics.registry.get_sample_value(
        "faastwist_reconcile_retried_total", {"kind": kind}) or 0.0


def tracebacks(events: list[dict]) -> list[dict]:
    return [e for e in events if "log_failure" in e]


class _DeletedWhileWriting(MemoryStore):
    """The admin deletes ``victim`` between the pass's read and its status write."""

    def __init__(self, victim: str) -> None:
        super().__init__("c1")
        self.victim = victim

    def update(self, expected: FunctionRecord, spec: FunctionSpec | None = None,
               status: FunctionStatus | None = None, **kwargs: Any) -> Deferred:
        if expected.name == self.victim:
            result(super().delete(result(self.get(self.victim))))
        return super().update(expected, spec, status, **kwargs)


def test_a_status_write_racing_a_delete_is_counted_and_the_pass_goes_on(logged) -> None:
    clock = Clock()
    store = _DeletedWhileWriting("f1")
    provider, metrics = FakeProvider(), Metrics()
    w = World(clock, store, provider, metrics,
              Reconciler(store, provider, clock, INTERVAL, metrics, wall_clock=clock.seconds))
    for name in ("f0", "f1", "f2"):
        w.create(spec(name))
    result(w.reconciler.run_pass())
    assert [w.status(n).message for n in ("f0", "f2")] == ["deploying", "deploying"]
    assert retried(w, "not_found") == 1 and w.errors("internal") == 0
    assert w.reconciler.last_error is None
    assert tracebacks(logged) == []
    assert any("f1 was deleted during the pass" in (e.get("log_format") or "").replace(
        "{name}", e.get("name", "")) for e in logged)
    # the next pass removes what the provider still runs for it
    result(w.reconciler.run_pass())
    assert provider.verbs("delete") == ["f1"]


class _QuorumLostMidPass(MemoryStore):
    """The store goes away at the pass's first status write (etcd lost its quorum)."""

    lose = True

    def update(self, expected: FunctionRecord, spec: FunctionSpec | None = None,
               status: FunctionStatus | None = None, **kwargs: Any) -> Deferred:
        if self.lose:
            self.lose, self.available = False, False
        return super().update(expected, spec, status, **kwargs)


def test_the_store_going_away_ends_the_pass_once_counted_without_a_traceback(logged) -> None:
    clock = Clock()
    store = _QuorumLostMidPass("c1")
    provider, metrics = FakeProvider(), Metrics()
    w = World(clock, store, provider, metrics,
              Reconciler(store, provider, clock, INTERVAL, metrics, wall_clock=clock.seconds))
    for name in ("f0", "f1", "f2"):
        w.create(spec(name))
    result(w.reconciler.run_pass())
    # one provider call, its write refused: the pass stopped there (no more calls to a
    # provider whose outcome could not be recorded)
    assert provider.verbs("deploy") == ["f0"]
    assert retried(w, "unavailable") == 1
    assert w.errors("internal") == 0 and tracebacks(logged) == []
    assert "memory store marked unavailable" in w.reconciler.last_error
    warnings = [e for e in logged if e.get("log_level") is not None
                and e["log_level"].name == "warn"]
    assert len(warnings) == 1
    # the read of the next pass fails too: counted again, one line again
    result(w.reconciler.run_pass())
    assert retried(w, "unavailable") == 2 and tracebacks(logged) == []
    # back: the next pass converges everything
    store.available = True
    result(w.reconciler.run_pass())
    assert provider.verbs("deploy") == ["f0", "f1", "f2"]  # f0 once: it was deployed
    assert [w.status(n).message for n in ("f1", "f2")] == ["deploying"] * 2
    assert w.reconciler.last_error is None


class _BrokenWrite(MemoryStore):
    def update(self, expected: FunctionRecord, spec: FunctionSpec | None = None,
               status: FunctionStatus | None = None, **kwargs: Any) -> Deferred:
        if expected.name == "f1":
            raise TypeError("a bug in the write path")
        return super().update(expected, spec, status, **kwargs)


def test_only_a_real_bug_is_internal_with_its_traceback_and_the_others_go_on(logged) -> None:
    clock = Clock()
    store = _BrokenWrite("c1")
    provider, metrics = FakeProvider(), Metrics()
    w = World(clock, store, provider, metrics,
              Reconciler(store, provider, clock, INTERVAL, metrics, wall_clock=clock.seconds))
    for name in ("f0", "f1", "f2"):
        w.create(spec(name))
    result(w.reconciler.run_pass())
    assert [w.status(n).message for n in ("f0", "f2")] == ["deploying", "deploying"]
    assert w.errors("internal") == 1 and w.reconciler.last_error == "unexpected error"
    failures = tracebacks(logged)
    assert len(failures) == 1 and failures[0]["log_failure"].check(TypeError)
    assert failures[0]["name"] == "f1"
    for kind in ("not_found", "conflict", "unavailable"):
        assert retried(w, kind) == 0
