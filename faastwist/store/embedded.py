"""An etcd child process for single-node setups (``etcd.endpoints`` left empty).

The supervision (faastwist.util.supervised) is the embedded nats-server's too: loopback
ports picked once and kept in the data directory (so a restart serves the same URL), a
restart with backoff when etcd dies, SIGTERM then SIGKILL at stop, and a parent-death
signal so even a SIGKILLed faastwist leaves no etcd behind. Of etcd's own: an orphan of
an earlier run that still holds the data directory is found through the pid file and
stopped, and an etcd of a live node refuses the start. With ``tls`` (the node always
passes it) etcd serves https and takes only clients whose certificate its private CA
signed (see etcdtls.py).
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any

from twisted.logger import Logger
from twisted.web.client import Agent

from faastwist.store.etcdtls import EtcdTLS
from faastwist.util.supervised import SupervisedChild, find_binary, persisted_ports
from faastwist.util.reactor import IFullReactor

log = Logger()

_FIX = ("install it with `apt-get install -y etcd-server`, or set etcd.endpoints in the "
        "controller config to use an existing etcd cluster")

#: What to tell the operator when no etcd binary exists (tap.py checks at startup).
ETCD_MISSING_MESSAGE = (
    "the embedded etcd needs the etcd binary, and none was found on PATH "
    "(nor /usr/bin/etcd, /usr/local/bin/etcd): " + _FIX)
MISSING_ETCD_MESSAGE = ETCD_MISSING_MESSAGE  # the name tap.py imports

ETCD_BINARY_CANDIDATES = ("/usr/bin/etcd", "/usr/local/bin/etcd")
PORTS_FILE = "ports.json"
PID_FILE = "etcd.pid"
LOG_FILE = "etcd.log"


class EmbeddedEtcdError(Exception):
    """The embedded etcd cannot be started or did not become healthy."""


class EtcdBinaryMissing(EmbeddedEtcdError):
    def __init__(self, binary: str | None = None) -> None:
        super().__init__(ETCD_MISSING_MESSAGE if binary is None else
                         f"the etcd binary {binary} is not an executable file: {_FIX}")


def find_etcd_binary() -> str | None:
    """The etcd executable to run: PATH first, then the usual install locations."""
    return find_binary("etcd", ETCD_BINARY_CANDIDATES)


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie (dead, not yet reaped) holds no lock and counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return True


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


class EmbeddedEtcd(SupervisedChild):
    """Supervises one local etcd member whose data lives in ``data_dir``."""

    name = "embedded-etcd"
    what = "embedded etcd"
    error = EmbeddedEtcdError
    first_backoff = 0.5
    health_interval = 0.1

    def __init__(self, reactor: IFullReactor, data_dir: str, etcd_binary: str | None = None,
                 startup_timeout: float = 30.0, *, stop_grace: float = 10.0,
                 max_backoff: float = 30.0, tls: EtcdTLS | None = None) -> None:
        super().__init__(reactor, data_dir, LOG_FILE, startup_timeout=startup_timeout,
                         stop_grace=stop_grace, max_backoff=max_backoff)
        self.etcd_binary = etcd_binary
        self.peer_url: str | None = None
        #: client-certificate TLS (the node's): https URLs, only CA-signed clients; the
        #: health checks present the node's certificate too
        self.tls = tls
        if tls is not None:
            self._agent = Agent(reactor, contextFactory=tls.policy())

    @property
    def client_url(self) -> str | None:
        return self.url

    def startService(self) -> None:
        """Start etcd; raises EtcdBinaryMissing at once when there is no binary."""
        binary = self.etcd_binary or find_etcd_binary()
        if binary is None:
            raise EtcdBinaryMissing()
        if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
            raise EtcdBinaryMissing(binary)
        self._start_with(binary)

    def _begin(self) -> None:
        """A previous run's etcd whose owner is dead still holds the data: stop it first."""
        pid_path = os.path.join(self.data_dir, PID_FILE)
        try:
            with open(pid_path) as f:
                recorded = json.load(f)
            pid, owner = int(recorded["pid"]), int(recorded["owner"])
        except (OSError, ValueError, KeyError, TypeError):
            self._spawn()
            return
        if not (_pid_alive(pid) and self.data_dir in _cmdline(pid)):
            self._spawn()
            return
        if owner != os.getpid() and _pid_alive(owner):
            self._refuse(EmbeddedEtcdError(
                f"{self.data_dir} is in use by etcd pid {pid} of the live process {owner}; "
                f"two nodes cannot share one etcd.dataDir"))
            return
        log.warn("stopping orphaned etcd pid {pid} left by process {owner}", pid=pid, owner=owner)
        os.kill(pid, signal.SIGKILL)
        deadline = self.reactor.seconds() + 5.0

        def wait_gone() -> None:
            if _pid_alive(pid) and self.reactor.seconds() < deadline:
                self._timers.later("orphan", 0.05, wait_gone)
            elif not self._stopping:
                self._spawn()
        wait_gone()

    def _command(self) -> tuple[list[str], dict[str, str]]:
        client, peer = persisted_ports(os.path.join(self.data_dir, PORTS_FILE),
                                       ("client", "peer"), self.what)
        scheme = "https" if self.tls is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{client}"
        peer_url = self.peer_url = f"{scheme}://127.0.0.1:{peer}"
        args = [self._binary, "--name", "faastwist",
                "--data-dir", os.path.join(self.data_dir, "data"),
                "--listen-client-urls", self.url,
                "--advertise-client-urls", self.url,
                "--listen-peer-urls", peer_url,
                "--initial-advertise-peer-urls", peer_url,
                "--initial-cluster", f"faastwist={peer_url}",
                "--initial-cluster-state", "new",
                "--logger", "zap", "--log-outputs", "stderr",
                # bounded history: without compaction the database grows until etcd's
                # space quota stops every write
                "--auto-compaction-mode", "periodic", "--auto-compaction-retention", "1h"]
        if self.tls is not None:
            args += self.tls.server_args()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
        return args, env

    def _spawned(self) -> None:
        with open(os.path.join(self.data_dir, PID_FILE), "w") as f:
            json.dump({"pid": self.pid, "owner": os.getpid()}, f)

    def _stopped(self) -> None:
        try:
            os.remove(os.path.join(self.data_dir, PID_FILE))
        except OSError:
            pass

    def _health_url(self) -> str:
        return f"{self.url}/health"

    def _healthy(self, answer: Any) -> bool:
        return answer.get("health") == "true"
