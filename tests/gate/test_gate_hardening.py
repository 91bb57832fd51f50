"""The gate refuses what could desynchronise it, over raw sockets, on both transports.

Each case writes bytes a well-meaning client would never send (or a function answers
what a correct server never would) and reads everything the gate sends back until it
closes the connection.
"""

from __future__ import annotations

import os
import re
import socket
import time
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.gate.test_gate_integration import make_gate, upstream  # noqa: F401

pytestmark = pytest.mark.slow
STATUS = re.compile(rb"HTTP/1\.1 (\d{3}) ")


def exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data``, read until the gate closes (or ``timeout``): all it sent."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        received = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                received += b"<RESET>"
                break
            if not chunk:
                received += b"<EOF>"
                break
            received += chunk
        return received


async def send(gate: Any, data: bytes, timeout: float = 5.0) -> bytes:
    return await deferToThread(exchange, gate.port, data, timeout)


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


def slow_client(port: int, first: bytes, wait: float) -> tuple[bytes, float]:
    """Send ``first``, then nothing; returns what came back and when the gate closed."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=wait + 5) as sock:
        if first:
            sock.sendall(first)
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except (socket.timeout, ConnectionResetError):
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
    slow = deferToThread(slow_client, gate.port, first, 5.0)
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
                         request("POST", extra="Content-Length: 10\r\n") + b"abc", 5.0)
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
