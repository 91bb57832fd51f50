"""The route table follows the store: a full list at start and after a watch gap,
then every watched change at once."""

from __future__ import annotations

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from faastwist.model.fsm import Event, FunctionStatus, State, apply_event
from faastwist.metrics import Metrics
from faastwist.gate.routes import Route, RouteTable
from faastwist.model.spec import FunctionSpec
from faastwist.model.spec import PathAdaptor, RegexpReplace, RequestAdaptor
from faastwist.store.base import Change
from faastwist.store.memory import MemoryStore
from tests.support.turns import turn


class HeldStore(MemoryStore):
    """The in-memory store with each list() answered when the test says (as etcd's
    answer may come after the table was stopped and started again), and the watch
    callbacks kept so a test can deliver what a store could send."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[Deferred] = []
        self.watchers: list = []

    def list(self) -> Deferred:
        d: Deferred = Deferred()
        self.held.append(d)
        return d

    def answer(self, index: int) -> None:
        self.held[index].callback(MemoryStore.list(self).result)

    def refuse(self, index: int) -> None:
        self.held[index].errback(RuntimeError("etcd: no leader"))

    def watch(self, start_revision, on_changes, on_lost):
        self.watchers.append((on_changes, on_lost))
        return super().watch(start_revision, on_changes, on_lost)


def spec(name: str, **fields: object) -> FunctionSpec:
    return FunctionSpec.from_dict({"name": name, "image": "example/fn", **fields})


def started(store: MemoryStore, clock: Clock | None = None,
            metrics: Metrics | None = None) -> RouteTable:
    table = RouteTable(store, clock or Clock(), metrics)
    table.startService()
    return table


def set_state(store: MemoryStore, name: str, *events: Event) -> None:
    record = store.get(name).result
    status = record.status
    for event in events:
        status = apply_event(status, event, 1.0)
    store.update(record, status=status)


def test_start_lists_every_function_with_its_state() -> None:
    store = MemoryStore()
    store.create(spec("a"), FunctionStatus("a", State.ACTIVE))
    store.create(spec("b"), FunctionStatus("b", State.INACTIVE))
    table = started(store)
    assert table.synced
    a, b = table.lookup("a"), table.lookup("b")
    assert isinstance(a, Route) and a.active and a.state is State.ACTIVE
    assert b is not None and not b.active and b.state is State.INACTIVE
    assert table.lookup("c") is None
    assert table.names() == ["a", "b"]


def test_watched_changes_apply_at_once() -> None:
    store = MemoryStore()
    store.create(spec("a"), FunctionStatus("a", State.ACTIVE))
    table = started(store)
    set_state(store, "a", Event.STOP)
    assert table.lookup("a").state is State.INACTIVE
    set_state(store, "a", Event.START, Event.READY)
    assert table.lookup("a").active
    store.create(spec("new"), FunctionStatus("new", State.INITIAL))
    assert table.lookup("new").state is State.INITIAL
    store.delete(store.get("new").result)
    assert table.lookup("new") is None


def test_a_spec_update_recompiles_the_adaptor_and_keeps_the_state() -> None:
    store = MemoryStore()
    store.create(spec("a"), FunctionStatus("a", State.ACTIVE))
    table = started(store)
    assert table.lookup("a").adaptor is None
    record = store.get("a").result
    store.update(record, spec=spec("a", requestAdaptor={"path": {"addPrefix": "/v2"}},
                                   timeout="5s"))
    route = table.lookup("a")
    assert route.active and route.timeout == 5.0
    assert route.adaptor is not None and route.adaptor.apply_target(b"/x?q") == b"/v2/x?q"


def test_a_lost_watch_lists_again_and_catches_up() -> None:
    store = MemoryStore()
    metrics = Metrics()
    store.create(spec("a"), FunctionStatus("a", State.ACTIVE))
    table = started(store, metrics=metrics)
    handle = table._watch
    handle.cancel()  # events stop arriving, as when etcd compacts past the watch
    set_state(store, "a", Event.STOP)
    store.create(spec("b"), FunctionStatus("b", State.ACTIVE))
    assert table.lookup("a").active and table.lookup("b") is None  # stale meanwhile
    handle.on_lost(RuntimeError("required revision has been compacted"))
    assert table.lookup("a").state is State.INACTIVE
    assert table.lookup("b").active
    assert metrics.registry.get_sample_value("faastwist_store_watch_reconnects_total") == 1
    set_state(store, "b", Event.STOP)  # and the new watch delivers
    assert not table.lookup("b").active


def test_a_failed_list_is_retried_with_backoff() -> None:
    store = MemoryStore()
    store.create(spec("a"), FunctionStatus("a", State.ACTIVE))
    store.available = False
    clock = Clock()
    table = started(store, clock)
    assert not table.synced and table.lookup("a") is None
    clock.advance(0.5)
    assert not table.synced
    store.available = True
    clock.advance(0.9)  # second attempt waits twice as long
    assert not table.synced
    clock.advance(0.1)
    assert table.synced and table.lookup("a").active


def test_listeners_hear_every_route_change() -> None:
    store = MemoryStore()
    table = started(store)
    heard: list[tuple[str, str | None]] = []
    table.subscribe(lambda name, route: heard.append(
        (name, None if route is None else route.state.value)))
    store.create(spec("a"), FunctionStatus("a", State.INITIAL))
    set_state(store, "a", Event.READY)
    store.delete(store.get("a").result)
    assert heard == [("a", "initial"), ("a", "active"), ("a", None)]


def test_unchanged_writes_keep_the_route_object() -> None:
    store = MemoryStore()
    store.create(spec("a"), FunctionStatus("a", State.ACTIVE))
    table = started(store)
    before = table.lookup("a")
    record = store.get("a").result
    store.update(record, spec=record.spec)  # same content, new revision
    assert table.lookup("a") is before


def test_stop_ends_the_watch() -> None:
    store = MemoryStore()
    store.create(spec("a"), FunctionStatus("a", State.ACTIVE))
    table = started(store)
    table.stopService()
    set_state(store, "a", Event.STOP)
    assert table.lookup("a").active
    assert store._watches == []


def test_a_large_table_is_rebuilt_a_chunk_per_reactor_turn_then_swapped_whole() -> None:
    from faastwist.gate import routes as routes_module

    clock = Clock()
    store = MemoryStore()
    count = routes_module.CHUNK * 2 + 3
    for i in range(count):
        store.create(spec(f"f{i:04d}"), FunctionStatus(f"f{i:04d}", State.ACTIVE))
    heard: list[str] = []
    table = RouteTable(store, clock)
    table.subscribe(lambda name, route: heard.append(name))
    table.startService()
    # one chunk built, nothing served yet, no watch yet
    assert not table.synced and table.lookup("f0000") is None and table._watch is None
    clock.advance(0)
    assert table.synced and len(table.names()) == count and table._watch is not None
    assert len(heard) == count
    kept = table.lookup("f0001")
    # a lost watch lists again: the old table serves until the new one is whole, a
    # change made meanwhile arrives through the new watch, unchanged routes are kept
    handle = table._watch
    handle.cancel()
    set_state(store, "f0000", Event.STOP)
    heard.clear()
    handle.on_lost(RuntimeError("required revision has been compacted"))
    assert table.lookup("f0000").active            # the old table, still whole
    set_state(store, "f0002", Event.STOP)           # written during the rebuild
    clock.advance(0)
    assert table.lookup("f0000").state is State.INACTIVE
    assert table.lookup("f0002").state is State.INACTIVE   # through the new watch
    assert table.lookup("f0001") is kept
    assert sorted(heard) == ["f0000", "f0002"]


def test_a_route_reads_as_its_name_and_state() -> None:
    store = MemoryStore()
    store.create(spec("a"), FunctionStatus("a", State.ACTIVE))
    assert repr(started(store).lookup("a")) == "<Route a active>"


def test_snapshot_is_every_function_the_watch_delivered() -> None:
    store = MemoryStore()
    table = RouteTable(store, Clock())
    assert table.snapshot() == {}                      # before the first listing
    store.create(spec("a"), FunctionStatus("a", State.ACTIVE))
    table.startService()
    set_state(store, "a", Event.STOP)
    assert table.snapshot() == {"a": (spec("a"), store.get("a").result.status)}


def test_a_listing_answered_after_a_restart_is_ignored() -> None:
    """Only the last start's listing counts (a stale one would start a second watch and
    could roll the routes back); so do its failures and its watch's loss."""
    store = HeldStore()
    store.create(spec("a"), FunctionStatus("a", State.ACTIVE))
    clock = Clock()
    table = RouteTable(store, clock)
    for _ in range(3):
        table.startService()
        table.stopService()
    table.startService()
    store.answer(0)
    store.refuse(1)
    store.answer(2)
    assert not table.synced and store._watches == [] and clock.getDelayedCalls() == []
    store.answer(3)
    assert table.synced and table.lookup("a").active and len(store._watches) == 1
    # a restart after a sync: one watch again, and the old one's loss changes nothing
    old_lost = store.watchers[0][1]
    table.stopService()
    table.startService()
    store.answer(4)
    assert len(store._watches) == 1 and len(store.held) == 5
    old_lost(RuntimeError("compacted"))
    assert len(store.held) == 5


