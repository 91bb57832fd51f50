"""Unit tests of the gate: the twisted.web resource through StubTreq, against an
in-memory upstream Site, all on one Clock (no sockets)."""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest
from treq.testing import StubTreq
from twisted.internet.defer import Deferred

from faastwist.model.fsm import Event, State, apply_event
from faastwist.providers.base import NoCapacity
from faastwist.gate.routes import RouteTable
from faastwist.gate.adaptor import compile_adaptor
from faastwist.model.spec import HeaderAdaptor, RequestAdaptor, SpecError
from faastwist.providers.registry import check_spec_for

from tests.support.gate import MemoryGate, function


class Answer:
    def __init__(self, response: Any, body: bytes) -> None:
        self.code = response.code
        self.headers = response.headers
        self.body = body

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name.encode())
        return values[0].decode() if values else None

    def json(self) -> Any:
        return json.loads(self.body)


@pytest.fixture
def gate() -> MemoryGate:
    g = MemoryGate(max_body_size=1000)
    g.add(function("demo10"))
    return g


def call(g: MemoryGate, method: str, url: str, headers: dict[str, Any] | None = None,
         data: bytes | None = None, stub: StubTreq | None = None,
         advance: float = 0.0) -> Answer:
    stub = stub or StubTreq(g.resource)
    d = stub.request(method, url, headers=headers, data=data)
    g.settle(stub.flush)
    if advance:
        g.clock.advance(advance)
        g.settle(stub.flush)
    responses: list[Any] = []
    d.addBoth(responses.append)
    assert responses, "no response"
    response = responses[0]
    if not hasattr(response, "code"):
        response.raiseException()
    body_d = response.content()
    g.settle(stub.flush)
    bodies: list[Any] = []
    body_d.addBoth(bodies.append)
    assert bodies and isinstance(bodies[0], bytes), bodies
    return Answer(response, bodies[0])


def invoke(g: MemoryGate, path: str = "/", name: str = "demo10", method: str = "GET",
           headers: dict[str, Any] | None = None, data: bytes | None = None,
           advance: float = 0.0) -> Answer:
    all_headers = {"X-FaaS-Func-Name": name}
    all_headers.update(headers or {})
    return call(g, method, "http://gate.example" + path, all_headers, data, advance=advance)


def watch(d: Deferred) -> list[Any]:
    """A list that gets the Deferred's result when it has one (``called`` is not
    enough: a Deferred waiting on a chained one is already ``called``)."""
    out: list[Any] = []

    def keep(result: Any) -> Any:
        out.append(result)
        return result

    d.addBoth(keep)
    return out


def assert_gate_error(answer: Answer, code: int, *fragments: str) -> dict[str, Any]:
    assert answer.code == code, answer.body
    assert answer.header("X-FaaS-Gate-Error") == "true"
    assert answer.header("Content-Type") == "application/json"
    payload = answer.json()
    assert payload["code"] == code
    for fragment in fragments:
        assert fragment in payload["message"], payload
    return payload


# -- the seed's invocation -----------------------------------------------------------------

def test_header_routed_call_reaches_the_function_with_its_knative_host(gate: MemoryGate) -> None:
    answer = invoke(gate, "/hello?x=1", method="POST", data=b'{"n": 10}',
                    headers={"Content-Type": "application/json"})
    assert answer.code == 200
    seen = answer.json()
    assert seen["method"] == "POST"
    assert seen["uri"] == "/hello?x=1"
    assert seen["headers"]["host"] == ["demo10.fns.example.com"]
    assert seen["body"] == '{"n": 10}'
    assert seen["headers"]["content-length"] == ["9"]
    assert "transfer-encoding" not in seen["headers"]


def test_function_path_forwards_the_rest_of_the_path_and_query(gate: MemoryGate) -> None:
    answer = call(gate, "GET", "http://gate.example/function/demo10/api/items?page=2")
    assert answer.code == 200
    assert answer.json()["uri"] == "/api/items?page=2"
    bare = call(gate, "GET", "http://gate.example/function/demo10")
    assert bare.json()["uri"] == "/"
    query_only = call(gate, "GET", "http://gate.example/function/demo10?a=b")
    assert query_only.json()["uri"] == "/?a=b"


