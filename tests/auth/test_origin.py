"""Host (DNS rebinding) and Origin (cross-site writes) rules."""

from __future__ import annotations

import pytest

from faastwist.auth.origin import OriginPolicy, split_host

POLICY = OriginPolicy.build("http", 2381, ["buildhost", "10.1.2.3"], ["ops.example"],
                            ["https://console.example:8443"])


@pytest.mark.parametrize("host, ok", [
    (None, True), ("127.0.0.1:2381", True), ("localhost:2381", True), ("[::1]:2381", True),
    ("LOCALHOST.", True), ("buildhost", True), ("ops.example:2381", True),
    ("10.9.9.9:2381", True),              # any IP literal: a rebinding needs a name
    ("evil.example:2381", False), ("127.0.0.1.evil.example", False),
    ("localhost:notaport", False), ("[::1", False), ("::1", False), ("", False),
])
def test_host(host: str | None, ok: bool) -> None:
    assert POLICY.host_allowed(host) is ok


@pytest.mark.parametrize("origin, host, ok", [
    ("http://127.0.0.1:2381", "127.0.0.1:2381", True),
    ("http://localhost:2381", "127.0.0.1:2381", True),    # one of our own origins
    ("http://10.1.2.3:2381", "10.1.2.3:2381", True),      # same origin as the Host
    ("https://console.example:8443", "127.0.0.1:2381", True),
    ("https://console.example:8443/", "127.0.0.1:2381", True),
    ("http://evil.example", "127.0.0.1:2381", False),
    ("http://127.0.0.1:8000", "127.0.0.1:2381", False),   # another port is another origin
    ("https://127.0.0.1:2381", "127.0.0.1:2381", False),  # another scheme too
    ("http://10.9.9.9:2381", "127.0.0.1:2381", False),    # another node's console
    ("null", "127.0.0.1:2381", False),
    ("garbage", "127.0.0.1:2381", False),
    # the loopback addresses are our own origins whatever Host the request came with
    ("http://127.0.0.1:2381", "localhost:2381", True),
    ("http://[::1]:2381", "localhost:2381", True),
    ("http://localhost:notaport", "localhost:2381", False),
    ("http://[::1", "127.0.0.1:2381", False),             # unbalanced brackets: refused,
    ("http://a]b:2381", "127.0.0.1:2381", False),         # not an exception (a 500)
])
def test_origin(origin: str, host: str, ok: bool) -> None:
    assert POLICY.origin_allowed(origin, host) is ok


def test_split_host_defaults() -> None:
    assert split_host("Example.COM", "https") == ("example.com", 443)
    assert split_host("Example.COM", "http") == ("example.com", 80)
    assert split_host("example.com", "ftp") == ("example.com", 0)   # no default port
    assert split_host("[::1]:80", "http") == ("::1", 80)
    assert split_host("[::1]:8080", "https") == ("::1", 8080)
    assert split_host("[::1]", "https") == ("::1", 443)
    assert split_host("x:99999", "http") is None


@pytest.mark.parametrize("value, parsed", [
    ("x:65535", ("x", 65535)), ("x:65536", None), ("x:0", ("x", 0)),
    ("::1", None), ("fe80::1:80", None),     # a bare IPv6 address: brackets are required
    ("[::1]x", None), ("x:", ("x", 80)), (" ", None), ("x:٣", None),
])
def test_split_host_bounds(value: str, parsed: tuple[str, int] | None) -> None:
    assert split_host(value, "http") == parsed


def test_a_policy_built_without_allowed_origins_still_decides() -> None:
    policy = OriginPolicy("http", 2381, frozenset({"buildhost"}))
    assert policy.origin_allowed("http://buildhost:2381", None)
    assert not policy.origin_allowed("http://evil.example:2381", None)
