"""limitMemory and limitCPU enforced for real on a twistd node (cgroup v2, else v1).

A function that allocates past limitMemory is killed by the kernel and reported
(extData: OOM, and which cgroup mechanism), the node keeps serving; a CPU-bound
function with limitCPU 0.2 gets about 0.2 of a core, measured from /proc.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import yaml

from faastwist.providers.limits import CgroupV1Tree
from tests.support.cli import wait_for
from tests.support.facilities import cgroup_v2_usable
from tests.support.node import FaasNodeProcess, http
from tests.support.process import PYTHON, function_pids

pytestmark = [pytest.mark.slow, pytest.mark.cgroups]

SERVER = """
import json, os, threading
from http.server import BaseHTTPRequestHandler, HTTPServer
MODE = os.environ["MODE"]
if MODE == "spin":
    def spin():
        while True:
            pass
    threading.Thread(target=spin, daemon=True).start()
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.endswith("/eat"):
            hog = bytearray(400 * 2**20)    # past limitMemory: the kernel kills us here
        body = json.dumps({"pid": os.getpid()}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"""


def expected_mechanism() -> str:
    """What this machine offers, as the node will find it (without any cgroup the test
    is deselected: tests/conftest.py, the cgroups marker)."""
    if cgroup_v2_usable():
        return "cgroup v2"
    probe = CgroupV1Tree.detect(f"probe{os.getpid()}")
    assert probe is not None, "cgroups_unavailable() found a cgroup the node now cannot make"
    probe.close()
    return "cgroup v1"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def v1_folders(pid: int) -> list[Path]:
    """The folders of the pid's v1 memory and cpu cgroups."""
    folders = []
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if {"memory", "cpu"} & set(controllers.split(",")):
            folders.append(Path("/sys/fs/cgroup") / controllers / path.lstrip("/"))
    return folders


def test_memory_and_cpu_limits_are_enforced_and_reported(tmp_path: Path) -> None:
    mechanism = expected_mechanism()
    node_dir = tmp_path / "node"
    node_dir.mkdir()
    script = node_dir / "server.py"
    script.write_text(SERVER)
    node = FaasNodeProcess(node_dir, provider="process").start()
    try:
        for name, mode, limits in (("eat", "eat", {"limitMemory": "64Mi"}),
                                   ("spin", "spin", {"limitCPU": "200m"})):
            spec = {"name": name, "command": [PYTHON, str(script)], "env": {"MODE": mode},
                    "minReplica": 1, "readinessPath": "/", **limits}
            status, body = node.json("POST", "", yaml.safe_dump(spec))
            assert status == 201, body
        for name in ("eat", "spin"):
            wait_for(lambda name=name: http("GET", f"{node.gate_url}/function/{name}/")[0] == 200,
                     timeout=40)

        # CPU: about 0.2 of a core over 3 s of wall time, though it would take a whole one
        # the host's pid of the replica (the one it reports is its PID namespace's)
        assert http("GET", f"{node.gate_url}/function/spin/")[0] == 200
        pid = max(function_pids("spin"))
        if mechanism == "cgroup v1":
            folders = v1_folders(pid)
            assert len(folders) == 2 and all(f.parent.name.startswith("faastwist-")
                                             for f in folders), folders
            quota = next(f for f in folders if (f / "cpu.cfs_quota_us").exists())
            assert (quota / "cpu.cfs_quota_us").read_text().strip() == "20000"
        started, used = time.monotonic(), cpu_seconds(pid)
        time.sleep(3.0)
        share = (cpu_seconds(pid) - used) / (time.monotonic() - started)
        print(f"limitCPU 200m: {share:.3f} of a core over 3 s ({mechanism})")
        assert 0.05 < share < 0.3, share
        status = node.json("GET", "/spin")[1]["status"]
        assert status["extData"].get("cpuLimit", "").startswith(mechanism), status

        # memory: the allocation kills the replica (not the node), and the status says so
        assert http("GET", f"{node.gate_url}/function/eat/")[0] == 200
        eater = max(function_pids("eat"))
        eater_cgroups = v1_folders(eater) if mechanism == "cgroup v1" else []
        assert all(f.is_dir() for f in eater_cgroups), eater_cgroups
        code, _, _ = http("GET", f"{node.gate_url}/function/eat/eat", timeout=30)
        # both by the spec: 502 when the kernel kills the replica under the request, 503
        # when the gate already knows it gone and none is ready; never a 200 or a hang
        assert code in (502, 503), code

        def oom_reported() -> dict | None:
            status = node.json("GET", "/eat")[1]["status"]
            return status if status["extData"].get("reason") == "OOM" else None
        status = wait_for(oom_reported, timeout=30)
        ext = status["extData"]
        print("after the allocation:", status["state"], ext)
        assert int(ext["oomKills"]) >= 1, status
        assert ext["memoryLimit"].startswith(f"{mechanism} memory."), status
        assert "67108864" in ext["memoryLimit"], status
        # the killed replica's cgroups go with it (the node keeps running)
        wait_for(lambda: not any(f.exists() for f in eater_cgroups), timeout=20)
        # the node is fine: it serves, a new replica of the function answers again
        assert http("GET", f"http://127.0.0.1:{node.admin_port}/healthz")[0] == 200
        wait_for(lambda: http("GET", f"{node.gate_url}/function/eat/")[0] == 200, timeout=40)
        assert http("GET", f"{node.gate_url}/function/spin/")[0] == 200
        assert node.process is not None and node.process.poll() is None
        replica_cgroups = v1_folders(pid) if mechanism == "cgroup v1" else []
    finally:
        node.stop()
    # the replicas' cgroups (and the node's parents) are gone with the node
    if mechanism == "cgroup v1":
        assert not any(f.exists() for f in replica_cgroups), replica_cgroups
        assert not any(f.parent.exists() for f in replica_cgroups), replica_cgroups