def test_header_wins_over_function_path_and_path_is_kept(gate: MemoryGate) -> None:
    gate.add(function("other"))
    answer = invoke(gate, "/function/other/x", name="demo10")
    assert answer.json()["uri"] == "/function/other/x"
    assert answer.json()["headers"]["host"] == ["demo10.fns.example.com"]


# -- every error code -------------------------------------------------------------------------

def test_no_header_and_no_function_path_is_400(gate: MemoryGate) -> None:
    answer = call(gate, "GET", "http://gate.example/api")
    assert_gate_error(answer, 400, "X-FaaS-Func-Name", "/function/{name}/")


def test_invalid_function_name_is_400_naming_the_header(gate: MemoryGate) -> None:
    answer = invoke(gate, name="Not_A_Name")
    assert_gate_error(answer, 400, "X-FaaS-Func-Name", "Not_A_Name")
    path = call(gate, "GET", "http://gate.example/function/BAD!/x")
    assert_gate_error(path, 400, "BAD!")


def test_unknown_function_is_404(gate: MemoryGate) -> None:
    answer = invoke(gate, name="demo")  # a prefix of demo10: exact names only
    assert_gate_error(answer, 404, "function demo not found")
    assert gate.provider.out == 0


@pytest.mark.parametrize("state", [State.INACTIVE, State.INITIAL, State.FAILED])
def test_known_but_not_active_is_503_with_state_and_retry_after(state: State) -> None:
    g = MemoryGate()
    g.add(function("sleepy"), state)
    answer = invoke(g, name="sleepy")
    assert_gate_error(answer, 503, "sleepy", f"state: {state.value}")
    assert answer.header("Retry-After") == "5"
    assert g.upstream.requests == []


def test_no_capacity_is_503_with_the_providers_message_and_retry_after(gate: MemoryGate) -> None:
    gate.provider.fail_with = NoCapacity("no replica of demo10 became ready within 30s",
                                         retry_after=7)
    answer = invoke(gate)
    assert_gate_error(answer, 503, "no replica of demo10 became ready within 30s")
    assert answer.header("Retry-After") == "7"


def test_a_provider_failure_that_is_not_no_capacity_is_503_with_retry_after_5(
        gate: MemoryGate) -> None:
    """Any other exception from acquire (a provider bug, a lost API client) is logged
    and answered 503 with Retry-After: 5, never a traceback or a hung request."""
    from twisted.logger import globalLogPublisher

    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        gate.provider.fail_with = RuntimeError("the API client is gone")
        answer = invoke(gate)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert_gate_error(answer, 503, "no upstream for function demo10: the API client is gone")
    assert answer.header("Retry-After") == "5"
    assert gate.upstream.requests == []
    logged = [e for e in events if e.get("log_failure") is not None]
    assert [e["function"] for e in logged] == ["demo10"]
    assert logged[0]["log_failure"].check(RuntimeError)


def test_a_provider_failure_after_a_wait_is_503_with_retry_after_5(gate: MemoryGate) -> None:
    from faastwist.providers.base import ProviderError

    later: Deferred = Deferred()
    gate.provider.acquire = lambda spec: later  # type: ignore[method-assign]
    stub = StubTreq(gate.resource)
    d = stub.get("http://gate.example/", headers={"X-FaaS-Func-Name": "demo10"})
    got = watch(d)
    gate.settle(stub.flush)
    assert not got
    later.errback(ProviderError("backend unreachable"))
    gate.settle(stub.flush)
    response = got[0]
    assert response.code == 503
    assert response.headers.getRawHeaders(b"Retry-After") == [b"5"]
    body = watch(response.content())
    gate.settle(stub.flush)
    assert json.loads(body[0]) == {
        "code": 503, "message": "no upstream for function demo10: backend unreachable"}
    assert gate.upstream.requests == []


