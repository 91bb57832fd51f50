"""OpenFaaS's gateway API against a real node (process provider, embedded etcd).

An OpenFaaS client points at the gate's URL: ``/system/*`` works there (and on the admin
port), deploys run ``envProcess`` the way the classic watchdog does, and the functions
are the same ones the Easegress-style API manages.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.support.cli import wait_for
from tests.support.node import FaasNodeProcess, http

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.etcd]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaasNodeProcess]:
    workdir = tmp_path_factory.mktemp("openfaas-node")
    node = FaasNodeProcess(workdir, provider="process", controller="ofctl",
                           extra={"process": {"idleTimeout": "5m"}})
    node.start()
    try:
        yield node
    finally:
        node.stop()


def call(node: FaasNodeProcess, method: str, path: str, body: Any = None,
         headers: dict[str, str] | None = None, base: str | None = None,
         timeout: float = 20.0, auth: bool = True) -> tuple[int, dict, bytes]:
    """An HTTP call to the gate (or ``base``); OpenFaaS's API gets the node's token."""
    data = json.dumps(body) if body is not None and not isinstance(body, (str, bytes)) else body
    headers = dict(headers or {})
    if auth and path.startswith("/system/"):
        headers.setdefault("Authorization", f"Bearer {node.token}")
    code, got, payload = http(method, (base or node.gate_url) + path, data, headers or {},
                              timeout=timeout)
    return code, {k.lower(): v for k, v in got.items()}, payload


def deploy(node: FaasNodeProcess, name: str, **fields: Any) -> None:
    body = {"service": name, "image": "ghcr.io/openfaas/alpine:latest", **fields}
    code, _, data = call(node, "POST", "/system/functions", body)
    assert code == 202, data
    wait_for(lambda: function(node, name).get("availableReplicas", 0) >= 1, timeout=40)


def function(node: FaasNodeProcess, name: str) -> dict:
    code, _, data = call(node, "GET", f"/system/function/{name}")
    return json.loads(data) if code == 200 else {}


def remove(node: FaasNodeProcess, name: str) -> None:
    code, _, data = call(node, "DELETE", "/system/functions", {"functionName": name})
    assert code == 202, data


def test_info_namespaces_healthz_on_the_gate_and_admin_port(node):
    for base in (node.gate_url, node.admin_root):
        code, headers, data = call(node, "GET", "/system/info", base=base)
        assert code == 200, data
        info = json.loads(data)
        assert info["provider"]["provider"] == "faastwist"
        assert info["provider"]["orchestration"] == "process"
        for version in (info["provider"]["version"], info["version"]):
            assert version["sha"] and version["release"]
        assert info["arch"]
        code, _, data = call(node, "GET", "/system/namespaces", base=base)
        assert (code, json.loads(data)) == (200, ["openfaas-fn"])
    code, _, data = call(node, "GET", "/healthz")
    assert code == 200
    # the admin port's credentials guard OpenFaaS's API on the gate too
    for method, path in (("GET", "/system/functions"), ("GET", "/system/info"),
                         ("POST", "/system/functions"), ("GET", "/system/secrets")):
        code, headers, data = call(node, method, path, {} if method == "POST" else None,
                                   auth=False)
        assert code == 401, (method, path, data)
        assert "www-authenticate" in headers
    code, _, _ = call(node, "GET", "/system/functions", auth=False,
                      headers={"Authorization": "Bearer not-a-token"})
    assert code == 401
    code, _, data = call(node, "GET", "/system/nope")
    assert code == 404 and json.loads(data)["code"] == 404
    code, headers, _ = call(node, "PATCH", "/system/functions", {})
    assert code == 405


def test_deploy_round_trips_every_field_and_invokes_with_cat(node):
    fields = {
        "envProcess": "cat",
        "namespace": "openfaas-fn",
        "envVars": {"GREETING": "hi", "content_type": "text/plain"},
        "labels": {"team": "a", "com.openfaas.scale.min": "1"},
        "annotations": {"topic": "orders", "note": "x y"},
        "constraints": ["node.platform.os == linux"],
        "limits": {"memory": "128Mi", "cpu": "500m"},
        "requests": {"memory": "64Mi", "cpu": "100m"},
        "readOnlyRootFilesystem": True,
    }
    deploy(node, "catfn", **fields)
    got = function(node, "catfn")
    for key, value in fields.items():
        if key == "labels":   # faas-netes's label on top of the deployment's
            value = {**value, "faas_function": "catfn"}
        assert got[key] == value, key
    assert got["name"] == "catfn" and got["image"] == "ghcr.io/openfaas/alpine:latest"
    assert got["replicas"] == 1 and got["availableReplicas"] == 1
    assert got["createdAt"].endswith("Z") and "T" in got["createdAt"]
    listed = {f["name"]: f for f in json.loads(call(node, "GET", "/system/functions")[2])}
    assert listed["catfn"]["labels"] == {**fields["labels"], "faas_function": "catfn"}
    before = got["invocationCount"]
    code, headers, data = call(node, "POST", "/function/catfn", b"hello openfaas",
                               {"X-Call-Id": "my-call-1"})
    assert (code, data) == (200, b"hello openfaas")
    assert headers["x-call-id"] == "my-call-1"
    assert abs(int(headers["x-start-time"]) / 1e9 - time.time()) < 60
    assert float(headers["x-duration-seconds"]) >= 0
    assert headers["content-type"] == "text/plain"
    code, headers, data = call(node, "POST", "/function/catfn.openfaas-fn/sub", b"ns")
    assert (code, data) == (200, b"ns") and headers["x-call-id"]
    code, _, _ = call(node, "POST", "/function/catfn.other/sub", b"ns")
    assert code == 404
    assert function(node, "catfn")["invocationCount"] == before + 2
    # the same function through the Easegress-style API
    code, body = node.json("GET", "/catfn")
    assert code == 200 and body["spec"]["envProcess"] == "cat"
    assert body["status"]["state"] == "active"
    remove(node, "catfn")
    wait_for(lambda: call(node, "GET", "/system/function/catfn")[0] == 404)
    code, _, _ = call(node, "POST", "/function/catfn", b"x")
    assert code == 404


def test_env_shows_the_request_head(node):
    deploy(node, "envfn", envProcess="env")
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        code, _, data = call(node, method, "/function/envfn/a/b?q=1&r=2",
                             b"body!" if method != "GET" else None, {"X-Thing": "v"})
        assert code == 200, data
        env = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        assert env["Http_Method"] == method
        assert env["Http_Path"] == "/a/b" and env["Http_Query"] == "q=1&r=2"
        assert env["Http_X_Thing"] == "v" and env["Http_Host"]
        assert env["Http_ContentLength"] == ("5" if method != "GET" else "0")
    remove(node, "envfn")


def test_watchdog_limits_failures_and_logs(node):
    deploy(node, "slowfn", envProcess="sleep 3",
           envVars={"max_inflight": "1", "exec_timeout": "1s"})
    started = time.monotonic()
    code, _, data = call(node, "GET", "/function/slowfn")
    assert code == 500 and b"exec_timeout" in data
    assert time.monotonic() - started < 2.9
    deploy(node, "busyfn", envProcess="sleep 2", envVars={"max_inflight": "1"})
    import threading
    first: list[int] = []
    worker = threading.Thread(target=lambda: first.append(call(node, "GET", "/function/busyfn")[0]))
    worker.start()

    def forked() -> bool:   # the watchdog logs it as it starts the first call's process
        logs = call(node, "GET", "/system/logs?name=busyfn&tail=50")[2].decode()
        return "Forking fprocess." in logs
    wait_for(forked, 10)    # the first call is in flight
    code, _, data = call(node, "GET", "/function/busyfn")
    worker.join()
    assert code == 429 and b"Max concurrent requests: 1" in data
    assert first == [200]
    deploy(node, "failfn", envProcess="sh -c 'echo partial; exit 3'")
    code, _, data = call(node, "POST", "/function/failfn", b"x")
    assert code == 500 and b"partial" in data
    code, headers, data = call(node, "GET", "/system/logs?name=busyfn&tail=50")
    assert code == 200 and headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in data.decode().splitlines()]
    assert {"name", "namespace", "instance", "timestamp", "text"} <= set(lines[0])
    texts = [line["text"] for line in lines]
    assert "Forking fprocess." in texts
    assert any(t.startswith("Wrote 0 Bytes - Duration: ") for t in texts)
    assert all(line["name"] == "busyfn" and line["namespace"] == "openfaas-fn"
               for line in lines)
    # follow streams through the gate's relay: a new invocation's lines arrive
    import socket
    with socket.create_connection(("127.0.0.1", node.gate_port), timeout=10) as sock:
        sock.sendall(b"GET /system/logs?name=busyfn&tail=1&follow=true HTTP/1.1\r\n"
                     b"Host: localhost\r\nAuthorization: Bearer " + node.token.encode()
                     + b"\r\n\r\n")
        received = sock.recv(65536)
        assert received.startswith(b"HTTP/1.1 200")
        assert call(node, "GET", "/function/busyfn")[0] == 200
        deadline = time.monotonic() + 10
        while received.count(b"Wrote 0 Bytes") < 2 and time.monotonic() < deadline:
            received += sock.recv(65536)
        assert b"Forking fprocess." in received and received.count(b"Wrote 0 Bytes") == 2
    code, _, _ = call(node, "GET", "/system/logs")
    assert code == 400
    code, _, _ = call(node, "GET", "/system/logs?name=nosuch")
    assert code == 404
    for name in ("slowfn", "busyfn", "failfn"):
        remove(node, name)


def test_scale_min_two_then_zero_then_invoke(node):
    deploy(node, "scalefn", envProcess="cat", labels={"com.openfaas.scale.min": "2"})
    wait_for(lambda: function(node, "scalefn")["availableReplicas"] == 2, timeout=40)
    assert function(node, "scalefn")["replicas"] == 2
    code, _, data = call(node, "POST", "/system/scale-function/scalefn",
                         {"serviceName": "scalefn", "replicas": 0})
    assert code == 202, data
    wait_for(lambda: function(node, "scalefn")["availableReplicas"] == 0, timeout=30)
    code, body = node.json("GET", "/scalefn")
    assert body["status"]["state"] == "active"   # still deployed
    code, _, data = call(node, "POST", "/function/scalefn", b"wake up")
    assert (code, data) == (200, b"wake up")
    assert function(node, "scalefn")["availableReplicas"] == 1
    code, _, _ = call(node, "POST", "/system/scale-function/scalefn", {"replicas": 3})
    assert code == 202
    wait_for(lambda: function(node, "scalefn")["availableReplicas"] == 3, timeout=40)
    remove(node, "scalefn")


def test_codes_for_bad_and_unknown_requests(node):
    cases = [
        ("POST", "/system/functions", "{not json", 400, "not valid JSON"),
        ("POST", "/system/functions", {"image": "x"}, 400, "service"),
        ("POST", "/system/functions", {"service": "Bad_Name", "envProcess": "cat"}, 400,
         "service"),
        ("POST", "/system/functions", {"service": "noproc", "image": "x"}, 400, "envProcess"),
        ("POST", "/system/functions", {"service": "m", "envProcess": "cat",
                                       "limits": {"memory": "lots"}}, 400, "limits.memory"),
        ("POST", "/system/functions", {"service": "m", "envProcess": "cat",
                                       "envVars": {"exec_timeout": "soon"}}, 400,
         "envVars.exec_timeout"),
        ("POST", "/system/functions", {"service": "m", "envProcess": "cat",
                                       "labels": {"com.openfaas.scale.min": "x"}}, 400,
         "com.openfaas.scale.min"),
        ("POST", "/system/functions", {"service": "m", "envProcess": "cat",
                                       "namespace": "other"}, 400, "namespace"),
        ("PUT", "/system/functions", {"service": "ghost", "envProcess": "cat"}, 404, "ghost"),
        ("DELETE", "/system/functions", {"functionName": "ghost"}, 404, "ghost"),
        ("DELETE", "/system/functions", {}, 400, "functionName"),
        ("GET", "/system/function/ghost", None, 404, "ghost"),
        ("POST", "/system/scale-function/ghost", {"replicas": 1}, 404, "ghost"),
        ("POST", "/system/scale-function/ghost", {"replicas": -1}, 400, "replicas"),
    ]
    for method, path, body, code, needle in cases:
        got, _, data = call(node, method, path, body)
        assert got == code, (method, path, body, data)
        assert needle in json.loads(data)["message"], data
    # from a browser, what an HTML form can send is never read (a cross-site page could
    # send it); curl -d's form-urlencoded JSON is read
    for kind in ("text/plain", "application/x-www-form-urlencoded"):
        got, _, data = call(node, "POST", "/system/functions",
                            {"service": "form", "envProcess": "cat"},
                            {"Content-Type": kind, "Origin": node.gate_url})
        # the relay hands /system/* to the admin port's guard, to which a page of the
        # gate's origin is another site (another port): 403 before the body is looked
        # at; the form type's own 415 is tests/admin/test_openfaas.py's
        assert got == 403 and "cross-site writes are refused" in json.loads(data)["message"], data
    # JSON with a Content-Type too; the duplicate deploy is a conflict
    body = json.dumps({"service": "dup", "envProcess": "cat"})
    for _ in range(2):
        got, _, data = call(node, "POST", "/system/functions", body,
                            {"Content-Type": "application/json"})
    assert got == 409
    remove(node, "dup")


def test_update_through_openfaas_and_easegress_created_function(node, tmp_path: Path):
    deploy(node, "updfn", envProcess="echo one")
    code, _, data = call(node, "PUT", "/system/functions",
                         {"service": "updfn", "image": "img:2", "envProcess": "echo two",
                          "labels": {"v": "2"}})
    assert code == 202, data
    wait_for(lambda: call(node, "GET", "/function/updfn")[2] == b"two\n", timeout=40)
    got = function(node, "updfn")
    assert got["image"] == "img:2" and got["labels"] == {"v": "2", "faas_function": "updfn"}
    assert node.json("GET", "/updfn")[1]["status"]["state"] == "active"
    remove(node, "updfn")
    # created through the Easegress-style API, listed and deleted through OpenFaaS's
    code, _ = node.json("POST", "", json.dumps({"name": "egfn", "envProcess": "cat", "minReplica": 1}),
                        "application/json")
    assert code == 201
    wait_for(lambda: function(node, "egfn").get("availableReplicas") == 1, timeout=40)
    remove(node, "egfn")
    wait_for(lambda: node.json("GET", "/egfn")[0] == 404)


@pytest.mark.sandbox   # OpenFaaS's secrets path and the hiding are the sandbox's
def test_secrets_are_written_encrypted_and_read_by_the_function_that_names_them(node):
    import base64
    import os
    import stat

    code, _, data = call(node, "POST", "/system/secrets", {"name": "db-pass",
                                                           "value": "s3cret-Value-42"})
    assert code == 202, data
    assert call(node, "POST", "/system/secrets", {"name": "db-pass", "value": "x"})[0] == 409
    raw = base64.b64encode(b"\x00binary\xff").decode()
    assert call(node, "POST", "/system/secrets", {"name": "blob", "rawValue": raw})[0] == 202
    code, _, data = call(node, "GET", "/system/secrets")
    assert code == 200
    assert json.loads(data) == [{"name": "blob", "namespace": "openfaas-fn"},
                                {"name": "db-pass", "namespace": "openfaas-fn"}]
    for body, needle in (({"name": "ghost", "value": "v"}, "ghost"),):
        got, _, reply = call(node, "PUT", "/system/secrets", body)
        assert got == 404 and needle in json.loads(reply)["message"]
    for bad, field in (({"value": "v"}, "name"), ({"name": "a/b", "value": "v"}, "name"),
                       ({"name": "n", "rawValue": "%%%"}, "rawValue"),
                       ({"name": "n"}, "value")):
        got, _, reply = call(node, "POST", "/system/secrets", bad)
        assert got == 400 and json.loads(reply)["message"].startswith(field), reply
    # the key file is the node's alone, and etcd holds ciphertext only
    key_file = node.workdir / "data" / "secrets.key"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    etcd_files = [p for p in (node.workdir / "etcd").rglob("*") if p.is_file()]
    dump = b"".join(p.read_bytes() for p in etcd_files)
    assert b"/.secrets/ofctl/db-pass" in dump and b"s3cret-Value-42" not in dump
    # a deployment naming a missing secret is refused
    code, _, data = call(node, "POST", "/system/functions",
                         {"service": "nosecret", "envProcess": "cat", "secrets": ["nope"]})
    assert code == 400 and "secrets[0]" in json.loads(data)["message"]
    reader = "sh -c 'cat \"$FAASTWIST_SECRETS_DIR/db-pass\"; ls \"$FAASTWIST_SECRETS_DIR\"'"
    deploy(node, "secfn", envProcess=reader, secrets=["db-pass"])
    assert function(node, "secfn")["secrets"] == ["db-pass"]
    code, _, data = call(node, "GET", "/function/secfn")
    assert (code, data) == (200, b"s3cret-Value-42db-pass\n")
    # the node keeps the folders under its functions' root (the data folder, or
    # /var/lib/faastwist/<token> when the function user cannot reach it)
    from faastwist.providers.orphans import owner_token
    data = node.workdir / "data"
    roots = [data / "functions" / ".secrets",
             Path("/var/lib/faastwist") / owner_token("ofctl", str(data)) / ".secrets"]
    [folder] = [p for root in roots if root.is_dir() for p in root.iterdir()
                if p.name.startswith("secfn-")]
    assert stat.S_IMODE(os.stat(folder / "db-pass").st_mode) == 0o400
    # the sandbox: OpenFaaS's path, and the node's folders are hidden
    deploy(node, "pathfn", envProcess="cat /var/openfaas/secrets/db-pass",
           secrets=["db-pass"])
    assert call(node, "GET", "/function/pathfn")[2] == b"s3cret-Value-42"
    remove(node, "pathfn")
    # another function gets no secrets folder, and cannot read the one of secfn even
    # when it knows its path (it runs as the same user: the sandbox hides it)
    spy = f"sh -c 'echo \"[$FAASTWIST_SECRETS_DIR]\"; cat {folder}/db-pass'"
    deploy(node, "othfn", envProcess=spy)
    code, _, data = call(node, "GET", "/function/othfn")
    assert data.startswith(b"[]\n")
    assert code == 500 and b"No such file" in data and b"s3cret" not in data
    # an updated secret reaches the running function, its files refreshed in place
    assert call(node, "PUT", "/system/secrets", {"name": "db-pass", "value": "rotated"})[0] == 202
    wait_for(lambda: call(node, "GET", "/function/secfn")[2] == b"rotateddb-pass\n", timeout=15)
    for name in ("secfn", "othfn"):
        remove(node, name)
    for name in ("db-pass", "blob"):
        assert call(node, "DELETE", "/system/secrets", {"name": name})[0] == 202
    assert call(node, "DELETE", "/system/secrets", {"name": "db-pass"})[0] == 404
    assert json.loads(call(node, "GET", "/system/secrets")[2]) == []
