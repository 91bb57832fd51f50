"""The queue's pure rules, with exact values: what is retried, how long to wait, and
which callback targets are refused."""

from __future__ import annotations

import pytest

from faastwist.queue.policy import (
    NO_ANSWER,
    Backoff,
    CallbackRefused,
    CallbackRules,
    Outcome,
    check_target,
    decide,
    parse_networks,
    parse_retry_after,
    retryable,
    split_callback_url,
    refuse_callback_url,
)


@pytest.mark.parametrize("status,expected", [
    (NO_ANSWER, True), (429, True), (500, True), (502, True), (503, True), (504, True),
    (599, True), (501, False), (200, False), (202, False), (302, False), (400, False),
    (404, False), (413, False), (499, False),
])
def test_retryable(status: int, expected: bool) -> None:
    assert retryable(status) is expected


def test_decide_counts_attempts() -> None:
    assert decide(500, 1, 5) is Outcome.RETRY
    assert decide(500, 4, 5) is Outcome.RETRY
    assert decide(500, 5, 5) is Outcome.DEAD
    assert decide(NO_ANSWER, 1, 1) is Outcome.DEAD
    assert decide(404, 1, 5) is Outcome.DONE
    assert decide(200, 5, 5) is Outcome.DONE
    assert decide(501, 1, 5) is Outcome.DONE


def test_backoff_is_exponential_with_jitter_and_capped() -> None:
    backoff = Backoff(base=1.0, cap=10.0, retry_after_cap=60.0)
    assert backoff.delay(1, 0.0) == 0.5
    assert backoff.delay(1, 0.5) == 0.75
    assert backoff.delay(2, 0.0) == 1.0
    assert backoff.delay(3, 1.0) == 4.0
    assert backoff.delay(4, 0.0) == 4.0
    assert backoff.delay(10, 0.0) == 5.0   # capped at 10: half of it without jitter
    assert backoff.delay(10, 0.999) == pytest.approx(9.995)


def test_retry_after_wins_when_longer_and_is_capped() -> None:
    backoff = Backoff(base=1.0, cap=10.0, retry_after_cap=60.0)
    assert backoff.delay(1, 0.0, retry_after=30.0) == 30.0
    assert backoff.delay(1, 0.0, retry_after=0.1) == 0.5
    assert backoff.delay(1, 0.0, retry_after=86400.0) == 60.0


def test_parse_retry_after() -> None:
    now = 1_700_000_000.0  # 2023-11-14T22:13:20Z
    assert parse_retry_after(b"120", now) == 120.0
    assert parse_retry_after(" 7 ", now) == 7.0
    assert parse_retry_after(b"Tue, 14 Nov 2023 22:13:50 GMT", now) == 30.0
    assert parse_retry_after(b"Tue, 14 Nov 2023 22:00:00 GMT", now) == 0.0
    assert parse_retry_after(b"soon", now) is None
    assert parse_retry_after(b"-5", now) is None
    assert parse_retry_after(None, now) is None


def test_split_callback_url() -> None:
    assert split_callback_url("http://example.com/hook") == ("http", "example.com", 80)
    assert split_callback_url("https://example.com:8443/x") == ("https", "example.com", 8443)
    assert split_callback_url("http://[::1]:9/") == ("http", "::1", 9)
    for bad in ("ftp://example.com/", "http:///nohost", "http://u:p@example.com/",
                "http://example.com:99999/", "http://exämple.com/", "x" * 3000,
                "file:///etc/passwd", "gopher://127.0.0.1:2381/"):
        with pytest.raises(CallbackRefused):
            split_callback_url(bad)


RULES = CallbackRules(node_ports=frozenset({2381, 2379, 4222}),
                      local_addresses=frozenset({"10.1.2.3"}))


@pytest.mark.parametrize("address,port", [
    ("169.254.169.254", 80), ("169.254.0.1", 8080), ("fd00:ec2::254", 80),
    ("fe80::1", 80), ("::ffff:169.254.169.254", 80), ("100.100.100.200", 80),
    ("127.0.0.1", 2381), ("127.0.0.5", 2379), ("::1", 4222), ("0.0.0.0", 2381),
    ("10.1.2.3", 4222), ("224.0.0.1", 80),
    # every loopback, this-host and link-local form, on any port
    ("127.0.0.1", 8080), ("127.255.255.254", 80), ("::1", 80), ("::ffff:127.0.0.1", 8080),
    ("::127.0.0.1", 8080), ("0.0.0.0", 8080), ("0.1.2.3", 80), ("::", 80),
    ("fe80::1%eth0", 8080), ("febf::1", 80), ("169.254.1.1", 80), ("10.1.2.3", 80),
    ("::ffff:7f00:1", 80), ("::ffff:0.0.0.0", 80),
])
def test_refused_targets(address: str, port: int) -> None:
    with pytest.raises(CallbackRefused):
        check_target(address, port, RULES)


