"""The lean HTTP/1.1 transport on a Clock: its slow-client timers (head, body, keep-alive)
and back-pressure, over a StringTransport, against the in-memory gate of
tests/support/gate.py. The raw-socket cases (both transports, real processes) are
tests/gate/test_gate_hardening.py's."""

from __future__ import annotations

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from faastwist.gate.lean import LeanFactory, LeanProtocol
from faastwist.gate.connlimit import ConnectionLimit

from tests.support.gate import MemoryGate, function

# the in-memory upstream drops a connection idle for 60 s: every case stays within it
HEAD, BODY, KEEP = 10.0, 10.0, 60.0


class Client:
    """One connection to a LeanFactory over a StringTransport."""

    def __init__(self, gate: MemoryGate, factory: LeanFactory) -> None:
        self.gate = gate
        address = IPv4Address("TCP", "127.0.0.1", 40000)
        self.protocol = factory.buildProtocol(address)
        assert isinstance(self.protocol, LeanProtocol)
        self.transport = StringTransport(peerAddress=address)
        self.protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)
        self.gate.settle()

    def advance(self, seconds: float) -> None:
        """Move the clock in the sweep's steps, so every sweep in between runs."""
        step = 0.5
        for _ in range(int(seconds / step)):
            self.gate.clock.advance(step)
        self.gate.settle()

    @property
    def answered(self) -> bytes:
        return self.transport.value()


@pytest.fixture
def gate() -> MemoryGate:
    g = MemoryGate()
    # a function timeout far beyond the pauses below: only the body timer may cut
    g.add(function("demo10", timeout="1h"))
    return g


@pytest.fixture
def factory(gate: MemoryGate):
    made = LeanFactory(gate.context, ConnectionLimit(10), gate.clock, keep_alive_timeout=KEEP,
                       reject=b"", header_timeout=HEAD, body_idle_timeout=BODY)
    made.doStart()
    yield made
    made.doStop()


POST = (b"POST /echo HTTP/1.1\r\nHost: gate\r\nX-FaaS-Func-Name: demo10\r\n"
        b"Content-Length: 10\r\n\r\nabc")


def test_a_stalled_body_is_cut_at_body_idle_timeout(gate: MemoryGate,
                                                     factory: LeanFactory) -> None:
    client = Client(gate, factory)
    client.send(POST)
    client.advance(BODY - 3)
    assert b"HTTP/1.1 408" not in client.answered
    client.advance(6)
    assert b"HTTP/1.1 408" in client.answered
    assert b"bodyIdleTimeout" in client.answered
    assert client.transport.disconnecting


def test_a_pause_is_not_a_stall_and_a_resume_restarts_the_body_clock(
        gate: MemoryGate, factory: LeanFactory) -> None:
    """Back-pressure held the body for longer than bodyIdleTimeout: once reading resumes
    the client has a whole bodyIdleTimeout again, not a 408 at the next sweep."""
    client = Client(gate, factory)
    client.send(POST)
    client.protocol.pauseProducing()             # the function does not read (yet)
    client.advance(BODY * 2.5)
    assert client.answered == b"" and not client.transport.disconnecting
    client.protocol.resumeProducing()
    client.advance(BODY - 3)                     # past the old deadline, within the new
    assert client.answered == b"" and not client.transport.disconnecting
    client.send(b"defghij")                      # the rest comes: answered
    assert client.answered.startswith(b"HTTP/1.1 200"), client.answered
    assert gate.upstream.requests[-1]["body"] == "abcdefghij"


def test_a_resumed_body_that_then_stalls_is_cut_a_timeout_after_the_resume(
        gate: MemoryGate, factory: LeanFactory) -> None:
    client = Client(gate, factory)
    client.send(POST)
    client.protocol.pauseProducing()
    client.advance(BODY * 2)
    client.protocol.resumeProducing()
    client.advance(BODY - 3)
    assert b"HTTP/1.1 408" not in client.answered
    client.advance(6)
    assert b"HTTP/1.1 408" in client.answered


GET = b"GET /echo/%d HTTP/1.1\r\nHost: gate\r\nX-FaaS-Func-Name: demo10\r\n\r\n"


def test_a_head_that_does_not_arrive_is_cut_at_header_timeout(
        gate: MemoryGate, factory: LeanFactory) -> None:
    client = Client(gate, factory)
    client.send(b"GET /echo HTTP/1.1\r\nHost: ga")
    client.advance(HEAD - 3)
    assert client.answered == b""
    client.advance(6)
    assert client.answered.startswith(b"HTTP/1.1 408 ")
    assert b"the request head did not arrive within 10s (headerTimeout)" in client.answered
    assert client.transport.disconnecting


def test_an_idle_kept_alive_connection_is_closed_after_keep_alive_timeout(
        gate: MemoryGate, factory: LeanFactory) -> None:
    client = Client(gate, factory)
    client.send(GET % 1)
    assert client.answered.startswith(b"HTTP/1.1 200 ")
    client.advance(KEEP - 3)
    assert not client.transport.disconnecting
    client.send(GET % 2)                         # a request: the idle clock starts again
    assert client.answered.count(b"HTTP/1.1 200 ") == 2
    client.advance(KEEP - 3)
    assert not client.transport.disconnecting
    client.advance(6)
    assert client.transport.disconnecting
    assert client.answered.count(b"HTTP/1.1 ") == 2   # closed without a word


def test_pipelined_requests_are_answered_in_order(gate: MemoryGate,
                                                  factory: LeanFactory) -> None:
    client = Client(gate, factory)
    client.send(GET % 1 + GET % 2 + GET % 3)
    answered = client.answered
    assert answered.count(b"HTTP/1.1 200 ") == 3
    firsts = [answered.index(b'"/echo/%d"' % n) for n in (1, 2, 3)]
    assert firsts == sorted(firsts)
    assert [r["uri"] for r in gate.upstream.requests] == ["/echo/1", "/echo/2", "/echo/3"]


def test_a_broken_chunked_body_is_400_then_close(gate: MemoryGate,
                                                 factory: LeanFactory) -> None:
    client = Client(gate, factory)
    client.send(b"POST /echo HTTP/1.1\r\nHost: gate\r\nX-FaaS-Func-Name: demo10\r\n"
                b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n")
    assert client.answered.startswith(b"HTTP/1.1 400 ")
    assert b"connection: close" in client.answered.lower()
    assert client.transport.disconnecting
