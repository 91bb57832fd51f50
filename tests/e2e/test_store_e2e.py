"""The function store on real nodes: the shipped catalogue (every entry deployed and run),
a catalogue from ``store.url``, and entries that cannot run here refused clearly."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.cli import run_cli, wait_for
from tests.support.node import FaasNodeProcess, http

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.etcd]

SHIPPED = Path(__file__).resolve().parents[2] / "faastwist" / "catalogue" / "functions.json"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaasNodeProcess]:
    node = FaasNodeProcess(tmp_path_factory.mktemp("store-node"), provider="process",
                           controller="storectl")
    node.start()
    try:
        yield node
    finally:
        node.stop()


def ready(node: FaasNodeProcess, name: str) -> bool:
    code, _, data = http("GET", f"{node.gate_url}/system/function/{name}",
                         headers={"Authorization": f"Bearer {node.token}"}, auth=False)
    return code == 200 and json.loads(data)["availableReplicas"] >= 1


def invoke(node: FaasNodeProcess, name: str, body: bytes) -> tuple[int, bytes]:
    code, _, data = http("POST", f"{node.gate_url}/function/{name}", body, auth=False)
    return code, data


def remove(node: FaasNodeProcess, name: str) -> None:
    code, _, _ = http("DELETE", f"{node.gate_url}/system/functions",
                      json.dumps({"functionName": name}),
                      {"Authorization": f"Bearer {node.token}"}, auth=False)
    assert code == 202


EXPECTED = {   # every shipped function, with what it answers to b"hello store\n"
    "sha256sum": hashlib.sha256(b"hello store\n").hexdigest().encode() + b"  -\n",
    "base64": b"aGVsbG8gc3RvcmUK",
    "wordcount": b"      1       2      12\n",
    "uppercase": b"HELLO STORE\n",
}


def test_faas_cli_reads_the_catalogue_without_credentials(node):
    """faas-cli's `store list --url` is a plain GET: open, on the gate and the admin port."""
    for base in (node.gate_url, node.admin_root):
        code, headers, data = http("GET", f"{base}/system/store", auth=False)
        assert code == 200, data
        catalogue = json.loads(data)
        assert catalogue == json.loads(SHIPPED.read_text())
    for entry in catalogue["functions"]:   # what faas-cli needs of each entry
        assert entry["images"]["x86_64"] and entry["fprocess"] and entry["name"]
    # the rest of /system stays closed
    code, _, _ = http("GET", f"{node.gate_url}/system/functions", auth=False)
    assert code == 401


def test_every_shipped_function_deploys_from_the_cli_and_runs(node):
    listed = run_cli(node, "store", "list")
    assert listed.returncode == 0, listed.stderr
    names = [f["name"] for f in json.loads(SHIPPED.read_text())["functions"]]
    for name in names:
        assert name in listed.stdout
    for name in names:
        done = run_cli(node, "store", "deploy", name)
        assert done.returncode == 0, done.stderr
        assert f"{name}: deploying from the store" in done.stdout
    for name in names:
        wait_for(lambda name=name: ready(node, name), timeout=40)
    for name, expected in EXPECTED.items():
        assert invoke(node, name, b"hello store\n") == (200, expected), name
    assert invoke(node, "base64-decode", b"aGVsbG8=") == (200, b"hello")
    code, data = invoke(node, "json-format", b'{"a": [1, 2]}')
    assert (code, json.loads(data)) == (200, {"a": [1, 2]}) and b"\n    " in data
    code, data = invoke(node, "json-format", b"{not json")
    assert code == 500 and b"Expecting property name" in data
    code, data = invoke(node, "env", b"")
    assert code == 200 and b"Http_Method=POST" in data
    # by title, under another name, with a label
    done = run_cli(node, "store", "deploy", "SHA-256", "--name", "hasher",
                   "--label", "team=a")
    assert done.returncode == 0, done.stderr
    wait_for(lambda: ready(node, "hasher"), timeout=40)
    assert invoke(node, "hasher", b"hello store\n") == (200, EXPECTED["sha256sum"])
    for name in [*names, "hasher"]:
        remove(node, name)
    missing = run_cli(node, "store", "deploy", "no-such-entry")
    assert missing.returncode == 1
    assert "the store has no function no-such-entry" in missing.stderr


class _Catalogue(BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


def test_a_catalogue_from_store_url_and_entries_that_cannot_run_here(tmp_path):
    catalogue = {"version": "0.2.0", "functions": [
        {"name": "shout", "title": "Shout", "description": "upper case",
         "images": {"x86_64": "x/shout"}, "fprocess": "tr a-z A-Z",
         "icon": "https://x/icon.png", "author": "someone"},   # OpenFaaS store fields pass
        {"name": "figlet", "title": "Figlet", "images": {"x86_64": "functions/figlet"},
         "fprocess": "no-such-figlet-binary"},
        {"name": "nodeinfo", "title": "NodeInfo", "images": {"x86_64": "functions/nodeinfo"},
         "fprocess": ""},
    ]}
    _Catalogue.body = json.dumps(catalogue).encode()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Catalogue)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/functions.json"
    node = FaasNodeProcess(tmp_path / "node", provider="process", controller="urlstore",
                           extra={"store": {"url": url}})
    node.start()
    try:
        code, _, data = http("GET", f"{node.gate_url}/system/store", auth=False)
        assert code == 200 and [f["name"] for f in json.loads(data)["functions"]] == [
            "shout", "figlet", "nodeinfo"]
        assert json.loads(data)["functions"][0]["icon"] == "https://x/icon.png"
        done = run_cli(node, "store", "deploy", "shout")
        assert done.returncode == 0, done.stderr
        wait_for(lambda: ready(node, "shout"), timeout=40)
        assert invoke(node, "shout", b"hi") == (200, b"HI")
        refused = run_cli(node, "store", "deploy", "figlet")
        assert refused.returncode == 1
        assert ("cannot deploy figlet here: envProcess: 'no-such-figlet-binary': no such "
                "executable") in refused.stderr, refused.stderr
        refused = run_cli(node, "store", "deploy", "NodeInfo")
        assert refused.returncode == 1
        assert ("cannot deploy NodeInfo here: store entry nodeinfo has no fprocess: it "
                "needs its container image") in refused.stderr, refused.stderr
        code, _, _ = http("GET", f"{node.gate_url}/system/function/figlet",
                          headers={"Authorization": f"Bearer {node.token}"}, auth=False)
        assert code == 404   # nothing was deployed
    finally:
        node.stop()
        server.shutdown()
        server.server_close()
