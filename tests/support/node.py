"""Start a real ``twistd -n faasgate`` node as a subprocess, for end-to-end tests.

Usage::

    node = FaasNodeProcess(tmp_path, provider="process")   # embedded etcd in tmp_path
    node.start()            # waits until /healthz answers on the admin port
    node.admin_url          # http://127.0.0.1:<port>/apis/v2/faas/faascontroller
    node.gate_url           # http://127.0.0.1:<port>
    node.stop()             # SIGTERM, waits; SIGKILL after a grace period
    node.token              # the node's admin token (its tokens file is made up front)

Authentication: each node gets a tokens file with one admin token (``node.token``), and
``http()`` sends ``Authorization: Bearer`` with it to that node's admin port unless the
caller sets Authorization itself or passes ``auth=False`` (tests about authentication).

Every process is stopped by pid; the embedded etcd is the node's child and goes with it
(the node stops it on SIGTERM; ``stop`` also kills anything left in its process group).
While coverage measures the tests, a node runs through ``tests.support.covered``, which
saves the node's coverage data after its shutdown (twistd's own exit would lose it).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from faastwist.util.ports import free_port, port_is_free
from tests.support.covered import twistd_command

_HANDED_OUT: set[int] = set()


def node_port() -> int:
    """A free port below the kernel's ephemeral range (32768 up): the node's own children
    (embedded etcd, nats-server, replicas) take theirs from the OS in that range, so they
    can never grab the gate or admin port chosen here before the node binds it."""
    import random

    for _ in range(200):
        port = random.randint(20000, 32000)
        if port not in _HANDED_OUT and port_is_free(port):
            _HANDED_OUT.add(port)
            return port
    return free_port()

ROOT = Path(__file__).resolve().parents[2]


#: admin "host:port" -> token of the nodes these helpers started (see ``http``)
ADMIN_TOKENS: dict[str, str] = {}


def write_tokens_file(path: Path, role: str = "admin") -> str:
    """A tokens file with one new token of ``role``; returns the token."""
    from faastwist.auth.tokens import hash_token, new_token

    token = new_token()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{role} {hash_token(token)}\n")
    path.chmod(0o600)
    return token


def http(method: str, url: str, body: bytes | str | None = None,
         headers: dict[str, str] | None = None, timeout: float = 10.0,
         auth: bool = True) -> tuple[int, dict, bytes]:
    """A blocking HTTP call for tests: (status, headers, body); never raises on 4xx/5xx.

    To the admin port of a node started here it adds that node's admin token, unless
    ``auth`` is false or the caller sent its own Authorization."""
    data = body.encode() if isinstance(body, str) else body
    sent = dict(headers or {})
    token = ADMIN_TOKENS.get(urllib.parse.urlsplit(url).netloc)
    if auth and token and not any(k.lower() == "authorization" for k in sent):
        sent["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, method=method, headers=sent)
    context = None
    if url.startswith("https:"):  # the tests' own throwaway certificates
        import ssl

        context = ssl._create_unverified_context()
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


class FaasNodeProcess:
    def __init__(self, workdir: Path, provider: str = "process", controller: str = "faascontroller",
                 etcd_endpoints: list[str] | None = None, extra: dict[str, Any] | None = None,
                 args: list[str] | None = None, env: dict[str, str] | None = None,
                 make_tokens: bool = True) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.controller = controller
        self.admin_port = node_port()
        self.gate_port = node_port()
        config: dict[str, Any] = {
            "name": controller,
            "provider": provider,
            "syncInterval": "1s",
            # no drain delay unless a test asks for one (each stop would wait for it)
            "httpServer": {"port": self.gate_port, "address": "127.0.0.1", "drainDelay": "0s"},
            "admin": {"port": self.admin_port, "address": "127.0.0.1"},
            "etcd": {"endpoints": etcd_endpoints or [], "dataDir": str(self.workdir / "etcd")},
            "process": {"dataDir": str(self.workdir / "data")},
        }
        for key, value in (extra or {}).items():
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key].update(value)
            else:
                config[key] = value
        auth = config["admin"].setdefault("auth", {})
        self.tokens_file = Path(auth.setdefault("tokensFile",
                                                str(self.workdir / "admin-tokens")))
        if make_tokens and not self.tokens_file.exists():
            token = write_tokens_file(self.tokens_file)
            Path(f"{self.tokens_file}.admin").write_text(token + "\n")
        self._find_token()
        self.admin_scheme = "https" if config["admin"].get("https") else "http"
        self.gate_scheme = "https" if config["httpServer"].get("https") else "http"
        self.config_path = self.workdir / "controller.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = self.workdir / "faasgate.log"
        self.args = args or []
        self.env = env or {}
        self.process: subprocess.Popen | None = None

    def _find_token(self) -> None:
        """The admin token beside the tokens file (ours, or the one the node made)."""
        from faastwist.auth.tokens import read_admin_token

        self.token = read_admin_token(self.tokens_file) or ""
        if self.token:
            ADMIN_TOKENS[f"127.0.0.1:{self.admin_port}"] = self.token

    @property
    def admin_root(self) -> str:
        return f"{self.admin_scheme}://127.0.0.1:{self.admin_port}"

    @property
    def admin_url(self) -> str:
        return f"{self.admin_root}/apis/v2/faas/{self.controller}"

    @property
    def gate_url(self) -> str:
        return f"{self.gate_scheme}://127.0.0.1:{self.gate_port}"

    def command(self) -> list[str]:
        return twistd_command(["-n", "--pidfile=", "faasgate", "--config", str(self.config_path),
                               *self.args])

    def start(self, timeout: float = 60.0) -> "FaasNodeProcess":
        self.spawn()
        return self.wait_ready(timeout)

    def spawn(self) -> None:
        """Start the process without waiting (a cluster spawns its nodes together)."""
        env = dict(os.environ, PYTHONPATH=str(ROOT), **self.env)
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.command(), cwd=self.workdir, stdout=log,
                                        stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)
        log.close()

    def wait_ready(self, timeout: float = 60.0) -> "FaasNodeProcess":
        """Wait until the spawned node's admin API answers; stop it and fail if it
        exits or does not answer within ``timeout``."""
        assert self.process is not None, "spawn() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"faasgate exited with {self.process.returncode}:\n{self.log()}")
            if not self.token:
                self._find_token()
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
             content_type: str = "application/yaml", auth: bool = True) -> tuple[int, Any]:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        status, _, data = http(method, f"{self.admin_url}{path}", body, headers, auth=auth)
        return status, json.loads(data) if data else None
