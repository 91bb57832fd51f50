"""The request adaptor: a spec's ``requestAdaptor`` compiled once per route change.

Applied in this fixed order (README's order; tests pin every step combined):

1. method (replaces the method);
2. path, on the path only (the query string is kept): ``replace`` wins outright;
   otherwise ``trimPrefix``, then ``addPrefix``, then ``regexpReplace`` (on RE2, linear
   in the path like Go's regexp; Go syntax ``$1``/``${name}`` in the replacement, as
   Easegress);
3. headers: ``del``, then ``set`` (replaces every value), then ``add`` (appends);
   hop-by-hop and framing headers (Connection, Content-Length, Transfer-Encoding, ...)
   and Host cannot be adapted this way and are skipped with a warning;
4. host: replaces the Host sent upstream, including the one Knative routes on (use
   it for a DomainMapping host); without it the provider's Host is sent;
5. body: replaces the request body (the client's body is read and dropped);
   Content-Length is set to its length.
"""

from __future__ import annotations

import re
from typing import Any, Callable
from urllib.parse import quote

from twisted.logger import Logger

from faastwist.gate.wire import HOP_BY_HOP
from faastwist.model.spec import RequestAdaptor, control_character
from faastwist.util.linear import compile_linear

log = Logger()

#: Names a request adaptor may not touch.
_NOT_ADAPTABLE = HOP_BY_HOP | {b"host", b"content-length", b"expect"}


_GO_TEMPLATE = re.compile(r"\$(\$|\{([A-Za-z0-9_]+)\}|([A-Za-z0-9_]+))")


def go_replacement(template: str) -> Callable[[Any], str]:
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

    def expand(found: Any) -> str:   # an RE2 match (the re module's shape)
        out: list[str] = []
        for is_group, part in parts:
            if not is_group:
                out.append(str(part))
                continue
            try:
                out.append(found.group(part) or "")
            except (IndexError, KeyError):
                out.append("")
        return "".join(out)

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
                    if _adaptable(n, "set") and _clean(n, v, "set")]
        self.add = [(n.lower().encode(), v.encode()) for n, v in header.add.items()
                    if _adaptable(n, "add") and _clean(n, v, "add")]
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


def _clean(name: str, value: str, key: str) -> bool:
    """Spec validation refuses control characters in values; a record stored before
    that rule (or built in code) is defended here: the header is not sent."""
    if control_character(value) is None:
        return True
    log.warn("requestAdaptor.header.{key}: the value of {name} holds a control character "
             "and is ignored", key=key, name=name)
    return False


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
        pattern = compile_linear(spec.regexp_replace.regexp)   # checked with the spec
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
