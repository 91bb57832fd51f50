"""The gate refuses what could desynchronise it, over raw sockets, on both transports.

Each case writes bytes a well-meaning client would never send (or a function answers
what a correct server never would) and reads everything the gate sends back until it
closes the connection.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread


pytestmark = pytest.mark.slow
STATUS = re.compile(rb"HTTP/1\.1 (\d{3}) ")


@pytest.fixture(params=["lean", "web", "lean-tls"])
def make_gate(request: Any, upstream: Any, tmp_path: Any) -> Any:
    """Every case on both transports, and on the lean one over TLS (httpServer.https):
    TLS must keep every rule of the cleartext path."""
    from twisted.internet import reactor

    from faastwist.gate.routes import RouteTable
    from faastwist.gate.service import GateService
    from faastwist.metrics import Metrics
    from faastwist.model.fsm import FunctionStatus
    from faastwist.store.memory import MemoryStore
    from faastwist.util.ports import free_port
    from tests.gate.test_gate_integration import FUNCTIONS, GateUnderTest, Routing
    from tests.support.gate import gate_config
    from tests.support.tls import self_signed

    made: list[Any] = []
    tls = request.param == "lean-tls"

    def make(**config: Any) -> Any:
        store = MemoryStore()
        for spec, state in FUNCTIONS:
            store.create(spec, FunctionStatus(spec.name, state))
        routes = RouteTable(store, reactor)
        routes.startService()
        if tls:
            cert, key = self_signed(tmp_path / f"tls{len(made)}")
            config.update(https=True, cert_file=cert, key_file=key)
        service = GateService(gate_config(**config), routes,
                              Routing(upstream.url, free_port()), reactor, Metrics(),
                              access_log=False, transport=request.param.split("-")[0])
        service.startService()
        made.append(service)
        gate = GateUnderTest(service, store, routes)
        gate.tls = tls  # type: ignore[attr-defined]
        return gate

    yield make
    for service in made:
        if service.running:
            pytest_twisted.blockon(service.stopService())


def connect(port: int, tls: bool, timeout: float) -> socket.socket:
    """A TCP connection to the gate; TLS (HTTP/1.1 by ALPN) when the gate is HTTPS."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    if not tls:
        return sock
    import ssl

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["http/1.1"])
    return context.wrap_socket(sock)


def exchange(port: int, data: bytes, timeout: float = 5.0, tls: bool = False) -> bytes:
    """Send ``data``, read until the gate closes (or ``timeout``): all it sent."""
    import ssl

    with connect(port, tls, timeout) as sock:
        sock.sendall(data)
        received = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                break
            except ssl.SSLEOFError:       # closed without close_notify: still a close
                received += b"<EOF>"
                break
            except (ConnectionResetError, ssl.SSLError):
                received += b"<RESET>"
                break
            if not chunk:
                received += b"<EOF>"
                break
            received += chunk
        return received


async def send(gate: Any, data: bytes, timeout: float = 5.0) -> bytes:
    return await deferToThread(exchange, gate.port, data, timeout, getattr(gate, "tls", False))


def statuses(raw: bytes) -> list[int]:
    return [int(code) for code in STATUS.findall(raw)]


def request(method: str = "GET", path: str = "/", extra: str = "",
            func: str = "demo10", host: str = "gate") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\n"
    if host:
        head += f"Host: {host}\r\n"
    if func:
        head += f"X-FaaS-Func-Name: {func}\r\n"
    return (head + extra + "\r\n").encode()


@pytest_twisted.ensureDeferred
async def test_invalid_chunk_size_is_400_then_close(make_gate: Any) -> None:
    gate = make_gate()
    raw = await send(gate, request("POST", extra="Transfer-Encoding: chunked\r\n")
                     + b"zz\r\nhello\r\n0\r\n\r\n")
    assert statuses(raw) == [400], raw
    assert raw.endswith(b"<EOF>") or raw.endswith(b"<RESET>")


@pytest_twisted.ensureDeferred
async def test_chunk_extensions_are_fine(make_gate: Any) -> None:
    gate = make_gate()
    raw = await send(gate, request("POST", extra="Transfer-Encoding: chunked\r\n"
                                   "Connection: close\r\n")
                     + b"5;name=value\r\nhello\r\n0\r\n\r\n")
    assert statuses(raw) == [200], raw
    assert b'"body_length": 5' in raw


