"""Slow-client timeouts of the twisted.web transport, on a Clock: HTTP/1.1 through
GateChannel and HTTP/2 through GateH2Connection (driven by a real h2 client state
machine), against the in-memory upstream of tests/support/gate.py."""

from __future__ import annotations

import re
from typing import Any, Iterator

import h2.config
import h2.connection
import h2.events
import pytest
from hyperframe.frame import HeadersFrame
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher

from faastwist.gate.accesslog import AccessLog
from faastwist.gate.web import GateSite
from faastwist.gate.wire import LINGER

from tests.support.gate import MemoryGate, function

HEAD, BODY = 10.0, 30.0


@pytest.fixture
def gate() -> MemoryGate:
    g = MemoryGate()
    g.add(function("demo10"))
    g.access_lines: list[str] = []  # type: ignore[attr-defined]
    g.context.access_log = True
    g.context.access = AccessLog(g.clock, g.access_lines.append, False)  # type: ignore
    return g


@pytest.fixture
def logged() -> Iterator[list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


class Client:
    """One connection to a GateSite over a StringTransport."""

    def __init__(self, gate: MemoryGate, h2: bool = False) -> None:
        self.gate = gate
        site = GateSite(gate.resource, reactor=gate.clock, timeout=60.0,
                        header_timeout=HEAD, body_idle_timeout=BODY)
        address = IPv4Address("TCP", "127.0.0.1", 40000)
        self.protocol = site.buildProtocol(address)
        self.transport = StringTransport(peerAddress=address)
        if h2:
            self.transport.negotiatedProtocol = b"h2"  # type: ignore[attr-defined]
        self.protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)
        self.gate.settle()

    def advance(self, seconds: float) -> None:
        self.gate.clock.advance(seconds)
        self.gate.settle()

    def received(self) -> bytes:
        data = self.transport.value()
        self.transport.clear()
        return data

    @property
    def closing(self) -> bool:
        return bool(self.transport.disconnecting)


GET = b"GET /x HTTP/1.1\r\nHost: gate\r\nX-FaaS-Func-Name: demo10\r\n\r\n"
POST = (b"POST /echo HTTP/1.1\r\nHost: gate\r\nX-FaaS-Func-Name: demo10\r\n"
        b"Content-Length: 10\r\n\r\n")