@pytest.mark.parametrize("address,port", [
    ("10.1.2.4", 80), ("93.184.216.34", 443), ("2001:db8::1", 80), ("fec0::1", 80),
    ("10.9.9.9", 2381),   # another machine's port 2381 is not this node's admin
])
def test_allowed_targets(address: str, port: int) -> None:
    check_target(address, port, RULES)


def test_allow_list_restricts_to_its_networks() -> None:
    rules = CallbackRules(allow=parse_networks(["10.0.0.0/8", "2001:db8::/32"]))
    check_target("10.200.0.1", 80, rules)
    check_target("2001:db8::7", 80, rules)
    with pytest.raises(CallbackRefused, match="callbackAllow"):
        check_target("192.168.1.1", 80, rules)
    with pytest.raises(CallbackRefused, match="metadata"):  # never, even if allowed
        check_target("169.254.169.254", 80, CallbackRules(allow=parse_networks(["0.0.0.0/0"])))


def test_loopback_and_link_local_only_when_the_allow_list_names_them() -> None:
    loopback = CallbackRules(allow=parse_networks(["127.0.0.1/32", "::1"]),
                             node_ports=frozenset({2381}))
    check_target("127.0.0.1", 8080, loopback)
    check_target("::ffff:127.0.0.1", 8080, loopback)
    check_target("::1", 8080, loopback)
    for address in ("127.0.0.2", "0.0.0.0", "169.254.1.1"):   # not listed
        with pytest.raises(CallbackRefused):
            check_target(address, 8080, loopback)
    with pytest.raises(CallbackRefused, match="own admin"):   # the node's ports never
        check_target("127.0.0.1", 2381, loopback)
    link = CallbackRules(allow=parse_networks(["169.254.10.0/24", "fe80::/10"]))
    check_target("169.254.10.7", 80, link)
    check_target("fe80::2%eth0", 80, link)
    with pytest.raises(CallbackRefused, match="never"):
        check_target("169.254.169.254", 80, CallbackRules(
            allow=parse_networks(["169.254.0.0/16"])))
    with pytest.raises(ValueError, match="'nope'"):
        parse_networks(["nope"])


def test_no_answer_is_status_0_and_600_is_not_a_server_error() -> None:
    assert NO_ANSWER == 0 and retryable(0)
    assert not retryable(600)


def test_retry_after_is_capped_at_an_hour_by_default() -> None:
    backoff = Backoff(base=1.0, cap=10.0)
    assert backoff.delay(1, 0.0, retry_after=7200.0) == 3600.0
    assert backoff.delay(1, 0.0, retry_after=3599.0) == 3599.0


def test_a_retry_after_equal_to_the_backoff_changes_nothing() -> None:
    """Only a longer Retry-After wins (and is capped): an equal one leaves the backoff's
    wait as it is, even above the Retry-After cap."""
    backoff = Backoff(base=200.0, cap=300.0, retry_after_cap=60.0)
    assert backoff.delay(1, 0.0, retry_after=100.0) == 100.0
    assert backoff.delay(1, 0.0, retry_after=100.5) == 60.0


def test_a_retry_after_date_without_a_time_zone_is_ignored() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after(b"Tue, 14 Nov 2023 22:13:50 -0000", now) is None
    assert parse_retry_after(b"Tue, 14 Nov 2023 22:13:50 +0000", now) == 30.0


