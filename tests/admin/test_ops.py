"""OpsAPI over a real Site through StubTreq: /metrics, /healthz, /readyz, info, compose."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from klein import Klein
from prometheus_client.parser import text_string_to_metric_families
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from faastwist.model.fsm import State
from faastwist.metrics import Metrics
from faastwist.admin.ops import OpsAPI, compose, node_info

BASE = "http://admin.test"


def _result(d: Deferred) -> Any:
    box: list[Any] = []
    d.addBoth(box.append)
    assert box, "the request did not complete"
    if hasattr(box[0], "raiseException"):
        box[0].raiseException()
    return box[0]


def _get(stub: StubTreq, path: str, **kwargs: Any) -> tuple[int, dict, bytes]:
    response = _result(stub.get(BASE + path, **kwargs))
    body = _result(response.content())
    headers = {k.decode().lower(): [v.decode() for v in vs]
               for k, vs in response.headers.getAllRawHeaders()}
    return response.code, headers, body


def _ops(checks: dict | None = None, clock: Clock | None = None,
         metrics: Metrics | None = None) -> tuple[OpsAPI, StubTreq]:
    clock = clock or Clock()
    info = node_info("9.9.9", "process", "faascontroller", "host-1", started_at=100.0,
                     is_leader=lambda: True, wall_clock=lambda: 142.5)
    api = OpsAPI(metrics or Metrics(), checks or {}, info, clock, check_timeout=2.0)
    return api, StubTreq(api.resource())


def test_metrics_scrape_shows_the_values_set() -> None:
    metrics = Metrics()
    metrics.invocations.labels("demo", "200").inc(3)
    metrics.invocations.labels("demo", "502").inc()
    metrics.invocation_started.labels("demo").inc(4)
    for seconds in (0.004, 0.2, 0.2, 3.0):
        metrics.invocation_seconds.labels("demo", "200").observe(seconds)
    metrics.inflight.labels("demo").set(2)
    metrics.upstream_errors.labels("demo", "refused").inc()
    metrics.set_state("demo", State.ACTIVE)
    metrics.transitions.labels("initial", "active", "ready").inc()
    metrics.reconcile_seconds.observe(0.03)
    metrics.provider_calls.labels("observe", "200").inc(5)
    metrics.leader.set(1)
    _, stub = _ops(metrics=metrics)

    code, headers, body = _get(stub, "/metrics")
    assert code == 200
    assert headers["content-type"] == ["text/plain; version=0.0.4; charset=utf-8"]
    parsed = list(text_string_to_metric_families(body.decode()))
    families = {family.name: family for family in parsed}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in parsed for s in family.samples}
    assert samples[("gateway_function_invocation_total",
                    (("code", "200"), ("function_name", "demo")))] == 3
    assert samples[("gateway_function_invocation_total",
                    (("code", "502"), ("function_name", "demo")))] == 1
    assert samples[("gateway_function_invocation_started_total",
                    (("function_name", "demo"),))] == 4
    assert samples[("gateway_function_invocation_started", (("function_name", "demo"),))] == 4
    assert samples[("gateway_function_inflight_requests", (("function_name", "demo"),))] == 2
    assert samples[("faastwist_gate_upstream_errors_total",
                    (("function_name", "demo"), ("kind", "refused")))] == 1
    assert samples[("faastwist_function_state",
                    (("function_name", "demo"), ("state", "active")))] == 1
    assert samples[("faastwist_function_state",
                    (("function_name", "demo"), ("state", "failed")))] == 0
    assert samples[("faastwist_fsm_transitions_total",
                    (("event", "ready"), ("from", "initial"), ("to", "active")))] == 1
    assert samples[("faastwist_provider_api_calls_total", (("code", "200"), ("verb", "observe")))] == 5
    assert samples[("faastwist_leader", ())] == 1
    assert samples[("faastwist_reconcile_pass_seconds_count", ())] == 1

    histogram = families["gateway_functions_seconds"]
    assert histogram.type == "histogram"
    buckets = {s.labels["le"]: s.value for s in histogram.samples
               if s.name == "gateway_functions_seconds_bucket"}
    assert buckets["0.005"] == 1
    assert buckets["0.1"] == 1
    assert buckets["0.25"] == 3
    assert buckets["2.5"] == 3
    assert buckets["5.0"] == 4
    assert buckets["+Inf"] == 4
    count = [s.value for s in histogram.samples if s.name == "gateway_functions_seconds_count"]
    total = [s.value for s in histogram.samples if s.name == "gateway_functions_seconds_sum"]
    assert count == [4] and total == [pytest.approx(3.404)]


def test_metrics_text_format_even_when_openmetrics_is_offered() -> None:
    metrics = Metrics()
    metrics.invocations.labels("demo", "200").inc()
    metrics.invocation_started.labels("demo").inc(2)
    _, stub = _ops(metrics=metrics)
    code, headers, body = _get(stub, "/metrics", headers={
        "Accept": "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"})
    assert code == 200
    assert headers["content-type"] == ["text/plain; version=0.0.4; charset=utf-8"]
    families = {f.name: f for f in text_string_to_metric_families(body.decode())
                if f.type == "unknown"}
    # OpenFaaS's bare name (what its dashboards and idlers query) and the counter's name
    bare = families["gateway_function_invocation_started"]
    assert bare.type == "unknown"
    assert [(s.name, s.labels, s.value) for s in bare.samples] == [
        ("gateway_function_invocation_started", {"function_name": "demo"}, 2.0)]
    assert b'gateway_function_invocation_started_total{function_name="demo"} 2.0' in body
    assert b'gateway_function_invocation_total{code="200",function_name="demo"} 1.0' in body


def test_healthz_is_process_alive_even_when_checks_fail() -> None:
    _, stub = _ops({"store": lambda: fail(ConnectionRefusedError("etcd down"))})
    code, headers, body = _get(stub, "/healthz")
    assert code == 200 and json.loads(body) == {"status": "ok"}
    assert headers["content-type"] == ["application/json"]


def test_readyz_ok_when_every_check_passes() -> None:
    calls: list[str] = []

    def check(name: str):
        return lambda: calls.append(name) or succeed(None)

    _, stub = _ops({"store": check("store"), "watch": check("watch"),
                    "provider": check("provider")})
    code, _, body = _get(stub, "/readyz")
    assert code == 200
    assert json.loads(body) == {"status": "ok",
                                "checks": {"provider": "ok", "store": "ok", "watch": "ok"}}
    assert sorted(calls) == ["provider", "store", "watch"]


def test_readyz_names_the_failing_parts() -> None:
    def raises() -> None:
        raise RuntimeError("watch is 12s behind")

    _, stub = _ops({"store": lambda: fail(ConnectionRefusedError("etcd 127.0.0.1:2379 refused")),
                    "watch": raises, "provider": lambda: succeed(None)})
    code, _, body = _get(stub, "/readyz")
    assert code == 503
    document = json.loads(body)
    assert document["code"] == 503
    assert document["message"] == ("not ready: store: etcd 127.0.0.1:2379 refused; "
                                   "watch: watch is 12s behind")
    assert document["checks"] == {"provider": "ok", "store": "etcd 127.0.0.1:2379 refused",
                                  "watch": "watch is 12s behind"}


def test_readyz_check_timeout_is_503() -> None:
    clock = Clock()
    hanging: Deferred[None] = Deferred()
    _, stub = _ops({"provider": lambda: hanging, "store": lambda: succeed(None)}, clock=clock)
    pending = stub.get(BASE + "/readyz")
    box: list[Any] = []
    pending.addBoth(box.append)
    assert box == []                  # still waiting on the provider
    clock.advance(1.9)
    assert box == []
    clock.advance(0.1)
    stub.flush()
    response = box[0]
    body = json.loads(_result(response.content()))
    assert response.code == 503
    assert body["message"] == "not ready: provider: timed out after 2s"
    assert body["checks"]["store"] == "ok"
    assert hanging.called             # cancelled by the timeout, not left dangling


def test_readyz_recovers_and_stopping_is_not_ready() -> None:
    state = {"up": False}

    def store() -> Deferred[None]:
        return succeed(None) if state["up"] else fail(OSError("connection refused"))

    api, stub = _ops({"store": store})
    assert _get(stub, "/readyz")[0] == 503
    state["up"] = True
    assert _get(stub, "/readyz")[0] == 200
    api.mark_stopping()
    code, _, body = _get(stub, "/readyz")
    assert code == 503 and json.loads(body)["message"] == "not ready: node: stopping"


def test_info_json_and_yaml() -> None:
    _, stub = _ops()
    expected = {"name": "faastwist", "version": "9.9.9", "provider": "process",
                "controller": "faascontroller", "node": "host-1", "uptimeSeconds": 42.5,
                "leader": True}
    for version in ("v1", "v2"):
        code, headers, body = _get(stub, f"/apis/{version}/faas/info",
                                   headers={"Accept": "application/json"})
        assert code == 200 and json.loads(body) == expected
    code, headers, body = _get(stub, "/apis/v2/faas/info")
    assert headers["content-type"] == ["application/yaml"]   # like every admin answer
    assert yaml.safe_load(body) == expected


def test_wrong_method_and_unknown_path_are_json() -> None:
    _, stub = _ops()
    response = _result(stub.post(BASE + "/metrics", data=b"x"))
    body = json.loads(_result(response.content()))
    assert response.code == 405
    assert body["code"] == 405 and body["message"] == (
        "method POST not allowed on /metrics; allowed: GET, HEAD")
    assert b"GET" in response.headers.getRawHeaders(b"allow")[0]
    code, _, body = _get(stub, "/nope")
    assert code == 404 and json.loads(body)["code"] == 404


class FakeAdmin:
    """Stands in for the admin API's Klein app: routes by controller name."""

    app = Klein()

    @app.route("/apis/<version>/faas/<controller>", methods=["GET"])
    def controller(self, request: Any, version: str, controller: str) -> bytes:
        return json.dumps({"admin": controller, "version": version}).encode()

    @app.route("/apis/<version>/faas/<controller>/<fn>/logs", methods=["GET"])
    def logs(self, request: Any, version: str, controller: str, fn: str) -> bytes:
        return json.dumps({"admin": controller, "fn": fn, "logs": True}).encode()

    @app.route("/healthz", methods=["GET"])
    def healthz(self, request: Any) -> bytes:
        return b'{"admin": "healthz"}'


