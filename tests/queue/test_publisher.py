"""Publishing accepted calls in batches (queue/publisher.py) against a real nats-server:
every call acknowledged with its own stream sequence, calls of one reactor turn sent
together, a stalled server answered with QueueUnavailable after queue.timeout (and its
late acks ignored), a subject no stream takes refused."""

from __future__ import annotations

import os
import signal

import pytest
import pytest_twisted
from nats.js.errors import NoStreamResponseError
from twisted.internet import reactor
from twisted.internet.defer import DeferredList

from faastwist.config import QueueConfig
from faastwist.gate.asynccall import QueueUnavailable
from faastwist.metrics import Metrics
from faastwist.queue.service import QueueService
from tests.queue.test_queue_nats import NoRoutes, call, wait_for

pytestmark = pytest.mark.nats


@pytest_twisted.ensureDeferred
async def test_calls_of_one_turn_go_out_together_each_acked_with_its_sequence(
        nats_server) -> None:
    queue = QueueService(QueueConfig(nats_urls=(nats_server.url,), timeout=5.0,
                                     max_queued=10_000), "ctl", reactor, Metrics(),
                         NoRoutes(), set())
    await queue.start()
    try:
        before = queue.publisher.batches
        results = await DeferredList([queue.submit(call(f"b{i}")) for i in range(200)],
                                     consumeErrors=True)
        assert all(ok for ok, _ in results), [r for ok, r in results if not ok][:3]
        sequences = [seq for _, seq in results]
        assert sorted(sequences) == list(range(1, 201))     # one message each, none lost
        sent = queue.publisher.batches - before
        assert 1 <= sent < 100, sent     # batched: far fewer runs than calls
        waiting = await queue.bridge.call(queue.js.list_messages, queue.names.calls,
                                          queue.names.call_subject("fn"), 300)
        assert sorted(m.subject.rsplit(".", 1)[1] for m in waiting) == sorted(
            f"b{i}" for i in range(200))
        assert queue.metrics.async_accepted.labels("fn")._value.get() == 200
        # a subject no stream takes: refused, not left waiting for an ack
        with pytest.raises(NoStreamResponseError):
            await queue.publisher.publish("faas.elsewhere.x", b"", {})
    finally:
        await queue.stop()


def stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(") ", 1)[1][:1] == "T"


@pytest_twisted.ensureDeferred
async def test_a_stalled_server_is_503_after_the_timeout_and_late_acks_are_ignored(
        nats_server) -> None:
    queue = QueueService(QueueConfig(nats_urls=(nats_server.url,), timeout=1.0), "ctl",
                         reactor, Metrics(), NoRoutes(), set())
    await queue.start()
    pid = nats_server.process.pid
    try:
        await queue.submit(call("before"))
        os.kill(pid, signal.SIGSTOP)
        await wait_for(lambda: stopped(pid))   # the stop has taken effect (state T)
        try:
            started = reactor.seconds()
            with pytest.raises(QueueUnavailable, match="did not acknowledge within 1s"):
                await queue.submit(call("stalled"))
            assert 0.9 < reactor.seconds() - started < 5.0
        finally:
            os.kill(pid, signal.SIGCONT)
        # the stalled call's ack arrives late (or JetStream stored it): it is ignored,
        # and the publisher goes on
        await wait_for(lambda: queue.js.connected)
        assert await queue.submit(call("after")) > 0
        assert queue.publisher._waiting == {}
    finally:
        await queue.stop()
