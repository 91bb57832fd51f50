"""The gate's decisions as plain functions: routing, framing, hygiene, adaptor."""

from __future__ import annotations

import re

import pytest
from twisted.logger import globalLogPublisher

from faastwist.gate.adaptor import compile_adaptor, go_replacement
from faastwist.gate.decisions import (CallIds, GateError, RequestHead, classify, error_headers,
                                      resolve, upstream_head, wants_close)
from faastwist.gate.wire import filter_response
from faastwist.model.spec import FunctionSpec, HeaderAdaptor, PathAdaptor, RequestAdaptor


def head(target: bytes = b"/", headers: list[tuple[bytes, bytes]] | None = None,
         method: bytes = b"GET", http11: bool = True) -> RequestHead:
    headers = list(headers or [])
    if not any(name == b"host" for name, _ in headers):
        headers.insert(0, (b"host", b"gate"))   # HTTP/1.1 requires it
    h = RequestHead(method, target, headers, "10.1.2.3", b"http", http11)
    classify(h)
    return h


@pytest.mark.parametrize("method, headers, code, message", [
    (b"GET", [(b"x-faas-func-name", b"a"), (b"x-faas-func-name", b"b")], 400,
     "X-FaaS-Func-Name: sent twice"),
    (b"GET", [(b"host", b"a"), (b"host", b"b")], 400, "Host: sent twice"),
    (b"GET", [], 400, "Host: an HTTP/1.1 request must carry it"),
    (b"POST", [(b"host", b"a"), (b"transfer-encoding", b"gzip")], 400,
     "Transfer-Encoding: the final coding must be chunked (applied once)"),
    (b"POST", [(b"host", b"a"), (b"transfer-encoding", b"chunked"),
               (b"transfer-encoding", b"chunked")], 400,
     "Transfer-Encoding: the final coding must be chunked (applied once)"),
    (b"CONNECT", [(b"host", b"a")], 405, "CONNECT is not served by the gate"),
    (b"TRACE", [(b"host", b"a")], 405, "TRACE is not served by the gate"),
])
def test_classify_refuses_what_could_be_read_two_ways(method, headers, code, message) -> None:
    with pytest.raises(GateError) as caught:
        classify(RequestHead(method, b"/", headers, "10.1.2.3"))
    assert (caught.value.code, caught.value.message, caught.value.close) == (code, message, True)


def test_classify_accepts_chunked_after_other_codings_and_http10_without_host() -> None:
    h = RequestHead(b"POST", b"/", [(b"host", b"a"), (b"transfer-encoding", b"gzip, Chunked")])
    classify(h)
    assert h.chunked and h.content_length is None
    classify(RequestHead(b"GET", b"/", [], "10.1.2.3", http11=False))


@pytest.mark.parametrize("template, expected", [
    ("$1-$2", "b-c"),
    ("${1}x", "bx"),
    ("$1x", ""),          # Go reads the longest name: group "1x", which does not exist
    ("${name}!", "c!"),
    ("$name", "c"),
    ("$$1", "$1"),
    ("$9", ""),
    ("plain", "plain"),
])
def test_go_replacement_templates(template: str, expected: str) -> None:
    pattern = re.compile(r"a(b)(?P<name>c)")
    assert pattern.sub(go_replacement(template), "abc") == expected


def test_resolve_by_header_keeps_the_target() -> None:
    assert resolve(head(b"/p?q=1", [(b"x-faas-func-name", b"demo10")])) == ("demo10",
                                                                          b"/p?q=1")


@pytest.mark.parametrize("target, expected", [
    (b"/function/fn", ("fn", b"/")),
    (b"/function/fn/", ("fn", b"/")),
    (b"/function/fn/a/b?c=d", ("fn", b"/a/b?c=d")),
    (b"/function/fn?c=d", ("fn", b"/?c=d")),
])
def test_resolve_by_function_path(target: bytes, expected: tuple[str, bytes]) -> None:
    assert resolve(head(target)) == expected


@pytest.mark.parametrize("target, header", [
    (b"/", None), (b"/functions/fn", None),
    (b"/", b""), (b"/", b"UPPER"), (b"/", b"a" * 64), (b"/function/-bad/x", None),
])
def test_resolve_refuses_with_400(target: bytes, header: bytes | None) -> None:
    headers = [] if header is None else [(b"x-faas-func-name", header)]
    with pytest.raises(GateError) as caught:
        resolve(head(target, headers))
    assert caught.value.code == 400