def status(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


# -- HTTP/1.1 -----------------------------------------------------------------------------

def test_no_head_within_header_timeout_is_408_then_close(gate: MemoryGate,
                                                         logged: list[dict[str, Any]]) -> None:
    client = Client(gate)
    client.advance(HEAD - 0.1)
    assert client.received() == b"" and not client.closing
    client.advance(0.2)
    raw = client.received()
    assert status(raw) == 408 and b"headerTimeout" in raw and b"connection: close" in raw
    assert client.closing
    assert any("incomplete after" in e.get("log_format", "") for e in logged)


def test_a_trickled_head_is_cut_although_bytes_keep_arriving(gate: MemoryGate) -> None:
    client = Client(gate)
    for byte in GET[:-4]:              # one byte a second: the idle timeout never fires
        client.send(bytes([byte]))
        client.advance(1.0)
        if client.closing:
            break
    raw = client.received()
    assert status(raw) == 408 and client.closing
    assert gate.clock.seconds() <= HEAD + 1.0


def test_a_keep_alive_connection_idles_without_408_and_its_next_head_is_timed(
        gate: MemoryGate) -> None:
    client = Client(gate)
    client.send(GET)
    assert status(client.received()) == 200
    client.advance(HEAD * 3)           # idle between requests: keepAliveTimeout's (60 s)
    assert client.received() == b"" and not client.closing
    client.send(b"GET /y HTTP/1.1\r\nHost: ga")
    client.advance(HEAD - 0.1)
    assert not client.closing
    client.advance(0.2)
    assert status(client.received()) == 408 and client.closing


def test_a_complete_head_cancels_the_head_timer(gate: MemoryGate) -> None:
    client = Client(gate)
    client.advance(HEAD - 1)
    client.send(GET)
    assert status(client.received()) == 200
    client.advance(HEAD)
    assert client.received() == b"" and not client.closing


def test_a_stalled_body_is_408_then_close_logged_and_counted(
        gate: MemoryGate, logged: list[dict[str, Any]]) -> None:
    client = Client(gate)
    client.send(POST + b"abc")
    client.advance(BODY - 1)
    client.send(b"def")                # it moved: the watch starts again
    client.advance(BODY - 1)
    assert client.received() == b"" and not client.closing
    client.advance(1.1)
    raw = client.received()
    assert status(raw) == 408 and b"bodyIdleTimeout" in raw and client.closing
    assert gate.counter("gateway_function_invocation_total",
                        {"function_name": "demo10", "code": "408"}) == 1
    gate.context.access.flush()
    assert "POST /echo demo10 408 " in "".join(gate.access_lines)  # type: ignore
    assert any("stalled for" in e.get("log_format", "") for e in logged)
    assert gate.context.inflight == 0


def test_a_body_paused_for_back_pressure_is_not_a_stall(gate: MemoryGate) -> None:
    client = Client(gate)
    client.send(POST + b"abc")
    request = client.protocol._channel.requests[-1]
    producer = request.gate_exchange.down.body_producer
    producer.pauseProducing()
    client.advance(BODY + 10)          # (under the function's 60 s timeout)
    assert client.received() == b"" and not client.closing
    producer.resumeProducing()
    client.advance(BODY / 3)
    assert not client.closing
    client.send(b"defghij")            # the body completes: answered, no 408
    raw = client.received()
    assert status(raw) == 200 and b"abcdefghij" in raw


def test_a_complete_body_stops_the_watch(gate: MemoryGate) -> None:
    client = Client(gate)
    client.send(POST + b"abcdefghij")
    assert status(client.received()) == 200
    client.advance(BODY + 5)           # (under keepAliveTimeout, 60 s here)
    assert client.received() == b"" and not client.closing


def test_a_client_that_does_not_read_the_408_is_aborted_after_the_linger(
        gate: MemoryGate) -> None:
    client = Client(gate)
    aborted: list[bool] = []
    client.transport.abortConnection = lambda: aborted.append(True)  # type: ignore
    client.advance(HEAD + 0.1)
    assert client.closing and not aborted
    client.advance(LINGER)
    assert aborted == [True]


def test_no_tls_session_after_header_timeout_is_dropped_without_an_answer(
        gate: MemoryGate) -> None:
    client = Client(gate)
    client.transport._handshakeDone = False  # type: ignore[attr-defined]
    aborted: list[bool] = []
    client.transport.abortConnection = lambda: aborted.append(True)  # type: ignore
    client.advance(HEAD + 0.1)
    assert aborted == [True] and client.received() == b""


# -- HTTP/2 -------------------------------------------------------------------------------

class H2Client(Client):
    def __init__(self, gate: MemoryGate) -> None:
        super().__init__(gate, h2=True)
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.initiate_connection()
        self.flush()

    def flush(self) -> None:
        self.send(self.conn.data_to_send())

    def events(self) -> list[Any]:
        events = self.conn.receive_data(self.received())
        self.flush()
        return events

    def headers(self, path: str, method: str = "GET", length: int | None = None) -> list[Any]:
        headers = [(":method", method), (":path", path), (":scheme", "https"),
                   (":authority", "gate"), ("x-faas-func-name", "demo10")]
        if length is not None:
            headers.append(("content-length", str(length)))
        return headers

    def get(self, stream_id: int, path: str) -> None:
        self.conn.send_headers(stream_id, self.headers(path), end_stream=True)
        self.flush()


def responses(events: list[Any]) -> dict[int, int]:
    return {e.stream_id: int(dict(e.headers)[":status"]) for e in events
            if isinstance(e, h2.events.ResponseReceived)}


def test_h2_a_stalled_body_resets_its_stream_and_the_connection_serves_others(
        gate: MemoryGate) -> None:
    client = H2Client(gate)
    client.conn.send_headers(1, client.headers("/echo", "POST", 10), end_stream=False)
    client.conn.send_data(1, b"abc")
    client.flush()
    client.advance(BODY / 2)
    client.get(3, "/other")            # served while stream 1 waits
    events = client.events()
    assert responses(events) == {3: 200}
    client.advance(BODY / 2 + 0.1)
    events = client.events()
    assert responses(events) == {1: 408}
    ended = [e for e in events if isinstance(e, h2.events.StreamEnded)]
    reset = [e for e in events if isinstance(e, h2.events.StreamReset)]
    assert [e.stream_id for e in ended] == [1]
    assert [(e.stream_id, e.error_code) for e in reset] == [(1, 0)]   # NO_ERROR: stop sending
    body = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
    assert b"bodyIdleTimeout" in body
    assert gate.counter("gateway_function_invocation_total",
                        {"function_name": "demo10", "code": "408"}) == 1
    client.get(5, "/after")            # the connection keeps serving
    assert responses(client.events()) == {5: 200}
    assert not client.closing


def test_h2_a_paused_stream_is_not_a_stall(gate: MemoryGate) -> None:
    client = H2Client(gate)
    client.conn.send_headers(1, client.headers("/echo", "POST", 10), end_stream=False)
    client.conn.send_data(1, b"abc")
    client.flush()
    stream = client.protocol._channel.streams[1]
    producer = stream._request.gate_exchange.down.body_producer
    producer.pauseProducing()
    client.advance(BODY + 10)
    assert responses(client.events()) == {}
    producer.resumeProducing()
    client.conn.send_data(1, b"defghij", end_stream=True)
    client.flush()
    assert responses(client.events()) == {1: 200}


def test_h2_no_request_head_within_header_timeout_closes_the_connection(
        gate: MemoryGate, logged: list[dict[str, Any]]) -> None:
    client = H2Client(gate)            # preface and SETTINGS only
    client.advance(HEAD - 0.1)
    assert not client.closing
    client.advance(0.2)
    events = client.events()
    goaway = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
    assert goaway and b"headerTimeout" in goaway[0].additional_data
    assert client.closing
    assert any("HTTP/2 request head" in e.get("log_format", "") for e in logged)


def test_h2_a_stalled_header_block_closes_the_connection_an_idle_one_stays(
        gate: MemoryGate) -> None:
    client = H2Client(gate)
    client.get(1, "/first")
    assert responses(client.events()) == {1: 200}
    client.advance(HEAD * 3)           # idle, no header block pending: kept
    assert not client.closing
    block = client.conn.encoder.encode(client.headers("/second"))
    frame = HeadersFrame(3, block[:5], flags=["END_STREAM"])   # no END_HEADERS
    client.send(frame.serialize())
    client.advance(HEAD - 0.1)
    assert not client.closing
    client.advance(0.2)
    assert client.closing
    assert b"headerTimeout" in client.received()


def test_another_http_version_is_505_then_close_and_nothing_reaches_the_upstream(
        gate: MemoryGate) -> None:
    client = Client(gate)
    aborted: list[bool] = []
    client.transport.abortConnection = lambda: aborted.append(True)  # type: ignore
    client.send(b"GET /x HTTP/2.0\r\nHost: gate\r\nX-FaaS-Func-Name: demo10\r\n\r\n"
                + GET)
    raw = client.received()
    assert status(raw) == 505 and b"connection: close" in raw and client.closing
    assert b'"HTTP/2.0 is not supported: send HTTP/1.1 or HTTP/1.0' in raw
    assert len(re.findall(rb"HTTP/1\.1 \d{3} ", raw)) == 1   # the pipelined GET: not served
    assert gate.upstream.requests == []
    client.advance(HEAD + 1)
    assert client.received() == b""             # no 408 after the 505 either
    client.advance(LINGER)
    assert aborted == [True]                     # a client that does not read: gone


def test_other_version_parses_only_well_formed_versions() -> None:
    from faastwist.gate.webchannel import other_version

    assert other_version(b"GET / HTTP/2.0") == "2.0"
    assert other_version(b"PRI * HTTP/2.0") == "2.0"
    assert other_version(b"GET / HTTP/0.9") == "0.9"
    for line in (b"GET / HTTP/1.1", b"GET / HTTP/1.0", b"GET / HTTP/1.01", b"GET / HTTP/2",
                 b"GET / http/2.0", b"GET /  HTTP/2.0", b"GET / HTTP/2.0 x", b"GET"):
        assert other_version(line) is None, line
