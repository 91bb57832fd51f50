"""What OpenFaaS clients send, replayed against a real node, with the answers they expect.

The requests under ``tests/fixtures/openfaas/`` were read from faas-cli's source (and
AlertManager's webhook); each test names the contract bullet it holds (issue 24).
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.support.cli import wait_for
from tests.support.node import FaasNodeProcess, http

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.etcd]

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "openfaas"
IDLE = 4.0   # the node's idleTimeout: a scale.zero function idles down after it


def fixture(name: str, token: str, function: str) -> dict[str, Any]:
    """A recorded request with the node's token and the function's name filled in."""
    text = (FIXTURES / name).read_text()
    text = text.replace("{token}", token).replace("{name}", function)
    return json.loads(text)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaasNodeProcess]:
    workdir = tmp_path_factory.mktemp("openfaas-clients")
    node = FaasNodeProcess(workdir, provider="process", controller="ofclients",
                           extra={"process": {"idleTimeout": f"{IDLE:g}s"}})
    node.start()
    try:
        yield node
    finally:
        node.stop()


def replay(node: FaasNodeProcess, request: dict[str, Any]) -> tuple[int, dict, bytes]:
    body = request["body"]
    data = json.dumps(body) if body is not None else None
    code, headers, payload = http(request["method"], node.gate_url + request["path"], data,
                                  request["headers"], auth=False)
    return code, {k.lower(): v for k, v in headers.items()}, payload


def call(node: FaasNodeProcess, method: str, path: str, body: Any = None,
         headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    data = json.dumps(body) if body is not None and not isinstance(body, bytes) else body
    headers = dict(headers or {})
    if path.startswith("/system/"):
        headers.setdefault("Authorization", f"Bearer {node.token}")
    code, _, payload = http(method, node.gate_url + path, data, headers, auth=False)
    return code, payload


def status(node: FaasNodeProcess, name: str) -> dict:
    code, data = call(node, "GET", f"/system/function/{name}")
    return json.loads(data) if code == 200 else {}


def remove(node: FaasNodeProcess, name: str) -> None:
    assert call(node, "DELETE", "/system/functions", {"functionName": name})[0] == 202


def test_faas_cli_deploy_then_describe_at_once(node):
    """describe's usage=1 is ignored; replicas is the desired count right after the
    deploy; labels (with faas_function) and annotations are always there."""
    code, _, data = replay(node, fixture("faas-cli-deploy.json", node.token, "descfn"))
    assert code == 202, data
    code, headers, data = replay(node, fixture("faas-cli-describe.json", node.token,
                                               "descfn"))
    assert code == 200, data
    got = json.loads(data)
    assert got["replicas"] == 2                      # min 2, before any replica is ready
    assert got["labels"] == {"com.openfaas.scale.min": "2", "com.openfaas.scale.max": "4",
                             "faas_function": "descfn"}
    assert got["annotations"] == {}
    assert headers["content-type"] == "application/json"
    wait_for(lambda: status(node, "descfn").get("availableReplicas") == 2, timeout=40)
    # other GETs ignore parameters OpenFaaS ignores too
    for path in ("/system/functions?namespace=openfaas-fn&usage=1&x=y",
                 "/system/secrets?namespace=openfaas-fn&page=2",
                 "/system/logs?name=descfn&tail=1&unknown=1"):
        code, data = call(node, "GET", path)
        assert code == 200, (path, data)
    listed = {f["name"]: f for f in json.loads(call(node, "GET", "/system/functions")[1])}
    assert listed["descfn"]["labels"]["faas_function"] == "descfn"
    # strictness stays for bodies: an unknown field of a deployment is ignored by
    # OpenFaaS's Go decoder too, but a wrong type is an error naming the field
    code, data = call(node, "PUT", "/system/functions",
                      {"service": "descfn", "envProcess": "cat", "labels": ["x"]})
    assert code == 400 and json.loads(data)["message"].startswith("labels"), data
    remove(node, "descfn")


def test_invocation_count_is_an_integer(node):
    body = fixture("faas-cli-deploy.json", node.token, "countfn")["body"]
    body["labels"] = None
    assert call(node, "POST", "/system/functions", body)[0] == 202
    wait_for(lambda: status(node, "countfn").get("availableReplicas") == 1, timeout=40)
    for _ in range(3):
        assert call(node, "POST", "/function/countfn", b"x")[0] == 200
    code, data = call(node, "GET", "/system/function/countfn")
    assert re.search(rb'"invocationCount": 3[,}]', data), data
    assert json.loads(data)["labels"] == {"faas_function": "countfn"}
    remove(node, "countfn")


def test_function_path_without_a_name_is_404(node):
    for path in ("/function/.openfaas-fn", "/function/", "/function/.openfaas-fn/x",
                 "/async-function/.openfaas-fn"):
        code, data = call(node, "POST", path, b"x")
        assert code == 404, (path, data)


def test_secret_create_from_file_uses_raw_value_and_updates_reach_a_running_function(node):
    code, _, data = replay(node, fixture("faas-cli-secret-create-from-file.json",
                                         node.token, "filesec"))
    assert code == 202, data
    reader = "sh -c 'od -An -tx1 \"$FAASTWIST_SECRETS_DIR/filesec\"'"
    body = {"service": "readsec", "envProcess": reader, "secrets": ["filesec"]}
    assert call(node, "POST", "/system/functions", body)[0] == 202
    wait_for(lambda: status(node, "readsec").get("availableReplicas") == 1, timeout=40)
    code, data = call(node, "GET", "/function/readsec")
    assert code == 200 and data.split() == [b"00", b"ff", b"64", b"61", b"74", b"61", b"0a"]
    _, before = node.json("GET", "/readsec")
    instances = {line["instance"] for line in logs(node, "readsec")}
    # faas-cli secret update: the running replica reads the new file, no redeploy
    code, data = call(node, "PUT", "/system/secrets", {"name": "filesec", "value": "new"})
    assert code == 202, data
    wait_for(lambda: call(node, "GET", "/function/readsec")[1].split()
             == [b"6e", b"65", b"77"], timeout=15)
    _, after = node.json("GET", "/readsec")
    assert after["spec"] == before["spec"]
    assert {line["instance"] for line in logs(node, "readsec")} == instances
    assert ("function readsec: secrets filesec changed; its files were refreshed in place"
            in node.log_path.read_text())
    remove(node, "readsec")
    assert call(node, "DELETE", "/system/secrets", {"name": "filesec"})[0] == 202


def logs(node: FaasNodeProcess, name: str) -> list[dict]:
    code, data = call(node, "GET", f"/system/logs?name={name}&tail=1000")
    assert code == 200
    return [json.loads(line) for line in data.decode().splitlines()]


def test_scale_zero_deploys_at_one_replica_and_idles_down(node):
    body = {"service": "zerofn", "envProcess": "cat",
            "labels": {"com.openfaas.scale.zero": "true"}}
    assert call(node, "POST", "/system/functions", body)[0] == 202
    assert status(node, "zerofn")["replicas"] == 1
    wait_for(lambda: status(node, "zerofn").get("availableReplicas") == 1, timeout=40)
    # no request: after idleTimeout it goes to zero, and says why
    wait_for(lambda: status(node, "zerofn").get("availableReplicas") == 0, timeout=IDLE + 20)
    assert status(node, "zerofn")["replicas"] == 0
    wait_for(lambda: "idle for" in node.json("GET", "/zerofn")[1]["status"]
             .get("extData", {}).get("lastScale", ""), timeout=10)
    code, data = call(node, "POST", "/function/zerofn", b"wake")
    assert (code, data) == (200, b"wake")
    remove(node, "zerofn")


def test_rps_labels_drive_the_built_in_autoscaler(node):
    """type rps, target 2 at proportion 1: ~8 req/s wants 4, capped at max 3."""
    labels = {"com.openfaas.scale.type": "rps", "com.openfaas.scale.target": "2",
              "com.openfaas.scale.target-proportion": "1", "com.openfaas.scale.max": "3"}
    body = {"service": "rpsfn", "envProcess": "cat", "labels": labels}
    assert call(node, "POST", "/system/functions", body)[0] == 202
    wait_for(lambda: status(node, "rpsfn").get("availableReplicas") == 1, timeout=40)
    _, record = node.json("GET", "/rpsfn")
    assert (record["spec"]["autoScaleType"], record["spec"]["autoScaleValue"]) == ("rps", "2")
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            call(node, "POST", "/function/rpsfn", b"x")
            stop.wait(0.125)
    worker = threading.Thread(target=load)
    worker.start()
    try:
        wait_for(lambda: status(node, "rpsfn").get("availableReplicas", 0) >= 2, timeout=30)
    finally:
        stop.set()
        worker.join()
    wait_for(lambda: "rps:" in node.json("GET", "/rpsfn")[1]["status"]
             .get("extData", {}).get("lastScale", ""), timeout=10)
    scaled = node.json("GET", "/rpsfn")[1]["status"]["extData"]["lastScale"]
    assert re.match(r"\d -> [23]: rps: [\d.]+ req/s, target 2 per replica", scaled), scaled
    assert "function rpsfn: scaling from 1 to" in node.log_path.read_text()
    remove(node, "rpsfn")


def test_cpu_label_scales_on_the_replicas_measured_cpu(node):
    """type cpu, target 200 millicores: a request that burns a CPU second makes the
    replica's process group report ~1000m (its reaped child), so replicas grow."""
    labels = {"com.openfaas.scale.type": "cpu", "com.openfaas.scale.target": "200",
              "com.openfaas.scale.target-proportion": "1", "com.openfaas.scale.max": "3"}
    burn = "sh -c 'timeout 1 sh -c \"while :; do :; done\"; echo burnt'"
    body = {"service": "cpufn", "envProcess": burn, "labels": labels}
    assert call(node, "POST", "/system/functions", body)[0] == 202
    wait_for(lambda: status(node, "cpufn").get("availableReplicas") == 1, timeout=40)
    _, record = node.json("GET", "/cpufn")
    assert (record["spec"]["autoScaleType"], record["spec"]["autoScaleValue"]) == ("cpu", "200")
    for _ in range(3):
        code, data = call(node, "POST", "/function/cpufn", b"")
        assert (code, data) == (200, b"burnt\n")
        if status(node, "cpufn").get("replicas", 1) >= 2:
            break
    wait_for(lambda: status(node, "cpufn").get("replicas", 0) >= 2, timeout=10)
    wait_for(lambda: "cpu:" in node.json("GET", "/cpufn")[1]["status"]
             .get("extData", {}).get("lastScale", ""), timeout=10)
    scaled = node.json("GET", "/cpufn")[1]["status"]["extData"]["lastScale"]
    assert re.match(r"1 -> [23]: cpu: \d+\.\d millicores, target 200 per replica", scaled), scaled
    remove(node, "cpufn")
