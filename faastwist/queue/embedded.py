"""A local ``nats-server`` with JetStream, for nodes whose ``queue.natsURLs`` is empty.

Like the embedded etcd: loopback only, ports chosen once and kept in the data folder
(a restart serves the same URL, and clients reconnect to it), JetStream storage under
the data folder (so queued calls survive a restart of the server or of the node),
restarted with backoff when it dies, SIGTERM then SIGKILL at stop, and a parent-death
signal through ``setpriv`` so a SIGKILLed node leaves no server behind. The server is
configured by a file (the command line has no max_payload) and is healthy when its
monitoring endpoint's ``/healthz`` says ok.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, readBody

from faastwist.util.ports import free_port, port_is_free
from faastwist.util.timers import NamedTimers

log = Logger()

NATS_BINARY_CANDIDATES = ("/usr/sbin/nats-server", "/usr/bin/nats-server",
                          "/usr/local/bin/nats-server")
MISSING_NATS_MESSAGE = (
    "the embedded queue needs the nats-server binary, and none was found on PATH (nor "
    "/usr/sbin/nats-server): install it with `apt-get install -y nats-server`, set "
    "queue.natsURLs to use an existing NATS cluster, or set queue.enabled: false")
#: Room for the request head the gate stores next to a body of maxBodySize.
HEAD_ROOM = 128 * 1024


class EmbeddedNatsError(Exception):
    """The embedded nats-server cannot be started or did not become healthy."""


def find_nats_binary() -> str | None:
    found = shutil.which("nats-server")
    if found:
        return found
    for path in NATS_BINARY_CANDIDATES:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


class _Protocol(ProcessProtocol):
    def __init__(self, owner: "EmbeddedNats") -> None:
        self.owner = owner

    def processEnded(self, reason: Failure) -> None:  # type: ignore[override]
        self.owner._ended(self, reason)


class EmbeddedNats(Service):
    """Supervises one nats-server whose JetStream data lives in ``data_dir``."""

    name = "embedded-nats"

    def __init__(self, reactor: Any, data_dir: str, max_payload: int,
                 binary: str | None = None, startup_timeout: float = 20.0,
                 stop_grace: float = 10.0, max_backoff: float = 10.0) -> None:
        self.reactor = reactor
        self.data_dir = os.path.abspath(data_dir)
        self.max_payload = max(max_payload + HEAD_ROOM, 1024 * 1024)
        self.binary = binary
        self.startup_timeout = startup_timeout
        self.stop_grace = stop_grace
        self.max_backoff = max_backoff
        self.log_path = os.path.join(self.data_dir, "nats.log")
        self.url: str | None = None
        self.pid: int | None = None
        self.healthy = False
        self.restarts = 0
        self.ports: tuple[int, int] = (0, 0)
        self._agent = Agent(reactor)
        self._protocol: _Protocol | None = None
        self._transport: Any = None
        self._failures = 0
        self._stopping = False
        self._timers = NamedTimers(reactor)
        self._waiters: list[tuple[Deferred, Any]] = []
        self._gone: list[Deferred] = []

    def startService(self) -> None:
        binary = self.binary or find_nats_binary()
        if binary is None or not os.access(binary, os.X_OK):
            raise EmbeddedNatsError(MISSING_NATS_MESSAGE)
        self._binary = binary
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        super().startService()
        self._stopping = False
        self._spawn()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._stopping = True
        self._timers.cancel_all()
        self._fail_waiters(EmbeddedNatsError("the embedded nats-server was stopped"))
        if self._transport is None:
            return succeed(None)
        gone: Deferred[None] = Deferred()
        self._gone.append(gone)
        self._signal("TERM")
        self._timers.later("kill", self.stop_grace, lambda: self._signal("KILL"))
        return gone

    def ready(self) -> Deferred[str]:
        """Fires with the client URL once healthy, or EmbeddedNatsError on timeout."""
        if self.healthy and self.url is not None:
            return succeed(self.url)
        if self._stopping or not self.running:
            return fail(EmbeddedNatsError("the embedded nats-server is not running"))
        d: Deferred[str] = Deferred()
        timer = self.reactor.callLater(self.startup_timeout, self._timed_out, d)
        self._waiters.append((d, timer))
        return d

    # -- process ---------------------------------------------------------------------

    def _choose_ports(self) -> tuple[int, int]:
        path = os.path.join(self.data_dir, "ports.json")
        try:
            with open(path) as f:
                saved = json.load(f)
            client, monitor = int(saved["client"]), int(saved["monitor"])
        except (OSError, ValueError, KeyError, TypeError):
            client = monitor = 0
        if client and monitor and client != monitor and port_is_free(client) \
                and port_is_free(monitor):
            return client, monitor
        client = free_port()
        monitor = free_port()
        while monitor == client:
            monitor = free_port()
        with open(path, "w") as f:
            json.dump({"client": client, "monitor": monitor}, f)
        return client, monitor

    def _write_config(self, client: int, monitor: int) -> str:
        path = os.path.join(self.data_dir, "nats.conf")
        store = json.dumps(os.path.join(self.data_dir, "jetstream"))
        # JSON strings are valid NATS config strings
        text = (f"server_name: faastwist\nhost: 127.0.0.1\nport: {client}\n"
                f"http: \"127.0.0.1:{monitor}\"\nmax_payload: {self.max_payload}\n"
                f"jetstream {{\n  store_dir: {store}\n}}\n")
        with open(path, "w") as f:
            f.write(text)
        return path

    def _spawn(self) -> None:
        self._timers.fired("restart")
        if self._stopping or not self.running:
            return
        client, monitor = self.ports = self._choose_ports()
        self.url = f"nats://127.0.0.1:{client}"
        args = [self._binary, "-c", self._write_config(client, monitor)]
        setpriv = shutil.which("setpriv")
        if setpriv:
            args = [setpriv, "--pdeathsig", "TERM", "--"] + args
        setsid = shutil.which("setsid")
        if setsid:
            args = [setsid] + args  # Ctrl-C reaches the node, which stops this last
        log_fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        null_fd = os.open(os.devnull, os.O_RDONLY)
        try:
            self._protocol = _Protocol(self)
            self._transport = self.reactor.spawnProcess(
                self._protocol, args[0], args, env={"PATH": os.environ.get("PATH", "")},
                path=self.data_dir, childFDs={0: null_fd, 1: log_fd, 2: log_fd})
        except OSError as exc:
            self._protocol = self._transport = None
            log.error("cannot start nats-server: {error}", error=str(exc))
            self._schedule_restart()
            return
        finally:
            os.close(log_fd)
            os.close(null_fd)
        self.pid = self._transport.pid
        self.healthy = False
        log.info("embedded nats-server pid {pid} starting on {url} (data {dir})",
                 pid=self.pid, url=self.url, dir=self.data_dir)
        self._timers.later("health", 0.05, self._check_health)

    def _ended(self, protocol: _Protocol, reason: Failure) -> None:
        if protocol is not self._protocol:
            return
        pid, self.pid = self.pid, None
        self._protocol = self._transport = None
        self.healthy = False
        self._timers.cancel("health")
        if self._stopping:
            self._timers.cancel("kill")
            gone, self._gone = self._gone, []
            for d in gone:
                d.callback(None)
            return
        self.restarts += 1
        delay = self._schedule_restart()
        log.warn("embedded nats-server pid {pid} exited ({reason}); restart {count} in "
                 "{delay}s, see {log_path}", pid=pid, reason=reason.getErrorMessage(),
                 count=self.restarts, delay=delay, log_path=self.log_path)

    def _schedule_restart(self) -> float:
        delay = min(self.max_backoff, 0.2 * 2 ** self._failures)
        self._failures += 1
        self._timers.later("restart", delay, self._spawn)
        return delay

    def _signal(self, name: str) -> None:
        if self._transport is not None:
            try:
                self._transport.signalProcess(name)
            except ProcessExitedAlready:
                pass

    # -- health ----------------------------------------------------------------------

    def _check_health(self) -> None:
        self._timers.fired("health")
        if self._transport is None:
            return
        url = f"http://127.0.0.1:{self.ports[1]}/healthz?js-enabled=true"
        d = self._agent.request(b"GET", url.encode())
        d.addTimeout(1.0, self.reactor)
        d.addCallback(readBody)
        d.addCallbacks(self._answer, lambda _: False)
        d.addCallback(self._result)

    @staticmethod
    def _answer(body: bytes) -> bool:
        try:
            return json.loads(body).get("status") == "ok"
        except (ValueError, AttributeError):
            return False

    def _result(self, healthy: bool) -> None:
        if self._transport is None or self._stopping:
            return
        if not healthy:
            self._timers.later("health", 0.05, self._check_health)
            return
        self.healthy = True
        self._failures = 0
        log.info("embedded nats-server pid {pid} is healthy at {url}", pid=self.pid,
                 url=self.url)
        waiters, self._waiters = self._waiters, []
        for d, timer in waiters:
            timer.cancel()
            d.callback(self.url)

    def _timed_out(self, d: Deferred) -> None:
        self._waiters = [(w, t) for w, t in self._waiters if w is not d]
        d.errback(EmbeddedNatsError(
            f"the embedded nats-server did not become healthy within "
            f"{self.startup_timeout:g}s; see {self.log_path}"))

    def _fail_waiters(self, error: Exception) -> None:
        waiters, self._waiters = self._waiters, []
        for d, timer in waiters:
            timer.cancel()
            d.errback(error)
