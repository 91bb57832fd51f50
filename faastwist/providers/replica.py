"""One replica of an HTTP-mode function: a child process, its readiness probe, its logs.

Children run in their own session and process group (the launch prefix of
``faastwist.providers.isolation``), so a stop signals the whole group, a function's
own workers included, and the gate's Ctrl-C reaches the gate alone, which then stops
them in order; the child also gets SIGTERM should the gate die without a shutdown.
"""

from __future__ import annotations

import os
import signal
from collections import deque
from enum import Enum
from typing import Callable, Mapping, Protocol, Sequence

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IDelayedCall, IProcessTransport, IProtocol, IReactorTime
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol as TCPProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from faastwist.providers.base import LogLine, Upstream
from faastwist.providers.sockets import owns_listener
from faastwist.util.reactor import IFullReactor, IStreamTransport

log = Logger()

MAX_LINE = 16384       # longer lines are cut into pieces of this size
STDERR_TAIL = 20       # stderr lines kept for an error report
PROBE_FIRST = 0.005    # probe quickly at first: a cold start waits on it (a refused
PROBE_FAST_MAX = 0.02  # loopback connect costs tens of microseconds)
PROBE_SLOW = 0.5       # after PROBE_FAST_FOR seconds, a hung start is probed gently
PROBE_FAST_FOR = 5.0
LOOPBACK = "127.0.0.1"


class LogSink(Protocol):
    def emit(self, instance: str, stream: str, text: str) -> LogLine: ...


