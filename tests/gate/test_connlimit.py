"""maxConnections (faastwist/gate/connlimit.py): the count, the 503 past it, and the
refusing protocol, on a Clock and in-memory transports."""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from faastwist.gate.connlimit import (
    ConnectionLimit,
    LimitingFactory,
    RejectProtocol,
    _CountedConnection,
    over_limit_response,
)

PEER = IPv4Address("TCP", "127.0.0.1", 40000)


def test_connections_are_admitted_up_to_the_maximum_and_counted_when_refused() -> None:
    limit = ConnectionLimit(2)
    assert limit.admit("a") and limit.admit("b")
    assert not limit.admit("c") and not limit.admit("d")
    assert limit.refused == 2 and limit.open == {"a", "b"}
    limit.leave("a")
    assert limit.admit("c") and limit.open == {"b", "c"}
    limit.leave("never-admitted")   # harmless
    assert limit.open == {"b", "c"} and limit.refused == 2


def test_wait_gone_fires_once_every_named_connection_left() -> None:
    limit = ConnectionLimit(5)
    for name in "abc":
        limit.admit(name)
    gone = limit.wait_gone(["a", "b", "not-open"])
    fired: list[None] = []
    gone.addCallback(fired.append)
    limit.leave("c")
    limit.leave("a")
    assert fired == []
    limit.leave("b")
    assert fired == [None]
    assert limit._gone_waiters == []


def test_wait_gone_of_nothing_open_fires_at_once_and_waiters_are_independent() -> None:
    limit = ConnectionLimit(5)
    now: list[None] = []
    limit.wait_gone(["x"]).addCallback(now.append)
    assert now == [None]
    limit.admit("a")
    limit.admit("b")
    first: list[None] = []
    second: list[None] = []
    limit.wait_gone(["a"]).addCallback(first.append)
    limit.wait_gone(["a", "b"]).addCallback(second.append)
    limit.leave("a")
    assert first == [None] and second == []
    limit.leave("b")
    assert second == [None]


def parse(response: bytes) -> tuple[bytes, dict[bytes, bytes], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    headers = dict(line.split(b": ", 1) for line in lines)
    return status, {k.lower(): v for k, v in headers.items()}, body


def test_the_over_limit_answer_is_a_complete_503_that_closes() -> None:
    status, headers, body = parse(over_limit_response(64))
    assert status == b"HTTP/1.1 503 Service Unavailable"
    assert headers[b"connection"] == b"close"
    assert headers[b"retry-after"] == b"1"
    assert int(headers[b"content-length"]) == len(body)
    assert json.loads(body) == {
        "code": 503, "message": "too many connections (maxConnections is 64); retry"}


def reject(grace: float = 2.0) -> tuple[RejectProtocol, StringTransport, Clock]:
    clock = Clock()
    protocol = RejectProtocol(b"HTTP/1.1 503 ...\r\n\r\n", clock, grace)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport, clock


def test_a_refused_connection_reads_the_head_then_answers_once_and_closes() -> None:
    protocol, transport, clock = reject()
    assert transport.value() == b"" and not transport.disconnecting
    protocol.dataReceived(b"GET / HTTP/1.1\r\n")
    assert transport.value() == b"HTTP/1.1 503 ...\r\n\r\n"
    assert transport.disconnecting
    protocol.dataReceived(b"Host: x\r\n\r\n")
    assert transport.value() == b"HTTP/1.1 503 ...\r\n\r\n"   # once


def test_a_refused_connection_that_sends_nothing_is_closed_after_the_grace() -> None:
    protocol, transport, clock = reject(grace=2.0)
    clock.advance(1.9)
    assert not transport.disconnecting
    clock.advance(0.1)
    assert transport.disconnecting and transport.value() == b""


def test_the_grace_timer_is_cancelled_when_the_connection_goes() -> None:
    protocol, transport, clock = reject()
    protocol.connectionLost(None)
    assert clock.getDelayedCalls() == [] and protocol.timer is None
    protocol.connectionLost(None)   # twice is harmless


class Channel(Protocol):
    """Stands in for a twisted.web HTTP channel: ``requests`` (HTTP/1.1) or ``streams``
    (h2), possibly behind ``_channel`` as twisted.web's 1.1-or-2 wrapper holds it."""

    def __init__(self, **attributes: Any) -> None:
        for name, value in attributes.items():
            setattr(self, name, value)


def counted_factory(maximum: int) -> tuple[LimitingFactory, ConnectionLimit, Clock]:
    clock = Clock()
    limit = ConnectionLimit(maximum)
    return LimitingFactory(Factory.forProtocol(Channel), limit, clock), limit, clock


def test_the_factory_counts_what_it_builds_and_refuses_past_the_limit() -> None:
    factory, limit, clock = counted_factory(1)
    first = factory.buildProtocol(PEER)
    assert isinstance(first, _CountedConnection) and limit.open == {first}
    refused = factory.buildProtocol(PEER)
    assert isinstance(refused, RejectProtocol) and refused.clock is clock
    assert refused.response == over_limit_response(1)
    assert limit.refused == 1
    factory.registerProtocol(first)
    factory.unregisterProtocol(first)
    assert limit.open == set()
    assert isinstance(factory.buildProtocol(PEER), _CountedConnection)


@pytest.mark.parametrize(("channel", "busy"), [
    (Channel(requests=[]), False),
    (Channel(requests=["a request"]), True),
    (Channel(streams={}), False),
    (Channel(streams={1: "a stream"}), True),
    (Channel(_channel=Channel(requests=["a request"])), True),
    (Channel(_channel=Channel(streams={})), False),
    (Channel(), False),
])
def test_a_connection_is_busy_while_a_request_or_stream_is_open(channel: Channel,
                                                                busy: bool) -> None:
    factory, _, _ = counted_factory(4)
    wrapper = _CountedConnection(factory, channel)
    assert wrapper.busy() is busy


class CountingTransport(StringTransport):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)


def test_more_data_after_the_answer_writes_nothing_more() -> None:
    protocol = RejectProtocol(b"503", Clock())
    transport = CountingTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(b"GET")
    protocol.dataReceived(b" / HTTP/1.1")
    assert transport.writes == 1 and transport.value() == b"503"


def test_the_default_grace_is_two_seconds() -> None:
    clock = Clock()
    protocol = RejectProtocol(b"503", clock)
    transport = StringTransport()
    protocol.makeConnection(transport)
    clock.advance(1.99)
    assert not transport.disconnecting
    clock.advance(0.01)
    assert transport.disconnecting


def test_a_connection_lost_before_it_was_made_is_harmless() -> None:
    protocol = RejectProtocol(b"503", Clock())
    protocol.connectionLost(None)
    assert protocol.timer is None


def test_the_factory_does_not_log_each_listening_start() -> None:
    """noisy off: a gate with thousands of connections must not log factory starts."""
    from twisted.logger import globalLogPublisher

    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        wrapped = Factory.forProtocol(Channel)
        wrapped.noisy = False   # only the LimitingFactory's own start is looked at
        factory = LimitingFactory(wrapped, ConnectionLimit(1), Clock())
        factory.doStart()
        factory.doStop()
    finally:
        globalLogPublisher.removeObserver(events.append)  # type: ignore[arg-type]
    assert not [e for e in events if "Starting factory" in str(e.get("log_format", ""))]
