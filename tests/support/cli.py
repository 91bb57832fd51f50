"""Shared by the CLI and console end-to-end tests: a real faasgate node, a small
function to run on it, and the ``faastwist`` CLI run as a subprocess.

    from tests.support.cli import echo_spec, run_cli   # cli_node: tests/conftest.py

    def test_x(cli_node, tmp_path):
        spec = echo_spec(tmp_path, "x1")
        result = run_cli(cli_node, "create", "-f", str(spec))

``cli_node`` (module scope) is a ``twistd -n faasgate`` subprocess with the process
provider and an embedded etcd in a tmp folder, on free admin and gate ports; it is
stopped by pid at teardown. Tests skip, naming the module, only while a component the
node needs is not in the tree yet.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

import pytest
import yaml

from tests.support.node import ROOT, FaasNodeProcess
from tests.support.process import PYTHON as FUNCTION_PYTHON


ECHO_APP = '''\
"""A test function: answers with what it got as JSON, and logs one line per request."""
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Echo(BaseHTTPRequestHandler):
    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8", "replace")
        print(f"echo {self.command} {self.path} {len(body)} bytes: {body[:40]}", flush=True)
        if self.path.startswith("/status/"):
            code = int(self.path.rsplit("/", 1)[1])
            self.send_response(code)
            self.send_header("Content-Type", "text/plain")
            out = f"you asked for {code}".encode()
        else:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            out = json.dumps({"method": self.command, "path": self.path, "body": body,
                              "greeting": os.environ.get("GREETING", ""),
                              "xTest": self.headers.get("X-Test", "")}).encode()
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = answer

    def log_message(self, *args):
        pass


print("echo starting", flush=True)
ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Echo).serve_forever()
'''


@pytest.fixture(scope="module")
def cli_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaasNodeProcess]:
    workdir = tmp_path_factory.mktemp("cli-node")
    # the example specs' commands are relative to the gate's working folder, as with
    # `make run` in the repository root
    shutil.copytree(ROOT / "conf" / "functions", workdir / "conf" / "functions")
    node = FaasNodeProcess(workdir, provider="process", controller="clictl")
    node.start()
    try:
        yield node
    finally:
        node.stop()


_APP_DIR: list[Path] = []


def echo_app() -> Path:
    """The echo app, in a folder the function user may read (functions never run as
    root, and pytest's tmp folders are closed to other users); removed at exit."""
    if not _APP_DIR:
        folder = Path(tempfile.mkdtemp(prefix="faastwist-echo-app-"))
        folder.chmod(0o755)
        (folder / "echo_app.py").write_text(ECHO_APP)
        (folder / "echo_app.py").chmod(0o644)
        atexit.register(shutil.rmtree, folder, True)
        _APP_DIR.append(folder)
    return _APP_DIR[0] / "echo_app.py"


def echo_spec(folder: Path, name: str, **fields: Any) -> Path:
    """Write a spec running the echo app; returns the spec file's path."""
    app = echo_app()
    spec: dict[str, Any] = {"name": name, "command": [FUNCTION_PYTHON, str(app)],
                            "minReplica": 1, "maxReplica": 1}
    spec.update(fields)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def cli_env(node: FaasNodeProcess | None, home: Path, **extra: str) -> dict[str, str]:
    """A clean environment: no FAASTWIST_* from the caller, a HOME of its own."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("FAASTWIST_") and k not in ("XDG_CONFIG_HOME", "http_proxy",
                                                           "HTTP_PROXY")}
    env["PYTHONPATH"] = str(ROOT)
    env["HOME"] = str(home)
    env.pop("COLUMNS", None)
    if node is not None:
        env["FAASTWIST_SERVER"] = node.admin_root
        env["FAASTWIST_GATE"] = node.gate_url
        env["FAASTWIST_TOKEN"] = node.token
    env.update(extra)
    return env


def run_cli(node: FaasNodeProcess | None, *args: str, input: bytes | str | None = None,
            env: Mapping[str, str] | None = None, home: Path | None = None,
            timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """``python -m faastwist.cli ARGS`` (what the console script runs), text output."""
    if home is None:  # a HOME with no ~/.config/faastwist of the user's
        home = Path(tempfile.gettempdir()) / f"faastwist-cli-home-{os.getpid()}"
        home.mkdir(exist_ok=True)
    full_env = cli_env(node, home, **(env or {}))
    data = input.decode() if isinstance(input, bytes) else input
    return subprocess.run([sys.executable, "-m", "faastwist.cli", *args], input=data,
                          capture_output=True, text=True, env=full_env, timeout=timeout,
                          cwd=str(ROOT))


def wait_for(check: Any, timeout: float = 30.0, interval: float = 0.2) -> Any:
    """Poll ``check()`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


__all__ = ["cli_node", "echo_spec", "run_cli", "cli_env", "wait_for",
           "FaasNodeProcess", "ECHO_APP"]