def signal_group(pid: int, sig: int) -> bool:
    """Signal the child's process group; before the child's setsid has run, the child
    alone. False when nothing was there to signal."""
    try:
        os.killpg(pid, sig)
        return True
    except ProcessLookupError:
        pass
    except PermissionError:
        return False
    try:
        os.kill(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


@attrs.frozen
class ExitInfo:
    """How a child ended, with the end of its stderr for the error report."""

    code: int | None
    signal: int | None
    stderr: tuple[str, ...] = ()
    expected: bool = False     # we stopped it
    oom: bool = False          # it went past limitMemory

    def describe(self) -> str:
        if self.oom:
            return "ran out of memory (over limitMemory)"
        if self.signal is not None:
            try:
                name = signal.Signals(self.signal).name
            except ValueError:
                name = str(self.signal)
            return f"killed by signal {name}"
        return f"exited with code {self.code}"


def exit_of(reason: Failure) -> tuple[int | None, int | None]:
    value = reason.value
    if isinstance(value, ProcessDone):
        return 0, None
    if isinstance(value, ProcessTerminated):
        return value.exitCode, value.signal
    return None, None


class LineBuffer:
    """Cuts a byte stream into text lines (a last partial line comes out at close)."""

    def __init__(self, on_line: Callable[[str], None]) -> None:
        self.on_line = on_line
        self.partial = b""

    def feed(self, data: bytes) -> None:
        pieces = (self.partial + data).split(b"\n")
        self.partial = pieces.pop()
        for piece in pieces:
            self._emit(piece)
        while len(self.partial) > MAX_LINE:
            self._emit(self.partial[:MAX_LINE])
            self.partial = self.partial[MAX_LINE:]

    def _emit(self, piece: bytes) -> None:
        self.on_line(piece.rstrip(b"\r").decode("utf-8", "replace"))

    def close(self) -> None:
        if self.partial:
            self._emit(self.partial)
            self.partial = b""


class _ReplicaProtocol(ProcessProtocol):
    def __init__(self, replica: "Replica") -> None:
        self.replica = replica
        self.buffers = {1: LineBuffer(lambda t: replica._line("stdout", t)),
                        2: LineBuffer(lambda t: replica._line("stderr", t))}

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        buffer = self.buffers.get(childFD)
        if buffer is not None:
            buffer.feed(data)

    def processEnded(self, reason: Failure) -> None:
        for buffer in self.buffers.values():
            buffer.close()
        self.replica._ended(*exit_of(reason))


class _HttpProbe(TCPProtocol):
    """GET the readiness path and judge the status line (2xx and 3xx pass).

    A plain TCP connection to the loopback address: twisted.web's Agent goes through
    HostnameEndpoint, whose name resolution and 0.3s attempt delay would add a
    third of a second to every cold start."""

    transport: IStreamTransport  # connected before connectionMade

    def __init__(self, path: str, host: str) -> None:
        self.request = (f"GET {path} HTTP/1.0\r\nHost: {host}\r\n"
                        f"User-Agent: faastwist-probe\r\n\r\n").encode()
        self.status: Deferred[None] = Deferred()
        self.buffer = b""

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if b"\n" not in self.buffer or self.status.called:
            return
        line = self.buffer.split(b"\n", 1)[0].decode("latin-1").split()
        self.transport.loseConnection()
        if len(line) >= 2 and line[0].startswith("HTTP/") and line[1].isdigit():
            code = int(line[1])
            if 200 <= code < 400:
                self.status.callback(None)
                return
            self.status.errback(ValueError(f"readiness probe answered {code}"))
            return
        self.status.errback(ValueError(f"readiness probe got no HTTP status: {line!r}"))

    def connectionLost(self, reason: Failure | None = None) -> None:
        if not self.status.called:
            self.status.errback(ValueError("readiness probe: connection closed before a "
                                           "status line"))


class _ProbeFactory(Factory):
    noisy = False

    def __init__(self, probe: _HttpProbe) -> None:
        self.probe = probe

    def buildProtocol(self, addr: object) -> _HttpProbe:
        return self.probe


class ReplicaState(str, Enum):
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    EXITED = "exited"


class Replica:
    """A long-running HTTP server on a loopback port, ready once its probe passes."""

    def __init__(self, reactor: IFullReactor, function: str, argv: Sequence[str], env: Mapping[str, str],
                 cwd: str, port: int, readiness_path: str, sink: LogSink,
                 on_ready: Callable[["Replica"], None],
                 on_exit: Callable[["Replica", ExitInfo], None],
                 ring_size: int = 256, probe_timeout: float = 1.0,
                 classify: Callable[[ExitInfo], ExitInfo] | None = None,
                 owner_check: Callable[[int, int], bool | None] = owns_listener) -> None:
        self.reactor = reactor
        self.function = function
        self.argv = tuple(argv)
        self.env = dict(env)
        self.cwd = cwd
        self.port = port
        self.readiness_path = readiness_path
        self.sink = sink
        self.on_ready = on_ready
        self.on_exit = on_exit
        self.probe_timeout = probe_timeout
        #: refines an exit (e.g. marks it OOM) before on_exit sees it
        self.classify = classify
        #: (pgid, port) -> does the group hold the port's listening socket?
        self.owner_check = owner_check
        self._foreign_warned = False
        self.upstream = Upstream("http", LOOPBACK, port, f"{LOOPBACK}:{port}")
        self.state = ReplicaState.STARTING
        self.instance = f"{function}-starting"
        self.pid: int | None = None
        self.inflight = 0
        self.draining = False
        self.generation = 0
        self.ring: deque[LogLine] = deque(maxlen=ring_size)
        self.stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL)
        self._transport: IProcessTransport | None = None
        self._started_at = 0.0
        self._probe_call: IDelayedCall | None = None
        self._probe_delay = PROBE_FIRST
        self._kill_call: IDelayedCall | None = None
        self._exited: list[Deferred[None]] = []

    @property
    def ready(self) -> bool:
        return self.state is ReplicaState.READY

    @property
    def alive(self) -> bool:
        return self.state is not ReplicaState.EXITED

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        self._started_at = self.reactor.seconds()
        argv = list(self.argv)
        try:
            self._transport = self.reactor.spawnProcess(
                _ReplicaProtocol(self), argv[0], argv, env=self.env, path=self.cwd)
        except OSError as exc:
            # reported like an exit, on the next turn, so callers see one code path
            self.stderr_tail.append(f"cannot start {self.argv[0]}: {exc}")
            self.reactor.callLater(0, self._ended, 127, None)
            return
        self.pid = self._transport.pid
        self.instance = f"{self.function}-{self.pid}"
        self._probe_call = self.reactor.callLater(PROBE_FIRST, self._probe)

    def stop(self, grace: float) -> Deferred[None]:
        """SIGTERM to the group, SIGKILL after ``grace``; fires once the child is reaped."""
        done: Deferred[None] = Deferred()
        if self.state is ReplicaState.EXITED:
            done.callback(None)
            return done
        self._exited.append(done)
        if self.state is not ReplicaState.STOPPING:
            self.state = ReplicaState.STOPPING
            self._cancel_probe()
            if self.pid is not None:
                signal_group(self.pid, signal.SIGTERM)
                self._kill_call = self.reactor.callLater(grace, self._kill)
        return done

    def _kill(self) -> None:
        self._kill_call = None
        if self.pid is not None and self.state is not ReplicaState.EXITED:
            log.warn("replica {instance} ignored SIGTERM; sending SIGKILL",
                     instance=self.instance)
            signal_group(self.pid, signal.SIGKILL)

    def _ended(self, code: int | None, sig: int | None) -> None:
        expected = self.state is ReplicaState.STOPPING
        self.state = ReplicaState.EXITED
        self._cancel_probe()
        if self._kill_call is not None and self._kill_call.active():
            self._kill_call.cancel()
        self._kill_call = None
        info = ExitInfo(code, sig, tuple(self.stderr_tail), expected)
        if self.classify is not None:
            info = self.classify(info)
        if expected:
            log.info("replica {instance} stopped ({how})", instance=self.instance,
                     how=info.describe())
        waiters, self._exited = self._exited, []
        try:
            self.on_exit(self, info)
        finally:
            # whatever the child left in its group (workers, shells) goes with it, and
            # a stop is done only when the group is empty
            def release(_: object) -> None:
                for waiter in waiters:
                    waiter.callback(None)

            group_gone(self.reactor, self.pid).addCallback(release)

    def _line(self, stream: str, text: str) -> None:
        line = self.sink.emit(self.instance, stream, text)
        self.ring.append(line)
        if stream == "stderr":
            self.stderr_tail.append(text)

    # -- readiness ---------------------------------------------------------------------
    def _cancel_probe(self) -> None:
        if self._probe_call is not None and self._probe_call.active():
            self._probe_call.cancel()
        self._probe_call = None

    def _probe(self) -> None:
        self._probe_call = None
        if self.state is not ReplicaState.STARTING:
            return
        attempt = self._probe_http() if self.readiness_path else self._probe_tcp()
        attempt.addTimeout(self.probe_timeout, self.reactor)
        attempt.addCallbacks(self._probe_passed, self._probe_failed)

    def _probe_tcp(self) -> Deferred[None]:
        endpoint = TCP4ClientEndpoint(self.reactor, LOOPBACK, self.port,
                                      timeout=self.probe_timeout)
        factory = Factory.forProtocol(TCPProtocol)
        factory.noisy = False   # one probe every few ms must not log two lines each
        def close(proto: IProtocol) -> None:
            if isinstance(proto, TCPProtocol) and proto.transport is not None:
                proto.transport.loseConnection()

        return endpoint.connect(factory).addCallback(close)

    def _probe_http(self) -> Deferred[None]:
        endpoint = TCP4ClientEndpoint(self.reactor, LOOPBACK, self.port,
                                      timeout=self.probe_timeout)
        probe = _HttpProbe(self.readiness_path, self.upstream.host_header)
        return endpoint.connect(_ProbeFactory(probe)).addCallback(lambda _: probe.status)

    def _probe_passed(self, _: object) -> None:
        if self.state is not ReplicaState.STARTING:
            return
        if self.pid is not None and self.owner_check(self.pid, self.port) is False:
            # something answers on the port, but not this replica: never proxy to it
            if not self._foreign_warned:
                self._foreign_warned = True
                log.warn("replica {instance}: port {port} answers, but its listening "
                         "socket is not the replica's; waiting for the replica's own",
                         instance=self.instance, port=self.port)
            self._probe_failed(Failure(ValueError("foreign listener")))
            return
        self.state = ReplicaState.READY
        log.info("replica {instance} ready on port {port} after {seconds:.3f}s",
                 instance=self.instance, port=self.port,
                 seconds=self.reactor.seconds() - self._started_at)
        self.on_ready(self)

    def _probe_failed(self, _: Failure) -> None:
        if self.state is not ReplicaState.STARTING:
            return
        elapsed = self.reactor.seconds() - self._started_at
        if elapsed > PROBE_FAST_FOR:
            delay = PROBE_SLOW
        else:
            self._probe_delay = delay = min(self._probe_delay * 2, PROBE_FAST_MAX)
        self._probe_call = self.reactor.callLater(delay, self._probe)


