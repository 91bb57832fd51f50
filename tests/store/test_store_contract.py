"""One contract for every FunctionStore: the in-memory fake and etcd behave the same.

The etcd variant runs against a real etcd (tests/support/etcd.py); the tests at the end
cover what only etcd has: reconnects, compaction, outages, endpoints, the /v3 probe.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import pytest
import pytest_twisted
import txaioetcd._client_commons as txaio_commons
import txaioetcd._client_tx as txaio_tx
from twisted.internet import reactor
from twisted.internet.defer import DeferredList, inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.web.resource import Resource
from twisted.web.server import Site

from faastwist.util.ports import free_port
from tests.support.etcd import EtcdProcess, unique_prefix
from faastwist.model.fsm import FunctionStatus, State
from faastwist.metrics import Metrics
from faastwist.model.spec import FunctionSpec
from faastwist.store.base import (
    AlreadyExists,
    Change,
    Conflict,
    FunctionRecord,
    NotFound,
    StoreError,
    StoreUnavailable,
)
from faastwist.store.etcd import EtcdStore
from faastwist.store.etcdcompat import applied_api_prefix
from faastwist.store.etcdwatch import Compacted, StoreReset
from faastwist.store.memory import MemoryStore


def spec(name: str, image: str = "registry.local/fn:1") -> FunctionSpec:
    return FunctionSpec(name=name, image=image, port=8080)


def status(name: str, state: State = State.INITIAL, message: str = "") -> FunctionStatus:
    return FunctionStatus(name=name, state=state, message=message, updated=1.0)


@inlineCallbacks
def wait_for(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition"):
    """Let the reactor run until ``predicate()`` holds (etcd watches are asynchronous)."""
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        yield deferLater(reactor, 0.02, lambda: None)


@inlineCallbacks
def delivered_to_watchers(store, after: int, name: str):
    """Return once a fresh watch from ``after`` has been sent ``name``'s changes: the
    store has published them, so a watch that should not get them has had its chance
    (an explicit point to check "nothing more happened" at, instead of a sleep)."""
    seen, _, on_changes, on_lost = collect()
    probe = store.watch(after, on_changes, on_lost)
    try:
        yield wait_for(lambda: any(c.name == name for c in seen), what=f"{name} published")
    finally:
        probe.cancel()


@pytest.fixture(params=["memory", pytest.param("etcd", marks=pytest.mark.etcd)])
def make_store(request: pytest.FixtureRequest):
    """``make_store(controller=...) -> Deferred[store]``; all stores of one test share a
    fresh key prefix, so they see each other like two nodes of one cluster."""
    made: list[EtcdStore] = []
    memory: dict[str, MemoryStore] = {}
    if request.param == "etcd":
        server: EtcdProcess = request.getfixturevalue("etcd_server")
        prefix = unique_prefix(request.node.name[:20])

    @inlineCallbacks
    def make(controller: str = "faascontroller", timeout: float = 5.0):
        if request.param == "memory":
            return memory.setdefault(controller, MemoryStore(controller))
        store = EtcdStore(reactor, [server.client_url], prefix, controller, timeout)
        made.append(store)
        yield store.connect()
        return store

    make.kind = request.param  # type: ignore[attr-defined]
    yield make
    for store in made:
        pytest_twisted.blockon(store.close())


def collect() -> tuple[list[Change], list[Exception], Callable, Callable]:
    changes: list[Change] = []
    lost: list[Exception] = []
    return changes, lost, changes.extend, lost.append


# -- create / get / list -----------------------------------------------------------------

@pytest_twisted.inlineCallbacks
def test_create_then_get_returns_what_was_written(make_store):
    store = yield make_store()
    created = yield store.create(spec("demo"), status("demo"))
    assert created.spec_revision > 0 and created.spec_revision == created.status_revision
    got = yield store.get("demo")
    assert got == created
    assert got.spec == spec("demo") and got.status == status("demo")


@pytest_twisted.inlineCallbacks
def test_create_twice_is_already_exists(make_store):
    store = yield make_store()
    yield store.create(spec("demo"), status("demo"))
    with pytest.raises(AlreadyExists, match="demo already exists"):
        yield store.create(spec("demo", "other:2"), status("demo"))
    got = yield store.get("demo")
    assert got.spec.image == "registry.local/fn:1"


@pytest_twisted.inlineCallbacks
def test_get_missing_is_not_found(make_store):
    store = yield make_store()
    with pytest.raises(NotFound, match="function nope not found"):
        yield store.get("nope")


@pytest_twisted.inlineCallbacks
def test_reads_are_exact_keys_demo_is_not_demo10(make_store):
    store = yield make_store()
    yield store.create(spec("demo10"), status("demo10"))
    with pytest.raises(NotFound):
        yield store.get("demo")
    with pytest.raises(NotFound):
        yield store.get("demo1")
    yield store.create(spec("demo", "image:demo"), status("demo"))
    got = yield store.get("demo")
    assert got.spec.image == "image:demo"
    record10 = yield store.get("demo10")
    yield store.delete(record10)
    got = yield store.get("demo")
    assert got.name == "demo"


@pytest_twisted.inlineCallbacks
def test_list_returns_every_function_and_the_read_revision(make_store):
    store = yield make_store()
    empty = yield store.list()
    assert empty.records == {}
    a = yield store.create(spec("a"), status("a"))
    b = yield store.create(spec("b"), status("b", State.ACTIVE))
    listing = yield store.list()
    assert listing.records == {"a": a, "b": b}
    assert listing.revision >= b.spec_revision > a.spec_revision


@pytest_twisted.inlineCallbacks
def test_pages_in_name_order_with_prefix_and_a_consistent_revision(make_store, monkeypatch):
    import faastwist.store.etcdlist as etcdlist_module

    # list() and list_page() read pages of 2 (a page of 3 is two reads)
    monkeypatch.setattr(etcdlist_module, "LIST_PAGE", 2)
    store = yield make_store()
    other = yield make_store("ctl2")
    yield other.create(spec("a0"), status("a0"))       # another controller: never listed
    names = ["a1", "a2", "a3", "b1", "b10", "b2", "c"]
    created = {}
    for name in reversed(names):
        created[name] = yield store.create(spec(name), status(name, State.ACTIVE))
    first = yield store.list_page(limit=3)
    assert list(first.records) == ["a1", "a2", "a3"] and first.remaining == 4
    assert first.records["a2"] == created["a2"] and first.last == "a3"
    second = yield store.list_page(after=first.last, limit=3, revision=first.revision)
    assert list(second.records) == ["b1", "b10", "b2"] and second.remaining == 1
    last = yield store.list_page(after=second.last, limit=3, revision=first.revision)
    assert list(last.records) == ["c"] and last.remaining == 0
    prefixed = yield store.list_page(prefix="b1", limit=10)
    assert list(prefixed.records) == ["b1", "b10"] and prefixed.remaining == 0
    resumed = yield store.list_page(prefix="b", after="b1", limit=1)
    assert list(resumed.records) == ["b10"] and resumed.remaining == 1
    listing = yield store.list()
    assert listing.records == created
    if make_store.kind == "etcd":
        # a page at the first revision does not see what was written after it
        yield store.create(spec("a15"), status("a15"))
        again = yield store.list_page(after="a1", limit=1, revision=first.revision)
        assert list(again.records) == ["a2"]
        now = yield store.list_page(after="a1", limit=1)
        assert list(now.records) == ["a15"]


@pytest_twisted.inlineCallbacks
def test_controllers_are_separate(make_store):
    one = yield make_store("ctl")
    two = yield make_store("ctl2")
    yield one.create(spec("a"), status("a"))
    yield two.create(spec("b"), status("b"))
    listing = yield one.list()
    assert sorted(listing.records) == ["a"]
    with pytest.raises(NotFound):
        yield one.get("b")


# -- update / delete: compare-and-swap on both keys ------------------------------------------

@pytest_twisted.inlineCallbacks
def test_update_status_only_moves_the_status_revision(make_store):
    store = yield make_store()
    record = yield store.create(spec("demo"), status("demo"))
    updated = yield store.update(record, status=status("demo", State.ACTIVE, "ready"))
    assert updated.spec_revision == record.spec_revision
    assert updated.status_revision > record.status_revision
    assert updated.status.state is State.ACTIVE
    assert (yield store.get("demo")) == updated


@pytest_twisted.inlineCallbacks
def test_update_spec_and_both(make_store):
    store = yield make_store()
    record = yield store.create(spec("demo"), status("demo"))
    updated = yield store.update(record, spec=spec("demo", "image:2"))
    assert updated.spec.image == "image:2" and updated.status_revision == record.status_revision
    both = yield store.update(updated, spec=spec("demo", "image:3"),
                              status=status("demo", State.FAILED))
    assert both.spec_revision == both.status_revision > updated.spec_revision
    assert (yield store.get("demo")) == both


@pytest_twisted.inlineCallbacks
def test_update_without_changes_returns_the_current_record(make_store):
    store = yield make_store()
    record = yield store.create(spec("demo"), status("demo"))
    same = yield store.update(record)
    assert same == record


@pytest_twisted.inlineCallbacks
def test_stale_update_is_conflict_and_changes_nothing(make_store):
    store = yield make_store()
    record = yield store.create(spec("demo"), status("demo"))
    fresh = yield store.update(record, status=status("demo", State.ACTIVE))
    with pytest.raises(Conflict, match="changed concurrently"):
        yield store.update(record, spec=spec("demo", "image:stale"))
    assert (yield store.get("demo")) == fresh


@pytest_twisted.inlineCallbacks
def test_a_status_write_invalidates_a_spec_read_and_vice_versa(make_store):
    store = yield make_store()
    record = yield store.create(spec("demo"), status("demo"))
    yield store.update(record, spec=spec("demo", "image:2"))
    with pytest.raises(Conflict):
        yield store.update(record, status=status("demo", State.ACTIVE))


@pytest_twisted.inlineCallbacks
def test_racing_updates_exactly_one_wins(make_store):
    store = yield make_store()
    rival = yield make_store()  # another node of the same controller (memory: the same)
    record = yield store.create(spec("demo"), status("demo"))
    results = yield DeferredList([
        store.update(record, spec=spec("demo", "image:admin")),
        rival.update(record, status=status("demo", State.ACTIVE)),
    ], consumeErrors=True)
    wins = [value for ok, value in results if ok]
    losses = [value for ok, value in results if not ok]
    assert len(wins) == 1 and len(losses) == 1
    assert losses[0].check(Conflict)
    assert (yield store.get("demo")) == wins[0]


@pytest_twisted.inlineCallbacks
def test_update_or_delete_of_a_missing_function_is_not_found(make_store):
    store = yield make_store()
    record = yield store.create(spec("demo"), status("demo"))
    yield store.delete(record)
    with pytest.raises(NotFound):
        yield store.update(record, status=status("demo", State.ACTIVE))
    with pytest.raises(NotFound):
        yield store.delete(record)
    ghost = FunctionRecord(spec("ghost"), status("ghost"), 7, 7)
    with pytest.raises(NotFound):
        yield store.delete(ghost)


@pytest_twisted.inlineCallbacks
def test_delete_removes_both_keys_and_allows_recreate(make_store):
    store = yield make_store()
    record = yield store.create(spec("demo"), status("demo"))
    stale = record
    record = yield store.update(record, status=status("demo", State.INACTIVE))
    with pytest.raises(Conflict):
        yield store.delete(stale)
    yield store.delete(record)
    with pytest.raises(NotFound):
        yield store.get("demo")
    assert (yield store.list()).records == {}
    again = yield store.create(spec("demo", "image:new"), status("demo"))
    assert again.spec_revision > record.status_revision
    # the old record does not match the new incarnation
    with pytest.raises(Conflict):
        yield store.update(record, status=status("demo", State.ACTIVE))


# -- watch -------------------------------------------------------------------------------

@pytest_twisted.inlineCallbacks
def test_watch_delivers_puts_and_deletes_in_order(make_store):
    store = yield make_store()
    start = (yield store.list()).revision
    changes, lost, on_changes, on_lost = collect()
    handle = store.watch(start, on_changes, on_lost)
    created = yield store.create(spec("demo"), status("demo"))
    updated = yield store.update(created, status=status("demo", State.ACTIVE))
    yield store.delete(updated)
    yield wait_for(lambda: len(changes) >= 5, what="five changes")
    handle.cancel()
    assert [(c.name, c.kind, c.value) for c in changes] == [
        ("demo", "spec", spec("demo")),
        ("demo", "status", status("demo")),
        ("demo", "status", status("demo", State.ACTIVE)),
        ("demo", "spec", None),
        ("demo", "status", None),
    ]
    revisions = [c.revision for c in changes]
    assert revisions == sorted(revisions)
    assert revisions[0] == created.spec_revision and revisions[2] == updated.status_revision
    assert lost == []


@pytest_twisted.inlineCallbacks
def test_watch_from_an_old_revision_replays(make_store):
    store = yield make_store()
    start = (yield store.list()).revision
    a = yield store.create(spec("a"), status("a"))
    yield store.update(a, spec=spec("a", "image:2"))
    yield store.create(spec("b"), status("b"))
    changes, lost, on_changes, on_lost = collect()
    handle = store.watch(start, on_changes, on_lost)
    yield wait_for(lambda: len(changes) >= 5, what="replayed changes")
    # the replay is followed by live changes
    yield store.create(spec("c"), status("c"))
    yield wait_for(lambda: len(changes) >= 7, what="live changes")
    handle.cancel()
    assert [(c.name, c.kind) for c in changes] == [
        ("a", "spec"), ("a", "status"), ("a", "spec"), ("b", "spec"), ("b", "status"),
        ("c", "spec"), ("c", "status")]
    assert changes[2].value == spec("a", "image:2")
    # starting at a revision delivers only what came after it
    later: list[Change] = []
    handle = store.watch(changes[2].revision, later.extend, on_lost)
    yield wait_for(lambda: len(later) >= 4, what="changes after a revision")
    handle.cancel()
    assert [c.name for c in later] == ["b", "b", "c", "c"]


@pytest_twisted.inlineCallbacks
def test_a_cancelled_watch_delivers_nothing_more(make_store):
    store = yield make_store()
    start = (yield store.list()).revision
    changes, lost, on_changes, on_lost = collect()
    handle = store.watch(start, on_changes, on_lost)
    yield store.create(spec("a"), status("a"))
    yield wait_for(lambda: len(changes) == 2, what="first changes")
    handle.cancel()
    handle.cancel()  # idempotent
    yield store.create(spec("b"), status("b"))
    yield delivered_to_watchers(store, start, "b")
    assert [c.name for c in changes] == ["a", "a"]


# -- etcd only ---------------------------------------------------------------------------

def etcd_store(server: EtcdProcess, timeout: float = 5.0, endpoints: list[str] | None = None,
               prefix: str | None = None, metrics: Metrics | None = None) -> EtcdStore:
    return EtcdStore(reactor, endpoints or [server.client_url], prefix or unique_prefix(),
                     "faascontroller", timeout, metrics)


@pytest.mark.etcd
@pytest_twisted.inlineCallbacks
def test_connect_points_txaioetcd_at_the_v3_gateway(etcd_server):
    store = etcd_store(etcd_server)
    yield store.connect()
    try:
        assert store.api_prefix == "/v3" == applied_api_prefix()
        assert txaio_commons.ENDPOINT_PUT == "{}/v3/kv/put"
        assert txaio_tx.ENDPOINT_SUBMIT == "{}/v3/kv/txn"
        assert txaio_tx.ENDPOINT_WATCH == "{}/v3/watch"
        yield store.check()
    finally:
        yield store.close()


@pytest.mark.etcd
@pytest_twisted.inlineCallbacks
def test_keys_layout_and_foreign_keys_are_ignored(etcd_server):
    store = etcd_store(etcd_server)
    yield store.connect()
    try:
        start = (yield store.list()).revision
        changes, lost, on_changes, on_lost = collect()
        handle = store.watch(start, on_changes, on_lost)
        record = yield store.create(spec("demo"), status("demo"))
        spec_raw = etcd_server.get(f"{store.prefix}/faascontroller/spec/demo")
        status_raw = etcd_server.get(f"{store.prefix}/faascontroller/status/demo")
        assert json.loads(spec_raw)["image"] == "registry.local/fn:1"
        assert json.loads(status_raw)["state"] == "initial"
        # neighbours under the prefix that are not spec/status keys of a function
        etcd_server.put(f"{store.prefix}/faascontroller/leader", "node-1")
        etcd_server.put(f"{store.prefix}/faascontroller/spec/a/b", "{}")
        etcd_server.put(f"{store.prefix}/faascontroller2/spec/x", "{}")
        yield store.update(record, status=status("demo", State.ACTIVE))
        yield wait_for(lambda: len(changes) >= 3, what="three changes")
        handle.cancel()
        assert [(c.kind, c.name) for c in changes] == [
            ("spec", "demo"), ("status", "demo"), ("status", "demo")]
        assert sorted((yield store.list()).records) == ["demo"]
    finally:
        yield store.close()


@pytest.mark.etcd
@pytest_twisted.inlineCallbacks
def test_unreadable_value_is_a_store_error_naming_the_key(etcd_server):
    store = etcd_store(etcd_server)
    yield store.connect()
    try:
        etcd_server.put(f"{store.prefix}/faascontroller/spec/broken", "not json")
        with pytest.raises(StoreError, match="unreadable spec at .*/spec/broken"):
            yield store.get("broken")
    finally:
        yield store.close()


@pytest.mark.etcd
@pytest_twisted.inlineCallbacks
def test_a_spec_without_status_reads_as_initial_and_can_be_repaired(etcd_server):
    store = etcd_store(etcd_server)
    yield store.connect()
    try:
        etcd_server.put(f"{store.prefix}/faascontroller/spec/handmade",
                        json.dumps(spec("handmade").to_dict()))
        record = yield store.get("handmade")
        assert record.status.state is State.INITIAL and record.status_revision == 0
        repaired = yield store.update(record, status=status("handmade", State.ACTIVE))
        assert (yield store.get("handmade")) == repaired
    finally:
        yield store.close()


@pytest.mark.etcd
@pytest_twisted.inlineCallbacks
def test_watch_resumes_after_etcd_restarts_without_losing_changes(etcd_process):
    metrics = Metrics()
    store = etcd_store(etcd_process, timeout=1.0, metrics=metrics)
    yield store.connect()
    try:
        start = (yield store.list()).revision
        changes, lost, on_changes, on_lost = collect()
        handle = store.watch(start, on_changes, on_lost)
        a = yield store.create(spec("a"), status("a"))
        yield wait_for(lambda: len(changes) == 2, what="changes before the restart")
        etcd_process.stop()
        yield deferLater(reactor, 0.4, lambda: None)  # the watch retries against a dead port
        etcd_process.start()
        # written before the watch is back: the resume must replay it
        a = yield store.update(a, status=status("a", State.ACTIVE))
        yield store.create(spec("b"), status("b"))
        yield wait_for(lambda: len(changes) >= 5, timeout=10, what="changes after the restart")
        yield store.delete(a)
        yield wait_for(lambda: len(changes) >= 7, what="changes after the resume")
        handle.cancel()
        assert [(c.name, c.kind, c.value is None) for c in changes] == [
            ("a", "spec", False), ("a", "status", False), ("a", "status", False),
            ("b", "spec", False), ("b", "status", False),
            ("a", "spec", True), ("a", "status", True)]
        assert [c.revision for c in changes] == sorted(c.revision for c in changes)
        assert lost == []
        assert metrics.registry.get_sample_value("faastwist_store_watch_reconnects_total") >= 1
    finally:
        yield store.close()


@pytest.mark.etcd
@pytest_twisted.inlineCallbacks
def test_watch_from_a_compacted_revision_calls_on_lost_once(etcd_process):
    store = etcd_store(etcd_process)
    yield store.connect()
    try:
        start = (yield store.list()).revision
        a = yield store.create(spec("a"), status("a"))
        yield store.update(a, status=status("a", State.ACTIVE))
        compacted_at = etcd_process.compact()
        changes, lost, on_changes, on_lost = collect()
        store.watch(start, on_changes, on_lost)
        yield wait_for(lambda: lost, what="on_lost")
        yield store.create(spec("b"), status("b"))
        yield delivered_to_watchers(store, (yield store.list()).revision - 1, "b")
        assert changes == [] and len(lost) == 1
        assert isinstance(lost[0], Compacted)
        assert lost[0].compact_revision == compacted_at
        # the consumer's remedy: list again and watch from the listing's revision
        listing = yield store.list()
        assert sorted(listing.records) == ["a", "b"]
        handle = store.watch(listing.revision, on_changes, on_lost)
        yield store.create(spec("c"), status("c"))
        yield wait_for(lambda: len(changes) == 2, what="changes on the new watch")
        handle.cancel()
        assert [c.name for c in changes] == ["c", "c"] and len(lost) == 1
    finally:
        yield store.close()


@pytest.mark.etcd
@pytest_twisted.inlineCallbacks
def test_a_watch_on_a_wiped_etcd_reports_the_reset(etcd_process, tmp_path):
    store = etcd_store(etcd_process, timeout=1.0)
    yield store.connect()
    try:
        for name in ("a", "b", "c"):
            yield store.create(spec(name), status(name))
        seen = (yield store.list()).revision
        changes, lost, on_changes, on_lost = collect()
        store.watch(seen, on_changes, on_lost)
        yield deferLater(reactor, 0.1, lambda: None)
        etcd_process.stop()
        import shutil
        shutil.rmtree(f"{etcd_process.data_dir}/data")
        etcd_process.start()  # same URL, revision back to 1
        yield wait_for(lambda: lost, timeout=10, what="on_lost after the wipe")
        assert isinstance(lost[0], StoreReset) and changes == []
    finally:
        yield store.close()


@pytest.mark.etcd
@pytest_twisted.inlineCallbacks
def test_every_call_is_store_unavailable_when_etcd_is_down(etcd_process):
    metrics = Metrics()
    store = etcd_store(etcd_process, timeout=0.5, metrics=metrics)
    yield store.connect()
    record = yield store.create(spec("a"), status("a"))
    etcd_process.stop()
    try:
        for call in (lambda: store.get("a"), store.list, store.check,
                     lambda: store.create(spec("b"), status("b")),
                     lambda: store.update(record, status=status("a", State.ACTIVE)),
                     lambda: store.delete(record)):
            started = reactor.seconds()
            with pytest.raises(StoreUnavailable, match="etcd .* failed"):
                yield call()
            assert reactor.seconds() - started < 2  # bounded by the timeout, never a hang
        assert metrics.registry.get_sample_value(
            "faastwist_store_operations_total", {"op": "get", "result": "unavailable"}) == 1
        fresh = etcd_store(etcd_process, timeout=0.5)
        with pytest.raises(StoreUnavailable, match=f"cannot use etcd: {etcd_process.client_url}"):
            yield fresh.connect()
        # and it recovers once etcd is back
        etcd_process.start()
        assert (yield store.get("a")) == record
    finally:
        yield store.close()


class _Silent(Protocol):
    """Accepts a connection and never answers (a hung etcd)."""


@pytest.mark.etcd
@pytest_twisted.inlineCallbacks
def test_a_hung_endpoint_times_out_and_the_next_endpoint_serves(etcd_server):
    port = reactor.listenTCP(0, Factory.forProtocol(_Silent), interface="127.0.0.1")
    hung = f"http://127.0.0.1:{port.getHost().port}"
    dead = f"http://127.0.0.1:{free_port()}"
    try:
        lonely = etcd_store(etcd_server, timeout=0.3, endpoints=[hung])
        with pytest.raises(StoreUnavailable, match="no answer within 0.3s"):
            yield lonely.connect()
        store = etcd_store(etcd_server, timeout=0.3, endpoints=[dead, hung, etcd_server.client_url])
        yield store.connect()
        record = yield store.create(spec("a"), status("a"))
        assert (yield store.get("a")) == record
        assert store.active_endpoint == etcd_server.client_url
        yield store.close()
        yield lonely.close()
    finally:
        yield port.stopListening()


class _OnlyV3beta(Resource):
    """Answers maintenance/status on /v3beta only, like etcd 3.3."""

    isLeaf = True

    def render_POST(self, request: Any) -> bytes:
        if request.path == b"/v3beta/maintenance/status":
            return json.dumps({"header": {"revision": "1"}, "version": "3.3.27"}).encode()
        request.setResponseCode(404)
        return b"404 page not found"


class _NotEtcd(Resource):
    isLeaf = True

    def render_POST(self, request: Any) -> bytes:
        request.setResponseCode(404)
        return b"no such thing"


@pytest_twisted.inlineCallbacks
def test_probe_picks_v3beta_and_refuses_a_server_without_a_gateway():
    from twisted.web.client import Agent

    from faastwist.store.etcdcompat import EtcdHttp, IncompatibleEtcd, probe_api_prefix

    for resource, expected in ((_OnlyV3beta(), "/v3beta"), (_NotEtcd(), None)):
        port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")
        http = EtcdHttp(reactor, Agent(reactor))
        url = f"http://127.0.0.1:{port.getHost().port}"
        try:
            if expected:
                assert (yield probe_api_prefix(http, url, 2.0)) == expected
            else:
                with pytest.raises(IncompatibleEtcd, match="serves none of the JSON gateways "
                                                           "/v3, /v3beta"):
                    yield probe_api_prefix(http, url, 2.0)
        finally:
            yield port.stopListening()


def test_constructor_refuses_bad_endpoints():
    with pytest.raises(ValueError, match="at least one endpoint"):
        EtcdStore(reactor, [], "/faas", "c", 1.0)
    with pytest.raises(ValueError, match="'127.0.0.1:2379' must be an http"):
        EtcdStore(reactor, ["127.0.0.1:2379"], "/faas", "c", 1.0)


# -- invocation keys ---------------------------------------------------------------------

@pytest_twisted.inlineCallbacks
def test_keys_next_to_spec_and_status(make_store):
    from faastwist.model.keys import KeyEntry, KeySet

    store = yield make_store()
    with pytest.raises(NotFound):
        yield store.get_keys("demo")
    with pytest.raises(NotFound):
        yield store.put_keys("demo", KeySet(), 0)
    yield store.create(spec("demo"), status("demo"))
    yield store.create(spec("demo10"), status("demo10"))
    keys, revision = yield store.get_keys("demo")
    assert (keys, revision) == (KeySet(), 0)
    changes, lost, on_changes, on_lost = collect()
    start = (yield store.list()).revision
    watch = store.watch(start, on_changes, on_lost)
    one = KeySet((KeyEntry("a1", "d" * 64, "2026-01-01T00:00:00Z"),))
    revision = yield store.put_keys("demo", one, 0)
    assert (yield store.get_keys("demo")) == (one, revision)
    assert (yield store.get_keys("demo10")) == (KeySet(), 0)   # exact names
    with pytest.raises(Conflict):
        yield store.put_keys("demo", KeySet(), 0)                # lost the race
    two = one.add(KeyEntry("b2", "e" * 64, "2026-01-02T00:00:00Z"))
    revision = yield store.put_keys("demo", two, revision)
    listing = yield store.list()
    assert listing.keys == {"demo": two}
    yield wait_for(lambda: [c.value for c in changes if c.kind == "keys"] == [one, two],
                   what="keys changes")
    # deleting the function deletes its keys (and says so to watchers)
    yield store.delete((yield store.get("demo")))
    yield wait_for(lambda: any(c.kind == "keys" and c.value is None for c in changes),
                   what="keys deletion")
    yield store.create(spec("demo"), status("demo"))
    assert (yield store.get_keys("demo")) == (KeySet(), 0)
    watch.cancel()
    assert lost == []


def test_the_memory_store_counts_each_successful_write_once():
    """``writes`` is what tests check "nothing was written" with: one per create, update
    and delete that took effect, none for a refused compare-and-swap."""
    from faastwist.store.base import Conflict

    store = MemoryStore()
    store.create(spec("b"), status("b"))
    assert store.writes == 1
    created = store.create(spec("a"), status("a")).result
    assert store.writes == 2
    updated = store.update(created, status=status("a", State.ACTIVE)).result
    assert store.writes == 3
    refused: list = []
    store.update(created, status=status("a", State.FAILED)).addErrback(refused.append)
    assert refused[0].check(Conflict)
    assert store.writes == 3
    store.delete(updated)
    assert store.writes == 4


@pytest.mark.etcd
@pytest_twisted.inlineCallbacks
def test_a_fenced_write_is_refused_naming_the_holder_and_a_stale_one_is_a_conflict(
        etcd_server):
    """A write guarded by the leader key (its value and revision): refused as Fenced
    with the key's holder once the key moved, changed hands or is gone; while the
    fence holds, a lost compare-and-swap is the usual Conflict."""
    from txaioetcd import CompModified, CompValue

    from faastwist.store.base import Fenced

    store = etcd_store(etcd_server)
    yield store.connect()
    leader_key = (unique_prefix() + "/leader").encode()
    try:
        record = yield store.create(spec("fenced"), status("fenced"))
        held = etcd_server.put(leader_key, b"node-a")
        fence = [CompModified(leader_key, "==", held), CompValue(leader_key, "==", b"node-a")]
        stale = record
        record = yield store.update(record, status=status("fenced", State.ACTIVE), fence=fence)
        with pytest.raises(Conflict):
            yield store.update(stale, status=status("fenced", State.FAILED), fence=fence)
        # a fence of one comparison reads the key too
        with pytest.raises(Conflict):
            yield store.update(stale, status=status("fenced", State.FAILED), fence=fence[:1])

        def refused(holder: str):
            return (f"not written: this node no longer holds the leader key "
                    f"(its holder: {holder})")

        etcd_server.put(leader_key, b"node-a")  # the same value, written again: moved
        with pytest.raises(Fenced) as caught:
            yield store.update(record, status=status("fenced", State.FAILED), fence=fence)
        assert str(caught.value) == refused("node-a")
        moved = etcd_server.put(leader_key, b"node-b")
        with pytest.raises(Fenced) as caught:  # the revision alone would pass: the value
            yield store.update(record, status=status("fenced", State.FAILED),
                               fence=[CompModified(leader_key, "==", moved), fence[1]])
        assert str(caught.value) == refused("node-b")
        etcd_server.put(leader_key, b"\xffnode")  # not UTF-8: still named, not an error
        with pytest.raises(Fenced) as caught:
            yield store.update(record, status=status("fenced", State.FAILED), fence=fence)
        assert str(caught.value) == refused("\ufffdnode")
        # a fenced create (the Function watch's): refused as Fenced, not AlreadyExists
        with pytest.raises(Fenced) as caught:
            yield store.create(spec("fenced-new"), status("fenced-new"), fence=fence)
        assert str(caught.value) == refused("\ufffdnode")
        with pytest.raises(NotFound):
            yield store.get("fenced-new")
        now_held = etcd_server.put(leader_key, b"node-a")
        holding = [CompModified(leader_key, "==", now_held),
                   CompValue(leader_key, "==", b"node-a")]
        created = yield store.create(spec("fenced-new"), status("fenced-new"), fence=holding)
        assert created.name == "fenced-new"
        with pytest.raises(AlreadyExists):   # the fence holds: the name is what failed
            yield store.create(spec("fenced-new"), status("fenced-new"), fence=holding)
        etcd_server.delete(leader_key)
        with pytest.raises(Fenced) as caught:
            yield store.delete(record, fence=fence)
        assert str(caught.value) == refused("none")
        assert (yield store.get("fenced")).status.state is State.ACTIVE
    finally:
        yield store.close()


@pytest.mark.etcd
@pytest_twisted.inlineCallbacks
def test_a_write_whose_answer_was_lost_is_settled_by_reading_back(etcd_server):
    """OutcomeUnknown (the transaction may or may not have been applied): when the
    record is as expected the write is sent once more; when someone else wrote
    meanwhile it is a Conflict."""
    from twisted.internet.defer import fail

    from faastwist.store.base import OutcomeUnknown

    store = etcd_store(etcd_server)
    yield store.connect()
    real = store.submit
    lost: list[str] = []

    def submit(op, txn, idempotent=False):
        if op in ("update", "delete") and lost:
            lost.pop()
            return fail(OutcomeUnknown("the answer was lost"))
        return real(op, txn, idempotent)

    store.submit = submit
    try:
        record = yield store.create(spec("lost"), status("lost"))
        lost.append("once")
        record = yield store.update(record, status=status("lost", State.ACTIVE))
        assert (yield store.get("lost")).status.state is State.ACTIVE
        other = yield store.get("lost")
        yield store.update(other, spec=spec("lost", image="registry.local/fn:2"))  # another writer
        lost.append("once")
        with pytest.raises(Conflict):
            yield store.update(record, status=status("lost", State.FAILED))
        current = yield store.get("lost")
        lost.append("once")
        yield store.delete(current)
        with pytest.raises(NotFound):
            yield store.get("lost")
    finally:
        yield store.close()
