"""The gate refuses what could desynchronise it, over raw sockets, on both transports.

Each case writes bytes a well-meaning client would never send (or a function answers
what a correct server never would) and reads everything the gate sends back until it
closes the connection.
"""

from __future__ import annotations

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