@pytest.mark.parametrize("coding", ["gzip", "chunked, gzip", "identity"])
@pytest_twisted.ensureDeferred
async def test_a_final_transfer_coding_other_than_chunked_is_400(make_gate: Any,
                                                                coding: str) -> None:
    gate = make_gate()
    raw = await send(gate, request("POST", extra=f"Transfer-Encoding: {coding}\r\n")
                     + b"5\r\nhello\r\n0\r\n\r\n")
    assert statuses(raw) == [400], raw


@pytest_twisted.ensureDeferred
async def test_a_valid_request_before_a_malformed_one_is_answered_first(make_gate: Any) -> None:
    gate = make_gate()
    raw = await send(gate, request(path="/first") + b"GET / HTTP/1.1\r\nBad Header\r\n\r\n")
    assert statuses(raw) == [200, 400], raw
    assert b'"/first"' in raw
    raw = await send(gate, request(path="/first")
                     + request("POST", extra="Transfer-Encoding: chunked\r\n")
                     + b"xyz\r\n")
    assert statuses(raw) == [200, 400], raw


@pytest.mark.parametrize("extra, func, host, why", [
    ("X-FaaS-Func-Name: demo10\r\n", "demo10", "gate", "X-FaaS-Func-Name"),
    ("Host: other\r\n", "demo10", "gate", "Host"),
    ("", "demo10", "", "Host"),
])
@pytest_twisted.ensureDeferred
async def test_doubled_routing_or_host_headers_and_a_missing_host_are_400(
        make_gate: Any, extra: str, func: str, host: str, why: str) -> None:
    gate = make_gate()
    raw = await send(gate, request(extra=extra, func=func, host=host))
    assert statuses(raw) == [400], raw
    assert why.encode() in raw
    assert b"demo10" not in raw.split(b"\r\n\r\n", 1)[1] or why == "X-FaaS-Func-Name"


@pytest.mark.parametrize("method", ["CONNECT", "TRACE"])
@pytest_twisted.ensureDeferred
async def test_connect_and_trace_are_405_and_never_forwarded(make_gate: Any, upstream: Any,
                                                           method: str) -> None:
    gate = make_gate()
    target = "demo10.example.com:443" if method == "CONNECT" else "/"
    raw = await send(gate, request(method, target, extra="Connection: close\r\n"))
    assert statuses(raw) == [405], raw
    assert b"allow: " in raw.lower()


@pytest.mark.parametrize("path", ["/headbody", "/nocontent"])
@pytest_twisted.ensureDeferred
async def test_a_body_after_head_or_204_never_becomes_a_response(make_gate: Any,
                                                                 path: str) -> None:
    gate = make_gate()
    method = "HEAD" if path == "/headbody" else "GET"
    raw = await send(gate, request(method, path) + request(path="/after")
                     + request(path="/last", extra="Connection: close\r\n"))
    assert statuses(raw) == [200 if method == "HEAD" else 204, 200, 200], raw
    assert b"smuggled" not in raw and b"hello" not in raw
    assert b'"/after"' in raw and b'"/last"' in raw
    # and on fresh connections: the pooled upstream connection was not reused dirty
    for _ in range(3):
        raw = await send(gate, request(path="/again", extra="Connection: close\r\n"))
        assert statuses(raw) == [200] and b"smuggled" not in raw, raw


def slow_client(port: int, first: bytes, wait: float, tls: bool = False
                ) -> tuple[bytes, float]:
    """Send ``first``, then nothing; returns what came back and when the gate closed."""
    started = time.monotonic()
    with connect(port, tls, wait + 5) as sock:
        if first:
            sock.sendall(first)
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except OSError:   # a timeout, a reset, a TLS error
                break
            if not chunk:
                break
            received += chunk
    return received, time.monotonic() - started


@pytest.mark.parametrize("first", [b"", b"GET / HTTP/1.1\r\nHost: gate\r\n"],
                         ids=["nothing", "half-a-head"])
@pytest_twisted.ensureDeferred
async def test_a_slow_head_is_cut_at_header_timeout_while_others_are_served(
        make_gate: Any, first: bytes) -> None:
    gate = make_gate(header_timeout=0.6)
    slow = deferToThread(slow_client, gate.port, first, 5.0, gate.tls)
    for _ in range(3):   # others are served meanwhile
        raw = await send(gate, request(extra="Connection: close\r\n"))
        assert statuses(raw) == [200], raw
    raw, took = await slow
    assert statuses(raw) == [408], raw
    assert b"headerTimeout" in raw
    assert 0.5 < took < 3.0, took


