"""HTTP/1.1 wire code shared by the gate's transports and its upstream client.

The lean transport, the twisted.web transport and the upstream client all import this
module and never each other: the hop-by-hop list, Connection-token parsing, response
header filtering, the ``{code, message}`` error body and the direct-send helper live
here once.
"""

from __future__ import annotations

import json
import socket
from http import HTTPStatus
from typing import Any, Iterable, Sequence

CALL_ID = b"x-call-id"

#: How long a connection whose request was answered early may keep sending its body
#: before it is closed (the answer is not lost to a reset).
LINGER = 5.0

#: Hop-by-hop headers (RFC 9110 7.6.1 and the usual non-standard ones): never forwarded.
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"proxy-authenticate", b"proxy-authorization",
})
#: Response headers the gate never passes through (it frames the response itself).
_RESPONSE_SKIP = HOP_BY_HOP | {b"content-length", CALL_ID}


def reason(code: int) -> bytes:
    try:
        return HTTPStatus(code).phrase.encode()
    except ValueError:
        return b"Unknown"


def error_body(code: int, message: str) -> bytes:
    return json.dumps({"code": code, "message": message}).encode()


def unsupported_version_message(version: str | None) -> str:
    """The 505's message: what the gate speaks on a cleartext connection."""
    what = f"HTTP/{version}" if version else "this HTTP version"
    return (f"{what} is not supported: send HTTP/1.1 or HTTP/1.0 (HTTP/2 is served over "
            f"TLS only, when httpServer.https is on)")


_TOKENS: dict[bytes, frozenset[bytes]] = {}
_NOT_NAMES = frozenset({b"keep-alive", b"close", b"upgrade"})


def connection_tokens(value: bytes | None) -> frozenset[bytes]:
    """The lower-case tokens of a Connection header (cached: the same few values recur)."""
    if not value:
        return frozenset()
    tokens = _TOKENS.get(value)
    if tokens is None:
        tokens = frozenset(t.strip().lower() for t in value.split(b",") if t.strip())
        if len(_TOKENS) < 256:
            _TOKENS[value] = tokens
    return tokens


def filter_response(headers: Sequence[tuple[bytes, bytes]]
                    ) -> tuple[list[tuple[bytes, bytes]], int | None, bool]:
    """Upstream response headers the client may get, and the upstream's framing.

    Hop-by-hop headers (and those the upstream named in Connection), the framing (the
    transport sets its own) and X-Call-Id (the gate's replaces it) are dropped; returns
    (kept headers, Content-Length or None, chunked).
    """
    kept = []
    length: int | None = None
    chunked = False
    named: frozenset[bytes] | None = None
    for header in headers:
        lower = header[0].lower()
        if lower in _RESPONSE_SKIP:
            if lower == b"content-length":
                length = int(header[1]) if header[1].isdigit() else None
            elif lower == b"transfer-encoding":
                chunked = True
            elif lower == b"connection":
                named = connection_tokens(header[1]) - _NOT_NAMES
        else:
            kept.append(header)
    if named:
        kept = [h for h in kept if h[0].lower() not in named]
    return kept, (None if chunked else length), chunked


def head_lines(headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    return b"".join([n + b": " + v + b"\r\n" for n, v in headers])


def write_now(transport: Any, data: bytes) -> None:
    """``transport.write``, but sent at once when nothing is queued before it.

    Twisted's ``write`` always queues and sends on the next reactor pass (one more
    epoll registration and wake-up per write); measured, sending directly when the
    buffer is empty is worth about 40% on a small proxied request. Only for
    ``tcp.Connection`` transports (it reads their buffer attributes).
    """
    if (transport.dataBuffer or transport._tempDataBuffer or transport.disconnecting
            or not transport.connected):
        transport.write(data)
        return
    try:
        sent = transport.socket.send(data)
    except BlockingIOError:
        sent = 0
    except OSError:
        transport.write(data)  # let Twisted meet the error on its own write
        return
    if sent < len(data):
        transport.write(data[sent:])


#: Linux's TCP_QUICKACK (None elsewhere: there the delayed ACK stays as the kernel has it)
TCP_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)


def tcp_socket(transport: object) -> socket.socket | None:
    """The TCP socket under ``transport``, through wrappers (TLS, the connection limit)
    that keep the real transport as their ``transport``; None when there is none."""
    for _ in range(4):
        sock = getattr(transport, "socket", None)
        if isinstance(sock, socket.socket):
            return sock
        transport = getattr(transport, "transport", None)
        if transport is None:
            return None
    return None


def no_delay(sock: socket.socket | None) -> None:
    """TCP_NODELAY: a small write (a response's last bytes, a request's head) is sent at
    once instead of waiting for the peer's ACK of the previous one."""
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def quick_ack(sock: socket.socket | None) -> bool:
    """ACK what was read now, not after the delayed-ACK timer (40 ms on Linux).

    Called after a read that left a message incomplete: a peer that writes a head and
    then a body in two sends with Nagle's algorithm on (Python's ``http.server``
    unbuffered, for one) holds the body until the head is ACKed, and a delayed ACK
    turns that into a 40 ms stall per request. Setting TCP_QUICKACK sends the pending
    ACK at once (and the kernel clears the flag again by itself, so it is set per read).
    """
    if sock is None or TCP_QUICKACK is None:
        return False
    try:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_QUICKACK, 1)
    except OSError:
        return False
    return True
