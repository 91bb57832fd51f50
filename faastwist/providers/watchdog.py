"""One process per request, behind an HTTP listener: OpenFaaS's classic watchdog.

The gate only speaks HTTP to upstreams, so a command run per request gets a small
twisted.web listener that, per request, runs it with the request body on stdin and the
head as ``Http_*`` environment variables, and answers with its stdout. A non-zero exit
is a 500 carrying the output; the function's timeout kills the process group (504),
``exec_timeout``/``write_timeout`` too (500, as the classic watchdog answers);
``max_inflight`` refuses with 429. Fork-mode functions run it inside the gate;
envProcess replicas run classicwatchdog.py instead, inside their sandbox.
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
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IProcessTransport
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
from faastwist.model.watchdogenv import (
    DEFAULT_CONTENT_TYPE,
    WatchdogSettings,
    header_env,
    read_settings,
)
from faastwist.model.spec import FunctionSpec
from faastwist.util.reactor import IFullReactor, tcp_address

log = Logger()

MAX_OUTPUT = 64 * 2**20   # a response body is held in memory: a runaway writer is cut off


class _QuietSite(Site):
    """No access log line per fork request: the gate keeps the access log."""

    def log(self, request: object) -> None:
        return None


def _cancelling(result: object, kill: IDelayedCall) -> object:
    """``result``, the SIGKILL that was to follow it called off."""
    if kill.active():
        kill.cancel()
        return None
    return result


class _ForkProtocol(ProcessProtocol):
    """Collects stdout as the body (stderr too with combine_output); other stderr goes
    to the function log, line by line."""

    transport: IProcessTransport  # spawned before connectionMade

    def __init__(self, watchdog: "Watchdog", body: bytes, combine: bool) -> None:
        self.watchdog = watchdog
        self.body = body
        self.combine = combine
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
        if childFD == 1 or (childFD == 2 and self.combine):
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
    """An HTTP listener that runs a command per request. ``settings`` are read per
    request, so an update takes effect on the next request without a restart. In the
    process provider it serves fork-mode functions in-process."""

    def __init__(self, reactor: IFullReactor, settings: WatchdogSettings,
                 launch: Callable[[Mapping[str, str]], tuple[Sequence[str], Mapping[str, str]]],
                 env: Callable[[], Mapping[str, str]], cwd: str, sink: LogSink,
                 oom: Callable[[int | None, Sequence[str]], bool] | None = None) -> None:
        self.reactor = reactor
        self.settings = settings
        self.spec: FunctionSpec | None = None
        self.name = settings.name
        #: (the function's environment) -> (argv, the launch's own environment): the
        #: request's variables reach only the function's process (sandbox.py)
        self.launch = launch
        self.env = env
        self.cwd = cwd
        self.sink = sink
        #: tells whether an exit was the memory limit (see faastwist.providers.limits)
        self.oom = oom
        self.oom_kills = 0
        self.running: dict[int, _ForkProtocol] = {}
        self.inflight = 0
        self.admitted = 0
        self.served = 0
        self._port: IListeningPort | None = None
        self._limit: DeferredSemaphore | None = None
        self.upstream: Upstream | None = None

    def listen(self, port: int = 0, interface: str = LOOPBACK) -> Upstream:
        site = _QuietSite(_ForkResource(self), timeout=self.settings.read_timeout or None)
        site.noisy = False
        site.displayTracebacks = False
        # listenTCP is annotated ServerFactory[P]; Site's parameter does not line up
        self._port = self.reactor.listenTCP(port, site, interface=interface)  # type: ignore[arg-type]
        port = tcp_address(self._port).port
        self.upstream = Upstream("http", interface, port, f"{interface}:{port}")
        return self.upstream

    def set_spec(self, spec: FunctionSpec) -> None:
        self.spec = spec
        self.set_settings(read_settings(spec, classic=False))

    def set_settings(self, settings: WatchdogSettings) -> None:
        self.settings = settings
        self._limit = None

    @property
    def limit(self) -> DeferredSemaphore | None:
        """Fork mode's maxReplica, when set, bounds the processes running at once
        (others queue); max_inflight refuses instead (429)."""
        if self._limit is None and self.settings.queue > 0:
            self._limit = DeferredSemaphore(self.settings.queue)
        return self._limit

    def _log(self, text: str) -> None:
        self.sink.emit(self.name, "stderr", text)

    def handle(self, request: Request) -> None:
        settings = self.settings
        gone: list[bool] = []
        if settings.max_inflight and self.admitted >= settings.max_inflight:
            self._answer(request, gone, 429, f"Concurrent request limit exceeded. Max "
                                             f"concurrent requests: {settings.max_inflight}\n")
            return
        body = request.content.read() if request.content is not None else b""
        self.admitted += 1
        request.notifyFinish().addBoth(self._left, gone)
        limit = self.limit
        started = self.reactor.seconds()
        if limit is None:
            self._run(request, settings, body, started, gone)
            return
        limit.acquire().addCallback(
            lambda token: self._run(request, settings, body, started, gone, token))

    def _left(self, result: object, gone: list[bool]) -> None:
        self.admitted -= 1
        if isinstance(result, Failure):
            gone.append(True)

    def _run(self, request: Request, settings: WatchdogSettings, body: bytes, started: float,
             gone: list[bool], token: DeferredSemaphore | None = None) -> None:
        def release(result: object) -> object:
            if token is not None:
                token.release()
            return result
        if gone:
            release(None)
            return
        deadline, why = settings.kill_after
        remaining = max(deadline - (self.reactor.seconds() - started), 0.001)
        protocol = _ForkProtocol(self, body, settings.combine_output)
        env = dict(self.env())
        env.update(header_env(request.requestHeaders.getAllRawHeaders(), request.method,
                              request.uri, request.getHeader(b"host") or b"", len(body)))
        argv, launch_env = self.launch(env)
        argv = list(argv)
        if settings.classic:
            self._log("Forking fprocess.")
        try:
            self.reactor.spawnProcess(protocol, argv[0], argv, env=dict(launch_env),
                                      path=self.cwd)
        except (OSError, ValueError) as exc:   # ValueError: a NUL in an argument
            release(None)
            self._answer(request, gone, 500, f"cannot start {argv[-1]}: {exc}\n")
            return
        assert protocol.pid is not None
        pid = protocol.pid
        self.running[pid] = protocol
        self.inflight += 1
        timed_out: list[bool] = []

        def on_timeout() -> None:
            timed_out.append(True)
            if settings.classic:
                self._log(f"Killing process: {why} of {deadline:g}s exceeded")
            signal_group(pid, signal.SIGKILL)
        timer: IDelayedCall = self.reactor.callLater(remaining, on_timeout)
        request.notifyFinish().addErrback(lambda _: self._abandon(pid))

        def finished(result: tuple[int | None, int | None]) -> None:
            self.running.pop(pid, None)
            self.inflight -= 1
            self.served += 1
            if timer.active():
                timer.cancel()
            output = b"".join(protocol.stdout)
            code, sig = result
            status = 200
            out_of_memory = (code != 0 and self.oom is not None
                             and self.oom(code, protocol.stderr_tail))
            if out_of_memory:
                self.oom_kills += 1
            if protocol.overflow:
                status, output = 500, (f"function {self.name} wrote more than {MAX_OUTPUT} "
                                       f"bytes to stdout; the process was killed\n").encode()
            elif out_of_memory:
                limit = self.spec.limit_memory if self.spec is not None else "?"
                status, output = 500, (f"function {self.name} ran out of memory (limitMemory "
                                       f"{limit}); the process was ended\n").encode()
            elif timed_out and why == "timeout":
                status, output = 504, (f"function {self.name} timed out after "
                                       f"{deadline:g}s\n").encode()
            elif timed_out:
                status = 500
                output += f"function {self.name} killed: {why} of {deadline:g}s exceeded\n".encode()
            elif code != 0:
                status = 500
                how = f"exit code {code}" if sig is None else f"signal {sig}"
                tail = "" if settings.combine_output else "\n".join(protocol.stderr_tail) + "\n"
                output += f"function {self.name} failed ({how})\n{tail}".encode()
            if settings.write_debug:
                self._log(output[:4096].decode("utf-8", "replace").rstrip("\n"))
            self._answer(request, gone, status, output, settings.content_type)
            if settings.classic:
                self._log(f"Wrote {len(output)} Bytes - Duration: "
                          f"{self.reactor.seconds() - started:.6f}s")
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
            waits.append(protocol.done.addBoth(_cancelling, kill))
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
        #: the last observation and what it was made from: a node reports every
        #: function every pass, and an unchanged answer is then the same object
        self._observed: tuple[FunctionSpec, bool, int, Observation] | None = None

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
        kills = self.watchdog.oom_kills if self.watchdog is not None else 0
        last = self._observed
        if (last is not None and last[0] is self.spec and last[1] == self.stopped
                and last[2] == kills):
            return last[3]
        if self.stopped:
            observation = Observation(self.spec.name, self.spec.digest(), stopped=True)
        else:
            ext = {"oomKills": str(kills), "reason": "OOM"} if kills else {}
            observation = Observation(self.spec.name, self.spec.digest(), event=Event.READY,
                                      message="fork mode: one process per request",
                                      ext_data=ext)
        self._observed = (self.spec, self.stopped, kills, observation)
        return observation

    def pids(self) -> list[int]:
        return self.watchdog.pids() if self.watchdog is not None else []