@pytest_twisted.ensureDeferred
async def test_a_stalled_body_is_cut_at_body_idle_timeout_while_others_are_served(
        make_gate: Any) -> None:
    gate = make_gate(body_idle_timeout=0.6)
    slow = deferToThread(slow_client, gate.port,
                         request("POST", extra="Content-Length: 10\r\n") + b"abc", 5.0,
                         gate.tls)
    for _ in range(3):   # others are served meanwhile
        raw = await send(gate, request(extra="Connection: close\r\n"))
        assert statuses(raw) == [200], raw
    raw, took = await slow
    assert statuses(raw) == [408], raw
    assert b"bodyIdleTimeout" in raw
    assert 0.5 < took < 3.0, took


FLOOD = r"""
import socket, sys, time, urllib.request
gate, admin = int(sys.argv[1]), int(sys.argv[2])
time.sleep(1.0)          # the test lowers its descriptor limit meanwhile
held = []
for _ in range(120):
    try:
        held.append(socket.create_connection(("127.0.0.1", gate), timeout=2))
    except OSError:
        pass
time.sleep(1.0)
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/healthz", timeout=5) as r:
        print("admin", r.status, r.read().decode())
except Exception as exc:
    print("admin failed", exc)
shed = 0
for s in held:
    s.settimeout(0.2)
    try:
        if s.recv(10) == b"":
            shed += 1
    except OSError:
        pass
print("shed", shed)
"""


@pytest_twisted.ensureDeferred
async def test_running_out_of_descriptors_never_takes_the_admin_port_down(
        make_gate: Any, monkeypatch: Any) -> None:
    import resource
    import sys as sys_

    from twisted.internet import reactor
    from twisted.internet.utils import getProcessOutputAndValue
    from twisted.web.resource import Resource
    from twisted.web.server import Site
    from twisted.web.static import Data

    from faastwist.util.fdreserve import ReservedListener, guard_listener

    gate = make_gate()
    service = gate.service
    bursts: list[int] = []
    monkeypatch.setattr(service, "_shedding", bursts.append)
    root = Resource()
    root.putChild(b"healthz", Data(b"ok", "text/plain"))
    admin = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
    guard_listener(admin, lambda sock: ReservedListener(sock, service.fd_reserve))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    flood = getProcessOutputAndValue(sys_.executable, ["-c", FLOOD, str(gate.port),
                                                      str(admin.getHost().port)])
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 25, hard))
    try:
        out, err, code = await flood
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        await admin.stopListening()
    text = out.decode()
    assert code == 0, err
    assert "admin 200 ok" in text, text
    shed = int(text.split("shed ")[1])
    assert shed > 0, text
    assert len(bursts) == 1, bursts      # logged once for the burst, not per connection
    # the gate recovers: descriptors freed, it serves again
    service.fd_reserve.refill()
    raw = await send(gate, request(extra="Connection: close\r\n"))
    assert statuses(raw) == [200], raw


@pytest.mark.parametrize("path", ["/clte", "/twocl"])
@pytest_twisted.ensureDeferred
async def test_upstream_framing_doubt_closes_that_upstream_connection(make_gate: Any,
                                                                     path: str) -> None:
    gate = make_gate()
    raw = await send(gate, request(path=path, extra="Connection: close\r\n"))
    assert statuses(raw) == [502], raw
    assert b"smuggled" not in raw
    for _ in range(3):   # nothing the bad upstream connection held is read again
        raw = await send(gate, request(path="/after", extra="Connection: close\r\n"))
        assert statuses(raw) == [200] and b"smuggled" not in raw, raw


# -- slow clients over TLS: HTTP/1.1 (lean or twisted.web) and HTTP/2 (twisted.web) --------------------

HEAD, BODY = 1.0, 1.5   # long enough for the other clients' requests on a loaded machine


