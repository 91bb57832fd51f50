"""The lean HTTP/1.1 transport on a Clock: its slow-client timers (head, body, keep-alive)
and back-pressure, over a StringTransport, against the in-memory gate of
tests/support/gate.py. The raw-socket cases (both transports, real processes) are
tests/gate/test_gate_hardening.py's."""

from __future__ import annotations

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from faastwist.gate.lean import LeanFactory, LeanProtocol
from faastwist.gate.limits import ConnectionLimit

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
