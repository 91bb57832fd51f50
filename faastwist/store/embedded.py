"""An etcd child process for single-node setups (``etcd.endpoints`` left empty).

The service starts ``etcd`` on loopback ports it picks once and keeps in the data
directory (so a restart serves the same URL), restarts it with backoff when it dies,
and on stop sends SIGTERM, then SIGKILL after a grace period, and fires only when the
process is gone. Where ``setpriv`` exists the child also gets a parent-death signal, so
even a SIGKILLed faastwist leaves no etcd behind; an orphan of an earlier run that
still holds the data directory is found through the pid file and stopped. With ``tls``
(the node always passes it) etcd serves https and takes only clients whose certificate
its private CA signed (see etcdtls.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall, IReactorProcess
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, readBody

from faastwist.store.etcdtls import EtcdTLS
from faastwist.util.ports import free_port, port_is_free
from faastwist.util.timers import NamedTimers

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
    found = shutil.which("etcd")
    if found:
        return found
    for path in ETCD_BINARY_CANDIDATES:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


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


class _EtcdProtocol(ProcessProtocol):
    def __init__(self, owner: "EmbeddedEtcd") -> None:
        self.owner = owner

    def processEnded(self, reason: Failure) -> None:  # type: ignore[override]
        self.owner._ended(self, reason)


class EmbeddedEtcd(Service):
    """Supervises one local etcd member whose data lives in ``data_dir``."""

    name = "embedded-etcd"

    def __init__(self, reactor: IReactorProcess, data_dir: str, etcd_binary: str | None = None,
                 startup_timeout: float = 30.0, *, stop_grace: float = 10.0,
                 max_backoff: float = 30.0, tls: EtcdTLS | None = None) -> None:
        self.reactor = reactor
        self.data_dir = os.path.abspath(data_dir)
        self.etcd_binary = etcd_binary
        self.startup_timeout = startup_timeout
        self.stop_grace = stop_grace
        self.max_backoff = max_backoff
        self.log_path = os.path.join(self.data_dir, LOG_FILE)
        self.client_url: str | None = None
        self.peer_url: str | None = None
        self.pid: int | None = None
        self.restarts = 0
        self.healthy = False
        #: client-certificate TLS (the node's): https URLs, only CA-signed clients
        self.tls = tls
        self._agent = Agent(reactor, contextFactory=tls.policy()) if tls else Agent(reactor)
        self._protocol: _EtcdProtocol | None = None
        self._transport: Any = None
        self._failures = 0
        self._stopping = False
        self._timers = NamedTimers(reactor)
        self._waiters: list[tuple[Deferred, IDelayedCall]] = []
        self._gone: list[Deferred] = []
        self._fatal: EmbeddedEtcdError | None = None

    # service

    def startService(self) -> None:
        """Start etcd; raises EtcdBinaryMissing at once when there is no binary."""
        binary = self.etcd_binary or find_etcd_binary()
        if binary is None:
            raise EtcdBinaryMissing()
        if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
            raise EtcdBinaryMissing(binary)
        self._binary = binary
        os.makedirs(self.data_dir, exist_ok=True)
        Service.startService(self)
        self._stopping = False
        self._fatal = None
        self._stop_orphan()

    def stopService(self) -> Deferred[None]:
        """SIGTERM, SIGKILL after ``stop_grace``; fires when the process is gone."""
        Service.stopService(self)
        self._stopping = True
        self._timers.cancel_all()
        self._fail_waiters(EmbeddedEtcdError("the embedded etcd was stopped"))
        if self._transport is None:
            return succeed(None)
        gone: Deferred[None] = Deferred()
        self._gone.append(gone)
        self._signal("TERM")
        self._timers.later("kill", self.stop_grace, self._escalate)
        return gone

    def ready(self) -> Deferred[str]:
        """Fires with the client URL once /health says healthy, or EmbeddedEtcdError
        after ``startup_timeout``."""
        if self.healthy and self.client_url is not None:
            return succeed(self.client_url)
        if self._fatal is not None:
            return fail(self._fatal)
        if self._stopping:
            return fail(EmbeddedEtcdError("the embedded etcd was stopped"))
        d: Deferred[str] = Deferred()
        timer = self.reactor.callLater(self.startup_timeout, self._ready_timed_out, d)
        self._waiters.append((d, timer))
        return d

    # process

    def _stop_orphan(self) -> None:
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
            self._fatal = EmbeddedEtcdError(
                f"{self.data_dir} is in use by etcd pid {pid} of the live process {owner}; "
                f"two nodes cannot share one etcd.dataDir")
            self._fail_waiters(self._fatal)
            log.error("embedded etcd not started: {error}", error=str(self._fatal))
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

    def _ports(self) -> tuple[int, int]:
        """The persisted (client, peer) ports, or new free ones when unknown or taken."""
        path = os.path.join(self.data_dir, PORTS_FILE)
        try:
            with open(path) as f:
                saved = json.load(f)
            client, peer = int(saved["client"]), int(saved["peer"])
        except (OSError, ValueError, KeyError, TypeError):
            client = peer = 0
        if client and peer and client != peer and port_is_free(client) and port_is_free(peer):
            return client, peer
        if client:
            log.warn("embedded etcd ports {client}/{peer} are taken; choosing new ones",
                     client=client, peer=peer)
        client = free_port()
        peer = free_port()
        while peer == client:
            peer = free_port()
        with open(path, "w") as f:
            json.dump({"client": client, "peer": peer}, f)
        return client, peer

    def _spawn(self) -> None:
        self._timers.fired("restart")
        if self._stopping or not self.running:
            return
        client, peer = self._ports()
        scheme = "https" if self.tls is not None else "http"
        self.client_url = f"{scheme}://127.0.0.1:{client}"
        peer_url = self.peer_url = f"{scheme}://127.0.0.1:{peer}"
        args = [self._binary, "--name", "faastwist",
                "--data-dir", os.path.join(self.data_dir, "data"),
                "--listen-client-urls", self.client_url,
                "--advertise-client-urls", self.client_url,
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
        setpriv = shutil.which("setpriv")
        if setpriv:
            args = [setpriv, "--pdeathsig", "TERM", "--"] + args
        setsid = shutil.which("setsid")
        if setsid:
            # a session of its own: Ctrl-C in the terminal of `make run` reaches faasgate
            # only, which then stops etcd last, after the services that still use it
            args = [setsid] + args
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
        log_fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        null_fd = os.open(os.devnull, os.O_RDONLY)
        try:
            self._protocol = _EtcdProtocol(self)
            self._transport = self.reactor.spawnProcess(
                self._protocol, args[0], args, env=env, path=self.data_dir,
                childFDs={0: null_fd, 1: log_fd, 2: log_fd})
        except OSError as exc:
            self._protocol = self._transport = None
            log.error("cannot start etcd {binary}: {error}", binary=self._binary, error=str(exc))
            self._schedule_restart()
            return
        finally:
            os.close(log_fd)
            os.close(null_fd)
        self.pid = self._transport.pid
        self.healthy = False
        with open(os.path.join(self.data_dir, PID_FILE), "w") as f:
            json.dump({"pid": self.pid, "owner": os.getpid()}, f)
        log.info("embedded etcd pid {pid} starting on {url} (data {dir}, log {log_path})",
                 pid=self.pid, url=self.client_url, dir=self.data_dir, log_path=self.log_path)
        self._timers.later("health", 0.05, self._check_health)

    def _ended(self, protocol: _EtcdProtocol, reason: Failure) -> None:
        if protocol is not self._protocol:
            return
        pid, self.pid = self.pid, None
        self._protocol = self._transport = None
        self.healthy = False
        self._timers.cancel("health")
        if self._stopping:
            self._timers.cancel("kill")
            try:
                os.remove(os.path.join(self.data_dir, PID_FILE))
            except OSError:
                pass
            gone, self._gone = self._gone, []
            for d in gone:
                d.callback(None)
            return
        self.restarts += 1
        delay = self._schedule_restart()
        log.warn("embedded etcd pid {pid} exited unexpectedly ({reason}); restart {count} "
                 "in {delay}s, see {log_path}", pid=pid, reason=reason.getErrorMessage(),
                 count=self.restarts, delay=delay, log_path=self.log_path)

    def _schedule_restart(self) -> float:
        delay = min(self.max_backoff, 0.5 * 2 ** self._failures)
        self._failures += 1
        self._timers.later("restart", delay, self._spawn)
        return delay

    def _signal(self, name: str) -> None:
        if self._transport is not None:
            try:
                self._transport.signalProcess(name)
            except ProcessExitedAlready:
                pass

    def _escalate(self) -> None:
        self._timers.fired("kill")
        log.warn("embedded etcd pid {pid} ignored SIGTERM for {grace}s; sending SIGKILL",
                 pid=self.pid, grace=self.stop_grace)
        self._signal("KILL")

    # health

    def _check_health(self) -> None:
        self._timers.fired("health")
        if self._transport is None or self.client_url is None:
            return
        d = self._agent.request(b"GET", (self.client_url + "/health").encode())
        d.addTimeout(1.0, self.reactor)
        d.addCallback(readBody)
        d.addCallbacks(self._health_answer, lambda _: False)
        d.addCallback(self._health_result)

    @staticmethod
    def _health_answer(body: bytes) -> bool:
        try:
            return json.loads(body).get("health") == "true"
        except (ValueError, AttributeError):
            return False

    def _health_result(self, healthy: bool) -> None:
        if self._transport is None or self._stopping:
            return
        if not healthy:
            self._timers.later("health", 0.1, self._check_health)
            return
        self.healthy = True
        self._failures = 0
        log.info("embedded etcd pid {pid} is healthy at {url}", pid=self.pid, url=self.client_url)
        waiters, self._waiters = self._waiters, []
        for d, timer in waiters:
            timer.cancel()
            d.callback(self.client_url)

    def _ready_timed_out(self, d: Deferred) -> None:
        self._waiters = [(w, t) for w, t in self._waiters if w is not d]
        d.errback(EmbeddedEtcdError(
            f"the embedded etcd did not become healthy within {self.startup_timeout:g}s "
            f"(url {self.client_url}); see {self.log_path}"))

    def _fail_waiters(self, error: Exception) -> None:
        waiters, self._waiters = self._waiters, []
        for d, timer in waiters:
            timer.cancel()
            d.errback(error)

