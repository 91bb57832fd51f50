"""Fork mode: one process per request, behind a loopback HTTP listener.

OpenFaaS's classic watchdog idea inside faastwist: the gate only speaks HTTP to
upstreams, so a fork-mode function gets a small twisted.web listener that, per
request, runs the command with the request body on stdin and the headers as
``Http_*`` environment variables, and answers with its stdout. A non-zero exit is a
500 carrying the end of stderr; the function's timeout kills the process group (504).
``ForkRuntime`` is what the provider keeps per fork-mode function: the listener while
the function runs, nothing while it is stopped.
"""

from __future__ import annotations

import signal
from typing import Callable, Mapping, Sequence

from twisted.internet.defer import (
    Deferred,
    DeferredList,
    DeferredSemaphore,
    maybeDeferred,
    succeed,
)
from twisted.internet.interfaces import IDelayedCall, IReactorProcess
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from faastwist.model.fsm import Event
from faastwist.providers.base import NoCapacity, Observation, StaticLease, Upstream, UpstreamLease
from faastwist.providers.replica import (
    LOOPBACK,
    STDERR_TAIL,
    LineBuffer,
    LogSink,
    exit_of,
    group_gone,
    signal_group,
)
from faastwist.providers.runtime import Tuning
from faastwist.model.spec import FunctionSpec

log = Logger()

DEFAULT_CONTENT_TYPE = "text/plain; charset=utf-8"
MAX_OUTPUT = 64 * 2**20   # a response body is held in memory: a runaway writer is cut off


def header_env(request: Request) -> dict[str, str]:
    """The classic watchdog's request environment: ``Http_X_Name`` per header, plus
    ``Http_Method``, ``Http_Path`` and ``Http_Query``."""
    env: dict[str, str] = {}
    for raw_name, values in request.requestHeaders.getAllRawHeaders():
        name = raw_name.decode("latin-1")
        key = "Http_" + "_".join(part.capitalize() for part in name.split("-"))
        env[key] = ",".join(v.decode("latin-1") for v in values)
    path, _, query = request.uri.decode("latin-1").partition("?")
    env["Http_Method"] = request.method.decode("latin-1")
    env["Http_Path"] = path
    env["Http_Query"] = query
    return env


class _ForkProtocol(ProcessProtocol):
    """Collects stdout as the body; stderr goes to the function log, line by line."""

    def __init__(self, watchdog: "Watchdog", body: bytes) -> None:
        self.watchdog = watchdog
        self.body = body
        self.stdout: list[bytes] = []
        self.size = 0
        self.overflow = False
        self.stderr_tail: list[str] = []
        self.instance = f"{watchdog.name}-fork"
        self.stderr = LineBuffer(self._stderr_line)
        self.done: Deferred[tuple[int | None, int | None]] = Deferred()
        self.pid: int | None = None

    def connectionMade(self) -> None:
        self.pid = self.transport.pid
        self.instance = f"{self.watchdog.name}-{self.pid}"
        if self.body:
            self.transport.write(self.body)
        self.transport.closeStdin()

    def _stderr_line(self, text: str) -> None:
        self.watchdog.sink.emit(self.instance, "stderr", text)
        self.stderr_tail.append(text)
        del self.stderr_tail[:-STDERR_TAIL]

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == 1:
            self.size += len(data)
            if self.size > MAX_OUTPUT:
                if not self.overflow:
                    self.overflow = True
                    self.stdout.clear()
                    if self.pid is not None:
                        signal_group(self.pid, signal.SIGKILL)
                return
            self.stdout.append(data)
        elif childFD == 2:
            self.stderr.feed(data)

    def childConnectionLost(self, childFD: int) -> None:
        return None

    def processEnded(self, reason: Failure) -> None:
        self.stderr.close()
        result = exit_of(reason)
        group_gone(self.watchdog.reactor, self.pid).addCallback(
            lambda _: self.done.callback(result))


class _ForkResource(Resource):
    isLeaf = True

    def __init__(self, watchdog: "Watchdog") -> None:
        super().__init__()
        self.watchdog = watchdog

    def render(self, request: Request) -> object:
        self.watchdog.handle(request)
        return NOT_DONE_YET