@pytest.fixture(params=["lean", "web"])
def tls_gate(request: Any, upstream: Any, tmp_path: Any) -> Any:
    """An HTTPS gate (HTTP/2 through ALPN on twisted.web; HTTP/1.1 on the lean
    transport or twisted.web) with short head and body timeouts."""
    from twisted.internet import reactor

    from faastwist.gate.routes import RouteTable
    from faastwist.gate.service import GateService
    from faastwist.metrics import Metrics
    from faastwist.model.fsm import FunctionStatus, State
    from faastwist.model.spec import FunctionSpec
    from faastwist.store.memory import MemoryStore
    from faastwist.util.ports import free_port
    from tests.gate.test_gate_integration import Routing
    from tests.support.gate import gate_config
    from tests.support.tls import self_signed

    cert, key = self_signed(tmp_path)
    store = MemoryStore()
    store.create(FunctionSpec(name="demo10", image="x"), FunctionStatus("demo10", State.ACTIVE))
    routes = RouteTable(store, reactor)
    routes.startService()
    service = GateService(gate_config(https=True, cert_file=cert, key_file=key,
                                      header_timeout=HEAD, body_idle_timeout=BODY),
                          routes, Routing(upstream.url, free_port()), reactor, Metrics(),
                          access_log=False, transport=request.param)
    service.startService()
    assert service.kind == request.param
    yield service.address()[1]
    pytest_twisted.blockon(service.stopService())


def tls_socket(port: int, alpn: str = "http/1.1", timeout: float = 8.0) -> Any:
    import ssl

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols([alpn])
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock = context.wrap_socket(raw)
    assert sock.selected_alpn_protocol() == alpn
    return sock


def read_until_closed(sock: Any) -> tuple[bytes, float]:
    started = time.monotonic()
    received = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (socket.timeout, OSError):
            break
        if not chunk:
            break
        received += chunk
    return received, time.monotonic() - started


def tls_slow_client(port: int, first: bytes | None) -> tuple[bytes, float]:
    """``None``: a TCP connection that never starts TLS; else TLS, ``first``, silence."""
    started = time.monotonic()
    if first is None:
        with socket.create_connection(("127.0.0.1", port), timeout=8) as sock:
            received, _ = read_until_closed(sock)
    else:
        with tls_socket(port) as sock:
            if first:
                sock.sendall(first)
            received, _ = read_until_closed(sock)
    return received, time.monotonic() - started


async def served_over_tls(port: int) -> None:
    """Three requests on fresh connections, over HTTP/1.1 and HTTP/2: each 200."""
    from tests.gate.test_gate_integration import curl

    for version in ("--http1.1", "--http2", "--http1.1"):
        out, err, code = await curl("-k", version, "-o", "/dev/null", "-w", "%{http_code}",
                                    "-H", "X-FaaS-Func-Name: demo10",
                                    f"https://127.0.0.1:{port}/meanwhile")
        assert (out, code) == (b"200", 0), (version, out, err)


@pytest.mark.parametrize("first", [None, b"", b"GET / HTTP/1.1\r\nHost: gate\r\n"],
                         ids=["no-tls-handshake", "nothing", "half-a-head"])
@pytest_twisted.ensureDeferred
async def test_tls_a_slow_head_is_cut_at_header_timeout_while_others_are_served(
        tls_gate: int, first: bytes | None) -> None:
    slow = deferToThread(tls_slow_client, tls_gate, first)
    await served_over_tls(tls_gate)
    raw, took = await slow
    if first is None:
        assert raw == b""          # no TLS session: dropped, nothing can be answered
    else:
        assert statuses(raw) == [408], raw
        assert b"headerTimeout" in raw
    assert HEAD - 0.1 < took < HEAD + 3.0, took


@pytest_twisted.ensureDeferred
async def test_tls_a_stalled_body_is_cut_at_body_idle_timeout_while_others_are_served(
        tls_gate: int) -> None:
    slow = deferToThread(tls_slow_client, tls_gate,
                         request("POST", extra="Content-Length: 10\r\n") + b"abc")
    await served_over_tls(tls_gate)
    raw, took = await slow
    assert statuses(raw) == [408], raw
    assert b"bodyIdleTimeout" in raw
    assert BODY - 0.1 < took < BODY + 3.0, took


def h2_headers(path: str, method: str = "GET", length: int | None = None) -> list[Any]:
    headers = [(":method", method), (":path", path), (":scheme", "https"),
               (":authority", "gate"), ("x-faas-func-name", "demo10")]
    if length is not None:
        headers.append(("content-length", str(length)))
    return headers


