"""Alert-driven autoscaling with real Prometheus and AlertManager processes.

The shipped ``conf/prometheus/`` and ``conf/alertmanager.yml`` are used as they are,
with only addresses, credential files and intervals changed for a test (1 s scrapes and
evaluations, AlertManager's group waits of a second or two): ~10 req/s on a function with
min 1 / max 4 fires ``APIHighInvocationRate``, AlertManager posts it to the node's
``/system/alert`` and replicas grow; when the load stops the alert resolves and the
function returns to min. The node's webhook handler is also driven directly with the
recorded AlertManager payload (tests/fixtures/openfaas).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from tests.support.cli import wait_for
from tests.support.node import FaasNodeProcess, http, node_port

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.etcd, pytest.mark.monitoring]

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "openfaas"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaasNodeProcess]:
    workdir = tmp_path_factory.mktemp("alert-node")
    node = FaasNodeProcess(workdir, provider="process", controller="alerts")
    node.start()
    try:
        yield node
    finally:
        node.stop()


def call(node: FaasNodeProcess, method: str, path: str, body: Any = None,
         headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    data = json.dumps(body) if body is not None and not isinstance(body, bytes) else body
    sent = {"Authorization": f"Bearer {node.token}", **(headers or {})}
    code, _, payload = http(method, node.gate_url + path, data, sent, auth=False)
    return code, payload


def replicas(node: FaasNodeProcess, name: str) -> tuple[int, int]:
    code, data = call(node, "GET", f"/system/function/{name}")
    assert code == 200, data
    got = json.loads(data)
    return got["replicas"], got["availableReplicas"]


def deploy(node: FaasNodeProcess, name: str, labels: dict[str, str]) -> None:
    code, data = call(node, "POST", "/system/functions",
                      {"service": name, "envProcess": "cat", "labels": labels})
    assert code == 202, data
    wait_for(lambda: replicas(node, name) == (1, 1), timeout=40)


def post_alert(node: FaasNodeProcess, name: str, status: str,
               token: str | None = None) -> tuple[int, Any]:
    text = (FIXTURES / "alertmanager-webhook-firing.json").read_text()
    request = json.loads(text.replace("{name}", name).replace("{token}", token or node.token))
    body = request["body"]
    body["status"] = body["alerts"][0]["status"] = status
    code, _, data = http("POST", node.gate_url + request["path"], json.dumps(body),
                         request["headers"], auth=False)
    return code, json.loads(data) if data else None


def test_webhook_payload_steps_up_to_max_and_back_to_min(node):
    deploy(node, "stepfn", {"com.openfaas.scale.min": "1", "com.openfaas.scale.max": "10",
                            "com.openfaas.scale.factor": "30"})
    seen = []
    for _ in range(5):   # ceil(10 * 30 / 100) = 3 per firing notification: 4, 7, 10, 10
        code, body = post_alert(node, "stepfn", "firing")
        assert code == 200, body
        [result] = body["alerts"]
        seen.append(result["to"])
    assert seen == [4, 7, 10, 10, 10]
    assert result["why"] == "alert firing: +3 (30% of max 10)"
    assert replicas(node, "stepfn")[0] == 10
    code, body = post_alert(node, "stepfn", "resolved")
    assert code == 200 and body["alerts"][0]["to"] == 1
    wait_for(lambda: replicas(node, "stepfn") == (1, 1), timeout=30)
    log = node.log_path.read_text()
    assert "alert firing for stepfn: scaling from 1 to 4 replicas" in log
    assert "alert resolved for stepfn: scaling from 10 to 1 replicas" in log
    # unknown functions and other namespaces are skipped, as OpenFaaS does
    code, body = post_alert(node, "ghostfn", "firing")
    assert code == 200 and body["alerts"][0]["skipped"] == "no such function"
    code, body = post_alert(node, "stepfn.other", "firing")
    assert code == 200 and "namespace other" in body["alerts"][0]["skipped"]
    # authenticated like /system/*; a malformed payload names the field
    code, _, _ = http("POST", node.gate_url + "/system/alert", json.dumps({"alerts": []}),
                      {}, auth=False)
    assert code == 401
    for payload, field in (({"alerts": [{"status": "odd"}]}, "alerts[0].status"),
                           ({"alerts": "x"}, "alerts"), ({"version": "3", "alerts": []},
                                                          "version")):
        code, data = call(node, "POST", "/system/alert", payload)
        assert code == 400 and json.loads(data)["message"].startswith(field), data
    call(node, "DELETE", "/system/functions", {"functionName": "stepfn"})


def _configs(tmp: Path, node: FaasNodeProcess, prom_port: int, am_port: int) -> None:
    """The shipped configs with this test's addresses, credentials and intervals."""
    token_file = tmp / "token"
    token_file.write_text(node.token + "\n")
    token_file.chmod(0o600)
    prom = yaml.safe_load((ROOT / "conf" / "prometheus" / "prometheus.yml").read_text())
    prom["global"].update(scrape_interval="1s", evaluation_interval="1s")
    prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] = [
        f"127.0.0.1:{am_port}"]
    [job] = prom["scrape_configs"]
    job["authorization"]["credentials_file"] = str(token_file)
    job["static_configs"][0]["targets"] = [f"127.0.0.1:{node.admin_port}"]
    prom["rule_files"] = [str(tmp / "alert.rules.yml")]
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(prom))
    rules = yaml.safe_load((ROOT / "conf" / "prometheus" / "alert.rules.yml").read_text())
    [rule] = rules["groups"][0]["rules"]
    assert rule["alert"] == "APIHighInvocationRate"
    rule["for"] = "2s"
    (tmp / "alert.rules.yml").write_text(yaml.safe_dump(rules))
    am = yaml.safe_load((ROOT / "conf" / "alertmanager.yml").read_text())
    am["route"].update(group_wait="1s", group_interval="2s", repeat_interval="3s")
    [hook] = am["receivers"][0]["webhook_configs"]
    hook["url"] = f"http://127.0.0.1:{node.admin_port}/system/alert"
    hook["http_config"]["authorization"]["credentials_file"] = str(token_file)
    (tmp / "alertmanager.yml").write_text(yaml.safe_dump(am))


