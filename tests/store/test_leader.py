"""Leader election on a real etcd: one leader per controller, quick handover."""

from __future__ import annotations

from typing import Callable

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock, deferLater

from tests.support.etcd import EtcdProcess, unique_prefix
from faastwist.metrics import Metrics
from faastwist.store.etcd import EtcdStore
from faastwist.store.leader import AlwaysLeader, LeaderElection

TTL = 3  # etcd's smallest lease TTL with default timing is about 2 s


@inlineCallbacks
def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition"):
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        yield deferLater(reactor, 0.02, lambda: None)


class Cluster:
    """N nodes of one controller, each with its own store, metrics and election."""

    def __init__(self, server: EtcdProcess, names: list[str], timeout: float = 2.0,
                 clock=None) -> None:
        prefix = unique_prefix("leader")
        self.stores = [EtcdStore(reactor, [server.client_url], prefix, "faascontroller",
                                 timeout, Metrics()) for _ in names]
        self.nodes = [LeaderElection(clock or reactor, store, name, ttl=TTL)
                      for store, name in zip(self.stores, names)]
        self.changes: dict[str, list[bool]] = {name: [] for name in names}
        for node in self.nodes:
            node.add_listener(self.changes[node.node_id].append)
        self.key = self.stores[0].key("leader")

    @inlineCallbacks
    def start(self):
        for store in self.stores:
            yield store.connect()
        for node in self.nodes:
            node.startService()

    def leaders(self) -> list[LeaderElection]:
        return [node for node in self.nodes if node.is_leader()]

    def agreed(self) -> bool:
        """Every node has campaigned and seen the same holder: a second leader could
        only come from the key disappearing, not from a campaign still under way."""
        holders = {node.holder for node in self.nodes}
        return len(holders) == 1 and None not in holders

    @inlineCallbacks
    def stop(self):
        for node in self.nodes:
            if node.running:
                yield node.stopService()
        for store in self.stores:
            yield store.close()


def gauge(node: LeaderElection) -> float:
    return node.metrics.registry.get_sample_value("faastwist_leader")


@pytest.mark.etcd
@pytest_twisted.inlineCallbacks
def test_exactly_one_leader_and_a_stop_hands_over_within_ttl(etcd_server):
    cluster = Cluster(etcd_server, ["node-a", "node-b"])
    yield cluster.start()
    try:
        yield wait_for(lambda: cluster.leaders(), what="a leader")
        yield wait_for(cluster.agreed, what="the other node has campaigned too")
        (leader,) = cluster.leaders()
        (follower,) = [n for n in cluster.nodes if n is not leader]
        assert etcd_server.get(cluster.key) == leader.node_id.encode()
        assert follower.holder == leader.node_id
        assert (gauge(leader), gauge(follower)) == (1, 0)
        assert cluster.changes[leader.node_id] == [True]
        assert cluster.changes[follower.node_id] == []

        stopped_at = reactor.seconds()
        yield leader.stopService()
        assert not leader.is_leader() and gauge(leader) == 0
        yield wait_for(follower.is_leader, timeout=TTL, what="handover")
        assert reactor.seconds() - stopped_at < TTL
        assert etcd_server.get(cluster.key) == follower.node_id.encode()
        assert cluster.changes == {leader.node_id: [True, False], follower.node_id: [True]}

        yield follower.stopService()
        assert etcd_server.get(cluster.key) is None  # the revoked lease took the key along
    finally:
        yield cluster.stop()


@pytest.mark.etcd
@pytest_twisted.inlineCallbacks
def test_a_deleted_leader_key_makes_the_nodes_elect_again(etcd_server):
    cluster = Cluster(etcd_server, ["node-a", "node-b"])
    yield cluster.start()
    try:
        yield wait_for(lambda: cluster.leaders(), what="a leader")
        (first,) = cluster.leaders()
        first_changes = list(cluster.changes[first.node_id])
        assert etcd_server.delete(cluster.key) == 1
        # the old leader notices (watch), steps down, and an election follows
        yield wait_for(lambda: len(cluster.changes[first.node_id]) > len(first_changes),
                       what="the leader stepping down")
        yield wait_for(lambda: len(cluster.leaders()) == 1, what="a new leader")
        (leader,) = cluster.leaders()
        assert etcd_server.get(cluster.key) == leader.node_id.encode()
    finally:
        yield cluster.stop()


@pytest.mark.etcd
@pytest_twisted.inlineCallbacks
def test_leadership_is_lost_with_etcd_and_regained_after_it_returns(etcd_process):
    cluster = Cluster(etcd_process, ["node-a", "node-b"], timeout=0.5)
    yield cluster.start()
    try:
        yield wait_for(lambda: cluster.leaders(), what="a leader")
        (leader,) = cluster.leaders()
        etcd_process.stop()
        # before the lease could expire and another node could take over
        yield wait_for(lambda: not cluster.leaders(), timeout=TTL, what="leadership lost")
        assert gauge(leader) == 0 and cluster.changes[leader.node_id] == [True, False]
        etcd_process.start()
        # the old key lives until its (unrevokable meanwhile) lease expires, then one wins
        yield wait_for(lambda: len(cluster.leaders()) == 1, timeout=TTL + 6,
                       what="a leader after etcd returned")
        yield wait_for(cluster.agreed, what="every node has seen the new holder")
        (leader,) = cluster.leaders()
        assert {node.holder for node in cluster.nodes} == {leader.node_id}
    finally:
        yield cluster.stop()


