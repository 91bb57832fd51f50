"""The admin API's OpenAPI document: valid OpenAPI 3, and it covers every route."""

from __future__ import annotations

import json
import re

from openapi_spec_validator import validate
from twisted.internet.task import Clock
from treq.testing import StubTreq

from faastwist.admin.api import AdminAPI
from faastwist.admin.openapi import document
from faastwist.admin.ops import OpsAPI
from faastwist.metrics import Metrics
from tests.admin.test_admin import fired


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
