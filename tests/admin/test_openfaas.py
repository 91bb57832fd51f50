"""OpenFaaS's /system/* routes in memory (MemoryStore, FakeProvider): codes and writes.

The same routes against a real node, over the gate, are in tests/e2e/test_openfaas_e2e.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from treq.testing import StubTreq

from faastwist.admin.openfaas import OpenFaaSAPI, Versions
from faastwist.metrics import Metrics
from faastwist.model.fsm import Event, FunctionStatus, State, apply_event
from faastwist.model.spec import FunctionSpec
from faastwist.store.memory import MemoryStore
from faastwist.testing.provider import FakeProvider

NS = "openfaas-fn"


def fired(d: Deferred) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "not fired"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


class World:
    def __init__(self) -> None:
        self.store = MemoryStore("ctl")
        self.provider = FakeProvider()
        self.kicks: list[str] = []
        self.metrics = Metrics()
        self.api = OpenFaaSAPI(self.store, self.provider, self.kicks.append, self.metrics,
                               Clock(), Versions("process", "abc123"), NS,
                               wall_clock=lambda: 1.7e9)
        self.http = StubTreq(self.api.resource())

    def request(self, method: str, path: str, body: Any = None,
                headers: dict[str, str] | None = None) -> tuple[int, Any]:
        data = None if body is None else (body if isinstance(body, (bytes, str))
                                          else json.dumps(body))
        d = self.http.request(method, "http://admin" + path, data=data, headers=headers or {})
        self.http.flush()
        response = fired(d)
        content = fired(response.content())
        return response.code, json.loads(content) if content else None

    def state(self, name: str) -> State:
        return fired(self.store.get(name)).status.state


@pytest.fixture
def world() -> World:
    return World()


def test_deploy_list_get_scale_delete(world: World) -> None:
    body = {"service": "f1", "image": "img", "envProcess": "cat",
            "labels": {"com.openfaas.scale.min": "2"}}
    assert world.request("POST", "/system/functions", body) == (202, None)
    assert world.kicks == ["f1"] and world.state("f1") is State.INITIAL
    code, listed = world.request("GET", "/system/functions")
    assert code == 200 and [f["name"] for f in listed] == ["f1"]
    assert listed[0]["availableReplicas"] == 0     # not active yet
    record = fired(world.store.get("f1"))
    fired(world.store.update(record, status=apply_event(record.status, Event.READY, 1.7e9)))
    code, got = world.request("GET", "/system/function/f1")
    assert (code, got["replicas"], got["availableReplicas"]) == (200, 2, 2)
    assert got["createdAt"] == "2023-11-14T22:13:20.000Z"
    assert world.request("POST", "/system/scale-function/f1", {"replicas": 0})[0] == 202
    spec = fired(world.store.get("f1")).spec
    assert spec.min_replica == 0 and world.state("f1") is State.ACTIVE
    assert world.request("PUT", "/system/functions",
                         {"service": "f1", "image": "img", "envProcess": "rev"})[0] == 202
    record = fired(world.store.get("f1"))
    assert record.spec.env_process == "rev" and record.status.state is State.ACTIVE
    assert record.status.ext_data["rollout"] == "in progress"
    assert world.request("DELETE", "/system/functions", {"functionName": "f1"})[0] == 202
    assert world.request("GET", "/system/function/f1")[0] == 404


def test_info_namespaces_and_errors(world: World) -> None:
    code, info = world.request("GET", "/system/info")
    assert code == 200 and info["provider"]["version"] == {"sha": "abc123",
                                                           "release": info["version"]["release"]}
    assert world.request("GET", "/system/namespaces") == (200, [NS])
    assert world.request("GET", "/system/functions?namespace=other")[0] == 400
    assert world.request("GET", "/system/secrets")[0] == 501   # no secret store here
    assert world.request("POST", "/system/functions", "[1,", {})[0] == 400
    code, error = world.request("POST", "/system/functions", {"service": "x", "envProcess": "c"},
                                {"Content-Type": "application/x-www-form-urlencoded",
                                 "Origin": "http://admin"})
    assert code == 415 and "JSON" in error["message"]
    assert world.request("POST", "/system/scale-function/f", {"replicas": True})[0] == 400
    assert world.request("POST", "/system/scale-function/f",
                         {"serviceName": "g", "replicas": 1})[0] == 400
    assert world.request("GET", "/system/logs?name=x")[0] == 404
    assert world.request("GET", "/system/logs?bogus=1")[0] == 400
    assert world.request("PATCH", "/system/functions", {})[0] == 405
    assert world.kicks == []


def test_a_large_function_list_is_written_a_step_per_turn_in_the_same_form() -> None:
    from faastwist.admin import openfaas as openfaas_module
    from faastwist.admin.listbody import STEP
    from faastwist.model.fsm import FunctionStatus
    from faastwist.model.spec import FunctionSpec
    from faastwist.util.slices import Slicer
    from tests.support.turns import turn

    clock = Clock()
    store = MemoryStore("ctl")
    count = openfaas_module.STREAM_THRESHOLD + 3 * STEP + 3
    for i in range(count):
        spec = FunctionSpec.from_dict({"name": f"f{i:04d}", "image": "example/f"})
        state = State.DESTROYED if i == 5 else State.ACTIVE
        store.create(spec, FunctionStatus(spec.name, state, updated=1.7e9))
    # a budget of 0: one step (STEP functions) per turn
    api = OpenFaaSAPI(store, FakeProvider(), lambda name: None, Metrics(), clock,
                      Versions("process", "abc123"), NS, wall_clock=lambda: 1.7e9,
                      slicer=Slicer(clock, budget=0))
    http = StubTreq(api.resource())
    d = http.request("GET", "http://admin/system/functions")
    http.flush()
    done: list = []
    d.addCallback(lambda response: response.content()).addBoth(done.append)
    turns = 0
    while not done:
        assert turns <= count, "the list never finished"
        turn(clock)
        http.flush()
        turns += 1
    assert turns > count // STEP     # not in one go: a step per turn
    listed = json.loads(done[0])
    assert [f["name"] for f in listed] == [f"f{i:04d}" for i in range(count) if i != 5]
    assert listed[0]["namespace"] == NS
    assert done[0] == ("[" + ", ".join(json.dumps(f) for f in listed) + "]").encode()


class _Hung(MemoryStore):
    """A store whose quorum reads never answer (a member that lost quorum, before
    etcd says so): only the caller's deadline ends them."""

    def check(self) -> Deferred[None]:
        return Deferred()

    def get(self, name: str) -> Deferred:
        return Deferred()


