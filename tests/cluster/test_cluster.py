"""Three real nodes on a three-member etcd cluster (loopback): every gate serves, one
fenced reconciler acts at once, readiness tells the truth."""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.cluster import Cluster, wait_for
from tests.support.node import FaasNodeProcess, http

pytestmark = pytest.mark.cluster

PYTHON = shutil.which("python3", path="/usr/bin:/bin") or sys.executable

VERSIONED = textwrap.dedent('''
    import os
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            body = ("version " + os.environ.get("VERSION", "?")).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_GET

        def log_message(self, *args):
            pass

    ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
''')


def script(cluster: Cluster) -> Path:
    path = cluster.workdir / "fn.py"
    if not path.exists():
        path.write_text(VERSIONED)
    return path


def spec(cluster: Cluster, name: str, version: str = "v1", **extra: Any) -> str:
    return yaml.safe_dump({"name": name, "command": [PYTHON, str(script(cluster))],
                           "readinessPath": "/", "minReplica": 1,
                           "env": {"VERSION": version}, **extra})


def call(node: FaasNodeProcess, name: str, timeout: float = 5.0) -> tuple[int, bytes]:
    status, _, body = http("GET", f"{node.gate_url}/function/{name}/", timeout=timeout)
    return status, body


def state(node: FaasNodeProcess, name: str) -> str | None:
    code, body = node.json("GET", f"/{name}")
    return body["status"]["state"] if code == 200 else None


def serves(node: FaasNodeProcess, name: str, version: str = "v1") -> bool:
    try:
        return call(node, name, timeout=2) == (200, f"version {version}".encode())
    except OSError:
        return False


def test_every_gate_serves_a_process_function(cluster: Cluster) -> None:
    first = cluster.nodes[0]
    assert first.json("POST", "", spec(cluster, "hello"))[0] == 201
    wait_for(lambda: state(first, "hello") == "active", 20, what="hello active")
    for node in cluster.nodes:
        assert call(node, "hello") == (200, b"version v1"), node.gate_url
    # the status shows every node's verdict
    ext = first.json("GET", "/hello")[1]["status"]["extData"]
    assert ext["nodes"] == "n0=ready n1=ready n2=ready"
    for node in cluster.nodes:
        ready = json.loads(http("GET", f"{node.admin_root}/readyz")[2])
        assert ready.get("status") == "ok", ready


def test_create_via_a_follower_is_active_on_every_gate_within_1s(cluster: Cluster) -> None:
    follower = cluster.followers()[0]
    # warm up: the interpreter's first start is slow on a loaded machine
    assert follower.json("POST", "", spec(cluster, "warm"))[0] == 201
    wait_for(lambda: all(serves(n, "warm") for n in cluster.nodes), 20, what="warm-up")
    started = time.monotonic()
    assert follower.json("POST", "", spec(cluster, "quick"))[0] == 201
    wait_for(lambda: state(follower, "quick") == "active", 5, what="quick active")
    active_after = time.monotonic() - started
    wait_for(lambda: all(serves(n, "quick") for n in cluster.nodes), 5, what="served")
    served_after = time.monotonic() - started
    print(f"create via follower: active after {active_after:.3f}s, served on all gates "
          f"after {served_after:.3f}s")
    assert active_after < 1.0
    assert served_after < 1.5
