"""Secrets in use and state across a restart, on a real ``twistd -n faasgate`` node.

Measured on commit 15642f0: deleting a secret a function used was accepted; after a
restart that function kept ``/readyz`` 503 for minutes while its status still said
"3 of 3 replicas ready"; and a failed function came back ``active``.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.node import FaasNodeProcess, http

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.process]

PYTHON = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
ECHO = str(Path(__file__).resolve().parents[2] / "conf" / "functions" / "echo.py")
JSON = {"Content-Type": "application/json"}


def wait_until(predicate: Any, timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def status(node: FaasNodeProcess, name: str) -> dict:
    code, body = node.json("GET", f"/{name}")
    assert code == 200, body
    return body["status"]


def ready(node: FaasNodeProcess) -> bool:
    return http("GET", f"{node.admin_root}/readyz")[0] == 200


def passes(node: FaasNodeProcess) -> float:
    """Reconcile passes this node ran (its /metrics)."""
    _, _, data = http("GET", f"{node.admin_root}/metrics")
    found = re.search(rb"^faastwist_reconcile_pass_seconds_count (\S+)$", data, re.M)
    return float(found.group(1)) if found else 0.0


def test_secrets_in_use_and_failed_functions_survive_a_restart(tmp_path: Path) -> None:
    node = FaasNodeProcess(tmp_path / "node")
    node.start()
    try:
        wait_until(lambda: ready(node), what="readyz")
        system = f"{node.admin_root}/system"
        # a secret in use cannot be deleted: 409 naming the functions
        code, _, data = http("POST", f"{system}/secrets",
                             json.dumps({"name": "used", "value": "v"}), JSON)
        assert code == 202, data
        for name in ("user-b", "user-a"):
            code, _, data = http("POST", f"{system}/functions", json.dumps(
                {"service": name, "image": "x", "envProcess": "cat", "secrets": ["used"]}),
                JSON)
            assert code == 202, data
        code, _, data = http("DELETE", f"{system}/secrets", json.dumps({"name": "used"}),
                             JSON)
        assert code == 409, data
        assert json.loads(data)["message"].startswith(
            "secret used is used by function(s) user-a, user-b")
        # a function whose secret is missing fails, saying why; the node stays ready
        spec = (f"name: lacks\ncommand: [{PYTHON}, {ECHO}]\nreadinessPath: /healthz\n"
                f"minReplica: 1\nsecrets: [nope]\n")
        assert node.json("POST", "", spec)[0] == 201
        wait_until(lambda: status(node, "lacks")["state"] == "failed", what="lacks failed")
        assert "secret nope not found" in status(node, "lacks")["message"]
        assert ready(node)
        # a crash loop (scaled to zero, so the node has to run it to see it fail)
        crash = (f"name: crash\ncommand: [{PYTHON}, -c, 'import sys; sys.exit(3)']\n"
                 f"minReplica: 0\n")
        assert node.json("POST", "", crash)[0] == 201
        wait_until(lambda: status(node, "crash")["state"] == "active", what="crash active")
        wait_until(lambda: http("POST", f"{node.gate_url}/", b"x",
                                {"X-FaaS-Func-Name": "crash"})[0] == 503
                   and status(node, "crash")["state"] == "failed", what="crash failed")
        failed_message = status(node, "crash")["message"]
        assert "crash-looping" in failed_message

        # restart: ready at once, and every state as it was
        node.stop()
        started = time.monotonic()
        node.start()
        wait_until(lambda: ready(node), timeout=30, what="readyz after the restart")
        ready_after = time.monotonic() - started
        settled = passes(node)
        wait_until(lambda: passes(node) >= settled + 2, what="two reconcile passes")
        assert status(node, "crash")["state"] == "failed"
        assert status(node, "crash")["message"] == failed_message
        assert status(node, "lacks")["state"] == "failed"
        assert "secret nope not found" in status(node, "lacks")["message"]
        assert http("POST", f"{node.gate_url}/", b"x",
                    {"X-FaaS-Func-Name": "crash"})[0] == 503
        # the missing secret is the function's error: creating it heals the function
        code, _, data = http("POST", f"{system}/secrets",
                             json.dumps({"name": "nope", "value": "v"}), JSON)
        assert code == 202, data
        wait_until(lambda: status(node, "lacks")["state"] == "active", what="lacks active")
        print(f"ready {ready_after:.1f}s after the restart began")
    finally:
        node.stop()
