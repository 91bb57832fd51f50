"""The admin API's OpenAPI document: valid OpenAPI 3, and it covers every route."""

from __future__ import annotations

import json
import re

import attrs

from openapi_spec_validator import validate
from twisted.internet.task import Clock
from treq.testing import StubTreq

from faastwist.admin.api import AdminAPI
from faastwist.admin.openapi import document
from faastwist.admin.ops import OpsAPI
from faastwist.metrics import Metrics
from tests.admin.test_api import fired


def test_the_document_is_valid_openapi_3() -> None:
    validate(document("faascontroller"))


def test_the_controller_parameter_is_this_nodes() -> None:
    doc = document("ctl-a")
    assert doc["components"]["parameters"]["controller"]["schema"]["enum"] == ["ctl-a"]
    assert document("ctl-b")["components"]["parameters"]["controller"]["schema"]["enum"] \
        == ["ctl-b"]


def _documented() -> set[tuple[str, str]]:
    doc = document("ctl")
    return {(method.upper(), path) for path, item in doc["paths"].items()
            for method in item if method != "parameters"}


def test_every_v2_route_is_documented() -> None:
    def openapi_path(rule: str) -> str:
        path = rule.replace("<any(v1, v2):version>", "v2")
        return re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", path)

    routes = set()
    for app in (AdminAPI.app, OpsAPI.app):
        for rule in app.url_map.iter_rules():
            path = openapi_path(rule.rule)
            if path.startswith("/apis/v1/"):
                continue  # the v1 copies of the v2 routes
            for method in rule.methods or ():
                if method not in ("HEAD", "OPTIONS"):
                    routes.add((method, path.rstrip("/") or "/"))
    assert routes - _documented() == set()
    assert _documented() - routes == set()


def test_ops_serves_the_document() -> None:
    ops = OpsAPI(Metrics(), {}, lambda: {}, Clock(), openapi=document("ctl"))
    http = StubTreq(ops.resource())
    response = fired(http.get("http://admin/apis/v2/faas/openapi.json"))
    http.flush()
    assert response.code == 200
    body = fired(http.content(response))
    assert json.loads(body)["info"]["title"] == "faastwist admin API"


def test_the_spec_schema_names_every_top_level_spec_field() -> None:
    from faastwist.model.spec import FunctionSpec

    full = {"name": "x", "image": "i", "port": 8080, "autoScaleType": "rps",
            "autoScaleValue": "10", "minReplica": 0, "maxReplica": 2, "limitCPU": "1",
            "limitMemory": "64Mi", "requestCPU": "1", "requestMemory": "32Mi",
            "requestAdaptor": {"host": "h"}, "timeout": "5s", "command": ["true"],
            "env": {"A": "b"}, "mode": "fork", "readinessPath": "/r",
            "rateLimit": {"rps": 5, "burst": 10}, "asyncConcurrency": 2, "maxAttempts": 3,
            "maxQueued": 10,
            "envProcess": "cat", "labels": {"a": "b"}, "annotations": {"c": "d"},
            "constraints": ["x == y"], "secrets": ["s"], "readOnlyRootFilesystem": True}
    FunctionSpec.from_dict(full)   # a real spec, so the list below is the spec's
    properties = document("ctl")["components"]["schemas"]["FunctionSpec"]["properties"]
    assert set(properties) == set(full) == set(FunctionSpec.from_dict(full).to_dict())
    # a field added to FunctionSpec must be added to the document (and to ``full``)
    # (fields with init=False are caches, such as the digest, not part of the spec)
    assert len([f for f in attrs.fields(FunctionSpec) if f.init]) == len(properties)


def _check(name: str, instance: object) -> None:
    from openapi_schema_validator import OAS30Validator

    doc = document("faascontroller")
    OAS30Validator({**doc["components"]["schemas"][name],
                    "components": doc["components"]}).validate(instance)


def test_real_answers_match_the_documented_schemas() -> None:
    # the fast tier's guard against drift; the e2e fuzzer checks every operation
    from tests.admin.test_api import Admin

    admin = Admin()
    json_accept = {"Accept": "application/json"}
    created = admin.create(headers={**json_accept, "Content-Type": "application/yaml"})
    assert created.code == 201
    _check("FunctionRecord", created.data)
    _check("FunctionSpec", created.data["spec"])
    _check("FunctionStatus", created.data["status"])
    listing = admin.request("GET", "", headers=json_accept)
    for record in listing.data:
        _check("FunctionRecord", record)
    status = admin.request("GET", "/demo10/status", headers=json_accept)
    _check("FunctionStatus", status.data)
    missing = admin.request("GET", "/nope", headers=json_accept)
    assert missing.code == 404
    _check("Error", missing.data)