def test_stopping_twice_or_before_starting_is_harmless() -> None:
    store = MemoryStore()
    store.create(spec("a"), FunctionStatus("a", State.ACTIVE))
    RouteTable(store, Clock()).stopService()
    table = started(store)
    table.stopService()
    table.stopService()
    store.available = False
    clock = Clock()
    failing = started(store, clock)
    failing.stopService()
    failing.stopService()
    assert clock.getDelayedCalls() == []


def test_the_retry_delay_starts_at_half_a_second_doubles_to_10s_and_resets() -> None:
    store = MemoryStore()
    store.create(spec("a"), FunctionStatus("a", State.ACTIVE))
    store.available = False
    clock = Clock()
    table = started(store, clock)
    # attempts at 0.5, 1.5, 3.5, 7.5, 15.5, then every 10 s: 25.5, 35.5
    # (binary fractions of a second: the Clock adds them exactly)
    clock.pump([0.25] * 101)   # to 25.25 s, one step at a time
    store.available = True
    clock.advance(0.125)
    assert not table.synced
    clock.advance(0.125)
    assert table.synced
    # a success resets the delay: the next failed listing is retried after 0.5 s
    store.available = False
    handle = table._watch
    handle.cancel()  # as etcd ends a watch it compacted past
    handle.on_lost(RuntimeError("compacted"))
    store.available = True
    clock.advance(0.25)
    assert len(store._watches) == 0
    clock.advance(0.25)
    assert len(store._watches) == 1