@pytest.mark.parametrize("hung", [False, True], ids=["unavailable", "silent"])
def test_without_quorum_the_list_answers_from_the_watch_cache_marked_stale(hung: bool) -> None:
    """As the admin list does: no 503, the watch-fed records, each and the answer marked
    stale; a store that does not answer is given read_timeout (1.5 s), no more."""
    store = _Hung("ctl") if hung else MemoryStore("ctl")
    fired(store.create(FunctionSpec(name="cached", image="img", env_process="cat"),
                       FunctionStatus.initial("cached", 1.7e9)))
    cache = {"cached": fired(MemoryStore.get(store, "cached"))}
    clock = Clock()
    api = OpenFaaSAPI(store, FakeProvider(), lambda name: None, Metrics(), clock,
                      Versions("process", "abc"), NS, wall_clock=lambda: 1.7e9,
                      cache=lambda: cache)
    http = StubTreq(api.resource())
    if hung:
        d = http.get("http://admin/system/functions")
        answered: list = []
        d.addBoth(lambda r: answered.append(r) or r)
        clock.advance(1.499)
        http.flush()
        assert answered == []
        clock.advance(0.001)
        http.flush()
    else:
        fresh = fired(http.get("http://admin/system/functions"))
        assert fresh.code == 200 and fresh.headers.getRawHeaders("X-FaaS-Stale") is None
        assert "stale" not in json.loads(fired(fresh.content()))[0]
        store.available = False
        d = http.get("http://admin/system/functions")
        http.flush()
    response = fired(d)
    assert response.code == 200
    assert response.headers.getRawHeaders("X-FaaS-Stale") == ["true"]
    listed = json.loads(fired(response.content()))
    assert [(f["name"], f["stale"]) for f in listed] == [("cached", True)]
    # one function too; one the cache does not have is 404
    one = http.get("http://admin/system/function/cached")
    missing = http.get("http://admin/system/function/other")
    clock.advance(1.5)
    http.flush()
    response = fired(one)
    assert response.code == 200 and response.headers.getRawHeaders("X-FaaS-Stale") == ["true"]
    document = json.loads(fired(response.content()))
    assert (document["name"], document["stale"]) == ("cached", True)
    assert fired(missing).code == 404
    # no cache to fall back on: the store's own error, 503
    bare = OpenFaaSAPI(MemoryStore("ctl"), FakeProvider(), lambda name: None, Metrics(), clock,
                       Versions("process", "abc"), NS)
    bare.store.available = False
    response = fired(StubTreq(bare.resource()).get("http://admin/system/functions"))
    assert response.code == 503


@pytest.mark.parametrize("kind", ["text/plain", "application/x-www-form-urlencoded",
                                  "text/plain; charset=utf-8"])
def test_what_an_html_form_can_send_is_refused_from_a_browser(world: World, kind: str) -> None:
    """A page (it sends Origin) could make a browser post a form with cached
    credentials: 415 naming the type. curl -d (no Origin) sends form-urlencoded JSON:
    read as JSON."""
    body = {"service": "form", "image": "img", "envProcess": "cat"}
    code, answer = world.request("POST", "/system/functions", body,
                                 {"Content-Type": kind, "Origin": "http://127.0.0.1:8080"})
    bare = kind.split(";")[0]
    assert (code, answer) == (415, {"code": 415, "message": (
        f"Content-Type {bare} is not accepted: send JSON (application/json, or no "
        f"Content-Type)")})
    assert world.kicks == []
    assert world.request("POST", "/system/functions", body, {"Content-Type": kind})[0] == 202
    assert world.kicks == ["form"]
