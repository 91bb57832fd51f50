"""The gate's decisions, as plain functions over a small request-head record.

Nothing here knows twisted.web or sockets, so the twisted.web resource (HTTPS, HTTP/2)
and the lean HTTP/1.1 transport make the same decisions: which function a request is
for, which error it gets, how its head is rewritten for the upstream (header hygiene,
X-Forwarded-*, call id, request adaptor) and which response headers go back.

Header names in a ``RequestHead`` are lower-case bytes (as in HTTP/2); the upstream
request is sent with lower-case names, which HTTP/1.1 treats as equal.

The request adaptor is in adaptor.py, the wire helpers in wire.py.
"""

from __future__ import annotations

import os
from itertools import count


from faastwist.gate.adaptor import CompiledAdaptor
from faastwist.gate.wire import CALL_ID, HOP_BY_HOP, connection_tokens
from faastwist.model.spec import DNS1123_LABEL


FUNC_HEADER = b"x-faas-func-name"
GATE_ERROR = b"x-faas-gate-error"
FUNCTION_PREFIX = b"/function/"
SYSTEM_PREFIX = b"/system/"
START_TIME = b"x-start-time"
DURATION = b"x-duration-seconds"
ASYNC_HEADER = b"x-faas-async"
ASYNC_PREFIX = b"/async-function/"

#: Request headers the gate sets itself (framing, Host, forwarding, Expect, call id).
_MANAGED = HOP_BY_HOP | {b"host", b"content-length", b"expect", b"x-forwarded-for",
                         b"x-forwarded-proto", b"x-forwarded-host", CALL_ID}
#: Every header name ``classify`` acts on: one set lookup per header on the hot path.
_ACTED = frozenset(_MANAGED | {FUNC_HEADER, ASYNC_HEADER})
RETRY_AFTER_NOT_ACTIVE = 5
#: methods the gate answers itself with 405: CONNECT would open a tunnel through the
#: gate, TRACE would echo the client's credentials back to a script
REFUSED_METHODS = frozenset({b"CONNECT", b"TRACE"})
ALLOWED_METHODS = b"GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS"


class GateError(Exception):
    """An answer the gate gives itself: ``{code, message}`` with X-FaaS-Gate-Error."""

    def __init__(self, code: int, message: str, retry_after: int | None = None,
                 close: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.close = close  # the client connection cannot be reused after this answer


def error_headers(error: GateError, body: bytes, call_id: bytes | None) -> list[tuple[bytes, bytes]]:
    """Headers of a gate error response (framing is the transport's, but we know it)."""
    headers = [(b"content-type", b"application/json"), (GATE_ERROR, b"true"),
               (b"content-length", str(len(body)).encode())]
    if error.retry_after is not None:
        headers.append((b"retry-after", str(error.retry_after).encode()))
    if error.code == 405:
        headers.append((b"allow", ALLOWED_METHODS))
    elif error.code == 401:
        headers.append((b"www-authenticate", b'Bearer realm="faastwist function"'))
    if call_id:
        headers.append((CALL_ID, call_id))
    return headers


class RequestHead:
    """What the gate needs of a client request; filled by a transport + ``classify``."""

    __slots__ = ("method", "target", "http11", "headers", "client_ip", "scheme",
                 "host", "func", "call_id", "xff", "content_length", "chunked",
                 "connection", "expect_continue", "async_call")

    def __init__(self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]],
                 client_ip: str = "", scheme: bytes = b"http", http11: bool = True) -> None:
        self.method = method
        self.target = target
        self.http11 = http11
        self.headers = headers          # (lower-case name, value), as received
        self.client_ip = client_ip
        self.scheme = scheme
        self.host = b""
        self.func: bytes | None = None
        self.call_id: bytes | None = None
        self.xff: bytes | None = None
        self.content_length: int | None = None
        self.chunked = False
        self.connection: bytes | None = None
        self.expect_continue = False
        self.async_call = False  # to be queued (X-FaaS-Async: true or /async-function/)


