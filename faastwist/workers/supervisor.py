"""The node's gate worker processes: started, watched, restarted and drained here.

With ``httpServer.workers: N`` above 1 the main process does not serve the gate port:
it starts N children (``python -m faastwist.workers.child``, the same interpreter)
that each listen on it with SO_REUSEPORT. Each child gets a unix socket pair end as
fd 3 (the control channel, see channel.py; its first message is ``setup``), and its
stdout and stderr as pipes: the main writes the child's log and access-log lines,
already formatted, to the node's own log stream, so there is one writer per log
file (rotation keeps working) and one format.

A worker that exits unexpectedly is logged and started again after a backoff
(0.5 s doubling to 30 s; back to 0.5 s once one has run for a minute). At shut-down
each worker gets SIGTERM and drains like a one-process gate (bounded by
shutdownTimeout); one that is still there 10 s after that is killed. A worker never
outlives the node: it asks the kernel for SIGTERM when its parent dies
(PR_SET_PDEATHSIG) and stops when its control channel closes.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, FirstError
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from faastwist.metrics import Metrics
from faastwist.workers.channel import ChannelFactory, Message
from faastwist.workers.link import WorkerLink
from faastwist.workers.listen import check_free
from faastwist.workers.setup import WorkerSetup
from faastwist.util.failures import error_as

log = Logger(namespace="faastwist.workers")

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
STABLE_AFTER = 60.0  # a worker that ran this long resets the backoff
KILL_AFTER = 10.0    # past shutdownTimeout, a worker still running is killed
MAX_LOG_LINE = 1 << 20


class WorkerStartError(Exception):
    """A worker could not start serving (its message says why)."""


class _Slot:
    """One worker position (its index stays across restarts)."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: Any = None
        self.link: WorkerLink | None = None
        self.pid = 0
        self.ready = False
        self.started = 0.0
        self.delay = BACKOFF_FIRST
        self.restart: IDelayedCall | None = None
        self.starting: Deferred[None] | None = None
        self.replacing = False  # a restart, not the node's start: failures retry
        self.ended: list[Deferred[None]] = []


def _first_failure(failure: Failure) -> Failure:
    """The failure of the first worker that failed to start (DeferredList wraps it)."""
    return error_as(failure, FirstError).subFailure


class _WorkerProcess(ProcessProtocol):
    """Relays a worker's output to the node's log and reports its exit."""

    def __init__(self, pool: "WorkerPool", slot: _Slot) -> None:
        self.pool = pool
        self.slot = slot
        self.partial = {1: b"", 2: b""}

    def childDataReceived(self, fd: int, data: bytes) -> None:
        buffered = self.partial.get(fd, b"") + data
        cut = buffered.rfind(b"\n") + 1
        self.partial[fd] = buffered[cut:]
        if len(self.partial[fd]) > MAX_LOG_LINE:  # one huge line: pass it on as it is
            cut, self.partial[fd] = len(buffered), b""
        if cut:
            self.pool.relay(self.slot, fd, buffered[:cut])

    def processEnded(self, reason: Failure) -> None:
        for fd, rest in self.partial.items():
            if rest:
                self.pool.relay(self.slot, fd, rest + b"\n")
        self.pool.ended(self.slot, reason)