def test_classify_framing() -> None:
    h = head(headers=[(b"content-length", b"12")])
    assert h.content_length == 12 and not h.chunked
    h = head(headers=[(b"content-length", b"12"), (b"transfer-encoding", b"chunked")])
    assert h.content_length is None and h.chunked
    with pytest.raises(GateError) as caught:
        head(headers=[(b"content-length", b"1"), (b"content-length", b"2")])
    assert caught.value.code == 400 and caught.value.close
    with pytest.raises(GateError):
        head(headers=[(b"content-length", b"-1")])


def test_wants_close() -> None:
    assert not wants_close(head())
    assert wants_close(head(headers=[(b"connection", b"Close")]))
    assert wants_close(head(http11=False))
    assert not wants_close(head(http11=False, headers=[(b"connection", b"keep-alive")]))


def test_upstream_head_bytes() -> None:
    h = head(b"/x?y", [(b"host", b"gate:10083"), (b"x-faas-func-name", b"f"),
                       (b"content-length", b"3"), (b"connection", b"x-drop"),
                       (b"x-drop", b"1"), (b"keep-alive", b"5"), (b"accept", b"*/*"),
                       (b"x-forwarded-for", b"1.1.1.1"), (b"expect", b"100-continue"),
                       (b"trailer", b"x-sum"), (b"te", b"trailers"), (b"upgrade", b"h2c"),
                       (b"proxy-authorization", b"Basic a"), (b"proxy-connection", b"k")],
             method=b"POST")
    data, body = upstream_head(h, b"/x?y", None, b"f.ns.example.com", b"id-1")
    assert body is None
    assert data == (b"POST /x?y HTTP/1.1\r\n"
                    b"x-faas-func-name: f\r\n"
                    b"accept: */*\r\n"
                    b"x-forwarded-for: 1.1.1.1, 10.1.2.3\r\n"
                    b"x-forwarded-proto: http\r\n"
                    b"x-forwarded-host: gate:10083\r\n"
                    b"x-call-id: id-1\r\n"
                    b"host: f.ns.example.com\r\n"
                    b"content-length: 3\r\n\r\n")


def test_upstream_head_keeps_chunked_and_sends_nothing_for_no_body() -> None:
    chunked = head(headers=[(b"transfer-encoding", b"chunked")], method=b"POST")
    data, _ = upstream_head(chunked, b"/", None, b"h", b"i")
    assert b"transfer-encoding: chunked\r\n" in data and b"content-length" not in data
    bodyless = head()
    data, _ = upstream_head(bodyless, b"/", None, b"h", b"i")
    assert b"transfer-encoding" not in data and b"content-length" not in data


def test_upstream_head_with_adaptor() -> None:
    adaptor = compile_adaptor(FunctionSpec.from_dict({"name": "f", "requestAdaptor": {
        "method": "PUT", "path": {"replace": "/r"}, "host": "h.example",
        "header": {"set": {"X-S": "1"}}, "body": "abc"}}).request_adaptor)
    h = head(b"/x?q", [(b"content-length", b"10")], method=b"POST")
    data, body = upstream_head(h, b"/x?q", adaptor, b"provider.host", b"i")
    assert data.startswith(b"PUT /r?q HTTP/1.1\r\n")
    assert b"host: h.example\r\n" in data and b"provider.host" not in data
    assert b"content-length: 3\r\n" in data and b"x-s: 1\r\n" in data
    assert body == b"abc"


def test_upstream_head_with_every_adaptor_step() -> None:
    """The adaptor's steps in the upstream head bytes: the adaptor's headers come after
    the client's and before Host, Host is the adaptor's, the body's length frames it."""
    adaptor = compile_adaptor(FunctionSpec.from_dict({"name": "f", "requestAdaptor": {
        "method": "PATCH",
        "path": {"trimPrefix": "/api", "addPrefix": "/fn",
                 "regexpReplace": {"regexp": "^/fn/(v[0-9]+)", "replace": "/$1-fn"}},
        "header": {"del": ["X-Del"], "set": {"X-Set": "s"}, "add": {"X-Set": "a"}},
        "host": "h.example", "body": "abcd"}}).request_adaptor)
    h = head(b"/api/v1/x?q", [(b"content-length", b"10"), (b"x-del", b"1"),
                              (b"x-set", b"client"), (b"trailer", b"x-sum")], method=b"POST")
    data, body = upstream_head(h, b"/api/v1/x?q", adaptor, b"provider.host", b"i")
    assert data == (b"PATCH /v1-fn/x?q HTTP/1.1\r\n"
                    b"x-forwarded-for: 10.1.2.3\r\n"
                    b"x-forwarded-proto: http\r\n"
                    b"x-forwarded-host: gate\r\n"     # the client's Host (head() sends one)
                    b"x-call-id: i\r\n"
                    b"x-set: s\r\n"
                    b"x-set: a\r\n"
                    b"host: h.example\r\n"
                    b"content-length: 4\r\n\r\n")
    assert body == b"abcd"


