"""A real etcd for tests: started from the etcd binary on free loopback ports.

Use from another test module::

    from tests.support.etcd import EtcdProcess  # the fixtures: tests/conftest.py

    @pytest.mark.etcd
    def test_something(etcd_server):   # one etcd per module, shared; use your own prefix
        url = etcd_server.client_url

- ``etcd_server`` (module scope): one etcd shared by the tests of a module. Do not stop
  or compact it; keep tests apart with a unique key prefix (``unique_prefix()``).
- ``etcd_process`` (function scope): an etcd of your own; stop()/start()/restart()/
  compact() it freely.
- ``EtcdProcess(data_dir)``: the class behind both, for custom setups.

Both skip the test with a clear reason when no etcd binary is installed. Every process
is stopped by pid at teardown (SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from typing import Iterator

import pytest

from faastwist.util.ports import free_port

ETCD_BINARY_CANDIDATES = ("/usr/bin/etcd", "/usr/local/bin/etcd")
_counter = itertools.count()


def etcd_binary() -> str | None:
    """Path of an etcd binary, or None."""
    found = shutil.which("etcd")
    if found:
        return found
    for path in ETCD_BINARY_CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    return None


def require_etcd() -> str:
    """The etcd binary. Without one the ``etcd`` and ``cluster`` tests are deselected
    (tests/conftest.py): a test that gets here without it lacks that marker."""
    binary = etcd_binary()
    if binary is None:
        pytest.fail("no etcd binary, and this test is not marked etcd (or cluster), "
                    "the marker that deselects it then")
    return binary


def unique_prefix(name: str = "t") -> str:
    """A key prefix no other test of this process uses."""
    return f"/faastwist-test/{os.getpid()}-{next(_counter)}-{name}"


def _post(url: str, body: dict, timeout: float = 5.0) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


class EtcdProcess:
    """One etcd member on 127.0.0.1 with its data in ``data_dir``.

    Ports are chosen at construction and kept across stop()/start(), so clients can
    reconnect to the same URL after a restart. Alone by default; a member of a static
    cluster (tests/support/cluster.py) when given its ``name`` and the ``initial_cluster``
    of all members (set before the first spawn) and extra flags such as faster elections.
    """

    def __init__(self, data_dir: str, binary: str | None = None, name: str = "test",
                 extra_args: tuple[str, ...] = ()) -> None:
        self.binary = binary or require_etcd()
        self.data_dir = str(data_dir)
        self.name = name
        self.extra_args = extra_args
        self.initial_cluster: str | None = None
        self._choose_ports()
        self.log_path = os.path.join(self.data_dir, "etcd.log")
        self.process: subprocess.Popen | None = None
        #: healthy once (a cluster's member then restarts as "existing")
        self.started_once = False

    def _choose_ports(self) -> None:
        self.client_port = free_port()
        self.peer_port = free_port()
        while self.peer_port == self.client_port:
            self.peer_port = free_port()
        self.client_url = f"http://127.0.0.1:{self.client_port}"
        self.peer_url = f"http://127.0.0.1:{self.peer_port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 15.0) -> None:
        """Start etcd and wait until /health says healthy (blocking; startup ~0.5 s).

        On the very first start, ports another process grabbed meanwhile are replaced
        (up to three times); a restart keeps the URL clients already use.
        """
        if self.alive:
            return
        for attempt in range(3):
            try:
                return self._start_once(timeout)
            except _PortTaken:
                if self.started_once or attempt == 2:
                    raise RuntimeError(f"etcd ports taken; see {self.log_path}") from None
                self._choose_ports()

    def spawn(self) -> None:
        """Start the process and return at once (a cluster's members must all be up
        before any of them is healthy)."""
        os.makedirs(self.data_dir, exist_ok=True)
        initial = self.initial_cluster or f"{self.name}={self.peer_url}"
        # a cluster's member rejoins; a lone member whose data was wiped starts anew
        state = "existing" if self.initial_cluster and self.started_once else "new"
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [self.binary, "--name", self.name,
                 "--data-dir", os.path.join(self.data_dir, "data"),
                 "--listen-client-urls", self.client_url,
                 "--advertise-client-urls", self.client_url,
                 "--listen-peer-urls", self.peer_url,
                 "--initial-advertise-peer-urls", self.peer_url,
                 "--initial-cluster", initial,
                 "--initial-cluster-state", state,
                 "--logger", "zap", *self.extra_args],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)

    def _start_once(self, timeout: float) -> None:
        self.spawn()
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                self.process = None
                with open(self.log_path, "rb") as log:
                    if b"address already in use" in log.read()[-4000:]:
                        raise _PortTaken()
                raise RuntimeError(f"etcd exited with {code} at start; see {self.log_path}")
            if self.healthy():
                self.started_once = True
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"etcd not healthy within {timeout}s; see {self.log_path}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.client_url + "/health", timeout=1) as response:
                return json.loads(response.read()).get("health") == "true"
        except (OSError, ValueError):
            return False

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the process by pid, SIGKILL after ``grace`` seconds; wait until gone."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()

    def kill(self) -> None:
        """SIGKILL at once (a crash)."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    # direct etcd access for test setup and assertions (blocking, plain JSON gateway)

    def put(self, key: str | bytes, value: str | bytes) -> int:
        """Write a key; the new store revision."""
        data = _post(self.client_url + "/v3/kv/put", {"key": _b64(key), "value": _b64(value)})
        return int(data["header"]["revision"])

    def get(self, key: str | bytes) -> bytes | None:
        data = _post(self.client_url + "/v3/kv/range", {"key": _b64(key)})
        kvs = data.get("kvs") or []
        return base64.b64decode(kvs[0].get("value", "")) if kvs else None

    def delete(self, key: str | bytes) -> int:
        """Delete a key; the number of keys deleted."""
        data = _post(self.client_url + "/v3/kv/deleterange", {"key": _b64(key)})
        return int(data.get("deleted", 0))

    def revision(self) -> int:
        data = _post(self.client_url + "/v3/maintenance/status", {})
        return int(data["header"]["revision"])

    def compact(self, revision: int | None = None) -> int:
        """Compact history up to ``revision`` (default: the current one); returns it."""
        revision = self.revision() if revision is None else revision
        _post(self.client_url + "/v3/kv/compaction", {"revision": revision, "physical": True})
        return revision


class _PortTaken(Exception):
    pass


def _b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


@pytest.fixture(scope="module")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdProcess]:
    """One etcd shared by a module's tests (use unique_prefix() to keep them apart)."""
    require_etcd()
    etcd = EtcdProcess(str(tmp_path_factory.mktemp("etcd")))
    etcd.start()
    try:
        yield etcd
    finally:
        etcd.stop()


@pytest.fixture
def etcd_process(tmp_path) -> Iterator[EtcdProcess]:
    """An etcd of the test's own, free to stop, restart and compact."""
    require_etcd()
    etcd = EtcdProcess(str(tmp_path / "etcd"))
    etcd.start()
    try:
        yield etcd
    finally:
        etcd.stop()