class Watchdog:
    """The loopback listener of one fork-mode function; ``spec`` is read per request,
    so an update takes effect on the next request without a restart."""

    def __init__(self, reactor: IReactorProcess, spec: FunctionSpec, executable_argv: Callable[[], Sequence[str]],
                 env: Callable[[], Mapping[str, str]], cwd: str, sink: LogSink,
                 oom: Callable[[int | None, Sequence[str]], bool] | None = None) -> None:
        self.reactor = reactor
        self.spec = spec
        self.name = spec.name
        self.executable_argv = executable_argv
        self.env = env
        self.cwd = cwd
        self.sink = sink
        #: tells whether an exit was the memory limit (see faastwist.providers.limits)
        self.oom = oom
        self.oom_kills = 0
        self.running: dict[int, _ForkProtocol] = {}
        self.inflight = 0
        self.served = 0
        self._port = None
        self._limit: DeferredSemaphore | None = None
        self.upstream: Upstream | None = None

    def listen(self) -> Upstream:
        site = Site(_ForkResource(self))
        site.noisy = False
        site.displayTracebacks = False
        site.log = lambda request: None   # the gate keeps the access log
        self._port = self.reactor.listenTCP(0, site, interface=LOOPBACK)
        port = self._port.getHost().port
        self.upstream = Upstream("http", LOOPBACK, port, f"{LOOPBACK}:{port}")
        return self.upstream

    def set_spec(self, spec: FunctionSpec) -> None:
        self.spec = spec
        self._limit = None

    @property
    def limit(self) -> DeferredSemaphore | None:
        """maxReplica, when set, bounds the processes running at once (others queue)."""
        if self._limit is None and self.spec.max_replica > 0:
            self._limit = DeferredSemaphore(self.spec.max_replica)
        return self._limit

    def handle(self, request: Request) -> None:
        body = request.content.read() if request.content is not None else b""
        spec = self.spec
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        limit = self.limit
        started = self.reactor.seconds()
        if limit is None:
            self._run(request, spec, body, started, gone)
            return
        limit.acquire().addCallback(
            lambda token: self._run(request, spec, body, started, gone, token))

    def _run(self, request: Request, spec: FunctionSpec, body: bytes, started: float,
             gone: list[bool], token: DeferredSemaphore | None = None) -> None:
        def release(result: object) -> object:
            if token is not None:
                token.release()
            return result
        if gone:
            release(None)
            return
        remaining = max(spec.timeout - (self.reactor.seconds() - started), 0.001)
        protocol = _ForkProtocol(self, body)
        env = dict(self.env())
        env.update(header_env(request))
        argv = list(self.executable_argv())
        try:
            self.reactor.spawnProcess(protocol, argv[0], argv, env=env, path=self.cwd)
        except OSError as exc:
            release(None)
            self._answer(request, gone, 500, f"cannot start {spec.command[0]}: {exc}\n")
            return
        assert protocol.pid is not None
        pid = protocol.pid
        self.running[pid] = protocol
        self.inflight += 1
        timed_out: list[bool] = []

        def on_timeout() -> None:
            timed_out.append(True)
            signal_group(pid, signal.SIGKILL)
        timer: IDelayedCall = self.reactor.callLater(remaining, on_timeout)
        request.notifyFinish().addErrback(lambda _: self._abandon(pid))

        def answer(code: int, data: bytes | str, kind: str = DEFAULT_CONTENT_TYPE) -> None:
            self._answer(request, gone, code, data, kind)

        def finished(result: tuple[int | None, int | None]) -> None:
            self.running.pop(pid, None)
            self.inflight -= 1
            self.served += 1
            if timer.active():
                timer.cancel()
            code, sig = result
            out_of_memory = (code != 0 and self.oom is not None
                             and self.oom(code, protocol.stderr_tail))
            if out_of_memory:
                self.oom_kills += 1
            if protocol.overflow:
                answer(500, f"function {self.name} wrote more than {MAX_OUTPUT} bytes to "
                            f"stdout; the process was killed\n")
            elif out_of_memory:
                answer(500, f"function {self.name} ran out of memory (limitMemory "
                            f"{spec.limit_memory}); the process was ended\n")
            elif timed_out:
                answer(504, f"function {self.name} timed out after {spec.timeout:g}s\n")
            elif code == 0:
                answer(200, b"".join(protocol.stdout),
                       spec.env.get("content_type", DEFAULT_CONTENT_TYPE))
            else:
                why = f"exit code {code}" if sig is None else f"signal {sig}"
                tail = "\n".join(protocol.stderr_tail)
                answer(500, f"function {self.name} failed ({why})\n{tail}\n")
        protocol.done.addCallback(finished).addBoth(release)

    def _abandon(self, pid: int) -> None:
        """The client went away: the process's answer has nowhere to go."""
        if pid in self.running:
            signal_group(pid, signal.SIGKILL)

    @staticmethod
    def _answer(request: Request, gone: list[bool], code: int, body: bytes | str,
                content_type: str = DEFAULT_CONTENT_TYPE) -> None:
        if gone or request.finished:
            return
        data = body.encode() if isinstance(body, str) else body
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", content_type.encode())
        request.setHeader(b"Content-Length", str(len(data)).encode())
        request.write(data)
        request.finish()

    def pids(self) -> list[int]:
        return list(self.running)

    def stop(self, grace: float) -> Deferred[None]:
        """Stop listening, then end the processes still running (SIGTERM, SIGKILL)."""
        waits: list[Deferred] = []
        if self._port is not None:
            waits.append(maybeDeferred(self._port.stopListening))
            self._port = None
        for pid, protocol in list(self.running.items()):
            signal_group(pid, signal.SIGTERM)
            kill = self.reactor.callLater(grace, signal_group, pid, signal.SIGKILL)
            waits.append(protocol.done.addBoth(lambda r, k=kill: k.cancel() if k.active() else r))
        return DeferredList(waits, consumeErrors=True).addCallback(lambda _: None)


