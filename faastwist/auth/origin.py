"""Cross-site and DNS-rebinding defences for the admin port; they hold even when
anonymous callers may write.

- DNS rebinding points an attacker's name at 127.0.0.1, so the victim's browser sends
  ``Host: evil.example``: a Host that is neither an IP literal nor one of the node's own
  names is refused (421). An IP literal cannot be a rebinding (the browser's origin is
  then that address, which is us).
- A cross-site page can send a POST without a preflight, but the browser always adds
  ``Origin``: a write whose Origin is not ours (same origin as the validated Host, one
  of the node's own origins, or listed in ``admin.allowedOrigins``) is refused (403).
  ``Origin: null`` (sandboxed frames, file pages) is foreign.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable
from urllib.parse import urlsplit

import attrs

DEFAULT_PORTS = {"http": 80, "https": 443}
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def split_host(value: str, scheme: str) -> tuple[str, int] | None:
    """``name:port`` / ``[v6]:port`` / ``name`` -> (lowercased host, port); None if malformed."""
    value = value.strip()
    if not value:
        return None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        host, rest = value[1:end], value[end + 1:]
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:] if rest else ""
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep:
            host, port_text = value, ""
        elif ":" in host:  # a bare IPv6 address without brackets is not a valid Host
            return None
    if port_text:
        if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
            return None
        port = int(port_text)
    else:
        port = DEFAULT_PORTS.get(scheme, 0)
    host = host.lower().rstrip(".")
    return (host, port) if host else None


def _normal_origin(origin: str) -> str:
    return origin.strip().lower().rstrip("/")


@attrs.frozen
class OriginPolicy:
    """The admin port's own names and origins, and the operator's additions."""

    scheme: str
    port: int
    names: frozenset[str]                 # own host names (lowercase), besides IP literals
    allowed_origins: frozenset[str] = frozenset()

    @classmethod
    def build(cls, scheme: str, port: int, own: Iterable[str], allowed_hosts: Iterable[str] = (),
              allowed_origins: Iterable[str] = ()) -> "OriginPolicy":
        names = {n.lower().rstrip(".").strip("[]") for n in (*LOOPBACK_NAMES, *own,
                                                              *allowed_hosts) if n}
        return cls(scheme, port, frozenset(names),
                   frozenset(_normal_origin(o) for o in allowed_origins))

    def host_allowed(self, host_header: str | None) -> bool:
        """Is ``Host`` one of ours (or an IP literal)? A missing Host is not a rebinding."""
        if host_header is None:
            return True
        parsed = split_host(host_header, self.scheme)
        if parsed is None:
            return False
        host = parsed[0]
        return _is_ip(host) or host in self.names

    def origin_allowed(self, origin: str, host_header: str | None) -> bool:
        """Is a write from a page at ``origin`` ours?"""
        normal = _normal_origin(origin)
        if normal in self.allowed_origins:
            return True
        if normal == "null" or "://" not in normal:
            return False
        try:
            parts = urlsplit(normal)
        except ValueError:  # an unbalanced [ or ] ("Invalid IPv6 URL"): not an origin
            return False
        if parts.scheme != self.scheme or parts.path or parts.query or not parts.netloc:
            return False
        target = split_host(parts.netloc, parts.scheme)
        if target is None:
            return False
        if host_header is not None and split_host(host_header, self.scheme) == target:
            return True   # same origin as the (already validated) Host
        host, port = target
        return port == self.port and (host in self.names or host in LOOPBACK_NAMES)
