"""The documented tours, pasted as they are, on a node with authentication on: the
README's curl tour, the CLI and templates tours of ``docs/cli.rst`` and the OpenFaaS tour
of ``docs/openfaas.rst``.

The node runs in a folder laid out like the repository (``conf/`` with the example
functions, ``data/`` for state) and creates its own tokens file there on first start,
as ``make run`` does; only the two port numbers of the tour are replaced by free ones.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.docs import (code_block_after, expected_output, matches, printed,
                                transcript)
from tests.support.node import ROOT, FaasNodeProcess, http

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
    """The README's tour: each '# -> ' line is what the command before it prints."""
    script = code_block_after("README", "A tour with curl")
    assert "TOKEN=$(cat data/admin-tokens.admin)" in script
    output = run(localise(script, tour_node), tour_node)
    assert printed(output) == expected_output(script), output


#: the lines `faastwist wait` prints off a terminal while it waits (cli/output.Progress)
PROGRESS = re.compile(r"waiting for \S+ to be \w+: ")


def run_transcript(steps: list[tuple[str, list[str]]], node: FaasNodeProcess,
                   **env: str) -> list[list[str]]:
    """Runs a transcript's commands in one shell (the ``faastwist`` of the tree under
    test) and gives each command's output lines, stdout then stderr, blank lines
    dropped, the node's ports written back as the page's."""
    marked = "".join(f"printf '\\n@@{i}\\n'; printf '\\n@@{i}\\n' >&2\n{localise(command, node)}\n"
                     for i, (command, _) in enumerate(steps))
    prelude = f'faastwist() {{ {sys.executable} -m faastwist.cli "$@"; }}\n'
    result = subprocess.run(["bash", "-c", prelude + marked], capture_output=True,
                            text=True, cwd=node.workdir, timeout=240,
                            env={"PATH": "/usr/bin:/bin", "HOME": str(node.workdir),
                                 "PYTHONPATH": str(ROOT), "FAASTWIST_SERVER": node.admin_root,
                                 "FAASTWIST_GATE": node.gate_url, **env})

    def parts(stream: str) -> list[str]:
        return re.split(r"^@@\d+$", stream, flags=re.M)[1:]
    outputs = []
    for out, err in zip(parts(result.stdout), parts(result.stderr)):
        # `wait`'s progress: on a terminal (what the pages show) a spinner line that the
        # final answer erases; off a terminal one plain line per state seen, which only
        # a slow start shows
        err = "\n".join(line for line in err.splitlines() if not PROGRESS.match(line))
        text = (out + "\n" + err).replace(f"127.0.0.1:{node.admin_port}", "127.0.0.1:2381")
        text = text.replace(f"127.0.0.1:{node.gate_port}", "127.0.0.1:10083")
        outputs.append([line.rstrip() for line in text.splitlines() if line.strip()])
    assert len(outputs) == len(steps), result.stdout + result.stderr
    return outputs


def assert_transcript(steps: list[tuple[str, list[str]]], outputs: list[list[str]]) -> None:
    for (command, expected), actual in zip(steps, outputs):
        assert matches(expected, actual), (command, expected, actual)


def test_cli_tour(tour_node: FaasNodeProcess) -> None:
    """docs/cli.rst's transcript: every command prints what the page shows below it."""
    steps = transcript(code_block_after("cli", "Operating with the CLI"))
    assert [command for command, _ in steps[:2]] == [
        "export PATH=$PWD/.venv/bin:$PATH", "export FAASTWIST_NODE_CONFIG=conf/controller.yaml"]
    assert_transcript(steps, run_transcript(steps, tour_node))


@pytest.mark.sandbox
def test_templates_tour(tour_node: FaasNodeProcess) -> None:
    """``new``, ``up``, curl, ``remove`` as docs/cli.rst shows them (builds in a folder of
    the test's that every function uid may pass through)."""
    steps = transcript(code_block_after("cli", "Templates: write a handler"))
    assert [command for command, _ in steps[2:]] == [
        "faastwist new hello --lang python3-http", "faastwist up -f stack.yml",
        "curl http://127.0.0.1:10083/function/hello", "faastwist remove -f stack.yml"]
    builds = Path(tempfile.mkdtemp(prefix="faastwist-tour-builds-", dir="/tmp"))
    os.chmod(builds, 0o711)
    # the node answers once its replica is up: the curl line waits for it as a user would
    waiting = [(command.replace("curl ", "for i in $(seq 100); do curl -sf -o /dev/null "
                                        "http://127.0.0.1:10083/function/hello && break; "
                                        "sleep 0.2; done; curl -s "), expected)
               for command, expected in steps]
    try:
        outputs = run_transcript(waiting, tour_node, FAASTWIST_BUILD_DIR=str(builds))
    finally:
        shutil.rmtree(builds, ignore_errors=True)
    assert_transcript(steps, outputs)


