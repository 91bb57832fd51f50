"""A real twistd node runs functions as an unprivileged user with a clean environment,
and refuses a spec that claims one of the node's own ports."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import yaml

from tests.support.node import FaasNodeProcess, http
from tests.support.process import PYTHON

pytestmark = pytest.mark.slow

REPORT = """
import json, os, sys
report = {"uid": os.getuid(), "env": sorted(os.environ)}
if os.environ.get("PORT"):
    from http.server import BaseHTTPRequestHandler, HTTPServer
    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps(report).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass
    HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
else:
    sys.stdout.write(json.dumps(report))
"""
NODE_SECRET = {"FAASTWIST_ADMIN_TOKEN": "node-secret", "PYTHONPATH_EXTRA": "x"}


def test_functions_run_unprivileged_and_cannot_claim_node_ports(tmp_path: Path) -> None:
    node_dir = tmp_path / "node"
    node_dir.mkdir()
    script = node_dir / "report.py"      # in the config folder: staged for the function user
    script.write_text(REPORT)
    node = FaasNodeProcess(node_dir, provider="process", env=NODE_SECRET).start()
    try:
        for name, extra in (("who-http", {"readinessPath": "/"}), ("who-fork", {"mode": "fork"})):
            spec = {"name": name, "command": [PYTHON, str(script)], **extra}
            status, body = node.json("POST", "", yaml.safe_dump(spec))
            assert status == 201, body
        for name in ("who-http", "who-fork"):
            deadline = time.monotonic() + 30
            while True:
                status, _, body = http("GET", f"{node.gate_url}/function/{name}/")
                if status == 200 or time.monotonic() > deadline:
                    break
                time.sleep(0.3)
            assert status == 200, body
            report = json.loads(body)
            if os.geteuid() == 0:
                assert report["uid"] != 0
            for key in (*NODE_SECRET, "NOTIFY_SOCKET", "PYTHONPATH"):
                assert key not in report["env"]
        # a function claiming the admin (or gate) port is refused, naming the field
        for port in (node.admin_port, node.gate_port):
            status, body = node.json("POST", "", yaml.safe_dump(
                {"name": "squat", "command": [PYTHON, str(script)], "port": port}))
            assert status == 400 and body["message"].startswith("port: "), body
    finally:
        node.stop()
