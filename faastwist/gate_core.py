"""The gate's decisions, as plain functions over a small request-head record.

Nothing here knows twisted.web or sockets, so the twisted.web resource (HTTPS, HTTP/2)
and the lean HTTP/1.1 transport make the same decisions: which function a request is
for, which error it gets, how its head is rewritten for the upstream (header hygiene,
X-Forwarded-*, call id, request adaptor) and which response headers go back.

Header names in a ``RequestHead`` are lower-case bytes (as in HTTP/2); the upstream
request is sent with lower-case names, which HTTP/1.1 treats as equal.

The request adaptor is applied in this fixed order:

1. method (replaces the method);
2. path, on the path only (the query string is kept): ``replace`` wins outright;
   otherwise ``trimPrefix``, then ``addPrefix``, then ``regexpReplace`` (Go syntax
   ``$1``/``${name}`` in the replacement, as Easegress);
3. headers: ``del``, then ``set`` (replaces every value), then ``add`` (appends);
   hop-by-hop and framing headers (Connection, Content-Length, Transfer-Encoding, ...)
   and Host cannot be adapted this way and are skipped with a warning;
4. host: replaces the Host sent upstream, including the one Knative routes on (use
   it for a DomainMapping host); without it the provider's Host is sent;
5. body: replaces the request body (the client's body is read and dropped);
   Content-Length is set to its length.
"""

from __future__ import annotations

import json
import os
import re
from http import HTTPStatus
from itertools import count
from urllib.parse import quote
from typing import Callable, Iterable, Sequence

from twisted.logger import Logger

from faastwist.spec import DNS1123_LABEL, RequestAdaptor

log = Logger()

FUNC_HEADER = b"x-faas-func-name"
CALL_ID = b"x-call-id"
GATE_ERROR = b"x-faas-gate-error"
FUNCTION_PREFIX = b"/function/"

#: Hop-by-hop headers (RFC 9110 7.6.1 and the usual non-standard ones): never forwarded.
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"proxy-authenticate", b"proxy-authorization",
})
#: Request headers the gate sets itself (framing, Host, forwarding, Expect, call id).
_MANAGED = HOP_BY_HOP | {b"host", b"content-length", b"expect", b"x-forwarded-for",
                         b"x-forwarded-proto", b"x-forwarded-host", CALL_ID}
#: Response headers the gate never passes through (it frames the response itself).
_RESPONSE_SKIP = HOP_BY_HOP | {b"content-length", CALL_ID}
#: Names a request adaptor may not touch.
_NOT_ADAPTABLE = HOP_BY_HOP | {b"host", b"content-length", b"expect"}

RETRY_AFTER_NOT_ACTIVE = 5