def classify(head: RequestHead) -> None:
    """Pick out the headers the gate acts on, in one pass; GateError(400) on bad framing
    or on what two parties could read two ways (a doubled Host or function name), 405
    for CONNECT and TRACE."""
    if head.method in REFUSED_METHODS:
        raise GateError(405, f"{head.method.decode('latin-1')} is not served by the gate",
                        close=True)
    coding: bytes | None = None
    host_seen = False
    for name, value in head.headers:
        if name not in _ACTED:
            continue
        if name == FUNC_HEADER:
            if head.func is not None:
                raise GateError(400, "X-FaaS-Func-Name: sent twice", close=True)
            head.func = value
        elif name == ASYNC_HEADER:
            head.async_call = value.strip().lower() == b"true"
        elif name == b"host":
            if host_seen:
                raise GateError(400, "Host: sent twice", close=True)
            host_seen = True
            head.host = value
        elif name == CALL_ID:
            head.call_id = value
        elif name == b"x-forwarded-for":
            head.xff = value if head.xff is None else head.xff + b", " + value
        elif name == b"content-length":
            if not value.isdigit() or (head.content_length is not None
                                       and head.content_length != int(value)):
                raise GateError(400, "invalid Content-Length header", close=True)
            head.content_length = int(value)
        elif name == b"transfer-encoding":
            head.chunked = True
            coding = value if coding is None else coding + b"," + value
        elif name == b"connection":
            head.connection = value if head.connection is None else head.connection + b"," + value
        elif name == b"expect":
            head.expect_continue = value.lower() == b"100-continue"
    if head.http11 and not host_seen:
        raise GateError(400, "Host: an HTTP/1.1 request must carry it", close=True)
    if coding is not None:  # head.chunked
        codings = [c.strip().lower() for c in coding.split(b",") if c.strip()]
        if not codings or codings[-1] != b"chunked" or codings.count(b"chunked") != 1:
            # RFC 9112 6.3: the body's length cannot be known: 400, then close
            raise GateError(400, "Transfer-Encoding: the final coding must be chunked "
                                 "(applied once)", close=True)
        head.content_length = None  # RFC 9112 6.3: Transfer-Encoding overrides


def wants_close(head: RequestHead) -> bool:
    """Whether the client asked to close after this exchange (HTTP/1.0 defaults to it)."""
    tokens = connection_tokens(head.connection)
    if head.http11:
        return b"close" in tokens
    return b"keep-alive" not in tokens


def is_system(target: bytes) -> bool:
    """Whether a request (without X-FaaS-Func-Name) is for OpenFaaS's API on the gate:
    ``/system/...`` or ``/healthz``."""
    if target[:8] == SYSTEM_PREFIX:
        return True
    return target[:8] == b"/healthz" and (len(target) == 8 or target[8:9] == b"?")