@pytest.mark.etcd
@pytest_twisted.inlineCallbacks
def test_is_leader_turns_false_when_no_keepalive_confirms_the_lease(etcd_server):
    clock = Clock()
    clock.advance(reactor.seconds())  # the election's clock, driven by hand
    cluster = Cluster(etcd_server, ["node-a"], clock=clock)
    yield cluster.start()
    (node,) = cluster.nodes
    try:
        yield wait_for(node.is_leader, what="the single node leading")
        # time passes on the election's clock without any keep-alive answer yet:
        # the lease may have expired on etcd's side, so this node must not act as leader
        clock.advance(TTL + 0.1)
        # the expiry timer stepped it down: listeners and the gauge said so at once
        assert gauge(node) == 0 and cluster.changes["node-a"] == [True, False]
        assert not node.is_leader()
    finally:
        yield cluster.stop()


@pytest_twisted.inlineCallbacks
def test_whoever_sees_the_lease_run_out_first_steps_the_node_down(etcd_server):
    """A reactor that runs late reaches callers before the expiry timer: is_leader()
    answering False must already have told the listeners and the gauge (CI once saw
    leaders() empty while faastwist_leader still said 1)."""
    clock = Clock()
    clock.advance(reactor.seconds())
    cluster = Cluster(etcd_server, ["node-a"], clock=clock)
    yield cluster.start()
    (node,) = cluster.nodes
    try:
        yield wait_for(node.is_leader, what="the single node leading")
        clock.rightNow += TTL + 0.1   # time passed; no timer of the election has run yet
        assert not node.is_leader()
        assert gauge(node) == 0 and cluster.changes["node-a"] == [True, False]
    finally:
        yield cluster.stop()


def test_always_leader_follows_its_service_state():
    metrics = Metrics()
    leader = AlwaysLeader("node-a", metrics)
    assert not leader.is_leader()
    leader.startService()
    assert leader.is_leader()
    assert metrics.registry.get_sample_value("faastwist_leader") == 1
    leader.stopService()
    assert not leader.is_leader()
    assert metrics.registry.get_sample_value("faastwist_leader") == 0


@pytest.mark.etcd
@pytest_twisted.inlineCallbacks
def test_a_restarted_node_takes_its_own_key_back_at_once(etcd_server):
    """The old process died without revoking (kill -9): its key outlives it by the ttl,
    but the same node id coming back takes it over at once."""
    cluster = Cluster(etcd_server, ["node-a"])
    yield cluster.start()
    (old,) = cluster.nodes
    yield wait_for(old.is_leader, what="a leader")
    old._timers.cancel_all()        # a crash: no keep-alive, no revoke
    old._watch.cancel()
    old.running = False
    again = LeaderElection(reactor, cluster.stores[0], "node-a", ttl=TTL)
    started = reactor.seconds()
    again.startService()
    try:
        yield wait_for(again.is_leader, timeout=TTL, what="the key taken back")
        assert reactor.seconds() - started < 1.0
        assert again.fence_revision > old.fence_revision
    finally:
        yield again.stopService()
        yield cluster.stores[0].close()


@pytest.mark.etcd
@pytest_twisted.inlineCallbacks
def test_a_fenced_write_of_an_ex_leader_is_refused(etcd_server):
    from faastwist.model.fsm import FunctionStatus
    from faastwist.model.spec import FunctionSpec
    from faastwist.store.base import Fenced

    cluster = Cluster(etcd_server, ["node-a", "node-b"])
    yield cluster.start()
    try:
        yield wait_for(lambda: cluster.leaders(), what="a leader")
        (leader,) = cluster.leaders()
        store = cluster.stores[cluster.nodes.index(leader)]
        fn = FunctionSpec.from_dict({"name": "fenced", "image": "x/y:1"})
        record = yield store.create(fn, FunctionStatus.initial("fenced", 0.0))
        fence = leader.fence()
        record = yield store.update(record, status=FunctionStatus.initial("fenced", 1.0),
                                    fence=fence)
        # the other node takes over (the key was deleted, as when the lease ran out)
        etcd_server.delete(cluster.key)
        yield wait_for(lambda: any(n.is_leader() and n is not leader for n in cluster.nodes),
                       what="another leader")
        with pytest.raises(Fenced):
            yield store.update(record, status=FunctionStatus.initial("fenced", 2.0),
                               fence=fence)
        current = yield store.get("fenced")
        assert current.status.updated == 1.0
    finally:
        yield cluster.stop()