def test_compose_routes_ops_paths_and_leaves_the_rest_to_admin() -> None:
    api, _ = _ops({"store": lambda: succeed(None)})
    stub = StubTreq(compose(FakeAdmin().app.resource(), api.resource()))
    accept = {"Accept": "application/json"}

    code, _, body = _get(stub, "/apis/v2/faas/info", headers=accept)
    assert code == 200 and json.loads(body)["controller"] == "faascontroller"   # not admin's
    code, _, body = _get(stub, "/apis/v1/faas/info", headers=accept)
    assert json.loads(body)["name"] == "faastwist"
    assert json.loads(_get(stub, "/healthz")[2]) == {"status": "ok"}            # ops wins
    assert _get(stub, "/readyz")[0] == 200
    assert _get(stub, "/metrics")[0] == 200

    assert json.loads(_get(stub, "/apis/v2/faas/faascontroller")[2]) == {
        "admin": "faascontroller", "version": "v2"}
    assert json.loads(_get(stub, "/apis/v1/faas/demo/hello/logs")[2]) == {
        "admin": "demo", "fn": "hello", "logs": True}
    # a controller really named "info" is still reachable below its own path
    assert json.loads(_get(stub, "/apis/v2/faas/info/hello/logs")[2])["admin"] == "info"
    assert _get(stub, "/metrics/extra")[0] == 404


def test_readiness_changes_are_logged_once() -> None:
    from twisted.logger import globalLogPublisher

    state = {"up": True}
    api, stub = _ops({"store": lambda: succeed(None) if state["up"] else fail(OSError("down"))})
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        for up in (True, False, False, False, True, True):
            state["up"] = up
            _get(stub, "/readyz")
    finally:
        globalLogPublisher.removeObserver(events.append)
    mine = [e for e in events if e.get("log_namespace") == "faastwist.admin.ops"]
    assert [(e["log_level"].name, e.get("failed")) for e in mine] == [
        ("warn", "store: down"), ("info", None)]