class GateError(Exception):
    """An answer the gate gives itself: ``{code, message}`` with X-FaaS-Gate-Error."""

    def __init__(self, code: int, message: str, retry_after: int | None = None,
                 close: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.close = close  # the client connection cannot be reused after this answer


def reason(code: int) -> bytes:
    try:
        return HTTPStatus(code).phrase.encode()
    except ValueError:
        return b"Unknown"


def error_body(code: int, message: str) -> bytes:
    return json.dumps({"code": code, "message": message}).encode()


def error_headers(error: GateError, body: bytes, call_id: bytes | None) -> list[tuple[bytes, bytes]]:
    """Headers of a gate error response (framing is the transport's, but we know it)."""
    headers = [(b"content-type", b"application/json"), (GATE_ERROR, b"true"),
               (b"content-length", str(len(body)).encode())]
    if error.retry_after is not None:
        headers.append((b"retry-after", str(error.retry_after).encode()))
    if call_id:
        headers.append((CALL_ID, call_id))
    return headers


class RequestHead:
    """What the gate needs of a client request; filled by a transport + ``classify``."""

    __slots__ = ("method", "target", "http11", "headers", "client_ip", "scheme",
                 "host", "func", "call_id", "xff", "content_length", "chunked",
                 "connection", "expect_continue")

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


def classify(head: RequestHead) -> None:
    """Pick out the headers the gate acts on, in one pass; GateError(400) on bad framing."""
    for name, value in head.headers:
        if name not in _MANAGED and name != FUNC_HEADER:
            continue
        if name == FUNC_HEADER:
            head.func = value
        elif name == b"host":
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
        elif name == b"connection":
            head.connection = value if head.connection is None else head.connection + b"," + value
        elif name == b"expect":
            head.expect_continue = value.lower() == b"100-continue"
    if head.chunked:
        head.content_length = None  # RFC 9112 6.3: Transfer-Encoding overrides


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


def wants_close(head: RequestHead) -> bool:
    """Whether the client asked to close after this exchange (HTTP/1.0 defaults to it)."""
    tokens = connection_tokens(head.connection)
    if head.http11:
        return b"close" in tokens
    return b"keep-alive" not in tokens


def resolve(head: RequestHead) -> tuple[str, bytes]:
    """The function a request is for and the target to forward, or GateError(400).

    The X-FaaS-Func-Name header wins and the target is forwarded unchanged; otherwise
    ``/function/{name}/rest`` (OpenFaaS style) forwards ``/rest`` and the query.
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
    if target.startswith(FUNCTION_PREFIX):
        rest = target[len(FUNCTION_PREFIX):]
        cut = len(rest)
        for stop in (b"/", b"?"):
            index = rest.find(stop)
            if index != -1 and index < cut:
                cut = index
        name = rest[:cut].decode("latin-1")
        if name and DNS1123_LABEL.match(name) and len(name) <= 63:
            forwarded = rest[cut:]
            if not forwarded.startswith(b"/"):
                forwarded = b"/" + forwarded
            return name, forwarded
        if name:
            raise GateError(400, f"/function/{name}: {name!r} is not a function name "
                                 f"(a DNS-1123 label)")
    raise GateError(400, "no function named: send the X-FaaS-Func-Name header or call "
                         "/function/{name}/...")


# -- request adaptor ---------------------------------------------------------------------

_GO_TEMPLATE = re.compile(r"\$(\$|\{([A-Za-z0-9_]+)\}|([A-Za-z0-9_]+))")


def go_replacement(template: str) -> Callable[["re.Match[str]"], str]:
    """A re.sub replacement function with Go's Regexp.Expand semantics.

    ``$1``/``${1}``/``$name``/``${name}`` insert a group (unknown or unmatched: empty),
    ``$$`` is a literal ``$``; Go takes the longest name, so ``$1x`` is group ``1x``.
    """
    parts: list[tuple[bool, str | int]] = []  # (is_group, text or group reference)
    position = 0
    for match in _GO_TEMPLATE.finditer(template):
        parts.append((False, template[position:match.start()]))
        if match.group(1) == "$":
            parts.append((False, "$"))
        else:
            ref = match.group(2) or match.group(3)
            parts.append((True, int(ref) if ref.isdigit() else ref))
        position = match.end()
    parts.append((False, template[position:]))

    def expand(found: "re.Match[str]") -> str:
        out = []
        for is_group, part in parts:
            if not is_group:
                out.append(part)  # type: ignore[arg-type]
                continue
            try:
                out.append(found.group(part) or "")
            except (IndexError, KeyError):
                out.append("")
        return "".join(out)  # type: ignore[arg-type]

    return expand


class CompiledAdaptor:
    """A RequestAdaptor prepared once per route change, applied per request."""

    __slots__ = ("method", "path", "delete", "set", "add", "host", "body")

    def __init__(self, adaptor: RequestAdaptor) -> None:
        self.method = adaptor.method.encode() if adaptor.method else None
        self.path = _compile_path(adaptor)
        header = adaptor.header
        self.delete = frozenset(n.lower().encode() for n in header.delete
                                if _adaptable(n, "del"))
        self.set = [(n.lower().encode(), v.encode()) for n, v in header.set.items()
                    if _adaptable(n, "set")]
        self.add = [(n.lower().encode(), v.encode()) for n, v in header.add.items()
                    if _adaptable(n, "add")]
        self.host = _host_bytes(adaptor.host)
        self.body = adaptor.body.encode() if adaptor.body else None

    def apply_headers(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """del, then set, then add."""
        if self.delete or self.set:
            gone = self.delete | {n for n, _ in self.set}
            headers = [h for h in headers if h[0] not in gone]
        if self.set:
            headers.extend(self.set)
        if self.add:
            headers.extend(self.add)
        return headers

    def apply_target(self, target: bytes) -> bytes:
        if self.path is None:
            return target
        path, mark, query = target.partition(b"?")
        return self.path(path) + mark + query


def _adaptable(name: str, key: str) -> bool:
    if name.lower().encode() in _NOT_ADAPTABLE:
        log.warn("requestAdaptor.header.{key}: {name} is managed by the gate and is "
                 "ignored (use requestAdaptor.host for Host)", key=key, name=name)
        return False
    return True


def _path_bytes(path: str) -> bytes:
    """A path as it may appear in a request line: what is not allowed there (spaces,
    line breaks, non-ASCII) percent-encoded, so no adaptor can break the request."""
    return quote(path, safe="/:@!$&'()*+,;=%-._~").encode("ascii")


def _host_bytes(host: str) -> bytes | None:
    if not host:
        return None
    if any(c.isspace() or ord(c) < 32 or ord(c) > 126 for c in host):
        log.warn("requestAdaptor.host: {host!r} is not a valid Host and is ignored", host=host)
        return None
    return host.encode("ascii")


def _compile_path(adaptor: RequestAdaptor) -> Callable[[bytes], bytes] | None:
    spec = adaptor.path
    if spec.replace:
        replaced = _path_bytes(spec.replace)
        return lambda _path: replaced
    steps: list[Callable[[bytes], bytes]] = []
    if spec.trim_prefix:
        prefix = _path_bytes(spec.trim_prefix)
        steps.append(lambda p: p[len(prefix):] if p.startswith(prefix) else p)
    if spec.add_prefix:
        added = _path_bytes(spec.add_prefix)
        steps.append(lambda p: added + p)
    if spec.regexp_replace is not None:
        pattern = re.compile(spec.regexp_replace.regexp)
        replacement = go_replacement(spec.regexp_replace.replace)

        def regexp(p: bytes) -> bytes:
            return _path_bytes(pattern.sub(replacement, p.decode("latin-1")))

        steps.append(regexp)
    if not steps:
        return None

    def apply(path: bytes) -> bytes:
        for step in steps:
            path = step(path)
        return path if path.startswith(b"/") else b"/" + path

    return apply


def compile_adaptor(adaptor: RequestAdaptor) -> CompiledAdaptor | None:
    """None when the adaptor changes nothing, so the hot path can skip it."""
    if adaptor.is_empty:
        return None
    return CompiledAdaptor(adaptor)


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
