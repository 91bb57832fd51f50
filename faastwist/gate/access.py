"""Who may call a function, and how often: invocation keys and the rate limit.

Pure decisions over plain values (no sockets, no reactor), so they are tested with
exact numbers. A key is checked by its SHA-256: one set lookup (O(1) whatever the
number of keys), then ``hmac.compare_digest`` of the digests, so the time taken says
nothing about a stored key. The rate limit is a token bucket per function per node:
``rps`` tokens a second up to ``burst``; a request takes one token, or is refused
with the exact time until the next token as Retry-After (rounded up to whole seconds).
"""

from __future__ import annotations

import hashlib
import hmac
import math
from typing import Sequence

API_KEY = b"x-api-key"
AUTHORIZATION = b"authorization"


def presented_key(headers: Sequence[tuple[bytes, bytes]]) -> tuple[bytes | None, bytes | None]:
    """The key a caller sent (``X-API-Key: K`` or ``Authorization: Bearer K``) and the
    header that carried it; (None, None) when there is none."""
    for name, value in headers:
        if name == API_KEY:
            return value.strip(), name
        if name == AUTHORIZATION and value[:7].lower() == b"bearer ":
            return value[7:].strip(), name
    return None, None


def key_allowed(key: bytes | None, digests: frozenset[bytes]) -> bool:
    """Is ``key`` one of the function's keys (given as SHA-256 hex digests)?"""
    if not key:
        return False
    digest = hashlib.sha256(key).hexdigest().encode()
    stored = digest if digest in digests else b"0" * 64
    return hmac.compare_digest(stored, digest)


class TokenBucket:
    """``rate`` tokens a second, at most ``burst``; starts full."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: float) -> float:
        """0.0 when a token was taken (the request passes); else the seconds until one
        will be there (the request is refused and nothing is taken)."""
        elapsed = now - self.stamp
        if elapsed > 0:
            self.tokens = min(float(self.burst), self.tokens + elapsed * self.rate)
            self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


def retry_after(wait: float) -> int:
    """Whole seconds for Retry-After: never 0 (a client would retry at once)."""
    return max(1, math.ceil(wait - 1e-9))