class ForkRuntime:
    """One fork-mode function: a loopback watchdog, listening while the function runs."""

    def __init__(self, spec: FunctionSpec, tuning: Tuning,
                 make_watchdog: Callable[[FunctionSpec], Watchdog],
                 on_change: Callable[[str, int], None] = lambda name, count: None) -> None:
        self.spec = spec
        self.tuning = tuning
        self.make_watchdog = make_watchdog
        self.on_change = on_change
        self.watchdog: Watchdog | None = None
        self.lease: StaticLease | None = None
        self.stopped = True

    def deploy(self) -> Deferred[None]:
        """Ready at once; the loopback listener opens on the first request (a node with
        10,000 fork-mode functions would otherwise hold 10,000 listening sockets, and
        open them all while it starts)."""
        self.stopped = False
        self.on_change(self.spec.name, 1)
        return succeed(None)

    def _lease(self) -> StaticLease:
        if self.lease is None:
            self.watchdog = self.make_watchdog(self.spec)
            self.lease = StaticLease(self.watchdog.listen())
        return self.lease

    def start(self) -> Deferred[None]:
        return self.deploy()

    def stop(self) -> Deferred[None]:
        self.stopped = True
        watchdog, self.watchdog, self.lease = self.watchdog, None, None
        if watchdog is None:
            return succeed(None)
        return watchdog.stop(self.tuning.stop_grace)

    def set_spec(self, spec: FunctionSpec) -> None:
        self.update(spec)

    def update(self, spec: FunctionSpec) -> Deferred[None]:
        self.spec = spec
        if self.watchdog is not None:
            self.watchdog.set_spec(spec)
        return succeed(None)

    def acquire(self) -> UpstreamLease:
        if self.stopped:
            raise NoCapacity(f"function {self.spec.name} is stopped", 5)
        return self._lease()   # no accounting: the watchdog bounds its own processes

    def tick(self) -> None:
        return None

    def observe(self) -> Observation:
        if self.stopped:
            return Observation(self.spec.name, self.spec.digest(), stopped=True)
        ext = {}
        if self.watchdog is not None and self.watchdog.oom_kills:
            ext["oomKills"] = str(self.watchdog.oom_kills)
            ext["reason"] = "OOM"
        return Observation(self.spec.name, self.spec.digest(), event=Event.READY,
                           message="fork mode: one process per request", ext_data=ext)

    def pids(self) -> list[int]:
        return self.watchdog.pids() if self.watchdog is not None else []
