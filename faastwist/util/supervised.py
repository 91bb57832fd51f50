"""A server the node runs as its own supervised child: the embedded etcd and nats-server.

Both need the same supervision, so it lives here once: loopback ports chosen once and kept
in the child's data folder (a restart serves the same URL, and clients reconnect to it),
a restart with exponential backoff when the child dies, health polled over HTTP until it
answers, and a stop that sends SIGTERM, SIGKILL after a grace period, and fires only when
the process is gone. Where ``setpriv`` exists the child gets a parent-death signal, so
even a SIGKILLed node leaves no child behind; ``setsid`` gives it a session of its own, so
Ctrl-C in the terminal of ``make run`` reaches the node only, which stops the child last,
after the services that still use it. What differs (the command, its health answer, the
etcd's orphan check) is left to the subclass.
"""

from __future__ import annotations

import json
import os
import shutil
from abc import ABCMeta, abstractmethod
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

__all__ = ["SupervisedChild", "find_binary", "persisted_ports"]

log = Logger()


def find_binary(name: str, candidates: tuple[str, ...]) -> str | None:
    """The executable ``name``: PATH first, then the usual install locations."""
    found = shutil.which(name)
    if found:
        return found
    for path in candidates:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def persisted_ports(path: str, names: tuple[str, str], what: str) -> tuple[int, int]:
    """Two distinct loopback ports saved in the JSON file ``path`` under ``names``: the
    saved ones while both are free, else two new ones (saved for the next start)."""
    try:
        with open(path) as f:
            saved = json.load(f)
        first, second = int(saved[names[0]]), int(saved[names[1]])
    except (OSError, ValueError, KeyError, TypeError):
        first = second = 0
    if first and second and first != second and port_is_free(first) and port_is_free(second):
        return first, second
    if first:
        log.warn("{what} ports {first}/{second} are taken; choosing new ones",
                 what=what, first=first, second=second)
    first = free_port()
    second = free_port()
    while second == first:
        second = free_port()
    with open(path, "w") as f:
        json.dump({names[0]: first, names[1]: second}, f)
    return first, second


class _Protocol(ProcessProtocol):
    def __init__(self, owner: "SupervisedChild") -> None:
        self.owner = owner

    def processEnded(self, reason: Failure) -> None:
        self.owner._ended(self, reason)


