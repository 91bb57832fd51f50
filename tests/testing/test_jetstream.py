"""The in-memory JetStream's own rules (faastwist/testing/jetstream.py) beyond the
contract it shares with the real server (tests/queue/test_jetstream_contract.py): the
Clock-driven bridge and its loop, and what happens to sends while the fake server is
away or a test refuses them."""

from __future__ import annotations

import json
from typing import Any

import pytest
from nats.errors import ConnectionClosedError
from twisted.internet.defer import Deferred

from faastwist.queue.bridge import BridgeStopped, BridgeTimeout
from faastwist.queue.jetstream import Names
from faastwist.queue.publisher import Publisher
from faastwist.testing.jetstream import FakeBridge, FakeNats, ThreadlessClock, run_for, \
    settle


def fired(d: Deferred[Any]) -> list[Any]:
    got: list[Any] = []
    d.addBoth(got.append)
    return got


def test_the_clock_runs_what_another_thread_hands_it_on_its_next_tick() -> None:
    clock = ThreadlessClock()
    ran: list[int] = []
    clock.callFromThread(ran.append, 1)
    assert ran == []
    settle(clock)
    assert ran == [1]
    clock.callLater(0.5, ran.append, 2)
    run_for(clock, 0.4)
    assert ran == [1]
    run_for(clock, 0.2)
    assert ran == [1, 2] and clock.seconds() == pytest.approx(0.6)


def test_the_bridge_answers_on_a_later_tick_within_its_timeout() -> None:
    clock = ThreadlessClock()
    bridge = FakeBridge(clock, default_timeout=1.0)
    assert bridge.loop is None

    async def now() -> str:
        return "done"

    assert "BridgeStopped" in repr(fired(bridge.call(now))[0])
    bridge.startService()
    assert bridge.loop is not None
    got = fired(bridge.call(now))
    assert got == []             # not in the caller's turn
    settle(clock)
    assert got == ["done"] and bridge.calls == ["now"]

    async def hang() -> None:
        await Deferred()

    late = fired(bridge.call(hang))
    run_for(clock, 0.9)
    assert late == []
    run_for(clock, 0.2)
    assert late[0].check(BridgeTimeout)
    bridge.stopService()
    assert bridge.loop is None and fired(bridge.call(now))[0].check(BridgeStopped)


class Node:
    """A publisher over a fake client, as the QueueService makes them."""

    def __init__(self) -> None:
        self.clock = ThreadlessClock()
        self.server = FakeNats(self.clock)
        self.bridge = FakeBridge(self.clock)
        self.bridge.startService()
        self.js = self.server.client(["nats://fake"], Names("ctl"), 60.0)
        self.publisher = Publisher(self.bridge, self.clock, 1.0)
        self.wait(self.bridge.call(self.js.connect, 1.0))
        self.wait(self.bridge.call(self.publisher.start, self.js))

    def wait(self, d: Deferred[Any]) -> Any:
        got = fired(d)
        run_for(self.clock, 2.0)
        assert got, "did not finish on the clock"
        if hasattr(got[0], "raiseException"):
            got[0].raiseException()
        return got[0]

    def publish(self, call_id: str) -> Deferred[int]:
        return self.publisher.publish(self.js.names.call_subject("fn", call_id), b"x",
                                      {"Nats-Msg-Id": f"fn.{call_id}"})


def test_sends_while_the_server_is_away_wait_in_the_client_and_go_out_on_its_return() -> None:
    node = Node()
    node.server.stop()
    pending = fired(node.publish("c1"))
    run_for(node.clock, 1.5)
    assert pending[0].check(BridgeTimeout)   # no ack within queue.timeout: a 503
    assert node.server.subjects(node.js.names.calls) == []
    node.server.start()
    settle(node.clock)
    assert node.server.subjects(node.js.names.calls) == ["faas.ctl.call.fn.c1"]
    assert node.wait(node.publish("c1")) == 1   # the retry is the same message


def test_a_refused_send_fails_its_publish_at_once_and_the_others_go_on() -> None:
    node = Node()
    node.server.refusing["publish"] = lambda subject: subject.endswith(".c2")
    first, second, third = (fired(node.publish(c)) for c in ("c1", "c2", "c3"))
    settle(node.clock)
    assert first == [1] and third == [2]
    assert second[0].check(ConnectionClosedError)


def test_answers_go_to_the_inbox_of_the_client_that_subscribed() -> None:
    node = Node()
    other = node.server.client(["nats://fake"], Names("ctl"), 60.0)
    got: list[Any] = []

    async def on_ack(msg: Any) -> None:
        got.append(msg)

    node.wait(node.bridge.call(other.connect, 1.0))
    prefix = node.wait(node.bridge.call(other.ack_inbox, on_ack))
    node.wait(node.bridge.call(node.js.send, node.js.names.call_subject("fn", "c1"), b"x",
                               {}, prefix + "7"))
    assert [(m.subject, json.loads(m.data)) for m in got] == [
        (prefix + "7", {"stream": node.js.names.calls, "seq": 1})]
    node.wait(node.bridge.call(other.close))
    node.wait(node.bridge.call(node.js.send, node.js.names.call_subject("fn", "c2"), b"x",
                               {}, prefix + "8"))
    assert len(got) == 1    # a closed client's subscription is gone