class Daemon:
    """A process this test starts and stops by its pid."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.log = log
        self.handle = log.open("wb")
        self.process = subprocess.Popen(argv, stdout=self.handle, stderr=subprocess.STDOUT)

    def ready(self, url: str) -> bool:
        assert self.process.poll() is None, self.log.read_text()[-3000:]
        try:
            return http("GET", url, timeout=2)[0] == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.handle.close()


def test_prometheus_and_alertmanager_scale_a_loaded_function_and_back(node, tmp_path):
    prom_port, am_port = node_port(), node_port()
    _configs(tmp_path, node, prom_port, am_port)
    daemons = []
    try:
        alertmanager = Daemon([shutil.which("prometheus-alertmanager"),
                               f"--config.file={tmp_path / 'alertmanager.yml'}",
                               f"--storage.path={tmp_path / 'am-data'}",
                               f"--web.listen-address=127.0.0.1:{am_port}",
                               "--cluster.listen-address="], tmp_path / "alertmanager.log")
        daemons.append(alertmanager)
        prometheus = Daemon([shutil.which("prometheus"),
                             f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'prom-data'}",
                             f"--web.listen-address=127.0.0.1:{prom_port}"],
                            tmp_path / "prometheus.log")
        daemons.append(prometheus)
        wait_for(lambda: alertmanager.ready(f"http://127.0.0.1:{am_port}/-/ready"), timeout=30)
        wait_for(lambda: prometheus.ready(f"http://127.0.0.1:{prom_port}/-/ready"), timeout=30)
        # Prometheus scrapes the node's /metrics with the read... here admin, token
        def scraped() -> bool:
            _, _, data = http("GET", f"http://127.0.0.1:{prom_port}/api/v1/targets", timeout=5)
            targets = json.loads(data)["data"]["activeTargets"]
            return bool(targets) and targets[0]["health"] == "up"
        wait_for(scraped, timeout=30)
        deploy(node, "loadfn", {"com.openfaas.scale.min": "1", "com.openfaas.scale.max": "4"})
        stop = threading.Event()
        sent = [0]

        def load() -> None:   # ~10 req/s
            while not stop.is_set():
                started = time.monotonic()
                call(node, "POST", "/function/loadfn", b"x")
                sent[0] += 1
                stop.wait(max(0.0, 0.1 - (time.monotonic() - started)))
        worker = threading.Thread(target=load)
        worker.start()
        try:
            # the rule's 10 s window + 2 s pending + AlertManager's 1 s group wait
            wait_for(lambda: replicas(node, "loadfn")[1] >= 2, timeout=60)
        finally:
            stop.set()
            worker.join()
        assert sent[0] >= 20
        assert "alert firing for loadfn: scaling from 1 to 2 replicas" in \
            node.log_path.read_text()
        # load stops: the rate falls, the alert resolves, the function returns to min
        wait_for(lambda: replicas(node, "loadfn") == (1, 1), timeout=90)
        assert "alert resolved for loadfn: scaling from" in node.log_path.read_text()
        _, record = node.json("GET", "/loadfn")
        assert record["spec"]["minReplica"] == 1
        assert record["spec"]["labels"]["com.openfaas.scale.min"] == "1"
    finally:
        for daemon in reversed(daemons):
            daemon.stop()
    call(node, "DELETE", "/system/functions", {"functionName": "loadfn"})
