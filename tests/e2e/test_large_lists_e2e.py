"""Lists too large to build in one reactor turn, against a real node (process provider,
embedded etcd): written in slices and chunked, on the admin port and through the gate's
relay of OpenFaaS's API, with the same content as their small form."""

from __future__ import annotations

from http.client import HTTPConnection
import json
from typing import Iterator
from urllib.parse import urlsplit

import pytest
import yaml

from faastwist.admin.api import STREAM_THRESHOLD
from tests.support.cli import wait_for
from tests.support.node import FaasNodeProcess, http

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.etcd]

COUNT = STREAM_THRESHOLD + 20


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaasNodeProcess]:
    node = FaasNodeProcess(tmp_path_factory.mktemp("lists-node"), provider="process")
    node.start()
    try:
        for i in range(COUNT):
            body = json.dumps({"name": f"f{i:04d}", "mode": "fork", "command": ["/bin/cat"]})
            code, _, text = http("POST", node.admin_url, body,
                                 {"Content-Type": "application/json"})
            assert code == 201, text

        def settled() -> bool:   # lists compared below must not race the reconciler
            code, _, text = http("GET", node.admin_url, headers={"Accept": "application/json"},
                                 timeout=30)
            return code == 200 and all(item["status"]["state"] == "active"
                                       for item in json.loads(text))
        wait_for(settled, timeout=120)
        yield node
    finally:
        node.stop()


def raw_get(url: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    """GET with http.client, which reports the framing (urllib hides it)."""
    parts = urlsplit(url)
    connection = HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""),
                           headers=headers)
        response = connection.getresponse()
        return (response.status, {k.lower(): v for k, v in response.getheaders()},
                response.read())
    finally:
        connection.close()


def test_the_full_list_is_chunked_in_json_and_flow_yaml(node: FaasNodeProcess) -> None:
    auth = {"Authorization": f"Bearer {node.token}"}
    names = [f"f{i:04d}" for i in range(COUNT)]
    code, headers, body = raw_get(node.admin_url, {**auth, "Accept": "application/json"})
    assert code == 200 and headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in headers
    listed = json.loads(body)
    assert [item["spec"]["name"] for item in listed] == names
    assert body.startswith(b"[\n{") and body.endswith(b"}\n]\n")
    assert body.count(b"\n") == COUNT + 2          # one function per line, and the brackets
    code, headers, as_yaml = raw_get(node.admin_url, {**auth, "Accept": "application/yaml"})
    assert code == 200 and headers["content-type"] == "application/yaml"
    assert yaml.safe_load(as_yaml) == listed
    # a page of them: {items, metadata}, the same lines
    code, _, page = raw_get(node.admin_url + "?limit=1000", {**auth,
                                                             "Accept": "application/json"})
    document = json.loads(page)
    assert code == 200 and document["items"] == listed
    assert document["metadata"]["continue"] == "" and document["metadata"][
        "remainingItemCount"] == 0


def test_openfaas_lists_them_on_the_admin_port_and_through_the_gate(
        node: FaasNodeProcess) -> None:
    auth = {"Authorization": f"Bearer {node.token}"}
    lists = []
    for base in (node.admin_root, node.gate_url):
        code, headers, body = raw_get(base + "/system/functions", auth)
        assert code == 200, body[:300]
        assert headers["content-type"] == "application/json"
        lists.append(json.loads(body))
    assert lists[0] == lists[1]
    assert [f["name"] for f in lists[0]] == [f"f{i:04d}" for i in range(COUNT)]
    assert all(f["namespace"] == "openfaas-fn" for f in lists[0])
