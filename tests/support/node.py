"""Start a real ``twistd -n faasgate`` node as a subprocess, for end-to-end tests.

Usage::

    node = FaasNodeProcess(tmp_path, provider="process")   # embedded etcd in tmp_path
    node.start()            # waits until /healthz answers on the admin port
    node.admin_url          # http://127.0.0.1:<port>/apis/v2/faas/faascontroller
    node.gate_url           # http://127.0.0.1:<port>
    node.stop()             # SIGTERM, waits; SIGKILL after a grace period

Every process is stopped by pid; the embedded etcd is the node's child and goes with it
(the node stops it on SIGTERM; ``stop`` also kills anything left in its process group).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from faastwist.util.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
TWISTD = Path(sys.executable).parent / "twistd"


def http(method: str, url: str, body: bytes | str | None = None,
         headers: dict[str, str] | None = None, timeout: float = 10.0) -> tuple[int, dict, bytes]:
    """A blocking HTTP call for tests: (status, headers, body); never raises on 4xx/5xx."""
    data = body.encode() if isinstance(body, str) else body
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


class FaasNodeProcess:
    def __init__(self, workdir: Path, provider: str = "process", controller: str = "faascontroller",
                 etcd_endpoints: list[str] | None = None, extra: dict[str, Any] | None = None,
                 args: list[str] | None = None, env: dict[str, str] | None = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.controller = controller
        self.admin_port = free_port()
        self.gate_port = free_port()
        config: dict[str, Any] = {
            "name": controller,
            "provider": provider,
            "syncInterval": "1s",
            "httpServer": {"port": self.gate_port, "address": "127.0.0.1"},
            "admin": {"port": self.admin_port, "address": "127.0.0.1"},
            "etcd": {"endpoints": etcd_endpoints or [], "dataDir": str(self.workdir / "etcd")},
            "process": {"dataDir": str(self.workdir / "data")},
        }
        for key, value in (extra or {}).items():
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key].update(value)
            else:
                config[key] = value
        self.config_path = self.workdir / "controller.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = self.workdir / "faasgate.log"
        self.args = args or []
        self.env = env or {}
        self.process: subprocess.Popen | None = None

    @property
    def admin_root(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def admin_url(self) -> str:
        return f"{self.admin_root}/apis/v2/faas/{self.controller}"

    @property
    def gate_url(self) -> str:
        return f"http://127.0.0.1:{self.gate_port}"

    def command(self) -> list[str]:
        return [str(TWISTD), "-n", "--pidfile=", "faasgate", "--config", str(self.config_path),
                *self.args]

    def start(self, timeout: float = 60.0) -> "FaasNodeProcess":
        env = dict(os.environ, PYTHONPATH=str(ROOT), **self.env)
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.command(), cwd=self.workdir, stdout=log,
                                        stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"faasgate exited with {self.process.returncode}:\n{self.log()}")
            try:
                status, _, _ = http("GET", f"{self.admin_url}", headers={"Accept": "application/json"},
                                    timeout=2)
                if status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"faasgate did not become ready in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def stop(self, grace: float = 20.0) -> int | None:
        """SIGTERM, wait; SIGKILL the whole process group after ``grace``. Returns the exit code."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
        try:  # anything the node left behind in its session (it should leave nothing)
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process = None
        return process.returncode

    def json(self, method: str, path: str = "", body: str | None = None,
             content_type: str = "application/yaml") -> tuple[int, Any]:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        status, _, data = http(method, f"{self.admin_url}{path}", body, headers)
        return status, json.loads(data) if data else None
