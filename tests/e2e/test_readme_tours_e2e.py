"""The documented tours, pasted as they are, on a node with authentication on: the
README's curl tour, the CLI and templates tours of ``docs/cli.rst`` and the OpenFaaS tour
of ``docs/openfaas.rst``.

The node runs in a folder laid out like the repository (``conf/`` with the example
functions, ``data/`` for state) and creates its own tokens file there on first start,
as ``make run`` does; only the two port numbers of the tour are replaced by free ones.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.docs import code_block_after
from tests.support.node import ROOT, FaasNodeProcess

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


@pytest.fixture
def tour_node(tmp_path: Path) -> Iterator[FaasNodeProcess]:
    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    node = FaasNodeProcess(tmp_path, make_tokens=False, extra={
        "admin": {"auth": {"tokensFile": str(tmp_path / "data" / "admin-tokens")}},
        "process": {"dataDir": str(tmp_path / "data")}})
    # the CLI tour's FAASTWIST_NODE_CONFIG=conf/controller.yaml is this node's config
    shutil.copy(node.config_path, tmp_path / "conf" / "controller.yaml")
    node.start()
    try:
        yield node
    finally:
        node.stop()


def localise(script: str, node: FaasNodeProcess) -> str:
    return (script.replace("127.0.0.1:2381", f"127.0.0.1:{node.admin_port}")
            .replace("127.0.0.1:10083", f"127.0.0.1:{node.gate_port}"))


def run(script: str, node: FaasNodeProcess, **env: str) -> str:
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                            cwd=node.workdir, timeout=240,
                            env={"PATH": "/usr/bin:/bin", "HOME": str(node.workdir),
                                 "PYTHONPATH": str(ROOT), **env})
    return result.stdout + result.stderr


def test_curl_tour(tour_node: FaasNodeProcess) -> None:
    script = code_block_after("README", "A tour with curl")
    assert "TOKEN=$(cat data/admin-tokens.admin)" in script
    output = run(localise(script, tour_node), tour_node)
    # a refusal is {code: 401, ...}; a bare "401" also matches timestamps ("...43.401Z")
    assert "authentication required" not in output, output
    assert re.search(r"\bcode\"?: 401\b", output) is None, output
    assert "V3 Body is" in output and "1 6 19" in output, output
    assert "function echo already exists" in output, output
    assert "invalid event: stop, current state: inactive" in output, output
    assert output.count("state: destroyed") == 2, output


def test_cli_tour(tour_node: FaasNodeProcess) -> None:
    lines = [line[2:].split("  #")[0] for line in
             code_block_after("cli", "Operating with the CLI").splitlines() if line.startswith("$ ")]
    assert lines[0] == "export FAASTWIST_NODE_CONFIG=conf/controller.yaml"
    prelude = f'faastwist() {{ {sys.executable} -m faastwist.cli "$@"; }}\n'
    output = run(prelude + "\n".join(lines) + "\n", tour_node,
                 FAASTWIST_SERVER=tour_node.admin_root, FAASTWIST_GATE=tour_node.gate_url)
    assert "authentication required" not in output, output
    assert "function echo created" in output and "function echo is active" in output, output
    assert "V3 Body is" in output and "1 6 19" in output, output
    assert "HTTP 503 from echo" in output, output
    assert "deleted" in output, output


@pytest.mark.sandbox
def test_templates_tour(tour_node: FaasNodeProcess) -> None:
    """``new``, ``up``, curl, ``remove`` as docs/cli.rst shows them (builds in a folder of
    the test's that every function uid may pass through)."""
    lines = [line[2:].split("  #")[0] for line in
             code_block_after("cli", "Templates: write a handler").splitlines()
             if line.startswith("$ ")]
    assert lines[1:] == ["faastwist new hello --lang python3-http",
                         "faastwist up -f stack.yml",
                         "curl http://127.0.0.1:10083/function/hello",
                         "faastwist remove -f stack.yml"]
    builds = Path(tempfile.mkdtemp(prefix="faastwist-tour-builds-", dir="/tmp"))
    os.chmod(builds, 0o711)
    prelude = f'faastwist() {{ {sys.executable} -m faastwist.cli "$@"; }}\n'
    # the node answers once its replica is up: the curl line waits for it as a user would
    script = "\n".join(lines).replace(
        "curl ", "for i in $(seq 100); do curl -sf -o /dev/null http://127.0.0.1:10083/"
                 "function/hello && break; sleep 0.2; done; curl -s ")
    try:
        output = run(prelude + localise(script, tour_node) + "\n", tour_node,
                     FAASTWIST_SERVER=tour_node.admin_root, FAASTWIST_GATE=tour_node.gate_url,
                     FAASTWIST_BUILD_DIR=str(builds))
    finally:
        shutil.rmtree(builds, ignore_errors=True)
    assert "function hello (python3-http)" in output, output
    assert "function hello created" in output, output
    assert "Hello from faastwist!" in output, output
    assert "function hello removed" in output, output


def test_openfaas_tour(tour_node: FaasNodeProcess) -> None:
    """docs/openfaas.rst's tour: each '# -> ' comment is what the command before it prints."""
    script = code_block_after("openfaas", "An OpenFaaS tour")
    expected = [line.split("# -> ", 1)[1] for line in script.splitlines()
                if line.startswith("# -> ")]
    output = run(localise(script, tour_node), tour_node)
    printed = output.splitlines()
    wanted = []
    for line in expected:
        wanted += ["202", "202"] if line == "202 (twice)" else [line]
    assert printed == wanted, output
