"""The OpenAPI 3 document of the admin port, served at ``/apis/v2/faas/openapi.json``.

Written by hand as data (not generated from the routes) so it is a contract the tests
hold the code to: ``openapi-spec-validator`` checks the document and a schemathesis
run against a real node checks every answer against it. ``document(controller)`` fills
in this node's controller name, the only value the ``controller`` path segment takes.
"""

from __future__ import annotations

import copy
from typing import Any

PREFIX = "/apis/v2/faas"
NAME_PATTERN = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
_JSON = "application/json"
_YAML = "application/yaml"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _content(schema: dict[str, Any]) -> dict[str, Any]:
    # YAML unless Accept prefers JSON: both carry the same document
    return {_JSON: {"schema": schema}, _YAML: {"schema": schema}}


def _answer(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": _content(schema)}


def _errors(*codes: int) -> dict[str, Any]:
    """Error answers: the ones named, plus those any call can get (400 bad path or
    query, 401/403 from the credentials check, 421 from the Host check)."""
    return {str(code): {"$ref": f"#/components/responses/E{code}"}
            for code in sorted({*codes, 400, 401, 403, 421})}


_NAME = {"name": "fn", "in": "path", "required": True, "description": "function name",
         "schema": {"type": "string", "maxLength": 253}, "example": "sleeper"}
_SPEC_BODY = {"required": True, "description": "a function spec",
              "content": {_YAML: {"schema": _ref("FunctionSpec")},
                          _JSON: {"schema": _ref("FunctionSpec")}}}

_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["code", "message"],
              "properties": {"code": {"type": "integer"}, "message": {"type": "string"}}},
    "FunctionSpec": {
        "type": "object", "required": ["name"], "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "pattern": NAME_PATTERN, "maxLength": 63},
            "image": {"type": "string"},
            "port": {"type": "integer", "minimum": 1, "maximum": 65535},
            "autoScaleType": {"type": "string", "enum": ["rps", "concurrency", "cpu"]},
            "autoScaleValue": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
            "minReplica": {"type": "integer", "minimum": 0, "maximum": 1000},
            "maxReplica": {"type": "integer", "minimum": 0, "maximum": 1000},
            "limitCPU": {"type": "string"}, "limitMemory": {"type": "string"},
            "requestCPU": {"type": "string"}, "requestMemory": {"type": "string"},
            "requestAdaptor": {"type": "object"},
            "timeout": {"type": "string", "description": "a Go duration, e.g. 30s"},
            "command": {"type": "array", "items": {"type": "string"},
                        "description": "argv of a process-provider function"},
            "env": _STRING_MAP,
            "mode": {"type": "string", "enum": ["http", "fork"]},
            "readinessPath": {"type": "string"},
            "envProcess": {"type": "string",
                           "description": "OpenFaaS's fprocess, run once per request"},
            "labels": _STRING_MAP, "annotations": _STRING_MAP,
            "constraints": {"type": "array", "items": {"type": "string"}},
            "secrets": {"type": "array", "items": {"type": "string"}},
            "readOnlyRootFilesystem": {"type": "boolean"},
            "rateLimit": {"type": "object", "required": ["rps"], "additionalProperties": False,
                          "description": "a token bucket per function per node (429 past it)",
                          "properties": {"rps": {"type": "number", "exclusiveMinimum": True,
                                                 "minimum": 0, "maximum": 1000000},
                                         "burst": {"type": "integer", "minimum": 1,
                                                   "maximum": 1000000}}},
            "asyncConcurrency": {"type": "integer", "minimum": 0, "maximum": 10000,
                                 "description": "queued calls running at once, cluster-wide "
                                                "(0: queue.concurrency)"},
            "maxAttempts": {"type": "integer", "minimum": 0, "maximum": 100,
                            "description": "attempts per queued call (0: queue.maxAttempts)"},
            "maxQueued": {"type": "integer", "minimum": 0, "maximum": 10_000_000,
                          "description": "calls that may wait in the queue, beyond them 429 "
                                         "(0: queue.maxQueued)"},
        },
        "example": {"name": "sleeper", "command": ["sleep", "600"], "minReplica": 0,
                    "maxReplica": 1},
    },
    "FunctionStatus": {
        "type": "object", "required": ["name", "state"],
        "properties": {
            "name": {"type": "string"},
            "state": {"type": "string",
                      "enum": ["initial", "active", "inactive", "failed", "destroyed"]},
            "event": {"type": "string"}, "extData": {"type": "object"},
            "message": {"type": "string"},
            "updated": {"type": "string", "format": "date-time", "nullable": True,
                        "description": "the last change, RFC 3339 in UTC",
                        "example": "2026-11-28T18:04:55.123Z"},
            "startPending": {"type": "boolean"},
            "created": {"type": "string", "nullable": True,
                        "description": "RFC 3339 time of the function's creation"},
            "epoch": {"type": "integer",
                      "description": "counts the operator's events; nodes report the "
                                     "epoch they acted on"},
        },
    },
    "FunctionRecord": {
        "type": "object", "required": ["spec", "status"],
        "properties": {"spec": {"type": "object"}, "status": _ref("FunctionStatus")},
    },
    "KeyEntry": {"type": "object", "required": ["id", "created"],
                 "properties": {"id": {"type": "string"}, "created": {"type": "string"}}},
    "NewKey": {"type": "object", "required": ["id", "created", "key"],
               "properties": {"id": {"type": "string"}, "created": {"type": "string"},
                              "key": {"type": "string", "description": "shown only once"},
                              "message": {"type": "string"}}},
    "Info": {"type": "object", "required": ["name", "version", "controller"],
             "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                            "provider": {"type": "string"}, "controller": {"type": "string"},
                            "node": {"type": "string"}, "uptimeSeconds": {"type": "number"},
                            "leader": {"type": "boolean"}}},
    "Readiness": {"type": "object",
                  "properties": {"status": {"type": "string"}, "code": {"type": "integer"},
                                 "message": {"type": "string"},
                                 "checks": _STRING_MAP}},
}