def h2_stalled_stream(port: int) -> dict[str, Any]:
    """One HTTP/2 connection: stream 1 stalls its body; stream 3 is asked meanwhile;
    after stream 1 is cut, stream 5 is asked on the same connection."""
    import h2.config
    import h2.connection
    import h2.events

    seen: dict[str, Any] = {"status": {}, "reset": {}, "ended": [], "body": {}}
    with tls_socket(port, "h2") as sock:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding="utf-8"))
        conn.initiate_connection()
        conn.send_headers(1, h2_headers("/stalled", "POST", 10))
        conn.send_data(1, b"abc")
        conn.send_headers(3, h2_headers("/meanwhile"), end_stream=True)
        sock.sendall(conn.data_to_send())
        started = time.monotonic()
        asked_after = False
        while 5 not in seen["status"] or 5 not in seen["ended"]:
            data = sock.recv(65536)
            if not data:
                seen["closed"] = True
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    seen["status"][event.stream_id] = int(dict(event.headers)[":status"])
                    if event.stream_id == 1:
                        seen["cut_after"] = time.monotonic() - started
                elif isinstance(event, h2.events.DataReceived):
                    seen["body"][event.stream_id] = seen["body"].get(event.stream_id,
                                                                     b"") + event.data
                    conn.acknowledge_received_data(event.flow_controlled_length,
                                                   event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    seen["ended"].append(event.stream_id)
                    if event.stream_id == 3:
                        seen["meanwhile_at"] = time.monotonic() - started
                elif isinstance(event, h2.events.StreamReset):
                    seen["reset"][event.stream_id] = int(event.error_code)
            if 1 in seen["reset"] and not asked_after:
                asked_after = True
                conn.send_headers(5, h2_headers("/after"), end_stream=True)
            sock.sendall(conn.data_to_send())
    return seen


@pytest_twisted.ensureDeferred
async def test_h2_a_stalled_stream_is_reset_and_its_connection_serves_the_others(
        tls_gate: int) -> None:
    seen = await deferToThread(h2_stalled_stream, tls_gate)
    assert "closed" not in seen, seen
    assert seen["status"] == {1: 408, 3: 200, 5: 200}, seen
    assert seen["meanwhile_at"] < seen["cut_after"], seen   # served while 1 waited
    assert BODY - 0.1 < seen["cut_after"] < BODY + 3.0, seen
    assert seen["reset"] == {1: 0}, seen                    # NO_ERROR: stop sending
    assert b"bodyIdleTimeout" in seen["body"].get(1, b""), seen


def h2_stalled_header_block(port: int) -> tuple[bytes, float]:
    """HEADERS without END_HEADERS and no CONTINUATION: the connection stalls."""
    import h2.config
    import h2.connection
    from hyperframe.frame import HeadersFrame

    started = time.monotonic()              # the head is timed from the connect
    with tls_socket(port, "h2") as sock:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        block = conn.encoder.encode(h2_headers("/never"))
        sock.sendall(conn.data_to_send() + HeadersFrame(1, block[:4]).serialize())
        received, _ = read_until_closed(sock)
    return received, time.monotonic() - started


@pytest_twisted.ensureDeferred
async def test_h2_a_stalled_header_block_closes_its_connection_while_others_are_served(
        tls_gate: int) -> None:
    slow = deferToThread(h2_stalled_header_block, tls_gate)
    await served_over_tls(tls_gate)
    raw, took = await slow
    assert b"headerTimeout" in raw          # the GOAWAY's debug data
    assert HEAD - 0.1 < took < HEAD + 3.0, took


@pytest.mark.parametrize("version", [b"HTTP/2.0", b"HTTP/3.0", b"HTTP/0.9", b"HTTP/1.2",
                                     b"HTTP/2.1"])
@pytest_twisted.ensureDeferred
async def test_other_http_versions_are_505_then_close(make_gate: Any, version: bytes) -> None:
    """Issue 21: ``GET / HTTP/2.0`` in cleartext was served as HTTP/1."""
    gate = make_gate()
    raw = await send(gate, b"GET / " + version + b"\r\nHost: gate\r\n"
                     b"X-FaaS-Func-Name: demo10\r\n\r\n")
    assert statuses(raw) == [505], raw
    assert raw.endswith(b"<EOF>") or raw.endswith(b"<RESET>"), raw
    assert b"connection: close" in raw.lower()
    body = json.loads(raw.partition(b"\r\n\r\n")[2].rpartition(b"<")[0])
    assert body["code"] == 505 and "is not supported: send HTTP/1.1" in body["message"]


@pytest_twisted.ensureDeferred
async def test_a_pipelined_other_version_is_505_after_the_answers_before_it(
        make_gate: Any) -> None:
    gate = make_gate()
    raw = await send(gate, request() + b"GET / HTTP/2.0\r\nHost: gate\r\n"
                     b"X-FaaS-Func-Name: demo10\r\n\r\n" + request())
    assert statuses(raw) == [200, 505], raw
    assert raw.endswith(b"<EOF>") or raw.endswith(b"<RESET>"), raw
