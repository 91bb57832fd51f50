"""Pure decisions of the async queue: what is retried, after how long, and where a
callback may go. No I/O here, so every rule is unit-tested with exact values.
"""

from __future__ import annotations

import ipaddress
from email.utils import parsedate_to_datetime
from enum import Enum
from typing import Any, Iterable
from urllib.parse import urlsplit

import attrs

#: Status used for "no HTTP answer at all" (connection refused, reset, timeout).
NO_ANSWER = 0
#: Addresses a callback may never reach, whatever the allow-list says: cloud metadata
#: services (AWS, GCP, Azure on 169.254.169.254; AWS ECS's 169.254.170.2 and IPv6
#: fd00:ec2::254; Alibaba's 100.100.100.200).
NEVER = tuple(ipaddress.ip_network(n) for n in (
    "169.254.169.254/32", "169.254.170.2/32", "fd00:ec2::254/128", "100.100.100.200/32"))
#: This host and its link: loopback, "this host" (0.0.0.0/8 and :: reach the local
#: machine on Linux), link-local. Refused unless queue.callbackAllow lists the address:
#: a function listens on loopback, and a callback there would bypass its key.
LOCAL = tuple(ipaddress.ip_network(n) for n in (
    "127.0.0.0/8", "0.0.0.0/8", "169.254.0.0/16", "::1/128", "::/128", "fe80::/10"))
#: IPv6 forms that carry an IPv4 address the kernel may use: IPv4-compatible (::a.b.c.d).
_V4_COMPATIBLE = ipaddress.ip_network("::/96")


class Outcome(str, Enum):
    DONE = "done"          # a final answer: 2xx/3xx, or a 4xx other than 429, or 501
    RETRY = "retry"        # retryable and attempts are left
    DEAD = "dead"          # retryable but this was the last attempt


def retryable(status: int) -> bool:
    """Connection errors (NO_ANSWER), 429 and 5xx except 501 are worth another try."""
    if status == NO_ANSWER or status == 429:
        return True
    return 500 <= status <= 599 and status != 501


def decide(status: int, attempts: int, max_attempts: int) -> Outcome:
    """What to do after attempt number ``attempts`` (1-based) answered ``status``."""
    if not retryable(status):
        return Outcome.DONE
    return Outcome.RETRY if attempts < max_attempts else Outcome.DEAD


@attrs.frozen
class Backoff:
    """Exponential backoff with jitter: attempt n waits between half and all of
    ``base * 2**(n-1)`` (capped at ``cap``); a Retry-After, when longer, wins (up to
    ``retry_after_cap``, so a function cannot park a message for a day)."""

    base: float = 1.0
    cap: float = 300.0
    retry_after_cap: float = 3600.0

    def delay(self, attempts: int, jitter: float, retry_after: float | None = None) -> float:
        """``jitter`` is a random number in [0, 1) (injected, so tests are exact)."""
        ceiling = min(self.cap, self.base * 2 ** max(attempts - 1, 0))
        wait = ceiling / 2 + ceiling / 2 * jitter
        if retry_after is not None and retry_after > wait:
            wait = min(retry_after, self.retry_after_cap)
        return wait