#: seconds between two scans of /proc for a group's living members (see group_gone)
GROUP_SCAN_INTERVAL = 0.05


def group_gone(reactor: IReactorTime, pgid: int | None, timeout: float = 2.0) -> Deferred[None]:
    """SIGKILL what is left of a group whose leader exited; fires once it is empty
    (or after ``timeout``: a member stuck in the kernel must not hang a shutdown)."""
    done: Deferred[None] = Deferred()
    if pgid is None:
        done.callback(None)
        return done
    signal_group_only(pgid, signal.SIGKILL)
    deadline = reactor.seconds() + timeout
    scan = [reactor.seconds()]   # when /proc may be read next (it costs a read per process)

    def check() -> None:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            done.callback(None)
            return
        if reactor.seconds() >= scan[0]:
            scan[0] = reactor.seconds() + GROUP_SCAN_INTERVAL
            if not group_has_living(pgid):
                done.callback(None)   # only zombies left: dead, waiting for init to reap
                return
        if reactor.seconds() >= deadline:
            log.warn("process group {pgid} still has members after SIGKILL", pgid=pgid)
            done.callback(None)
            return
        reactor.callLater(0.01, check)
    check()
    return done


def group_has_living(pgid: int, proc: str = "/proc") -> bool:
    """Whether process group ``pgid`` has a member that is not a zombie. A sandboxed
    replica's children are reparented to init when it exits, and an init that reaps
    late (a container's) left a stop waiting ~2 s for zombies: a start after a stop
    waited with it. True when ``proc`` cannot be read (then only the kernel knows)."""
    try:
        entries = os.listdir(proc)
    except OSError:
        return True
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"{proc}/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue   # gone meanwhile
        # "pid (comm) S ppid pgrp ...": comm may hold spaces and parentheses
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != b"Z":
            return True
    return False


def signal_group_only(pgid: int, sig: int) -> None:
    """Signal what is left of a process group whose leader is gone (never a lone pid:
    after the leader is reaped its pid may belong to someone else)."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