def test_refused_upstream_is_502(gate: MemoryGate) -> None:
    gate.connector.refuse = True
    answer = invoke(gate)
    assert_gate_error(answer, 502, "demo10", "refused")
    assert gate.counter("faastwist_gate_upstream_errors_total",
                        {"function_name": "demo10", "kind": "refused"}) == 1


def test_upstream_reset_is_502(gate: MemoryGate) -> None:
    answer = invoke(gate, "/reset")
    assert_gate_error(answer, 502, "demo10")
    assert gate.counter("faastwist_gate_upstream_errors_total",
                        {"function_name": "demo10", "kind": "reset"}) == 1


def test_upstream_timeout_is_504_after_the_functions_timeout() -> None:
    g = MemoryGate()
    g.add(function("slow", timeout="3s"))
    stub = StubTreq(g.resource)
    d = stub.get("http://gate.example/hang", headers={"X-FaaS-Func-Name": "slow"})
    got = watch(d)
    g.settle(stub.flush)
    g.clock.advance(2.9)
    g.settle(stub.flush)
    assert not got
    g.clock.advance(0.2)
    g.settle(stub.flush)
    responses: list[Any] = []
    d.addBoth(responses.append)
    body_d = responses[0].content()
    g.settle(stub.flush)
    answer = Answer(responses[0], body_d.result)
    assert_gate_error(answer, 504, "slow did not answer within 3s")
    assert g.provider.released == g.provider.out == 1
    # the upstream connection was dropped, not pooled: its request is still running
    assert g.pool.idle_count() == 0


def test_default_timeout_is_60s(gate: MemoryGate) -> None:
    stub = StubTreq(gate.resource)
    d = stub.get("http://gate.example/hang", headers={"X-FaaS-Func-Name": "demo10"})
    got = watch(d)
    gate.settle(stub.flush)
    gate.clock.advance(59.9)
    gate.settle(stub.flush)
    assert not got
    gate.clock.advance(0.2)
    gate.settle(stub.flush)
    assert got and got[0].code == 504


def test_body_over_the_limit_is_413(gate: MemoryGate) -> None:
    answer = invoke(gate, method="POST", data=b"x" * 1001)
    assert_gate_error(answer, 413, "1001", "maxBodySize")
    assert gate.upstream.requests == []
    within = invoke(gate, method="POST", data=b"x" * 1000)
    assert within.code == 200


def test_upstream_error_statuses_pass_through_without_the_gate_error_header(
        gate: MemoryGate) -> None:
    answer = invoke(gate, "/status/500")
    assert answer.code == 500
    assert answer.header("X-FaaS-Gate-Error") is None
    assert answer.body == b"status"


# -- header hygiene and the call id ---------------------------------------------------------------

def test_hop_by_hop_and_connection_named_headers_are_not_forwarded(gate: MemoryGate) -> None:
    answer = invoke(gate, headers={
        "Connection": "keep-alive, X-Private",
        "X-Private": "secret",
        "Keep-Alive": "timeout=5",
        "TE": "trailers",
        "Upgrade": "websocket",
        "Proxy-Authorization": "Basic abc",
        "Proxy-Connection": "keep-alive",
        "Trailer": "X-Checksum",
        "X-Kept": "yes",
    })
    headers = answer.json()["headers"]
    for name in ("connection", "x-private", "keep-alive", "te", "upgrade",
                 "proxy-authorization", "proxy-connection", "trailer"):
        assert name not in headers, name
    assert headers["x-kept"] == ["yes"]


def test_forwarded_headers_are_set_and_appended(gate: MemoryGate) -> None:
    answer = invoke(gate, headers={"X-Forwarded-For": "203.0.113.9",
                                   "X-Forwarded-Proto": "https",
                                   "X-Forwarded-Host": "spoofed.example"})
    headers = answer.json()["headers"]
    assert headers["x-forwarded-for"] == ["203.0.113.9, 127.0.0.1"]
    assert headers["x-forwarded-proto"] == ["http"]
    assert headers["x-forwarded-host"] == ["gate.example"]