def _operation(op_id: str, summary: str, ok: dict[str, Any], *errors: int,
               body: bool = False, parameters: list[Any] | None = None,
               public: bool = False) -> dict[str, Any]:
    operation: dict[str, Any] = {"operationId": op_id, "summary": summary,
                                 "responses": {**ok, **_errors(*errors)}}
    if public:
        operation["security"] = []
        operation["responses"] = {**ok, **{k: v for k, v in _errors(*errors).items()
                                           if k not in ("401", "403")}}
    if body:
        operation["requestBody"] = _SPEC_BODY
    if parameters:
        operation["parameters"] = parameters
    return operation


def _build() -> dict[str, Any]:
    record = _answer("the function's spec and status", _ref("FunctionRecord"))
    base, function = f"{PREFIX}/{{controller}}", f"{PREFIX}/{{controller}}/{{fn}}"
    logs_query = [
        {"name": "tail", "in": "query", "schema": {"type": "integer", "minimum": 0,
                                                   "maximum": 100000}},
        {"name": "since", "in": "query", "schema": {"type": "string"},
         "description": "RFC 3339 time or a Go duration before now"},
        {"name": "follow", "in": "query", "schema": {"type": "boolean", "enum": [False]},
         "description": "true streams new lines until the client goes (not fuzzed)"},
    ]
    call_id = {"name": "call_id", "in": "path", "required": True,
               "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,128}$"}}
    paths: dict[str, Any] = {
        base: {
            "get": _operation("listFunctions", "every function with its status",
                              {"200": _answer("the functions", {"type": "array",
                                                                "items": _ref("FunctionRecord")})},
                              404, 503),
            "post": _operation("createFunction", "create a function (state initial)",
                               {"201": {**record, "headers": {"Location": {
                                   "schema": {"type": "string"}}}}},
                               404, 409, 413, 415, 503, body=True),
        },
        function: {
            "get": _operation("getFunction", "one function", {"200": record}, 404, 503),
            "put": _operation("updateFunction", "replace the spec (event update)",
                              {"200": record}, 404, 409, 413, 415, 503, body=True),
            "delete": _operation("deleteFunction", "delete (not while active)",
                                 {"200": record}, 404, 409, 503),
        },
        f"{function}/status": {"get": _operation(
            "getFunctionStatus", "the status alone",
            {"200": _answer("the status", _ref("FunctionStatus"))}, 404, 503)},
        f"{function}/start": {"put": _operation("startFunction", "event start",
                                                {"200": record}, 404, 409, 503)},
        f"{function}/stop": {"put": _operation("stopFunction", "event stop",
                                               {"200": record}, 404, 409, 503)},
        f"{function}/rollout": {"put": _operation(
            "rolloutFunction", "rolling update: an active function keeps serving",
            {"200": record}, 404, 409, 413, 415, 503, body=True)},
        f"{function}/logs": {"get": _operation(
            "functionLogs", "log lines as NDJSON",
            {"200": {"description": "one JSON object per line",
                     "content": {"application/x-ndjson": {"schema": {"type": "string"}}}}},
            404, 501, 503, 504, parameters=logs_query)},
        f"{function}/keys": {
            "post": _operation("createKey", "a new invocation key for the function (shown once)",
                               {"201": _answer("the key", _ref("NewKey"))}, 404, 409, 503),
            "get": _operation("listKeys", "the function's invocation keys (ids, never the keys)",
                              {"200": _answer("the keys", {"type": "array",
                                                           "items": _ref("KeyEntry")})},
                              404, 503),
        },
        f"{function}/keys/{{key_id}}": {"delete": _operation(
            "revokeKey", "revoke one invocation key (the last one only with open=true: "
                         "without keys the function is open to anyone; else 409)",
            {"200": _answer("the revoked key", _ref("KeyEntry"))}, 404, 409, 503,
            parameters=[{"name": "key_id", "in": "path", "required": True,
                         "schema": {"type": "string", "maxLength": 64}},
                        {"name": "open", "in": "query", "schema": {"type": "boolean"},
                         "description": "true: the last key may go, opening the function"}])},
        f"{function}/async/{{call_id}}": {"get": _operation(
            "asyncCallStatus", "an asynchronous call's state, attempts and last status",
            {"200": _answer("the call", {"type": "object"})}, 400, 404, 503,
            parameters=[call_id])},
        f"{function}/async/{{call_id}}/retry": {"post": _operation(
            "retryDeadLetter", "queue a dead letter again",
            {"202": _answer("the call", {"type": "object"})}, 400, 404, 503,
            parameters=[call_id])},
        f"{function}/async": {
            "get": _operation("deadLetters", "the function's dead letters",
                              {"200": _answer("the dead letters", {"type": "object"})},
                              400, 404, 503, parameters=[
                                  {"name": "limit", "in": "query",
                                   "schema": {"type": "integer", "minimum": 1,
                                              "maximum": 10000}}]),
            "delete": _operation("purgeDeadLetters", "purge the function's dead letters",
                                 {"200": _answer("done", {"type": "object"})}, 400, 404, 503),
        },
        f"{PREFIX}/info": {"get": _operation(
            "info", "this node: version, provider, controller, leader",
            {"200": _answer("the node", _ref("Info"))})},
        f"{PREFIX}/openapi.json": {"get": _operation(
            "openapi", "this document",
            {"200": {"description": "OpenAPI 3", "content": {_JSON: {"schema": {
                "type": "object"}}}}}, public=True)},
        "/healthz": {"get": _operation(
            "healthz", "liveness", {"200": {"description": "alive", "content": {_JSON: {
                "schema": {"type": "object"}}}}}, public=True)},
        "/readyz": {"get": _operation(
            "readyz", "readiness: store, watch, provider",
            {"200": {"description": "ready", "content": {_JSON: {"schema": _ref("Readiness")}}},
             "503": {"description": "not ready", "content": {_JSON: {
                 "schema": _ref("Readiness")}}}}, public=True)},
        "/metrics": {"get": _operation(
            "metrics", "Prometheus text format (open when admin.auth.metricsOpen)",
            {"200": {"description": "metrics", "content": {"text/plain": {
                "schema": {"type": "string"}}}}})},
    }
    for path, item in paths.items():
        if "{controller}" in path:
            item["parameters"] = [{"$ref": "#/components/parameters/controller"}]
            if "{fn}" in path:
                item["parameters"].append(_NAME)
    responses = {
        f"E{code}": _answer(text, _ref("Error")) for code, text in (
            (400, "bad request: the message names the field or parameter"),
            (401, "no or bad credentials"),
            (403, "a read token on a change, or a change from a foreign Origin"),
            (404, "no such function, controller or route"),
            (409, "refused by the state machine, already exists, or a racing writer won"),
            (413, "the body is larger than admin.maxBodySize"),
            (415, "the Content-Type is not YAML or JSON (form bodies are never specs)"),
            (421, "the Host is not one of this node's names"),
            (501, "this provider has no log source"),
            (503, "the function store is unavailable"),
            (504, "the log source did not answer in time"))}
    responses["E401"]["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "faastwist admin API", "version": "2",
                 "description": "Functions of one faastwist controller (Easegress FaaS "
                                "API compatible); also served under /apis/v1/faas."},
        "paths": paths,
        "components": {
            "schemas": _SCHEMAS,
            "responses": responses,
            "parameters": {"controller": {
                "name": "controller", "in": "path", "required": True,
                "description": "the controller this node runs",
                "schema": {"type": "string", "enum": ["faascontroller"]}}},
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "a token from admin.auth.tokensFile"},
                "basic": {"type": "http", "scheme": "basic",
                          "description": "admin.auth.basicAuth, when configured"}},
        },
        "security": [{"bearer": []}, {"basic": []}],
    }


_TEMPLATE = _build()


def document(controller: str) -> dict[str, Any]:
    """The document for a node running ``controller``."""
    doc = copy.deepcopy(_TEMPLATE)
    doc["components"]["parameters"]["controller"]["schema"]["enum"] = [controller]
    return doc