def test_filter_response() -> None:
    kept, length, chunked = filter_response([
        (b"Content-Type", b"text/plain"), (b"Connection", b"keep-alive, X-Secret"),
        (b"X-Secret", b"s"), (b"Content-Length", b"5"), (b"X-Call-Id", b"theirs"),
        (b"Keep-Alive", b"timeout=5"), (b"Trailer", b"X-Sum"), (b"Upgrade", b"h2c"),
        (b"Proxy-Authenticate", b"Basic"), (b"TE", b"trailers"),
        (b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2")])
    assert kept == [(b"Content-Type", b"text/plain"), (b"Set-Cookie", b"a=1"),
                    (b"Set-Cookie", b"b=2")]
    assert length == 5 and not chunked
    kept, length, chunked = filter_response([(b"Transfer-Encoding", b"chunked"),
                                             (b"Content-Length", b"5"), (b"Date", b"d")])
    assert kept == [(b"Date", b"d")] and length is None and chunked


def test_empty_adaptor_compiles_to_nothing() -> None:
    assert compile_adaptor(RequestAdaptor()) is None


def test_call_ids_are_unique_and_prefixed() -> None:
    ids = CallIds()
    seen = {ids() for _ in range(1000)}
    assert len(seen) == 1000
    assert all(i.startswith(ids.prefix) for i in seen)
    assert CallIds().prefix != ids.prefix


def test_absolute_form_targets_are_forwarded_in_origin_form() -> None:
    assert resolve(head(b"http://gate.example:10083/a?b", [(b"x-faas-func-name", b"fn")])
                   ) == ("fn", b"/a?b")
    assert resolve(head(b"http://gate.example/function/fn/x")) == ("fn", b"/x")
    assert resolve(head(b"http://gate.example", [(b"x-faas-func-name", b"fn")])) == ("fn", b"/")


def test_adaptor_values_cannot_break_the_request_line_or_the_host() -> None:
    # spec validation refuses such a host; the gate defends itself anyway (records
    # stored before that check, or built in code), so build the adaptor directly
    adaptor = compile_adaptor(RequestAdaptor(
        host="evil.example\r\nX-Injected: 1",
        path=PathAdaptor(add_prefix="/a b\r\nX-Injected: 1")))
    assert adaptor is not None
    assert adaptor.apply_target(b"/p?q") == b"/a%20b%0D%0AX-Injected:%201/p?q"
    assert adaptor.host is None
    regexp = compile_adaptor(FunctionSpec.from_dict({"name": "f", "requestAdaptor": {
        "path": {"regexpReplace": {"regexp": "^/(.*)$", "replace": "/x y/$1"}}}}
    ).request_adaptor)
    assert regexp.apply_target(b"/p") == b"/x%20y/p"


def test_the_max_connections_answer_is_a_503_with_retry_after_1_and_close() -> None:
    from faastwist.gate.connlimit import over_limit_response

    body = b'{"code": 503, "message": "too many connections (maxConnections is 3); retry"}'
    assert over_limit_response(3) == (
        b"HTTP/1.1 503 Service Unavailable\r\n"
        b"content-type: application/json\r\n"
        b"x-faas-gate-error: true\r\n"
        b"content-length: %d\r\n"
        b"retry-after: 1\r\n"
        b"connection: close\r\n\r\n" % len(body)) + body


def test_go_replacement_inserts_nothing_for_a_group_that_did_not_take_part() -> None:
    pattern = re.compile(r"/(a)?(b)")
    assert pattern.sub(go_replacement("[$1|${2}]"), "/b") == "[|b]"


def test_adaptor_set_alone_replaces_every_value_the_client_sent() -> None:
    adaptor = compile_adaptor(RequestAdaptor(header=HeaderAdaptor(set={"X-S": "gate"})))
    assert adaptor.apply_headers([(b"x-s", b"c1"), (b"x-k", b"k"), (b"x-s", b"c2")]) == [
        (b"x-k", b"k"), (b"x-s", b"gate")]


def test_adaptor_skips_host_and_expect_in_every_header_step_with_a_warning() -> None:
    """Host and Expect are the gate's (Host: requestAdaptor.host), like the framing
    headers; each skipped name is logged with the step that named it."""
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        adaptor = compile_adaptor(RequestAdaptor(header=HeaderAdaptor(
            delete=("Host", "X-D"), set={"Expect": "100-continue", "X-S": "s"},
            add={"HOST": "h", "X-A": "a"})))
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert adaptor.apply_headers([(b"host", b"client"), (b"expect", b"100-continue"),
                                  (b"x-d", b"d")]) == [
        (b"host", b"client"), (b"expect", b"100-continue"), (b"x-s", b"s"), (b"x-a", b"a")]
    skipped = sorted((e["key"], e["name"]) for e in events if "key" in e)
    assert skipped == [("add", "HOST"), ("del", "Host"), ("set", "Expect")]


@pytest.mark.parametrize("host, kept", [
    ("a~b.example:8080", b"a~b.example:8080"),   # every printable ASCII is kept, up to ~
    ("x!y", b"x!y"),
    ("a\x7fb", None),                             # DEL
    ("a\x00b", None),                             # controls that are not white space
    ("a\x1fb", None),
    ("a\tb", None),
    ("a b", None),
    ("caf\u00e9", None),
])
def test_adaptor_host_is_kept_only_when_it_is_printable_ascii(host: str,
                                                              kept: bytes | None) -> None:
    adaptor = compile_adaptor(RequestAdaptor(host=host))
    assert adaptor is not None and adaptor.host == kept


# -- every decision pinned (mutation testing found these untested) --------------------------

def test_async_is_asked_by_header_or_by_path() -> None:
    assert head(b"/", [(b"x-faas-async", b" True ")]).async_call
    assert not head(b"/", [(b"x-faas-async", b"false")]).async_call
    assert not head(b"/").async_call
    h = head(b"/async-function/fn/x?q")
    assert resolve(h) == ("fn", b"/x?q") and h.async_call
    h = head(b"/function/fn/async-function/x")
    assert resolve(h) == ("fn", b"/async-function/x") and not h.async_call


def test_what_the_client_did_not_send_is_absent() -> None:
    """No call id (the async intake tells absent from invalid), no Expect, no body
    framing; an HTTP/1.0 request without Host gets no X-Forwarded-Host."""
    h = head(b"/", [(b"x-faas-func-name", b"fn")])
    assert h.call_id is None and not h.expect_continue and not h.chunked
    old = RequestHead(b"GET", b"/", [(b"x-faas-func-name", b"fn")], "10.1.2.3", http11=False)
    classify(old)
    data, _ = upstream_head(old, b"/", None, b"up", b"i")
    assert b"x-forwarded-host" not in data


def test_expect_100_continue_only() -> None:
    assert head(b"/", [(b"expect", b"100-Continue")]).expect_continue
    assert not head(b"/", [(b"expect", b"something")]).expect_continue
    assert not head(b"/", [(b"x-forwarded-proto", b"100-continue")]).expect_continue


def test_repeated_headers_are_joined() -> None:
    h = head(b"/", [(b"x-forwarded-for", b"1.1.1.1"), (b"x-forwarded-for", b"2.2.2.2"),
                    (b"transfer-encoding", b"gzip"), (b"transfer-encoding", b"chunked"),
                    (b"connection", b"keep-alive"), (b"connection", b"close")], method=b"POST")
    assert h.chunked and wants_close(h)
    data, _ = upstream_head(h, b"/", None, b"up", b"i")
    assert b"x-forwarded-for: 1.1.1.1, 2.2.2.2, 10.1.2.3\r\n" in data


@pytest.mark.parametrize("headers, message", [
    ([(b"content-length", b"x")], "invalid Content-Length header"),
    ([(b"content-length", b"1"), (b"content-length", b"2")], "invalid Content-Length header"),
    ([(b"transfer-encoding", b" , ")],
     "Transfer-Encoding: the final coding must be chunked (applied once)"),
])
def test_bad_framing_is_a_400_that_closes(headers, message) -> None:
    with pytest.raises(GateError) as caught:
        classify(RequestHead(b"POST", b"/", [(b"host", b"a"), *headers], "10.1.2.3"))
    assert (caught.value.code, caught.value.message, caught.value.close) == (400, message, True)


def test_a_gate_error_keeps_the_connection_unless_told() -> None:
    assert GateError(404, "not found").close is False


def test_error_headers_allow_on_405_only() -> None:
    allow = (b"allow", b"GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS")
    assert allow in error_headers(GateError(405, "no"), b"{}", None)
    assert all(name != b"allow" for name, _ in error_headers(GateError(406, "no"), b"{}", None))


@pytest.mark.parametrize("target, headers, namespace, expected", [
    (b"*", [(b"x-faas-func-name", b"fn")], b"", ("fn", b"*")),          # not absolute-form
    (b"/", [(b"x-faas-func-name", b"a" * 63)], b"", ("a" * 63, b"/")),
    (b"/function/" + b"a" * 63 + b"/x", [], b"", ("a" * 63, b"/x")),
    (b"/function/fn.prod/x", [], b"prod", ("fn", b"/x")),
])
def test_resolve_accepts(target, headers, namespace, expected) -> None:
    assert resolve(head(target, headers), namespace) == expected


@pytest.mark.parametrize("target, headers, namespace, code, message", [
    (b"/", [(b"x-faas-func-name", b"a" * 64)], b"", 400,
     f"X-FaaS-Func-Name: {'a' * 64!r} is not a function name (a DNS-1123 label)"),
    (b"/function/" + b"a" * 64 + b"/x", [], b"", 400,
     f"/function/{'a' * 64}: {'a' * 64!r} is not a function name (a DNS-1123 label)"),
    (b"/function/fn.prod/x", [], b"", 400,
     "/function/fn.prod: 'fn.prod' is not a function name (a DNS-1123 label)"),
    (b"/function/fn.dev/x", [], b"prod", 404,
     "namespace 'dev' not found; this gate serves prod"),
    # OpenFaaS answers 404 for a /function/ path without a name
    (b"/function/.prod", [], b"prod", 404, "/function/: no function named in the path"),
    (b"/function/", [], b"", 404, "/function/: no function named in the path"),
    (b"/function/?x=1", [], b"", 404, "/function/: no function named in the path"),
    (b"/async-function//x", [], b"", 404, "/async-function/: no function named in the path"),
    (b"/other", [], b"", 400,
     "no function named: send the X-FaaS-Func-Name header or call /function/{name}/..."),
])
def test_resolve_refuses_exactly(target, headers, namespace, code, message) -> None:
    with pytest.raises(GateError) as caught:
        resolve(head(target, headers), namespace)
    assert (caught.value.code, caught.value.message) == (code, message)


def test_call_ids_are_16_hex_digits_then_a_hex_counter_from_1() -> None:
    ids = CallIds()
    assert re.fullmatch(rb"[0-9a-f]{16}-", ids.prefix)
    assert [ids() for _ in range(16)][::15] == [ids.prefix + b"1", ids.prefix + b"10"]
    assert CallIds(b"fixed")() == b"fixed-1"


def test_a_backtracking_bomb_in_regexp_replace_answers_at_once() -> None:
    """Issue 21: ``^/(a+)+$`` against a 33-byte path froze the gate 8 s on Python's
    backtracking ``re``; on RE2 the time is linear in the path (microseconds here)."""
    import time

    adaptor = compile_adaptor(FunctionSpec.from_dict({"name": "f", "requestAdaptor": {
        "path": {"regexpReplace": {"regexp": "^/(a+)+$", "replace": "/matched/$1"}}}}
    ).request_adaptor)
    assert adaptor is not None
    path = b"/" + b"a" * 31 + b"!"
    assert len(path) == 33   # the path
    started = time.perf_counter()
    for _ in range(100):
        assert adaptor.apply_target(path + b"?q") == path + b"?q"   # no match: unchanged
    assert time.perf_counter() - started < 0.5
    # a path that matches is still rewritten as Go's regexp would
    assert adaptor.apply_target(b"/aaa?x=1") == b"/matched/aaa?x=1"


def test_regexp_replace_runs_on_re2() -> None:
    """Go (RE2) semantics where Python's differ: ``$`` is the end of the text only."""
    adaptor = compile_adaptor(FunctionSpec.from_dict({"name": "f", "requestAdaptor": {
        "path": {"regexpReplace": {"regexp": "^/x$", "replace": "/y"}}}}).request_adaptor)
    assert adaptor is not None
    assert adaptor.apply_target(b"/x") == b"/y"
    assert adaptor.apply_target(b"/x\n") == b"/x%0A"    # Python's $ would match here


def test_adaptor_header_values_with_control_characters_are_not_sent() -> None:
    """Specs refuse them; a record stored before that rule is defended at the gate."""
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        adaptor = compile_adaptor(RequestAdaptor(header=HeaderAdaptor(
            set={"X-Nul": "a\x00b", "X-Ok": "fine"}, add={"X-Vt": "a\x0bb", "X-Ff": "\x0c"})))
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert adaptor is not None
    assert adaptor.apply_headers([]) == [(b"x-ok", b"fine")]
    assert sorted((e["key"], e["name"]) for e in events if "key" in e) == [
        ("add", "X-Ff"), ("add", "X-Vt"), ("set", "X-Nul")]