def test_openfaas_tour(tour_node: FaasNodeProcess) -> None:
    """docs/openfaas.rst's tour: each '# -> ' line is what the command before it prints."""
    script = code_block_after("openfaas", "An OpenFaaS tour")
    output = run(localise(script, tour_node), tour_node)
    assert printed(output) == expected_output(script), output


def test_async_tour(tour_node: FaasNodeProcess) -> None:
    """docs/async.rst's tour: queue, status, a refused callback, a stopped function's
    call, a dead letter retried and purged; each '# -> ' line is what the command before
    it prints."""
    script = code_block_after("async", "An async tour")
    output = run(localise(script, tour_node), tour_node)
    assert printed(output) == expected_output(script), output


def test_invocation_keys_transcript(tour_node: FaasNodeProcess) -> None:
    """docs/gate.rst's keys: 401 without, served with either header, the last key's
    revoke refused unless it opens the function on purpose."""
    steps = transcript(code_block_after("gate", "Invocation keys and rate limits"))
    assert_transcript(steps, run_transcript(steps, tour_node))


def test_function_store_transcript(tour_node: FaasNodeProcess) -> None:
    """docs/openfaas.rst's store: the shipped catalogue listed, an entry deployed and
    invoked."""
    steps = transcript(code_block_after("openfaas", "Function store"))
    assert_transcript(steps, run_transcript(steps, tour_node))


def test_backup_and_restore_of_a_single_node(tmp_path: Path) -> None:
    """docs/operations.rst's backup and restore, on a node whose every path is under
    ``data/``: after the restore the function, its state and a sealed secret are back
    (a function reads the secret's value, so the key file came back with etcd)."""
    data = tmp_path / "data"
    node = FaasNodeProcess(tmp_path, extra={
        "etcd": {"dataDir": str(data / "etcd")},
        "admin": {"auth": {"tokensFile": str(data / "admin-tokens")}},
        "process": {"dataDir": str(data)}, "secrets": {"keyFile": str(data / "secrets.key")},
        "queue": {"dataDir": str(data / "nats")}})
    backup = code_block_after("operations", "Backing up a single node")
    restore = code_block_after("operations", "Restoring a single node")
    echo = (ROOT / "conf" / "echo.yaml").read_text().replace(
        "conf/functions/echo.py", str(ROOT / "conf" / "functions" / "echo.py"))
    node.start()
    try:
        assert node.json("POST", "", echo)[0] == 201
        status, _, _ = http("POST", f"{node.admin_root}/system/secrets",
                            b'{"name": "api-key", "value": "s3cret"}')
        assert status == 202
        wait_for_state(node, "echo", "active")
    finally:
        node.stop()
    assert run(backup, node) == ""
    shutil.rmtree(data)   # everything comes back from the archive
    assert run(restore, node) == ""
    node.start()
    try:
        wait_for_state(node, "echo", "active")
        status, _, _ = http("POST", f"{node.admin_root}/system/functions", json.dumps({
            "service": "reader", "image": "x", "secrets": ["api-key"],
            "envProcess": 'sh -c "cat $FAASTWIST_SECRETS_DIR/api-key"'}).encode())
        assert status == 202
        wait_for_state(node, "reader", "active")
        status, _, body = http("GET", f"{node.gate_url}/function/reader", timeout=30)
        assert (status, body) == (200, b"s3cret")
    finally:
        node.stop()


def wait_for_state(node: FaasNodeProcess, name: str, state: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        status, body = node.json("GET", f"/{name}")
        if status == 200 and body["status"]["state"] == state:
            return
        assert time.monotonic() < deadline, (name, status, body)
        time.sleep(0.2)
