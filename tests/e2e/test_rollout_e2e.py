"""Rolling updates against a real node: no failed request under load, and a failing new
version leaves the old one serving (the function stays active, the status says why)."""

from __future__ import annotations

import json
import shutil
import sys
import threading
import time
from collections import Counter
from typing import Iterator

import pytest
import yaml

from tests.support.cli import run_cli, wait_for
from tests.support.node import FaasNodeProcess, http

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.etcd]
#: Debian's interpreter: functions run as an unprivileged user, who may not run the venv's
PYTHON = shutil.which("python3", path="/usr/bin:/bin") or sys.executable

VERSIONED_APP = '''\
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class App(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        out = os.environ["VERSION"].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), App).serve_forever()
'''


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaasNodeProcess]:
    workdir = tmp_path_factory.mktemp("rollout-node")
    (workdir / "versioned.py").write_text(VERSIONED_APP)
    node = FaasNodeProcess(workdir, provider="process", controller="rollctl")
    node.start()
    try:
        yield node
    finally:
        node.stop()


def hammer(url: str, stop: threading.Event, codes: Counter, bodies: Counter,
           clients: int = 16) -> list[threading.Thread]:
    def loop() -> None:
        while not stop.is_set():
            try:
                code, _, body = http("GET", url, timeout=10)
            except OSError as exc:
                code, body = 0, str(exc).encode()
            codes[code] += 1
            bodies[body[:40]] += 1
    threads = [threading.Thread(target=loop, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    return threads


def test_openfaas_update_under_c16_load_has_no_failed_request(node):
    body = {"service": "rolling", "image": "x", "envProcess": "echo v1",
            "labels": {"com.openfaas.scale.min": "2"}}
    auth = {"Authorization": f"Bearer {node.token}"}
    code, _, data = http("POST", node.gate_url + "/system/functions", json.dumps(body), auth)
    assert code == 202, data
    url = node.gate_url + "/function/rolling"
    wait_for(lambda: http("GET", url)[2] == b"v1\n", timeout=40)
    stop, codes, bodies = threading.Event(), Counter(), Counter()
    threads = hammer(url, stop, codes, bodies)
    time.sleep(1.5)
    body["envProcess"] = "echo v2"
    code, _, data = http("PUT", node.gate_url + "/system/functions", json.dumps(body), auth)
    assert code == 202, data
    wait_for(lambda: bodies[b"v2\n"] > 50, timeout=40)
    time.sleep(1.0)
    stop.set()
    for thread in threads:
        thread.join(15)
    assert set(codes) == {200}, codes
    assert bodies[b"v1\n"] > 0 and bodies[b"v2\n"] > 50
    assert http("GET", url)[2] == b"v2\n"
    status = node.json("GET", "/rolling")[1]["status"]
    assert status["state"] == "active" and "rollout" not in status["extData"]


def test_failing_update_leaves_the_old_version_serving(node, tmp_path):
    spec = {"name": "keeper", "command": [PYTHON, "versioned.py"],
            "env": {"VERSION": "good"}, "minReplica": 1, "readinessPath": "/"}
    code, _ = node.json("POST", "", yaml.safe_dump(spec))
    assert code == 201
    url = node.gate_url + "/function/keeper"
    wait_for(lambda: http("GET", url)[2] == b"good", timeout=40)
    # the new version exits at once: it never becomes ready
    bad = dict(spec, command=[PYTHON, "-c", "import sys; sys.exit(7)"],
               env={"VERSION": "bad"})
    spec_file = tmp_path / "keeper.yaml"
    spec_file.write_text(yaml.safe_dump(bad))
    result = run_cli(node, "--server", node.admin_root, "--controller", "rollctl",
                     "update", "-f", str(spec_file))
    assert result.returncode == 0, result.stderr

    def failed() -> dict | None:
        status = node.json("GET", "/keeper")[1]["status"]
        return status if status["extData"].get("rollout") == "failed" else None
    status = wait_for(failed, timeout=60)
    assert status["state"] == "active"
    assert "update failed; the previous version keeps serving" in status["message"]
    assert "exited with code 7" in status["message"]
    for _ in range(20):
        assert http("GET", url)[:3:2] == (200, b"good")
    # a later update fixes it
    fixed = dict(spec, env={"VERSION": "fixed"})
    code, body = node.json("PUT", "/keeper/rollout", yaml.safe_dump(fixed))
    assert code == 200 and body["status"]["state"] == "active", body
    wait_for(lambda: http("GET", url)[2] == b"fixed", timeout=40)
    wait_for(lambda: "rollout" not in node.json("GET", "/keeper")[1]["status"]["extData"],
             timeout=20)
    # the Easegress table still refuses a plain update while active
    code, body = node.json("PUT", "/keeper", yaml.safe_dump(fixed))
    assert code == 409