def test_response_hop_by_hop_headers_are_stripped_and_call_id_is_the_gates(
        gate: MemoryGate) -> None:
    answer = invoke(gate, "/hop", headers={"X-Call-Id": "client-42"})
    assert answer.header("X-Secret") is None
    assert answer.header("Keep-Alive") is None
    assert answer.header("Trailer") is None
    assert answer.header("Proxy-Authenticate") is None
    assert answer.header("Upgrade") is None
    assert answer.header("X-Kept") == "yes"
    assert answer.headers.getRawHeaders(b"X-Call-Id") == [b"client-42"]


def test_call_id_is_generated_when_absent_and_echoed(gate: MemoryGate) -> None:
    first = invoke(gate)
    second = invoke(gate)
    call_id = first.header("X-Call-Id")
    assert call_id and call_id != second.header("X-Call-Id")
    assert first.json()["headers"]["x-call-id"] == [call_id]


def test_call_id_from_the_client_is_kept(gate: MemoryGate) -> None:
    answer = invoke(gate, headers={"X-Call-Id": "abc-123"})
    assert answer.header("X-Call-Id") == "abc-123"
    assert answer.json()["headers"]["x-call-id"] == ["abc-123"]


def test_gate_errors_carry_the_call_id(gate: MemoryGate) -> None:
    answer = invoke(gate, name="missing", headers={"X-Call-Id": "trace-me"})
    assert answer.header("X-Call-Id") == "trace-me"


# -- the request adaptor ----------------------------------------------------------------------

def adapted(adaptor: dict[str, Any], path: str = "/api/v1/items?q=1",
            headers: dict[str, Any] | None = None, method: str = "POST",
            data: bytes = b"original") -> dict[str, Any]:
    g = MemoryGate()
    g.add(function("fn", requestAdaptor=adaptor))
    answer = invoke(g, path, name="fn", method=method, headers=headers, data=data)
    assert answer.code == 200, answer.body
    return answer.json()


def test_adaptor_method() -> None:
    assert adapted({"method": "put"})["method"] == "PUT"


@pytest.mark.parametrize("path_adaptor, expected", [
    ({"replace": "/only"}, "/only?q=1"),
    ({"replace": "/only", "addPrefix": "/ignored"}, "/only?q=1"),
    ({"addPrefix": "/v2"}, "/v2/api/v1/items?q=1"),
    ({"trimPrefix": "/api"}, "/v1/items?q=1"),
    ({"trimPrefix": "/api", "addPrefix": "/svc"}, "/svc/v1/items?q=1"),
    ({"trimPrefix": "/nomatch"}, "/api/v1/items?q=1"),
    ({"regexpReplace": {"regexp": "^/api/(v[0-9]+)/(.*)$", "replace": "/$2/${1}"}},
     "/items/v1?q=1"),
    ({"trimPrefix": "/api", "regexpReplace": {"regexp": "^/v1", "replace": "/version-one"}},
     "/version-one/items?q=1"),
])
def test_adaptor_path(path_adaptor: dict[str, Any], expected: str) -> None:
    assert adapted({"path": path_adaptor})["uri"] == expected


def test_adaptor_headers_delete_then_set_then_add() -> None:
    seen = adapted({"header": {
        "del": ["X-Remove", "X-Reset"],
        "set": {"X-Reset": "new", "X-Single": "one"},
        "add": {"X-Single": "two", "X-Extra": "e"},
    }}, headers={"X-Remove": "gone", "X-Reset": ["a", "b"], "X-Single": "client"})
    headers = seen["headers"]
    assert "x-remove" not in headers
    assert headers["x-reset"] == ["new"]
    assert headers["x-single"] == ["one", "two"]
    assert headers["x-extra"] == ["e"]


def test_adaptor_host_replaces_the_providers_host() -> None:
    seen = adapted({"host": "api.example.org"})
    assert seen["headers"]["host"] == ["api.example.org"]


