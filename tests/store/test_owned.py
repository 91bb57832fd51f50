"""The REST APIs may read but not write a function a Function object owns, and may not
forge ownership (store/owned.py), through the admin API and OpenFaaS's."""

from __future__ import annotations

import json
import time

import pytest
from twisted.internet.task import Clock
from treq.testing import StubTreq

from faastwist.admin.openfaas import OpenFaaSAPI, Versions
from faastwist.store.owned import ManagedGuard
from faastwist.kube.objects import Flavour, ObjectRef, spec_from_object
from faastwist.store.owned import MANAGED_BY
from faastwist.metrics import Metrics
from faastwist.model.fsm import Event, FunctionStatus, apply_event
from faastwist.store.memory import MemoryStore
from faastwist.testing.provider import FakeProvider
from tests.admin.test_api import Admin, fired

OWNER = "Function default/owned"


def owned_store(state_events: tuple[Event, ...] = ()) -> MemoryStore:
    store = MemoryStore("faascontroller")
    spec = spec_from_object(ObjectRef(Flavour.FAASTWIST, "default", "owned"),
                            {"spec": {"image": "dev.local/fn:1", "port": 8080}})
    status = FunctionStatus.initial("owned", time.time())
    for event in state_events:
        status = apply_event(status, event, time.time())
    fired(store.create(spec, status))
    return store


@pytest.mark.parametrize("events", [(), (Event.READY,)], ids=["initial", "active"])
@pytest.mark.parametrize("method,path,body", [
    ("PUT", "/owned", b"name: owned\nimage: dev.local/fn:2\n"),
    ("PUT", "/owned/rollout", b"name: owned\nimage: dev.local/fn:2\n"),
    ("PUT", "/owned/stop", None),
    ("PUT", "/owned/start", None),
    ("DELETE", "/owned", None),
])
def test_admin_writes_to_an_owned_function_are_409_naming_the_object(events, method, path,
                                                                     body):
    store = owned_store(events)
    before = fired(store.get("owned"))
    admin = Admin(store=ManagedGuard(store))  # type: ignore[arg-type]
    reply = admin.request(method, path, body)
    assert reply.code == 409, reply.data
    assert f"managed by {OWNER}" in reply.data["message"]
    assert fired(store.get("owned")) == before
    assert admin.kicks == []
    read = admin.request("GET", "/owned")
    assert read.code == 200
    assert read.data["spec"]["annotations"] == {MANAGED_BY: OWNER}


def test_admin_cannot_forge_ownership_on_create_or_update():
    store = MemoryStore("faascontroller")
    admin = Admin(store=ManagedGuard(store))  # type: ignore[arg-type]
    forged = (f"name: mine\nimage: dev.local/fn:1\nannotations:\n"
              f"  {MANAGED_BY}: {OWNER}\n").encode()
    reply = admin.create(forged)
    assert reply.code == 400
    assert reply.data["message"].startswith(f"annotations.{MANAGED_BY}:")
    assert admin.create(b"name: mine\nimage: dev.local/fn:1\n").code == 201
    reply = admin.request("PUT", "/mine", forged)
    assert reply.code == 400 and MANAGED_BY in reply.data["message"]
    assert MANAGED_BY not in fired(store.get("mine")).spec.annotations


def test_invocation_keys_of_an_owned_function_still_work():
    """Keys are credentials, not part of the object (Git holds no secrets)."""
    admin = Admin(store=ManagedGuard(owned_store()))  # type: ignore[arg-type]
    assert admin.request("POST", "/owned/keys").code == 201


def test_openfaas_writes_to_an_owned_function_are_409():
    store = owned_store((Event.READY,))
    before = fired(store.get("owned"))
    api = OpenFaaSAPI(ManagedGuard(store), FakeProvider(), lambda name: None,  # type: ignore
                      Metrics(), Clock(), Versions("process", "abc"), "openfaas-fn",
                      wall_clock=lambda: 1.7e9)
    http = StubTreq(api.resource())

    def request(method: str, path: str, body: object) -> tuple[int, dict]:
        d = http.request(method, "http://admin" + path, data=json.dumps(body))
        http.flush()
        response = fired(d)
        return response.code, json.loads(fired(response.content()) or b"null")

    for method, path, body in (
            ("PUT", "/system/functions", {"service": "owned", "image": "dev.local/fn:2"}),
            ("DELETE", "/system/functions", {"functionName": "owned"}),
            ("POST", "/system/scale-function/owned", {"serviceName": "owned", "replicas": 3})):
        code, answer = request(method, path, body)
        assert code == 409, (path, answer)
        assert f"managed by {OWNER}" in answer["message"]
    assert fired(store.get("owned")) == before
    code, answer = request("GET", "/system/function/owned", None)
    assert code == 200 and answer["name"] == "owned"