class SupervisedChild(Service, metaclass=ABCMeta):
    """Supervises one child server whose data lives in ``data_dir``.

    A subclass sets ``what`` and ``error`` and implements ``_command``, ``_health_url``
    and ``_healthy``; ``ready()`` fires with ``self.url`` once the child is healthy."""

    #: what logs and errors call the child, e.g. "embedded etcd"
    what = "child"
    #: the exception ``ready()`` fails with
    error: type[Exception] = Exception
    #: the first restart delay (doubled per failure up to ``max_backoff``)
    first_backoff = 0.5
    #: how soon an unhealthy answer is asked again
    health_interval = 0.1
    dir_mode = 0o777
    log_mode = 0o644

    def __init__(self, reactor: Any, data_dir: str, log_name: str, *, startup_timeout: float,
                 stop_grace: float, max_backoff: float) -> None:
        self.reactor = reactor
        self.data_dir = os.path.abspath(data_dir)
        self.log_path = os.path.join(self.data_dir, log_name)
        self.startup_timeout = startup_timeout
        self.stop_grace = stop_grace
        self.max_backoff = max_backoff
        self.url: str | None = None
        self.pid: int | None = None
        self.restarts = 0
        self.healthy = False
        self._agent = Agent(reactor)
        self._protocol: _Protocol | None = None
        self._transport: Any = None
        self._failures = 0
        self._stopping = False
        self._timers = NamedTimers(reactor)
        self._waiters: list[tuple[Deferred, Any]] = []
        self._gone: list[Deferred] = []
        self._fatal: Exception | None = None

    # the subclass's part

    @abstractmethod
    def _command(self) -> tuple[list[str], dict[str, str]]:
        """The child's argv and environment; sets ``self.url`` (called at every spawn)."""

    @abstractmethod
    def _health_url(self) -> str:
        """Where the child answers its health check."""

    @abstractmethod
    def _healthy(self, answer: Any) -> bool:
        """Whether the decoded JSON answer of ``_health_url`` says healthy."""

    def _begin(self) -> None:
        """What startService does once the folder exists: start the child."""
        self._spawn()

    def _spawned(self) -> None:
        """Called with ``self.pid`` set, after every spawn."""

    def _stopped(self) -> None:
        """Called once the child is gone after a stop."""

    # service

    def _start_with(self, binary: str) -> None:
        """startService's common part, once the subclass has found its ``binary``."""
        self._binary = binary
        os.makedirs(self.data_dir, mode=self.dir_mode, exist_ok=True)
        Service.startService(self)
        self._stopping = False
        self._fatal = None
        self._begin()

    def stopService(self) -> Deferred[None]:
        """SIGTERM, SIGKILL after ``stop_grace``; fires when the process is gone."""
        Service.stopService(self)
        self._stopping = True
        self._timers.cancel_all()
        self._fail_waiters(self.error(f"the {self.what} was stopped"))
        if self._transport is None:
            return succeed(None)
        gone: Deferred[None] = Deferred()
        self._gone.append(gone)
        self._signal("TERM")
        self._timers.later("kill", self.stop_grace, self._escalate)
        return gone

    def ready(self) -> Deferred[str]:
        """Fires with the URL once the child is healthy, or ``error`` after
        ``startup_timeout`` (at once when it cannot start or was stopped)."""
        if self.healthy and self.url is not None:
            return succeed(self.url)
        if self._fatal is not None:
            return fail(self._fatal)
        if self._stopping:
            return fail(self.error(f"the {self.what} was stopped"))
        if not self.running:
            return fail(self.error(f"the {self.what} is not running"))
        d: Deferred[str] = Deferred()
        timer = self.reactor.callLater(self.startup_timeout, self._ready_timed_out, d)
        self._waiters.append((d, timer))
        return d

    def _refuse(self, error: Exception) -> None:
        """The child must not start (``ready()`` fails with ``error`` from now on)."""
        self._fatal = error
        self._fail_waiters(error)
        log.error("{what} not started: {error}", what=self.what, error=str(error))

    # process

    def _spawn(self) -> None:
        self._timers.fired("restart")
        if self._stopping or not self.running:
            return
        args, env = self._command()
        setpriv = shutil.which("setpriv")
        if setpriv:
            args = [setpriv, "--pdeathsig", "TERM", "--"] + args
        setsid = shutil.which("setsid")
        if setsid:
            args = [setsid] + args
        log_fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, self.log_mode)
        null_fd = os.open(os.devnull, os.O_RDONLY)
        try:
            self._protocol = _Protocol(self)
            self._transport = self.reactor.spawnProcess(
                self._protocol, args[0], args, env=env, path=self.data_dir,
                childFDs={0: null_fd, 1: log_fd, 2: log_fd})
        except OSError as exc:
            self._protocol = self._transport = None
            log.error("cannot start the {what} {binary}: {error}", what=self.what,
                      binary=self._binary, error=str(exc))
            self._schedule_restart()
            return
        finally:
            os.close(log_fd)
            os.close(null_fd)
        self.pid = self._transport.pid
        self.healthy = False
        self._spawned()
        log.info("{what} pid {pid} starting on {url} (data {dir}, log {log_path})",
                 what=self.what, pid=self.pid, url=self.url, dir=self.data_dir,
                 log_path=self.log_path)
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
            self._stopped()
            gone, self._gone = self._gone, []
            for d in gone:
                d.callback(None)
            return
        self.restarts += 1
        delay = self._schedule_restart()
        log.warn("{what} pid {pid} exited unexpectedly ({reason}); restart {count} in "
                 "{delay}s, see {log_path}", what=self.what, pid=pid,
                 reason=reason.getErrorMessage(), count=self.restarts, delay=delay,
                 log_path=self.log_path)

    def _schedule_restart(self) -> float:
        delay = min(self.max_backoff, self.first_backoff * 2 ** self._failures)
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
        log.warn("{what} pid {pid} ignored SIGTERM for {grace}s; sending SIGKILL",
                 what=self.what, pid=self.pid, grace=self.stop_grace)
        self._signal("KILL")

    # health

    def _check_health(self) -> None:
        self._timers.fired("health")
        if self._transport is None or self.url is None:
            return
        self._probe().addCallback(self._health_result)

    def _probe(self) -> Deferred[bool]:
        """Whether the child is healthy now (never fails): by default its HTTP health
        endpoint; a child without one (nats-server with its monitoring port off)
        overrides this."""
        d = self._agent.request(b"GET", self._health_url().encode())
        d.addTimeout(1.0, self.reactor)
        return d.addCallback(readBody).addCallbacks(self._health_answer, lambda _: False)

    def _health_answer(self, body: bytes) -> bool:
        try:
            return bool(self._healthy(json.loads(body)))
        except (ValueError, AttributeError):
            return False

    def _health_result(self, healthy: bool) -> None:
        if self._transport is None or self._stopping:
            return
        if not healthy:
            self._timers.later("health", self.health_interval, self._check_health)
            return
        self.healthy = True
        self._failures = 0
        log.info("{what} pid {pid} is healthy at {url}", what=self.what, pid=self.pid,
                 url=self.url)
        waiters, self._waiters = self._waiters, []
        for d, timer in waiters:
            timer.cancel()
            d.callback(self.url)

    def _ready_timed_out(self, d: Deferred) -> None:
        self._waiters = [(w, t) for w, t in self._waiters if w is not d]
        d.errback(self.error(
            f"the {self.what} did not become healthy within {self.startup_timeout:g}s "
            f"(url {self.url}); see {self.log_path}"))

    def _fail_waiters(self, error: Exception) -> None:
        waiters, self._waiters = self._waiters, []
        for d, timer in waiters:
            timer.cancel()
            d.errback(error)