def test_adaptor_body_replaces_the_body_with_its_length() -> None:
    seen = adapted({"body": '{"fixed": true}'}, data=b"client body is dropped")
    assert seen["body"] == '{"fixed": true}'
    assert seen["headers"]["content-length"] == [str(len('{"fixed": true}'))]


def test_adaptor_cannot_touch_framing_headers() -> None:
    # refused at admission (400 naming the field) ...
    with pytest.raises(SpecError, match="requestAdaptor.header.set: 'Content-Length'"):
        adapted({"header": {"set": {"Content-Length": "1", "X-Ok": "1"}}}, data=b"12345")
    # ... and ignored by the gate should such an adaptor reach it anyway
    compiled = compile_adaptor(RequestAdaptor(header=HeaderAdaptor(
        set={"Content-Length": "1", "Connection": "close", "X-Ok": "1"})))
    assert compiled is not None
    assert compiled.apply_headers([(b"content-length", b"5")]) == [
        (b"content-length", b"5"), (b"x-ok", b"1")]


def test_adaptor_order_all_together() -> None:
    """Every step at once, in the README's order: method; path trimPrefix, addPrefix,
    regexpReplace (query kept); headers del, set, add; host; body (and its length).

    The regexp only matches the path after trimPrefix *and* addPrefix ran, and the
    header values tell del/set/add apart, so any reordering changes the result."""
    seen = adapted({
        "method": "PATCH",
        "path": {"trimPrefix": "/api", "addPrefix": "/fn",
                 "regexpReplace": {"regexp": "^/fn/(v[0-9]+)/(.*)$", "replace": "/$2/${1}"}},
        "header": {"del": ["X-A", "X-Gone"], "set": {"X-A": "set", "X-B": "set"},
                   "add": {"X-A": "added", "X-C": "added"}},
        "host": "custom.example",
        "body": "B",
    }, headers={"X-A": ["client", "client2"], "X-B": "client", "X-Gone": "client",
                "X-Kept": "client"}, method="GET", data=b"the client's body")
    assert seen["method"] == "PATCH"
    assert seen["uri"] == "/items/v1?q=1"
    headers = seen["headers"]
    assert headers["x-a"] == ["set", "added"]
    assert headers["x-b"] == ["set"]
    assert headers["x-c"] == ["added"]
    assert "x-gone" not in headers
    assert headers["x-kept"] == ["client"]
    assert headers["host"] == ["custom.example"]
    assert headers["content-length"] == ["1"]
    assert seen["body"] == "B"


@pytest.mark.parametrize("path_adaptor, expected", [
    # each pair of steps in the wrong order gives a different path than the right one
    ({"trimPrefix": "/api", "addPrefix": "/api"}, "/api/v1/items"),    # add-then-trim: /v1/...
    ({"addPrefix": "/fn", "regexpReplace": {"regexp": "^/fn", "replace": "/x"}},
     "/x/api/v1/items"),                                                # regexp first: /fn/api
    ({"trimPrefix": "/api", "regexpReplace": {"regexp": "^/api", "replace": "/y"}},
     "/v1/items"),                                                      # regexp first: /y/v1
    ({"regexpReplace": {"regexp": "^/api/v1/items$", "replace": "items"}}, "/items"),
])
def test_adaptor_path_steps_run_in_order(path_adaptor: dict[str, Any], expected: str) -> None:
    assert adapted({"path": path_adaptor}, path="/api/v1/items")["uri"] == expected


# -- routes follow the store ------------------------------------------------------------------

def test_a_stop_written_to_the_store_makes_the_next_request_503(gate: MemoryGate) -> None:
    assert invoke(gate).code == 200
    record = gate.store.get("demo10").result
    gate.store.update(record, status=apply_event(record.status, Event.STOP, 1.0))
    answer = invoke(gate)
    assert_gate_error(answer, 503, "state: inactive")
    record = gate.store.get("demo10").result
    started = apply_event(apply_event(record.status, Event.START, 2.0), Event.READY, 3.0)
    gate.store.update(record, status=started)
    assert invoke(gate).code == 200