def test_networks_may_be_written_with_host_bits_set() -> None:
    import ipaddress

    assert parse_networks([" 10.1.2.3/8 ", "2001:db8::1"]) == (
        ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::1/128"))
    with pytest.raises(ValueError) as caught:
        parse_networks(["10.0.0.0/8", "nope"])
    assert str(caught.value) == "'nope' is not an IP address or CIDR network"


def test_default_rules_allow_ordinary_targets_but_not_this_host() -> None:
    check_target("10.1.2.3", 80, CallbackRules())
    check_target("93.184.216.34", 2381, CallbackRules())
    with pytest.raises(CallbackRefused, match="unless queue.callbackAllow lists it"):
        check_target("127.0.0.1", 8080, CallbackRules())


@pytest.mark.parametrize("url, parts", [
    ("https://example.com/", ("https", "example.com", 443)),
    ("http://example.com/X-Hook?X=1", ("http", "example.com", 80)),
    ("http://example.com/" + "a" * (2048 - 19), ("http", "example.com", 80)),  # 2048 chars
])
def test_callback_urls_accepted(url: str, parts: tuple[str, str, int]) -> None:
    assert split_callback_url(url) == parts


@pytest.mark.parametrize("url, message", [
    ("http://example.com/" + "a" * (2049 - 19),
     "X-Callback-Url is longer than 2048 characters"),
    ("http://exämple.com/", "X-Callback-Url must be ASCII (use punycode and %-escapes)"),
    ("http://example.com:99999/",
     "X-Callback-Url is not a valid URL: Port out of range 0-65535"),
    ("ftp://example.com/", "X-Callback-Url must be an http:// or https:// URL"),
    ("http:///nohost", "X-Callback-Url has no host"),
    ("http://u@example.com/", "X-Callback-Url must not carry credentials"),
    ("http://:p@example.com/", "X-Callback-Url must not carry credentials"),
    ("http://example.com/a b", "X-Callback-Url contains a control character or space"),
    ("http://example.com/a\0b", "X-Callback-Url contains a control character or space"),
])
def test_callback_urls_refused_with_the_reason(url: str, message: str) -> None:
    with pytest.raises(CallbackRefused) as caught:
        split_callback_url(url)
    assert str(caught.value) == message


@pytest.mark.parametrize("address, port, rules, message", [
    ("example.com", 80, RULES, "'example.com' is not an IP address"),
    ("fe80::1%eth0", 80, RULES,
     "callbacks to fe80::1 (fe80::/10, loopback, this host or link-local) are refused "
     "unless queue.callbackAllow lists it"),
    ("::ffff:169.254.169.254", 80, RULES, "callbacks to 169.254.169.254 (169.254.169.254/32, "
                                          "cloud metadata) are never allowed"),
    ("::ffff:127.0.0.1", 80, RULES, "callbacks to 127.0.0.1 (127.0.0.0/8, loopback, this "
                                    "host or link-local) are refused unless "
                                    "queue.callbackAllow lists it"),
    ("10.1.2.3", 80, RULES, "callbacks to 10.1.2.3 (this host) are refused unless "
                            "queue.callbackAllow lists it"),
    ("224.0.0.1", 80, RULES, "callbacks to the multicast address 224.0.0.1 are not allowed"),
    ("127.0.0.1", 2381, RULES, "callbacks to this node's own admin, etcd or NATS port "
                               "(127.0.0.1:2381) are not allowed"),
    ("192.168.1.1", 80, CallbackRules(allow=parse_networks(["10.0.0.0/8"])),
     "192.168.1.1 is not in queue.callbackAllow"),
])
def test_refused_targets_name_the_reason(address: str, port: int, rules: CallbackRules,
                                         message: str) -> None:
    with pytest.raises(CallbackRefused) as caught:
        check_target(address, port, rules)
    assert str(caught.value) == message


def test_refuse_callback_url_at_accept_time() -> None:
    """Malformed URLs and forbidden literal addresses are refused naming the header; a
    host name passes (it is checked against the rules when the callback is sent)."""
    with pytest.raises(ValueError, match=r"^X-Callback-Url: X-Callback-Url must be an http"):
        refuse_callback_url("ftp://example.com/x", RULES)
    with pytest.raises(ValueError, match=r"^X-Callback-Url: callbacks to this node's own"):
        refuse_callback_url("http://127.0.0.1:2381/x", RULES)
    with pytest.raises(ValueError, match=r"^X-Callback-Url: callbacks to 169\.254\.169\.254"):
        refuse_callback_url("http://169.254.169.254/latest", RULES)
    for url in ("http://127.0.0.1:8080/x", "http://[::1]:8080/", "http://[::ffff:127.0.0.1]/",
                "http://0.0.0.0:8080/", "http://localhost:8080/", "http://a.localhost./",
                "http://[fe80::1%25eth0]/"):
        with pytest.raises(ValueError, match=r"^X-Callback-Url: callbacks to .* unless "):
            refuse_callback_url(url, RULES)
    assert refuse_callback_url("http://127.0.0.1:8080/x", CallbackRules(
        allow=parse_networks(["127.0.0.0/8"]))) is None
    assert refuse_callback_url("http://example.com:2381/x", RULES) is None    # a name: at send
