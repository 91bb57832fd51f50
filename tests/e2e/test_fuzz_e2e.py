"""schemathesis against a real ``twistd faasgate`` node (embedded etcd, process provider).

It reads the node's own OpenAPI document and sends generated requests to every
operation, with an admin token and without credentials: no answer may be a 5xx, and
every status, content type, header and body must be what the document says. The node
must still be ready afterwards. Bounded: a few examples per operation and a time limit.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.node import FaasNodeProcess, http

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_headers_conformance,response_schema_conformance")
MAX_EXAMPLES = 8


@pytest.fixture(scope="module")
def fuzzed_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaasNodeProcess]:
    # a test dependency (setup.cfg, test extra): without it the install is broken
    assert SCHEMATHESIS.exists() or shutil.which("schemathesis"), \
        "schemathesis is not installed (pip install .[test])"
    node = FaasNodeProcess(tmp_path_factory.mktemp("fuzz-node"), controller="fuzzctl")
    node.start()
    try:
        yield node
    finally:
        node.stop()


def fuzz(node: FaasNodeProcess, tmp_path: Path, *headers: str) -> subprocess.CompletedProcess[str]:
    command = [str(SCHEMATHESIS) if SCHEMATHESIS.exists() else "schemathesis", "run",
               f"{node.admin_root}/apis/v2/faas/openapi.json",
               "--checks", CHECKS, "--phases", "examples,coverage,fuzzing",
               "--max-examples", str(MAX_EXAMPLES), "--workers", "1", "--seed", "11",
               "--max-time", "60", "--request-timeout", "15", "--no-color",
               "--generation-database", "none",
               "--header", "Accept: application/json"]
    for header in headers:
        command += ["--header", header]
    return subprocess.run(command, capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})


def assert_clean(result: subprocess.CompletedProcess[str], node: FaasNodeProcess) -> None:
    assert result.returncode == 0, (result.stdout[-6000:], result.stderr[-2000:], node.log())
    status, _, body = http("GET", f"{node.admin_root}/readyz")
    assert status == 200, body
    assert node.process is not None and node.process.poll() is None


def names(node: FaasNodeProcess) -> list[str]:
    status, _, body = http("GET", node.admin_url, headers={"Accept": "application/json"})
    assert status == 200, body
    return sorted(record["spec"]["name"] for record in json.loads(body))


def test_fuzz_without_then_with_credentials(fuzzed_node: FaasNodeProcess,
                                            tmp_path: Path) -> None:
    node = fuzzed_node
    # the documented example name exists, so the per-function operations get past 404
    spec = "name: sleeper\ncommand: [sleep, '600']\nminReplica: 0\nmaxReplica: 1\n"
    assert node.json("POST", "", spec)[0] == 201
    before = names(node)
    assert_clean(fuzz(node, tmp_path), node)
    assert names(node) == before, "a request without credentials changed something"
    assert_clean(fuzz(node, tmp_path, f"Authorization: Bearer {node.token}"), node)