def test_an_updated_adaptor_applies_to_the_next_request(gate: MemoryGate) -> None:
    record = gate.store.get("demo10").result
    spec = attrs.evolve(record.spec, request_adaptor=function(
        "demo10", requestAdaptor={"path": {"addPrefix": "/v9"}}).request_adaptor)
    gate.store.update(record, spec=spec)
    assert invoke(gate, "/x").json()["uri"] == "/v9/x"


def test_routes_not_loaded_yet_is_503() -> None:
    g = MemoryGate()
    g.add(function("demo10"))
    g.store.available = False
    g.routes.stopService()
    g.context.routes = routes = RouteTable(g.store, g.clock)
    routes.startService()
    answer = invoke(g)
    assert_gate_error(answer, 503, "route table")
    assert answer.header("Retry-After") == "1"


# -- leases, connections, metrics ----------------------------------------------------------------

def test_leases_are_released_on_success_and_error(gate: MemoryGate) -> None:
    invoke(gate)
    invoke(gate, "/reset")
    invoke(gate, "/status/404")
    assert gate.provider.out == gate.provider.released == 3


def test_upstream_connections_are_reused(gate: MemoryGate) -> None:
    stub = StubTreq(gate.resource)
    for _ in range(5):
        assert call(gate, "GET", "http://g/", {"X-FaaS-Func-Name": "demo10"},
                    stub=stub).code == 200
    assert len(gate.connector.connections) == 1
    assert gate.pool.idle_count() == 1


def test_a_pooled_connection_the_upstream_dropped_is_retried_once(gate: MemoryGate) -> None:
    stub = StubTreq(gate.resource)
    assert call(gate, "GET", "http://g/", {"X-FaaS-Func-Name": "demo10"}, stub=stub).code == 200
    (client_end, server_end), = gate.connector.connections
    # the upstream has closed it meanwhile: whatever we send on it now gets a reset
    server_end.protocol.dataReceived = lambda data: server_end.abortConnection()
    answer = call(gate, "POST", "http://g/again", {"X-FaaS-Func-Name": "demo10"},
                  data=b"payload", stub=stub)
    assert answer.code == 200
    assert answer.json()["uri"] == "/again" and answer.json()["body"] == "payload"
    assert len(gate.connector.connections) == 2


def test_a_fresh_connection_that_fails_is_not_retried(gate: MemoryGate) -> None:
    answer = invoke(gate, "/reset")
    assert_gate_error(answer, 502)
    assert len(gate.connector.connections) == 1


def test_waiting_for_a_lease_then_proxying(gate: MemoryGate) -> None:
    gate.provider.delay = Deferred()
    stub = StubTreq(gate.resource)
    d = stub.get("http://gate.example/", headers={"X-FaaS-Func-Name": "demo10"})
    got = watch(d)
    gate.settle(stub.flush)
    assert not got and gate.upstream.requests == []
    gate.provider.delay.callback(None)
    gate.settle(stub.flush)
    assert got[0].code == 200


def test_timeout_while_waiting_for_a_lease_is_504_and_cancels_the_wait(
        gate: MemoryGate) -> None:
    gate.provider.delay = Deferred()
    answer = invoke(gate, advance=60.0)
    assert_gate_error(answer, 504, "demo10 did not answer within 60s")
    assert gate.provider.cancelled == ["demo10"]
    gate.provider.delay.callback(None)
    assert gate.provider.out == gate.provider.released == 0
    assert gate.upstream.requests == []


def test_client_disconnect_aborts_the_upstream_request(gate: MemoryGate) -> None:
    stub = StubTreq(gate.resource)
    stub.get("http://gate.example/hang", headers={"X-FaaS-Func-Name": "demo10"})
    gate.settle(stub.flush)
    (hanging,) = gate.upstream.hanging
    assert not hanging._disconnected
    client_side = next(iter(stub._agent._pumps))
    client_side.clientIO.abortConnection()
    stub.flush()
    gate.settle(stub.flush)
    assert hanging._disconnected
    assert gate.provider.released == 1
    assert gate.counter("gateway_function_invocation_total",
                        {"function_name": "demo10", "code": "499"}) == 1
    assert gate.context.inflight == 0