def parse_retry_after(value: str | bytes | None, now: float) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP-date), or None."""
    if not value:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    text = text.strip()
    if text.isdigit():
        return float(int(text))
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


# -- callback targets (SSRF) -------------------------------------------------------------

class CallbackRefused(Exception):
    """A callback URL that faastwist will not call; the message names why."""


@attrs.frozen
class CallbackRules:
    """Where callbacks may go.

    ``allow``: when not empty, only these networks; ``node_ports``: the node's own
    admin, etcd and NATS ports, refused on loopback and on the node's own addresses;
    ``local_addresses``: this node's addresses (besides loopback).
    """

    allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    node_ports: frozenset[int] = frozenset()
    local_addresses: frozenset[str] = frozenset()


def parse_networks(values: Iterable[str]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """CIDRs or single addresses; ValueError naming the bad one."""
    out = []
    for value in values:
        try:
            out.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address or CIDR network") from None
    return tuple(out)


def split_callback_url(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an http(s) callback URL, or CallbackRefused."""
    if len(url) > 2048:
        raise CallbackRefused("X-Callback-Url is longer than 2048 characters")
    if not url.isascii():
        raise CallbackRefused("X-Callback-Url must be ASCII (use punycode and %-escapes)")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise CallbackRefused(f"X-Callback-Url is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise CallbackRefused("X-Callback-Url must be an http:// or https:// URL")
    if not parts.hostname:
        raise CallbackRefused("X-Callback-Url has no host")
    if parts.username is not None or parts.password is not None:
        raise CallbackRefused("X-Callback-Url must not carry credentials")
    if any(c in url for c in "\r\n\0 "):
        raise CallbackRefused("X-Callback-Url contains a control character or space")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


def refuse_callback_url(url: str, rules: CallbackRules) -> None:
    """At accept time: ValueError naming ``X-Callback-Url`` for a malformed callback URL
    or a literal address the rules forbid; host names are checked when the callback is
    sent (what they resolve to may change)."""
    try:
        _, host, port = split_callback_url(url)
        name = host.lower().rstrip(".")
        if name == "localhost" or name.endswith(".localhost"):
            check_target("127.0.0.1", port, rules)  # RFC 6761: always loopback
            return
        try:
            ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return
        check_target(host, port, rules)
    except CallbackRefused as exc:
        raise ValueError(f"X-Callback-Url: {exc}") from None


def _plain(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The address a connection would reach: scope id dropped, IPv4-mapped
    (::ffff:a.b.c.d) and IPv4-compatible (::a.b.c.d) forms as their IPv4 address."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        raise CallbackRefused(f"{address!r} is not an IP address") from None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip in _V4_COMPATIBLE and int(ip) > 1:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def _within(ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
            networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> Any:
    return next((n for n in networks if ip.version == n.version and ip in n), None)


def check_target(address: str, port: int, rules: CallbackRules) -> None:
    """Refuse (CallbackRefused) a resolved callback address the rules do not allow:
    cloud metadata never; this node's admin, etcd and NATS ports never; loopback,
    this host's own addresses and link-local only when queue.callbackAllow lists
    them; anything else only within queue.callbackAllow when it is set."""
    ip = _plain(address)
    never = _within(ip, NEVER)
    if never is not None:
        raise CallbackRefused(f"callbacks to {ip} ({never}, cloud metadata) are never "
                              f"allowed")
    if ip.is_multicast:
        raise CallbackRefused(f"callbacks to the multicast address {ip} are not allowed")
    local = _within(ip, LOCAL)
    own = local is not None or str(ip) in rules.local_addresses
    if own and port in rules.node_ports:
        raise CallbackRefused(f"callbacks to this node's own admin, etcd or NATS port "
                              f"({ip}:{port}) are not allowed")
    allowed = _within(ip, rules.allow) is not None
    if own and not allowed:
        what = f"{local}, loopback, this host or link-local" if local else "this host"
        raise CallbackRefused(f"callbacks to {ip} ({what}) are refused unless "
                              f"queue.callbackAllow lists it")
    if rules.allow and not allowed:
        raise CallbackRefused(f"{ip} is not in queue.callbackAllow")


# -- queue quotas --------------------------------------------------------------------------

class Admission(str, Enum):
    ADMIT = "admit"        # under the function's maxQueued by a count fresh enough
    COUNT = "count"        # the count is unknown or stale: ask the server first
    FULL = "full"          # at or over maxQueued by a fresh count: 429


class QueuedCounts:
    """How many calls each function has queued, as this node knows it: the server's
    count (``counted``) plus the calls this node stored since (``stored``). A count
    older than ``fresh`` seconds is asked again before a call is admitted, so the
    limit holds exactly on one node and, across nodes, within what the others store
    in ``fresh`` seconds; a refusal needs no round trip (a flood of calls to a full
    function costs the queue nothing)."""

    def __init__(self, fresh: float = 1.0) -> None:
        self.fresh = fresh
        self._counts: dict[str, tuple[int, float]] = {}   # function -> (count, when)

    def take(self, function: str, limit: int, now: float) -> Admission:
        """Admit one call (counted at once, before it is stored: calls being
        published together cannot all slip under the limit), or say why not."""
        entry = self._counts.get(function)
        if entry is None or now - entry[1] >= self.fresh or now < entry[1]:
            return Admission.COUNT
        if entry[0] >= limit:
            return Admission.FULL
        self._counts[function] = (entry[0] + 1, entry[1])
        return Admission.ADMIT

    def counted(self, function: str, count: int, now: float) -> None:
        """The server's count of ``function``'s calls, asked at ``now``."""
        self._counts[function] = (count, now)

    def forget(self, older_than: float) -> None:
        """Drop counts taken before ``older_than`` (functions no longer called)."""
        for name in [n for n, (_, when) in self._counts.items() if when < older_than]:
            del self._counts[name]
