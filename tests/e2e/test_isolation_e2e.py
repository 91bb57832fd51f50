"""A real twistd node runs functions as an unprivileged user with a clean environment,
and refuses a spec that claims one of the node's own ports."""

from __future__ import annotations

import json
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
            assert report["uid"] != 0        # as root: the function's; else the node's
            for key in (*NODE_SECRET, "NOTIFY_SOCKET", "PYTHONPATH"):
                assert key not in report["env"]
        # a function claiming the admin (or gate) port is refused, naming the field
        for port in (node.admin_port, node.gate_port):
            status, body = node.json("POST", "", yaml.safe_dump(
                {"name": "squat", "command": [PYTHON, str(script)], "port": port}))
            assert status == 400 and body["message"].startswith("port: "), body
    finally:
        node.stop()


ETCD_PROBE = """
import json, os, socket, ssl, sys, urllib.request
port = int(os.environ["ETCD_PORT"])
put = json.dumps({"key": "L2ZhYXMvcHduZWQ=", "value": "eWVz"}).encode()   # /faas/pwned
out = {}
def attempt(name, call):
    try:
        out[name] = "succeeded: " + str(call())[:200]
    except Exception as exc:
        out[name] = "refused: " + type(exc).__name__ + " " + str(exc)[:200]
def plain():
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v3/kv/put", put)
    return urllib.request.urlopen(request, timeout=5).read()
def no_certificate():
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    request = urllib.request.Request(f"https://127.0.0.1:{port}/v3/kv/put", put)
    return urllib.request.urlopen(request, timeout=5, context=context).read()
def node_key():
    return open(os.environ["NODE_KEY"]).read()
attempt("plain", plain)
attempt("no_certificate", no_certificate)
attempt("node_key", node_key)
sys.stdout.write(json.dumps(out))
"""


def etcd_curl(node_dir: Path, url: str, body: dict) -> dict:
    tls = node_dir / "etcd" / "tls"
    import subprocess

    result = subprocess.run(
        ["curl", "-sS", "--max-time", "10", "--cacert", str(tls / "ca.pem"),
         "--cert", str(tls / "node.pem"), "--key", str(tls / "node-key.pem"),
         "-d", json.dumps(body), url], capture_output=True, text=True, timeout=20)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.root      # the function runs as another user: no key for it
@pytest.mark.sandbox   # in its sandbox the node's folder is not there at all
def test_a_function_cannot_write_to_the_embedded_etcd(tmp_path: Path) -> None:
    """The embedded etcd takes only clients with the node's certificate: a function
    process (another user) reaches its port but cannot write, and cannot read the key."""
    node_dir = tmp_path / "node"
    node_dir.mkdir()
    script = node_dir / "probe.py"
    script.write_text(ETCD_PROBE)
    node = FaasNodeProcess(node_dir, provider="process").start()
    try:
        ports = json.loads((node_dir / "etcd" / "ports.json").read_text())
        tls = node_dir / "etcd" / "tls"
        assert oct((tls).stat().st_mode & 0o777) == "0o700"
        assert oct((tls / "node-key.pem").stat().st_mode & 0o777) == "0o600"
        spec = {"name": "probe", "command": [PYTHON, str(script)], "mode": "fork",
                "env": {"ETCD_PORT": str(ports["client"]),
                        "NODE_KEY": str(tls / "node-key.pem")}}
        status, body = node.json("POST", "", yaml.safe_dump(spec))
        assert status == 201, body
        deadline = time.monotonic() + 30
        while True:
            status, _, raw = http("GET", f"{node.gate_url}/function/probe/")
            if status == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert status == 200, raw
        outcome = json.loads(raw)
        print("function's attempts on etcd:", outcome)
        assert all(v.startswith("refused: ") for v in outcome.values()), outcome
        assert "FileNotFoundError" in outcome["node_key"], outcome
        # etcd itself works for the node's certificate: the key is absent, not unreadable
        base = f"https://127.0.0.1:{ports['client']}/v3/kv"
        found = etcd_curl(node_dir, base + "/range", {"key": "L2ZhYXMvcHduZWQ="})
        assert "kvs" not in found and int(found["count"] if "count" in found else 0) == 0
        specs = etcd_curl(node_dir, base + "/range",
                          {"key": "L2ZhYXMv", "range_end": "L2ZhYXQ=", "keys_only": True})
        assert int(specs["count"]) > 0, specs      # the node's own records are there
        assert node.json("GET", "/probe")[0] == 200
    finally:
        node.stop()