def test_metrics_count_invocations_by_code(gate: MemoryGate) -> None:
    invoke(gate)
    invoke(gate, "/status/500")
    invoke(gate, "/reset")
    labels = {"function_name": "demo10"}
    assert gate.counter("gateway_function_invocation_total", {**labels, "code": "200"}) == 1
    assert gate.counter("gateway_function_invocation_total", {**labels, "code": "500"}) == 1
    assert gate.counter("gateway_function_invocation_total", {**labels, "code": "502"}) == 1
    assert gate.counter("gateway_function_invocation_started_total", labels) == 3
    assert gate.counter("gateway_function_inflight_requests", labels) == 0
    assert gate.counter("gateway_functions_seconds_count", {**labels, "code": "200"}) == 1
    assert gate.counter("faastwist_gate_response_bytes_total", labels) > 0


def test_streamed_response_arrives_in_order(gate: MemoryGate) -> None:
    answer = invoke(gate, "/chunks", advance=4.0)
    assert answer.code == 200
    assert answer.body == b"chunk0;chunk1;chunk2;"


# -- the admin API and the gate share the store --------------------------------------------------

def test_a_stop_through_the_admin_api_makes_the_very_next_request_503(gate: MemoryGate) -> None:
    from faastwist.admin.api import AdminAPI

    kicked: list[str] = []
    admin = AdminAPI(gate.store, "faascontroller",
                     check_spec=lambda spec: check_spec_for("knative", spec),
                     kick=kicked.append, clock=gate.clock)
    admin_client = StubTreq(admin.resource())
    assert invoke(gate).code == 200
    d = admin_client.put("http://admin/apis/v2/faas/faascontroller/demo10/stop")
    gate.settle(admin_client.flush)
    assert watch(d)[0].code == 200
    answer = invoke(gate)
    assert_gate_error(answer, 503, "demo10 is not active (state: inactive)")
    assert kicked == ["demo10"]


def test_access_log_has_one_line_per_request_with_named_fields(gate: MemoryGate) -> None:
    from twisted.logger import globalLogPublisher

    events: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "faastwist.access":
            events.append(event)

    gate.context.access_log = True
    globalLogPublisher.addObserver(observe)
    try:
        invoke(gate, "/p?q=1", method="POST", data=b"abc", headers={"X-Call-Id": "c-1"})
        invoke(gate, name="missing")
    finally:
        globalLogPublisher.removeObserver(observe)
    assert len(events) == 2
    first = events[0]
    assert (first["function"], first["method"], first["path"], first["status"],
            first["call_id"]) == ("demo10", "POST", "/p?q=1", 200, "c-1")
    assert first["bytes"] > 0 and first["duration"] >= 0
    assert (events[1]["function"], events[1]["status"]) == ("missing", 404)
    gate.context.access_log = False
    invoke(gate)
    assert len(events) == 2


# -- OpenFaaS: /system/* relayed to the admin listener, namespaces, timing headers ---------

def test_system_paths_and_healthz_go_to_the_admin_listener_when_served(gate: MemoryGate) -> None:
    assert call(gate, "GET", "http://gate.example/system/info").code == 400  # not served yet
    gate.context.serve_system("127.0.0.1", 2381, "openfaas-fn")
    for path in ("/system/info", "/system/functions?x=1", "/healthz", "/healthz?full=1"):
        answer = call(gate, "POST", "http://gate.example" + path, data=b'{"a": 1}')
        assert answer.code == 200, path
        seen = answer.json()
        assert seen["uri"] == path and seen["body"] == '{"a": 1}'
        assert seen["headers"]["host"] == ["127.0.0.1:2381"]
    # a function named by header is a function call, whatever its path
    assert invoke(gate, "/system/info").json()["headers"]["host"] == ["demo10.fns.example.com"]
    assert_gate_error(call(gate, "GET", "http://gate.example/healthzz"), 400)
    assert gate.counter("gateway_function_invocation_started_total",
                        {"function_name": "openfaas-api"}) == 0