def resolve(head: RequestHead, namespace: bytes = b"") -> tuple[str, bytes]:
    """The function a request is for and the target to forward, or GateError(400).

    The X-FaaS-Func-Name header wins and the target is forwarded unchanged; otherwise
    ``/function/{name}/rest`` (OpenFaaS style) forwards ``/rest`` and the query, and
    ``/async-function/{name}/rest`` does the same and marks the request to be queued;
    ``/function/{name}.{namespace}/rest`` names the gate's one namespace.
    """
    if head.target[:1] != b"/" and head.target[:4].lower() == b"http":
        # absolute-form (a client that treats the gate as a forward proxy): forward the
        # origin-form; the function is still chosen by the header or /function/ path
        _, _, rest = head.target.partition(b"//")
        slash = rest.find(b"/")
        head.target = rest[slash:] if slash != -1 else b"/"
    if head.func is not None:
        raw = head.func.strip()
        name = raw.decode("latin-1")
        if not DNS1123_LABEL.match(name) or len(name) > 63:
            raise GateError(400, f"X-FaaS-Func-Name: {name!r} is not a function name "
                                 f"(a DNS-1123 label)")
        return name, head.target
    target = head.target
    prefix = FUNCTION_PREFIX
    if not target.startswith(prefix) and target.startswith(ASYNC_PREFIX):
        prefix = ASYNC_PREFIX
        head.async_call = True
    if target.startswith(prefix):
        rest = target[len(prefix):]
        cut = len(rest)
        for stop in (b"/", b"?"):
            index = rest.find(stop)
            if index != -1 and index < cut:
                cut = index
        raw_name = rest[:cut]
        if namespace and b"." in raw_name:
            raw_name, _, asked = raw_name.partition(b".")
            if asked != namespace:
                raise GateError(404, f"namespace {asked.decode('latin-1')!r} not found; "
                                     f"this gate serves {namespace.decode('latin-1')}")
        name = raw_name.decode("latin-1")
        if name and DNS1123_LABEL.match(name) and len(name) <= 63:
            forwarded = rest[cut:]
            if not forwarded.startswith(b"/"):
                forwarded = b"/" + forwarded
            return name, forwarded
        if name:
            raise GateError(400, f"{prefix.decode()}{name}: {name!r} is not a function "
                                 f"name (a DNS-1123 label)")
        # OpenFaaS's route needs a name: an empty one (``/function/.openfaas-fn``) is
        # no route, 404, as its gateway answers
        raise GateError(404, f"{prefix.decode()}: no function named in the path")
    raise GateError(400, "no function named: send the X-FaaS-Func-Name header or call "
                         "/function/{name}/...")


# -- call ids ----------------------------------------------------------------------------

class CallIds:
    """Unique call ids without a uuid per request: a random per-process prefix and a
    counter (``7f3a9c01d2e4b6a8-1f``)."""

    def __init__(self, prefix: bytes | None = None) -> None:
        self.prefix = (prefix if prefix is not None else os.urandom(8).hex().encode()) + b"-"
        self._next = count(1).__next__

    def __call__(self) -> bytes:
        return self.prefix + b"%x" % self._next()


# -- the upstream request and the client response ------------------------------------------

def upstream_head(head: RequestHead, target: bytes, adaptor: CompiledAdaptor | None,
                  host: bytes, call_id: bytes) -> tuple[bytes, bytes | None]:
    """The upstream request head (bytes) and the replacement body if the adaptor has one.

    Hop-by-hop headers and those named in Connection are dropped; X-Forwarded-For is
    appended to, X-Forwarded-Proto/-Host set, X-Call-Id set; the framing follows the
    client's (Content-Length kept, chunked kept), or the adaptor's body length.
    """
    named = connection_tokens(head.connection) if head.connection else None
    if named:
        headers = [h for h in head.headers if h[0] not in _MANAGED and h[0] not in named]
    else:
        headers = [h for h in head.headers if h[0] not in _MANAGED]
    client = head.client_ip.encode()
    headers.append((b"x-forwarded-for", head.xff + b", " + client if head.xff else client))
    headers.append((b"x-forwarded-proto", head.scheme))
    if head.host:
        headers.append((b"x-forwarded-host", head.host))
    headers.append((CALL_ID, call_id))
    method = head.method
    body = None
    if adaptor is not None:
        if adaptor.method is not None:
            method = adaptor.method
        target = adaptor.apply_target(target)
        headers = adaptor.apply_headers(headers)
        if adaptor.host is not None:
            host = adaptor.host
        body = adaptor.body
    headers.append((b"host", host))
    if body is not None:
        headers.append((b"content-length", b"%d" % len(body)))
    elif head.chunked:
        headers.append((b"transfer-encoding", b"chunked"))
    elif head.content_length is not None:
        headers.append((b"content-length", b"%d" % head.content_length))
    return (method + b" " + target + b" HTTP/1.1\r\n"
            + b"\r\n".join(map(b": ".join, headers)) + b"\r\n\r\n"), body


