"""The workers' pull loops against a real nats-server: calls run the moment they are
delivered (no waiting for a full batch), the calls in flight stay at the limit, and a
dead node's calls come back after one ack wait, while a live node's in-progress
acknowledgements keep its calls its own."""

from __future__ import annotations

import time
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from faastwist.config import QueueConfig
from faastwist.metrics import Metrics
from faastwist.queue.service import QueueService
from faastwist.queue.worker import Loop, Worker

pytestmark = pytest.mark.nats


class NoRoutes:
    def names(self) -> list[str]:
        return []

    def lookup(self, name: str) -> None:
        return None

    def subscribe(self, listener: Any) -> None:
        pass


async def wait_for(predicate, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = reactor.seconds() + timeout
    while not predicate():
        assert reactor.seconds() < deadline, f"{what}: not met in time"
        await deferLater(reactor, 0.01, lambda: None)


class Node:
    """One node's queue connection and a worker whose loop for "fn" runs ``held``
    handlers: each delivered message waits for its Deferred to be fired."""

    def __init__(self, url: str, limit: int, ack_wait: float) -> None:
        config = QueueConfig(nats_urls=(url,), timeout=2.0, ack_wait=ack_wait)
        self.queue = QueueService(config, "ctl", reactor, Metrics(), NoRoutes(), set())
        self.limit = limit
        self.held: list[tuple[Any, Deferred, float]] = []
        self.progressed = 0

    async def start(self) -> None:
        await self.queue.start()
        worker = self.worker = Worker(self.queue, context=None)
        worker.running = True
        original = worker._progress

        def counted(msg: Any) -> None:
            self.progressed += 1
            original(msg)
        worker._progress = counted  # type: ignore[method-assign]
        loop = self.loop = worker.loops["fn"] = Loop("fn", self.limit, self.handle)
        names = self.queue.names
        loop.bind_args = (names.calls, names.consumer("fn"), names.call_subject("fn"),
                          self.limit, self.queue.config.ack_wait)
        loop.wanted = True
        worker._bind(loop)

    def handle(self, msg: Any) -> Deferred:
        d: Deferred = Deferred()
        self.held.append((msg, d, time.monotonic()))
        return d

    async def finish(self, index: int) -> None:
        msg, d, _ = self.held[index]
        await self.queue.bridge.call(self.queue.js.ack, msg)
        d.callback(None)

    async def stop(self) -> None:
        self.worker.running = False
        await self.queue.stop()


async def publish(node: Node, count: int) -> None:
    from tests.queue.test_queue_nats import call

    for i in range(count):
        await node.queue.submit(call(f"c{i}"))


async def consumer(node: Node) -> Any:
    return await node.queue.bridge.call(node.queue.js.js.consumer_info,
                                        node.queue.names.calls, "call-fn")


@pytest_twisted.ensureDeferred
async def test_calls_run_as_delivered_and_in_flight_stays_at_the_limit(nats_server) -> None:
    node = Node(nats_server.url, 8, 5.0)
    await node.start()
    try:
        await publish(node, 20)
        await wait_for(lambda: len(node.held) == 8, what="8 calls running")
        info = await consumer(node)
        # the server holds the rest: max_ack_pending is the limit, and nothing waits
        # in the client for a full batch
        assert (info.num_ack_pending, info.num_pending) == (8, 12)
        assert node.loop.inflight == 8
        # a call finishes: the next one runs at once (a request for one free slot)
        finished = time.monotonic()
        await node.finish(0)
        await wait_for(lambda: len(node.held) == 9, what="a 9th call")
        assert node.held[8][2] - finished < 0.5
        # three finish together: three more run, still 8 in flight
        for index in (1, 2, 3):
            await node.finish(index)
        await wait_for(lambda: len(node.held) == 12, what="12 calls")
        assert node.loop.inflight == 8
        # with the backlog gone, a freed slot waits in a pull request: a new call runs
        # the moment it is published
        for index in range(4, 12):
            await node.finish(index)
        await wait_for(lambda: len(node.held) == 20, what="every call")
        for index in range(12, 20):
            await node.finish(index)
        await wait_for(lambda: node.loop.inflight == 0, what="all done")
        node.loop.wanted = True
        node.worker._pull(node.loop)
        from tests.queue.test_queue_nats import call
        published = time.monotonic()
        await node.queue.submit(call("late"))
        await wait_for(lambda: len(node.held) == 21, what="the late call")
        assert node.held[20][2] - published < 0.5
        assert node.held[20][0].headers["Faas-Call-Id"] == "late"
    finally:
        await node.stop()


@pytest_twisted.ensureDeferred
async def test_a_dead_nodes_calls_come_back_after_one_ack_wait(nats_server) -> None:
    ack_wait = 1.0
    a = Node(nats_server.url, 4, ack_wait)
    b = Node(nats_server.url, 4, ack_wait)
    await a.start()
    try:
        await publish(a, 4)
        await wait_for(lambda: len(a.held) == 4, what="node a runs 4 calls")
        await b.start()
        # a's calls run for three ack waits: its in-progress acknowledgements keep them
        await wait_for(lambda: a.progressed >= 4 * 8, timeout=10, what="a's progress")
        info = await consumer(a)
        assert (info.num_ack_pending, info.num_redelivered) == (4, 0)
        assert b.held == []
        # node a dies (its connection closes, its calls unacknowledged)
        a.worker.running = False
        killed = time.monotonic()
        await a.queue.bridge.call(a.queue.js.close)
        await wait_for(lambda: len(b.held) == 4, timeout=10, what="b runs a's calls")
        assert max(t for _, _, t in b.held) - killed < ack_wait + PULL_SLACK
        assert sorted(m.headers["Faas-Call-Id"] for m, _, _ in b.held) == [
            "c0", "c1", "c2", "c3"]
        assert all(int(m.metadata.num_delivered) == 2 for m, _, _ in b.held)
    finally:
        await a.queue.stop()
        await b.stop()


#: a redelivery after the ack wait reaches a pull request already waiting on the server
PULL_SLACK = 1.0