def test_function_path_may_name_the_one_namespace(gate: MemoryGate) -> None:
    gate.context.serve_system("::1", 2381, "openfaas-fn")
    assert call(gate, "GET", "http://gate.example/system/info").json()["headers"]["host"] == [
        "[::1]:2381"]
    answer = call(gate, "GET", "http://gate.example/function/demo10.openfaas-fn/x?y=1")
    assert answer.code == 200 and answer.json()["uri"] == "/x?y=1"
    assert_gate_error(call(gate, "GET", "http://gate.example/function/demo10.other/x"), 404,
                      "namespace 'other' not found")


def test_answers_carry_start_time_and_duration(gate: MemoryGate) -> None:
    gate.clock.advance(1_700_000_000.25)
    answer = invoke(gate, "/hello")
    assert answer.header("X-Start-Time") == "1700000000250000000"
    assert float(answer.header("X-Duration-Seconds")) >= 0.0


# -- invocation keys and rate limits ---------------------------------------------------------

def test_a_function_with_keys_needs_one_before_any_upstream_work() -> None:
    from faastwist.model.keys import KeySet, new_key

    g = MemoryGate()
    g.add(function("locked"))
    first, entry1 = new_key("2026-01-01T00:00:00Z")
    second, entry2 = new_key("2026-01-02T00:00:00Z")
    g.store.put_keys("locked", KeySet((entry1, entry2)), 0)
    missing = invoke(g, name="locked")
    assert assert_gate_error(missing, 401)["message"] == (
        "function locked needs a key: send it as 'Authorization: Bearer KEY' or "
        "'X-API-Key: KEY'")
    assert missing.header("WWW-Authenticate") == 'Bearer realm="faastwist function"'
    wrong = assert_gate_error(invoke(g, name="locked", headers={"X-API-Key": "fk_wrong"}), 401)
    assert wrong["message"] == "function locked: the key is not valid"
    assert g.upstream.requests == [] and g.provider.out == 0
    assert g.counter("faastwist_gate_unauthorized_total", {"function_name": "locked"}) == 2
    # both keys are valid at once (rotation); the key itself is not forwarded
    for headers in ({"X-API-Key": first}, {"Authorization": f"Bearer {second}"}):
        answer = invoke(g, name="locked", headers=headers)
        assert answer.code == 200, answer.body
        sent = {k.lower() for k in answer.json()["headers"]}
        assert "x-api-key" not in sent and "authorization" not in sent
    # revoking one: the other still works, the revoked one is refused at once
    g.store.put_keys("locked", KeySet((entry2,)), g.store._keys["locked"][1])
    assert invoke(g, name="locked", headers={"X-API-Key": first}).code == 401
    assert invoke(g, name="locked", headers={"X-API-Key": second}).code == 200


def test_rate_limit_is_a_token_bucket_per_function_with_exact_retry_after() -> None:
    g = MemoryGate()
    g.add(function("limited", rateLimit={"rps": 0.5, "burst": 2}))
    g.add(function("free"))
    assert [invoke(g, name="limited").code for _ in range(2)] == [200, 200]
    refused = invoke(g, name="limited")
    assert_gate_error(refused, 429, "over its rate limit of 0.5 requests/s (burst 2) "
                                    "on this node")
    assert refused.header("Retry-After") == "2"        # one token at 0.5/s: 2 s
    g.clock.advance(1.5)
    assert invoke(g, name="limited").header("Retry-After") == "1"   # 0.5 s left
    g.clock.advance(0.5)
    assert invoke(g, name="limited").code == 200
    assert [invoke(g, name="free").code for _ in range(5)] == [200] * 5
    assert g.counter("faastwist_gate_rate_limited_total", {"function_name": "limited"}) == 2
