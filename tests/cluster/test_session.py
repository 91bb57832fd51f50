"""The node session's reports on a real etcd: written in batches, in step with what the
node observes (a start-up reports every function: one write per report does not scale)."""

from __future__ import annotations

import json
from typing import Any, Callable

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater

from faastwist.cluster import session as session_module
from faastwist.cluster.reports import Report
from faastwist.cluster.session import NodeSession
from faastwist.metrics import Metrics
from faastwist.model.fsm import Event
from faastwist.store.etcd import EtcdStore
from tests.support.etcd import unique_prefix

pytestmark = pytest.mark.etcd


@inlineCallbacks
def wait_for(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "condition"):
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        yield deferLater(reactor, 0.02, lambda: None)


class Recording:
    """The real store, with every batch it is asked to write recorded (size, and how
    many were in flight when it was sent)."""

    def __init__(self, store: EtcdStore) -> None:
        self.store = store
        self.batches: list[tuple[int, int]] = []
        self.in_flight = 0
        self.put_many_real = store.put_many
        store.put_many = self.put_many  # type: ignore[method-assign]

    def put_many(self, items: Any, lease_id: int | None = None) -> Any:
        self.in_flight += 1
        self.batches.append((len(items), self.in_flight))

        def done(result: Any) -> Any:
            self.in_flight -= 1
            return result
        return self.put_many_real(items, lease_id).addBoth(done)


def observed(node: str, event: Event | None, message: str = "") -> Report:
    return Report(node, "d1", False, event, message)


@inlineCallbacks
def started_session(server: Any, node: str = "n0"):
    store = EtcdStore(reactor, [server.client_url], unique_prefix("session"), "faascontroller",
                      5.0, Metrics())
    yield store.connect()
    session = NodeSession(reactor, store, node, 10, {"admin": "127.0.0.1:1"})
    session.startService()
    yield wait_for(lambda: session.registered, what="registered")
    return store, session


@inlineCallbacks
def stored_reports(store: EtcdStore, node: str):
    ((kvs,), _) = yield store.read_prefixes(store.key("report", ""))
    out = {}
    for kv in kvs:
        name, _, owner = kv.key[len(store.key("report", "")):].decode().partition("/")
        assert owner == node
        out[name] = json.loads(kv.value)["event"]
    return out


@pytest_twisted.inlineCallbacks
def test_many_reports_are_written_in_few_bounded_transactions(etcd_server,
                                                              monkeypatch) -> None:
    store, session = yield started_session(etcd_server)
    recording = Recording(store)
    try:
        names = [f"f{i:04d}" for i in range(300)]
        for name in names:  # one reactor turn, as a node's start-up does
            session.report(name, observed("n0", Event.READY))
        yield wait_for(lambda: not session._dirty, what="every report written")
        stored = yield stored_reports(store, "n0")
        assert stored == {name: "ready" for name in names}
        sizes = [size for size, _ in recording.batches]
        assert sum(sizes) == 300
        assert max(sizes) <= session_module.REPORT_BATCH
        assert len(sizes) == -(-300 // session_module.REPORT_BATCH)  # full batches
        assert max(flight for _, flight in recording.batches) <= session_module.REPORT_WRITES
        # the leader's fresh read: every report by function and node, and the live nodes
        by_function, live = yield session.read_reports()
        assert live == ["n0"] and sorted(by_function) == names
        assert by_function["f0007"]["n0"] == observed("n0", Event.READY)
        again, _ = yield session.read_reports()
        assert again["f0007"]["n0"] is by_function["f0007"]["n0"]   # decoded once
        monkeypatch.setattr(session_module, "REPORT_PAGE", 64)      # read in 5 pages
        paged, live = yield session.read_reports()
        assert paged == by_function and live == ["n0"]
        # nothing changed: reporting the same observation again writes nothing
        for name in names:
            session.report(name, observed("n0", Event.READY))
        yield deferLater(reactor, 0.2, lambda: None)
        assert len(recording.batches) == len(sizes)
    finally:
        yield session.stopService()
        yield store.close()


@pytest_twisted.inlineCallbacks
def test_changes_and_withdrawals_during_writes_end_in_step(etcd_server) -> None:
    store, session = yield started_session(etcd_server, "n1")
    try:
        for i in range(150):
            session.report(f"g{i:03d}", observed("n1", None))
        # while those writes are in flight: change some, withdraw others
        yield deferLater(reactor, 0, lambda: None)
        assert session._sending, "the first batches should be in flight"
        for i in range(0, 150, 3):
            session.report(f"g{i:03d}", observed("n1", Event.ERROR, "exit 3"))
        for i in range(1, 150, 3):
            session.report(f"g{i:03d}", None)
        yield wait_for(lambda: not session._dirty and not session._sending,
                       what="every report settled")
        stored = yield stored_reports(store, "n1")
        expected = {f"g{i:03d}": ("error" if i % 3 == 0 else None)
                    for i in range(150) if i % 3 != 1}
        assert stored == expected
        # the session's reports are bound to its lease: revoking it removes them all
        yield session.stopService()
        stored = yield stored_reports(store, "n1")
        assert stored == {}
    finally:
        if session.running:
            yield session.stopService()
        yield store.close()