class WorkerPool(Service):
    """N gate workers on httpServer's port; the main process keeps the control plane."""

    name = "gate workers"

    def __init__(self, count: int, setup: WorkerSetup, reactor: Any, routes: Any, provider: Any,
                 metrics: Metrics, queue: Callable[[], Any],
                 sink: Callable[[str], None] | None, shutdown_timeout: float,
                 start_timeout: float = 60.0) -> None:
        self.slots = [_Slot(i) for i in range(count)]
        self.setup = setup
        self.reactor = reactor
        self.routes = routes
        self.provider = provider
        self.metrics = metrics
        self.queue = queue
        self.sink = sink
        self.shutdown_timeout = shutdown_timeout
        self.start_timeout = start_timeout
        self.stopping = False

    # -- start -------------------------------------------------------------------------
    def start(self) -> Deferred[Any]:
        """Start every worker; fires when all serve, fails with WorkerStartError."""
        self.startService()
        http = self.setup.http
        try:
            check_free(http.address, http.port)
        except OSError as exc:
            raise WorkerStartError(f"httpServer.port: cannot listen on {http.address}:"
                                   f"{http.port}: {exc.strerror or exc}") from None
        waits = [self._spawn(slot) for slot in self.slots]
        done = DeferredList(waits, fireOnOneErrback=True, consumeErrors=True)
        done.addErrback(_first_failure)
        return done.addTimeout(self.start_timeout, self.reactor)

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])
        paths = [root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        return env

    def _spawn(self, slot: _Slot) -> Deferred[None]:
        slot.restart = None
        slot.ready = False
        starting = slot.starting = Deferred()
        link = slot.link = WorkerLink(
            slot.index, self.routes, self.provider, self.metrics, self.queue,
            lambda message: self._ready(slot, link, message),
            lambda problem: self._failed(slot, link, problem))
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            argv = [sys.executable, "-m", "faastwist.workers.child", "--parent",
                    str(os.getpid()), "--index", str(slot.index)]
            slot.process = self.reactor.spawnProcess(
                _WorkerProcess(self, slot), sys.executable, argv, env=self._env(),
                childFDs={0: "w", 1: "r", 2: "r", 3: theirs.fileno()})
            self.reactor.adoptStreamConnection(ours.fileno(), socket.AF_UNIX,
                                               ChannelFactory(link.channel))
        finally:
            ours.close()
            theirs.close()
        slot.pid = slot.process.pid
        slot.started = self.reactor.seconds()
        link.send({**self.setup.to_message(), "index": slot.index})
        return starting

    def _ready(self, slot: _Slot, link: WorkerLink, message: Message) -> None:
        if slot.link is not link:
            return
        slot.ready = True
        log.info("gate worker {index} serving (pid {pid})", index=slot.index, pid=slot.pid)
        starting, slot.starting = slot.starting, None
        if starting is not None:
            starting.callback(None)

    def _failed(self, slot: _Slot, link: WorkerLink, problem: str) -> None:
        if slot.link is not link:
            return
        log.error("gate worker {index} (pid {pid}) cannot serve: {problem}",
                  index=slot.index, pid=slot.pid, problem=problem)
        starting, slot.starting = slot.starting, None
        if starting is not None:
            starting.errback(WorkerStartError(f"httpServer.workers: worker {slot.index} cannot "
                                              f"serve: {problem}"))

    # -- running -----------------------------------------------------------------------
    def relay(self, slot: _Slot, fd: int, data: bytes) -> None:
        """A worker's complete log lines: its log (fd 1) to the node's log stream as
        they are, anything on its stderr (a crash before its log was set up) as
        events."""
        text = data.decode("utf-8", "replace")
        if fd == 1 and self.sink is not None:
            try:
                self.sink(text)
                return
            except Exception:
                pass
        for line in text.splitlines():
            if line.strip():
                if fd == 1:
                    log.info("{line}", line=line)
                else:
                    log.warn("gate worker {index} (pid {pid}): {line}", index=slot.index,
                             pid=slot.pid, line=line)

    def ended(self, slot: _Slot, reason: Failure) -> None:
        status = getattr(reason.value, "exitCode", None)
        signum = getattr(reason.value, "signal", None)
        how = f"signal {signum}" if signum else f"status {status}"
        slot.ready = False
        slot.process = None
        link = slot.link
        if link is not None and link.channel.connected_:
            link.channel.transport.abortConnection()  # its leases go back now
        waiters, slot.ended = slot.ended, []
        for d in waiters:
            d.callback(None)
        starting, slot.starting = slot.starting, None
        if self.stopping:
            log.info("gate worker {index} (pid {pid}) exited ({how})", index=slot.index,
                     pid=slot.pid, how=how)
            return
        if starting is not None:  # it never served
            starting.errback(WorkerStartError(f"httpServer.workers: worker {slot.index} "
                                              f"exited ({how}) before serving"))
            if not slot.replacing:
                return  # the node's start fails (and says why); nothing to restart
        if self.reactor.seconds() - slot.started > STABLE_AFTER:
            slot.delay = BACKOFF_FIRST
        delay, slot.delay = slot.delay, min(slot.delay * 2, BACKOFF_MAX)
        log.error("gate worker {index} (pid {pid}) exited unexpectedly ({how}); starting "
                  "it again in {delay}s", index=slot.index, pid=slot.pid, how=how, delay=delay)
        slot.restart = self.reactor.callLater(delay, self._respawn, slot)

    def _respawn(self, slot: _Slot) -> None:
        slot.restart = None
        if self.stopping:
            return
        slot.replacing = True
        try:
            starting = self._spawn(slot)
        except Exception as exc:  # out of descriptors or processes: try again later
            delay, slot.delay = slot.delay, min(slot.delay * 2, BACKOFF_MAX)
            log.error("gate worker {index} could not be started ({error}); trying again in "
                      "{delay}s", index=slot.index, error=str(exc), delay=delay)
            slot.restart = self.reactor.callLater(delay, self._respawn, slot)
            return
        starting.addErrback(
            lambda f: log.error("gate worker {index} did not start again: {problem}",
                                index=slot.index, problem=f.getErrorMessage()))

    def reload(self) -> None:
        """SIGHUP: each worker loads the gate's certificate files again."""
        for slot in self.slots:
            if slot.link is not None:
                slot.link.send({"op": "reload"})

    def reached(self, revision: int) -> Deferred[Any]:
        """Fires once every serving worker's route table reflects ``revision``."""
        return DeferredList([slot.link.reached(revision) for slot in self.slots
                             if slot.ready and slot.link is not None], consumeErrors=True)

    def begin_drain(self) -> None:
        """The drain delay begins: every worker's answers say Connection: close."""
        for slot in self.slots:
            if slot.link is not None:
                slot.link.send({"op": "drain"})

    def check(self) -> None:
        """For /readyz: every worker serves."""
        down = [str(slot.index) for slot in self.slots if not slot.ready]
        if down:
            raise RuntimeError(f"gate workers not serving: {', '.join(down)} of "
                               f"{len(self.slots)}")

    def pids(self) -> list[int]:
        return [slot.pid for slot in self.slots if slot.process is not None]

    # -- stop --------------------------------------------------------------------------
    def stopService(self) -> Deferred[Any]:
        super().stopService()
        self.stopping = True
        waits = []
        for slot in self.slots:
            if slot.restart is not None and slot.restart.active():
                slot.restart.cancel()
            slot.restart = None
            if slot.process is None:
                continue
            d: Deferred[None] = Deferred()
            slot.ended.append(d)
            waits.append(d)
            self._signal(slot, signal.SIGTERM)
        if not waits:
            return DeferredList([])
        if any(slot.process is not None for slot in self.slots):
            log.info("draining {count} gate workers", count=len(waits))
        killer = self.reactor.callLater(self.shutdown_timeout + KILL_AFTER, self._kill_all)
        done = DeferredList(waits)

        def finished(result: Any) -> Any:
            if killer.active():
                killer.cancel()
            return result
        return done.addBoth(finished)

    def _signal(self, slot: _Slot, signum: int) -> None:
        try:
            slot.process.signalProcess(signum)
        except Exception:  # already gone: processEnded follows
            pass

    def _kill_all(self) -> None:
        for slot in self.slots:
            if slot.process is not None:
                log.warn("gate worker {index} (pid {pid}) still running {timeout}s after "
                         "SIGTERM; killing it", index=slot.index, pid=slot.pid,
                         timeout=self.shutdown_timeout + KILL_AFTER)
                self._signal(slot, signal.SIGKILL)
