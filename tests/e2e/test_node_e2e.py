"""End to end: a real ``twistd -n faasgate`` with its embedded etcd, driven over HTTP.

The control plane's promise: everything lives in etcd, so SIGTERM and a new start lose
nothing - not a function, not a state, not a pending start - and no function process
outlives the node that ran it. (The Easegress tour on Knative, which needs no node
process, runs in-process: tests/node/test_node_inprocess.py.)
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.node import FaasNodeProcess, http

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PYTHON = shutil.which("python3", path="/usr/bin:/bin") or sys.executable


def wait_for(predicate, timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def state_of(node: FaasNodeProcess, name: str) -> str | None:
    status, body = node.json("GET", f"/{name}")
    return body["status"]["state"] if status == 200 else None


def pids_running(marker: str) -> list[int]:
    """Function processes whose command line mentions ``marker`` (a path unique to the
    test); bubblewrap's sandbox monitor in front of a replica is not one of them."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().split()[2]
        except OSError:
            continue
        cmdline = b" ".join(argv).decode(errors="replace")
        if os.path.basename(argv[0]) == b"bwrap":
            continue
        if marker in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def test_sigterm_and_restart_lose_nothing(tmp_path: Path) -> None:
    # a copy in the node's config folder (staged into each function's folder: the
    # function user cannot enter pytest's tmp); its unique name identifies this test's
    # processes
    echo = tmp_path / "node" / "fn" / f"echo-{os.getpid()}-{id(tmp_path):x}.py"
    echo.parent.mkdir(parents=True)
    shutil.copy(ROOT / "conf" / "functions" / "echo.py", echo)

    def spec(name: str, **extra: Any) -> str:
        return yaml.safe_dump({"name": name, "command": [PYTHON, str(echo)],
                               "readinessPath": "/healthz", "minReplica": 1, **extra})

    node = FaasNodeProcess(tmp_path / "node", provider="process").start()
    try:
        for name in ("served", "held", "starting"):
            assert node.json("POST", "", spec(name))[0] == 201
        broken = yaml.safe_dump({"name": "broken", "command": [
            "/bin/sh", "-c", f"echo boom >&2; exit 3 # {echo.name}"], "minReplica": 1})
        assert node.json("POST", "", broken)[0] == 201
        for name in ("served", "held", "starting"):
            wait_for(lambda name=name: state_of(node, name) == "active", what=f"{name} active")
        wait_for(lambda: state_of(node, "broken") == "failed", what="broken failed")
        assert node.json("PUT", "/held/stop")[0] == 200
        assert node.json("PUT", "/starting/stop")[0] == 200
        status, _, body = http("POST", f"{node.gate_url}/tomcat/job/api", b'{"n": 1}',
                               {"X-FaaS-Func-Name": "served"})
        assert (status, body) == (200, b'V3 Body is \n{"n": 1}')
        wait_for(lambda: len(pids_running(echo.name)) == 1, what="held/starting stopped")
        status, before = node.json("GET", "")
        assert status == 200
        failed = next(f for f in before if f["spec"]["name"] == "broken")["status"]
        assert failed["extData"]["exitCode"] == "3" and "boom" in failed["extData"]["stderr"]
        # a start asked for just before SIGTERM: the record in etcd says so, and it is
        # carried out whether the stop or the start wins the race (unit tests pin down
        # the restart case: test_reconciler.test_pending_start_survives_a_restart)
        assert node.json("PUT", "/starting/start")[0] == 200
    finally:
        code = node.stop()
    assert code in (0, -signal.SIGTERM), node.log()
    assert pids_running(echo.name) == [], "a function process outlived the node"

    again = FaasNodeProcess(tmp_path / "node", provider="process").start()
    try:
        status, after = again.json("GET", "")
        assert status == 200
        assert [f["spec"] for f in after] == [f["spec"] for f in before]
        states = {f["spec"]["name"]: f["status"]["state"] for f in after}
        assert states["served"] == "active" and states["held"] == "inactive"
        assert states["broken"] == "failed"
        wait_for(lambda: state_of(again, "starting") == "active", what="pending start")
        status, _, body = http("POST", f"{again.gate_url}/x", b"again",
                               {"X-FaaS-Func-Name": "served"}, timeout=30)
        assert (status, body) == (200, b"V3 Body is \nagain")
        assert state_of(again, "held") == "inactive"
        assert state_of(again, "broken") == "failed"
    finally:
        assert again.stop() in (0, -signal.SIGTERM), again.log()
    assert pids_running(echo.name) == []


def test_a_second_node_on_the_same_folders_exits_1_at_once(tmp_path: Path) -> None:
    """``make run`` twice in one folder: the second exits 1 with one clear line (it
    hung, after "data/etcd is in use"), and the first serves on, untouched."""
    import subprocess

    node = FaasNodeProcess(tmp_path / "node", provider="process").start()
    second = None
    try:
        began = time.monotonic()
        second = subprocess.Popen(node.command(), cwd=node.workdir, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, start_new_session=True,
                                  env=dict(os.environ, PYTHONPATH=str(ROOT)))
        output, _ = second.communicate(timeout=60)
        took = time.monotonic() - began
        text = output.decode("utf-8", "replace")
        assert second.returncode == 1, text
        assert (f"faasgate: process.dataDir: {tmp_path / 'node' / 'data'} is in use by "
                f"another faasgate (pid {node.process.pid} since ") in text
        assert "Traceback" not in text
        print(f"second node on the same folders: exit 1 after {took:.2f}s (interpreter "
              f"start included)")
        assert took < 15.0
        assert node.json("GET", "")[0] == 200
        assert http("GET", f"{node.admin_root}/readyz")[0] == 200
    finally:
        if second is not None and second.poll() is None:
            os.killpg(second.pid, signal.SIGKILL)
            second.wait()
        assert node.stop() in (0, -signal.SIGTERM), node.log()
