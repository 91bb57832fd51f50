"""One contract for the leader election (store/leader.py ``Leadership``) on a single
node: the etcd ``LeaderElection`` on a real etcd and the ``AlwaysLeader`` of a node alone
on a ``MemoryStore``, as the reconciler, the Function watch and /apis/v2/faas/info use
them (``is_leader``, ``fence`` on a write of the store it pairs with, the listeners,
``read_holder``, the ``faastwist_leader`` gauge).
"""

from __future__ import annotations

from typing import Any, Callable

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from faastwist.metrics import Metrics
from faastwist.model.fsm import FunctionStatus, State
from faastwist.model.spec import FunctionSpec
from faastwist.store.base import Fenced
from faastwist.store.etcd import EtcdStore
from faastwist.store.leader import AlwaysLeader, LeaderElection, Leadership, NotLeader
from faastwist.store.memory import MemoryStore
from tests.support.etcd import unique_prefix


async def wait_for(predicate: Callable[[], Any], timeout: float = 10.0,
                   what: str = "condition") -> None:
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        await deferLater(reactor, 0.02, lambda: None)


def spec(name: str) -> FunctionSpec:
    return FunctionSpec(name=name, image="registry.local/fn:1", port=8080)


def status(name: str, state: State = State.INITIAL) -> FunctionStatus:
    return FunctionStatus(name=name, state=state, updated=1.0)


class Node:
    def __init__(self, leader: Leadership, store: Any, metrics: Metrics) -> None:
        self.leader = leader
        self.store = store
        self.metrics = metrics
        self.changes: list[bool] = []
        leader.add_listener(self.changes.append)

    def gauge(self) -> float | None:
        return self.metrics.registry.get_sample_value("faastwist_leader")

    async def leads(self) -> None:
        await wait_for(self.leader.is_leader, what="this node leading")


@pytest.fixture(params=["memory", pytest.param("etcd", marks=pytest.mark.etcd)])
def make_node(request: pytest.FixtureRequest):
    """``make_node() -> Node``: an election (not started) and the store it fences."""
    stores: list[EtcdStore] = []
    leaders: list[Any] = []

    async def make() -> Node:
        metrics = Metrics()
        store: Any
        leader: Any
        if request.param == "memory":
            store = MemoryStore()
            leader = AlwaysLeader("node-a", metrics)
        else:
            server = request.getfixturevalue("etcd_server")
            store = EtcdStore(reactor, [server.client_url], unique_prefix("leader"),
                              "faascontroller", 5.0, metrics)
            await store.connect()
            stores.append(store)
            leader = LeaderElection(reactor, store, "node-a", ttl=3, metrics=metrics)
        leaders.append(leader)
        return Node(leader, store, metrics)

    yield make
    for leader in leaders:
        if leader.running:
            pytest_twisted.blockon(leader.stopService())
    for store in stores:
        pytest_twisted.blockon(store.close())


@pytest_twisted.ensureDeferred
async def test_before_its_start_a_node_does_not_lead(make_node) -> None:
    node = await make_node()
    assert not node.leader.is_leader()
    with pytest.raises(NotLeader):
        node.leader.fence()
    assert await node.leader.read_holder() is None
    assert node.changes == []


@pytest_twisted.ensureDeferred
async def test_a_single_node_leads_and_its_fenced_writes_pass(make_node) -> None:
    node = await make_node()
    node.leader.startService()
    await node.leads()
    assert node.changes == [True] and node.gauge() == 1
    assert await node.leader.read_holder() == "node-a"
    record = await node.store.create(spec("f"), status("f"), fence=node.leader.fence())
    record = await node.store.update(record, status=status("f", State.ACTIVE),
                                     fence=node.leader.fence())
    await node.store.delete(record, fence=node.leader.fence())


@pytest_twisted.ensureDeferred
async def test_after_its_stop_its_old_fence_is_refused(make_node) -> None:
    node = await make_node()
    node.leader.startService()
    await node.leads()
    record = await node.store.create(spec("f"), status("f"))
    old = node.leader.fence()
    await node.leader.stopService()
    assert not node.leader.is_leader()
    assert node.changes == [True, False] and node.gauge() == 0
    with pytest.raises(NotLeader):
        node.leader.fence()
    assert await node.leader.read_holder() is None
    with pytest.raises(Fenced) as refused:
        await node.store.update(record, status=status("f", State.ACTIVE), fence=old)
    assert str(refused.value) == ("not written: this node no longer holds the leader key "
                                  "(its holder: none)")
    assert (await node.store.get("f")).status.state is State.INITIAL


@pytest_twisted.ensureDeferred
async def test_a_restart_is_a_new_term_the_old_fence_stays_refused(make_node) -> None:
    node = await make_node()
    node.leader.startService()
    await node.leads()
    record = await node.store.create(spec("f"), status("f"))
    old = node.leader.fence()
    await node.leader.stopService()
    node.leader.startService()
    await node.leads()
    assert node.changes == [True, False, True]
    with pytest.raises(Fenced) as refused:   # the same node id: the term is what differs
        await node.store.update(record, status=status("f", State.FAILED), fence=old)
    assert str(refused.value).endswith("(its holder: node-a)")
    updated = await node.store.update(record, status=status("f", State.ACTIVE),
                                      fence=node.leader.fence())
    assert updated.status.state is State.ACTIVE