def test_the_first_retry_is_after_half_a_second() -> None:
    store = MemoryStore()
    store.create(spec("a"), FunctionStatus("a", State.ACTIVE))
    store.available = False
    clock = Clock()
    table = started(store, clock)
    store.available = True
    clock.advance(0.25)
    assert not table.synced
    clock.advance(0.25)
    assert table.synced


def test_a_status_without_its_spec_makes_no_route_and_no_noise() -> None:
    store = HeldStore()
    table = RouteTable(store, Clock())
    heard: list = []
    table.subscribe(lambda name, route: heard.append((name, route)))
    table.startService()
    store.answer(0)
    on_changes = store.watchers[0][0]
    on_changes([Change("ghost", "status", FunctionStatus("ghost", State.ACTIVE), 9)])
    on_changes([Change("lone", "spec", spec("lone"), 10)])
    assert table.lookup("ghost") is None and table.lookup("lone") is None and heard == []


def test_a_spec_the_gate_cannot_compile_removes_its_route_only() -> None:
    """A record stored before validation caught it (here: a regexp Python cannot
    compile): that function has no route, the others keep theirs."""
    store = MemoryStore()
    store.create(spec("good"), FunctionStatus("good", State.ACTIVE))
    store.create(spec("bad"), FunctionStatus("bad", State.ACTIVE))
    table = started(store)
    heard: list = []
    table.subscribe(lambda name, route: heard.append((name, route)))
    record = store.get("bad").result
    broken = attrs.evolve(record.spec, request_adaptor=RequestAdaptor(
        path=PathAdaptor(regexp_replace=RegexpReplace("(", "x"))))
    store.update(record, spec=broken)
    assert table.lookup("bad") is None and heard == [("bad", None)]
    assert table.lookup("good").active


