"""The etcd store's failover against real members: one refused (a closed port), one
silent (a local socket that accepts and never answers), one etcd; and a 3-member
cluster that has lost its quorum."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import TimeoutError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater

from faastwist.metrics import Metrics
from faastwist.model.fsm import FunctionStatus, State
from faastwist.model.spec import FunctionSpec
from faastwist.store.base import NotFound, StoreUnavailable
from faastwist.store.etcd import EtcdStore
from faastwist.store.failover import HEDGE_AFTER, Members
from faastwist.util.ports import free_port
from tests.support.cluster import EtcdCluster
from tests.support.etcd import unique_prefix

pytestmark = pytest.mark.etcd


def spec(name: str) -> FunctionSpec:
    return FunctionSpec(name=name, image="registry.local/fn:1", port=8080)


def status(name: str) -> FunctionStatus:
    return FunctionStatus(name=name, state=State.INITIAL, message="", updated=1.0)


class _Silent(Protocol):
    """Accepts, reads, never answers (a hung or SIGSTOPped etcd)."""

    def connectionMade(self) -> None:
        self.factory.connections += 1  # type: ignore[attr-defined]


def misses(metrics: Metrics, endpoint: str, reason: str) -> float:
    return metrics.registry.get_sample_value(
        "faastwist_etcd_member_misses_total", {"endpoint": endpoint, "reason": reason}) or 0.0


@pytest.fixture
def silent() -> Iterator[tuple[str, Factory]]:
    factory = Factory.forProtocol(_Silent)
    factory.connections = 0  # type: ignore[attr-defined]
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    yield f"http://127.0.0.1:{port.getHost().port}", factory
    port.stopListening()


def fresh_start(store: EtcdStore, first: int) -> None:
    """Forget what earlier calls learnt (preference, suspects): start at ``first``."""
    store.members = Members(tuple(store.endpoints), reactor, first)


@pytest_twisted.inlineCallbacks
def test_every_member_is_tried_and_the_callers_deadline_holds(etcd_server, silent):
    silent_url, silent_factory = silent
    refused = f"http://127.0.0.1:{free_port()}"
    endpoints = [silent_url, refused, etcd_server.client_url]
    metrics = Metrics()
    store = EtcdStore(reactor, endpoints, unique_prefix(), "faascontroller", 5.0, metrics)
    try:
        # connect starts at the silent member: hedged past it, refused, then etcd
        began = reactor.seconds()
        yield store.connect()
        took = reactor.seconds() - began
        assert HEDGE_AFTER <= took < HEDGE_AFTER + 1.0, took
        assert store.active_endpoint == etcd_server.client_url
        assert misses(metrics, silent_url, "timeout") == 1
        assert misses(metrics, refused, "refused") == 1
        assert store.members.suspects() == [silent_url]

        # a read from the silent member on: the same, within the 2 s a stale read has
        fresh_start(store, 0)
        began = reactor.seconds()
        with pytest.raises(NotFound):
            yield store.get("absent").addTimeout(2.0, reactor)
        assert reactor.seconds() - began < HEDGE_AFTER + 1.0
        assert misses(metrics, silent_url, "timeout") == 2
        assert misses(metrics, refused, "refused") == 2

        # a write waits for one member at a time (its timeout here 5 s): the caller's
        # deadline of 2 s ends it at 2 s, and no other member is asked meanwhile (the
        # silent one is asked once more, after 0.75 s, whether it still has a leader)
        fresh_start(store, 0)
        connections = silent_factory.connections
        began = reactor.seconds()
        with pytest.raises(TimeoutError):
            yield store.create(spec("a"), status("a")).addTimeout(2.0, reactor)
        took = reactor.seconds() - began
        assert 2.0 <= took < 2.5, took
        assert silent_factory.connections == connections + 2
        assert misses(metrics, refused, "refused") == 2  # not asked
        # silent for 2 s: a suspect, so the next write goes to the others first
        assert store.members.order() == [refused, etcd_server.client_url, silent_url]
        began = reactor.seconds()
        record = yield store.create(spec("a"), status("a")).addTimeout(2.0, reactor)
        assert reactor.seconds() - began < 1.0
        assert record.spec == spec("a")
        assert misses(metrics, refused, "refused") == 3
        assert silent_factory.connections == connections + 2
    finally:
        yield store.close()


@pytest_twisted.inlineCallbacks
def test_a_write_that_timed_out_is_read_back_and_sent_elsewhere(etcd_server, silent):
    """A write the silent member swallowed: its outcome is read on another member (it
    was not applied), then it is sent again, to a member that answers."""
    silent_url, silent_factory = silent
    refused = f"http://127.0.0.1:{free_port()}"
    store = EtcdStore(reactor, [silent_url, refused, etcd_server.client_url], unique_prefix(),
                      "faascontroller", 1.0, Metrics())
    try:
        yield store.connect()
        fresh_start(store, 0)
        began = reactor.seconds()
        record = yield store.create(spec("w"), status("w")).addTimeout(3.0, reactor)
        took = reactor.seconds() - began
        assert 1.0 <= took < 2.0, took
        assert (yield store.get("w")) == record
    finally:
        yield store.close()


# -- a cluster without quorum ------------------------------------------------------------

@pytest.fixture
def etcd_cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(tmp_path / "etcd", 3)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def _has_no_leader(url: str) -> bool:
    request = urllib.request.Request(url + "/v3/kv/range", b'{"key": "YQ=="}', {
        "Content-Type": "application/json", "Grpc-Metadata-hasleader": "true"})
    try:
        with urllib.request.urlopen(request, timeout=10):
            return False
    except urllib.error.HTTPError as exc:
        return "no leader" in json.loads(exc.read()).get("message", "")


@pytest_twisted.inlineCallbacks
def test_without_quorum_reads_and_writes_fail_at_once_as_unavailable(etcd_cluster):
    """etcd holds a call to a member without a leader for its own request timeout
    (6 s on 3.4); the client asks for a leader, so the member answers at once, and a
    write refused that way is surely not applied: StoreUnavailable, not "unknown"."""
    survivor = etcd_cluster.members[0]
    store = EtcdStore(reactor, etcd_cluster.endpoints, unique_prefix(), "faascontroller",
                      5.0, Metrics())
    try:
        yield store.connect()
        record = yield store.create(spec("q"), status("q"))
        for member in etcd_cluster.members[1:]:
            member.kill()
        # the survivor notices (election timeout 0.5 s here), checked without the store
        deadline = reactor.seconds() + 15
        while not _has_no_leader(survivor.client_url):
            assert reactor.seconds() < deadline, "the survivor kept a leader"
            yield deferLater(reactor, 0.05, lambda: None)
        for read in (lambda: store.get("q"), store.check):
            began = reactor.seconds()
            with pytest.raises(StoreUnavailable, match="no leader") as caught:
                yield read()
            assert reactor.seconds() - began < 0.5
            assert "Connection was refused" in str(caught.value)
        began = reactor.seconds()
        with pytest.raises(StoreUnavailable) as caught:
            yield store.update(record, status=FunctionStatus(
                name="q", state=State.ACTIVE, message="", updated=2.0))
        assert reactor.seconds() - began < 0.5
        assert type(caught.value) is StoreUnavailable  # not OutcomeUnknown
        assert "etcdserver: no leader" in str(caught.value)
    finally:
        yield store.close()