def _filled(count: int) -> MemoryStore:
    store = MemoryStore()
    for i in range(count):
        store.create(spec(f"f{i:04d}"), FunctionStatus(f"f{i:04d}", State.ACTIVE))
    return store


def test_a_rebuild_takes_500_routes_per_turn_and_no_empty_turn() -> None:
    for count, turns in ((1001, 2), (1000, 1), (500, 0)):
        clock = Clock()
        table = RouteTable(_filled(count), clock)
        table.startService()
        for _ in range(turns):
            assert not table.synced, count
            turn(clock)
        assert table.synced and len(table.names()) == count, count
        assert clock.getDelayedCalls() == [], count


def test_a_rebuild_overtaken_by_a_new_listing_stops_and_starts_no_watch() -> None:
    clock = Clock()
    store = _filled(1001)
    table = RouteTable(store, clock)
    table.startService()               # the first chunk; the rest waits for turns
    table._sync()                      # a new listing (as a lost watch makes) meanwhile
    for _ in range(4):
        turn(clock)
    assert table.synced and len(table.names()) == 1001
    assert len(store._watches) == 1    # the overtaken rebuild neither swapped nor watched


def test_a_spec_whose_status_is_gone_has_no_route_and_logs_no_failure() -> None:
    from twisted.logger import capturedLogs

    store = MemoryStore()
    store.create(spec("a"), FunctionStatus("a", State.ACTIVE))
    table = started(store)
    with capturedLogs() as events:
        table._changed(table._generation, [Change("a", "status", None, 99)])
    assert table.lookup("a") is None
    assert [e for e in events if e.get("log_failure") is not None] == []


def test_a_stale_listing_does_not_reset_the_retry_backoff() -> None:
    """A listing answered after a restart is ignored whole: it must not reset the
    backoff the current start's failures built up."""
    store = HeldStore()
    store.create(spec("a"), FunctionStatus("a", State.ACTIVE))
    clock = Clock()
    table = RouteTable(store, clock, retry_interval=0.5)
    table.startService()               # listing 0, held
    table.stopService()
    table.startService()               # listing 1
    store.refuse(1)                    # retried in 0.5 s, then 1 s
    store.answer(0)                    # the first start's listing, late: ignored
    clock.advance(0.5)                 # listing 2
    store.refuse(2)
    assert [c.getTime() - clock.seconds() for c in clock.getDelayedCalls()] == [1.0]


def test_reached_fires_once_the_table_reflects_a_revision() -> None:
    """An API answer waits for this (read-your-writes): it fires after the route
    changed, never before, and at once for a revision already applied."""
    store = HeldStore()
    store.create(spec("a"), FunctionStatus("a", State.ACTIVE))
    table = started(store)
    early: list[State | None] = []
    table.reached(1).addCallback(lambda _: early.append(table.lookup("a")))
    assert early == []                      # not listed yet
    store.answer(0)
    assert early and early[0] is not None and early[0].active
    record = store.get("a").result
    seen: list[State] = []
    table.reached(record.status_revision + 1).addCallback(
        lambda _: seen.append(table.lookup("a").state))
    cancelled = table.reached(record.status_revision + 5)
    cancelled.addErrback(lambda f: None)
    cancelled.cancel()                     # a client that gave up is forgotten
    assert seen == []
    set_state(store, "a", Event.STOP)      # the write of that revision
    assert seen == [State.INACTIVE]
    assert table.revision == record.status_revision + 1
    done: list[None] = []
    table.reached(1).addCallback(done.append)
    assert done == [None]
    assert table._waiters == []
