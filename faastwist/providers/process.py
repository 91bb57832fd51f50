"""The process provider: functions as local child processes, for one machine.

OpenFaaS's provider-and-watchdog idea inside faastwist: the same FSM, API and gate as
with Knative, with local processes behind the Provider interface. State lives in
memory: after a restart the provider runs nothing, ``observe`` says so, and the
reconciler deploys again (children of a gate that was killed are swept at start).

Relative paths in a function's ``command`` are taken from the gate's working folder
(``make run`` runs in the repository root), which is also the children's working folder.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence, Union

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, fail, maybeDeferred, succeed
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.internet.interfaces import IReactorProcess

from faastwist.config import ProcessConfig
from faastwist.metrics import Metrics
from faastwist.providers.base import (
    LogLine,
    NoCapacity,
    Observation,
    ProviderError,
    ProviderRejected,
    UpstreamLease,
)
from faastwist.providers.secretfiles import SECRETS_DIR_VAR, SecretFiles, find_bwrap
from faastwist.store.base import StoreError
from faastwist.store.secrets import SecretStore, reveal_deferred
from faastwist.providers.logfile import FunctionLog, read_lines
from faastwist.providers.orphans import GATE_PID_VAR, OWNER_VAR, kill_orphans, owner_token
from faastwist.providers.replica import ExitInfo, Replica, group_wrapper
from faastwist.providers.runtime import HttpRuntime, Tuning
from faastwist.providers.watchdog import ForkRuntime, Watchdog
from faastwist.providers.watchdogd import DEFAULT_TIMEOUT_VAR, fprocess_argv, watchdog_argv
from faastwist.providers.watchdogenv import read_settings
from faastwist.model.spec import FunctionSpec, ProcessMode, SpecError
from faastwist.util.ports import free_port

log = Logger()

LOG_MAX_BYTES = 10 * 2**20
SCALE_INTERVAL = 1.0
# variables of the gate's own supervisor that must not leak into a function
_PRIVATE_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID",
                "LISTEN_FDNAMES", OWNER_VAR, GATE_PID_VAR)

Runtime = Union[HttpRuntime, ForkRuntime]


class ProcessProvider(Service):
    """Runs the controller's functions as children of this process (an IService:
    stopping it ends every child, and its Deferred fires when all are gone)."""

    kind = "process"
    name = "process-provider"

    def __init__(self, config: ProcessConfig, controller: str, reactor: IReactorProcess,
                 metrics: Metrics | None = None, *, workdir: str | None = None,
                 base_env: Mapping[str, str] | None = None, tuning: Tuning | None = None,
                 wall_clock: Callable[[], float] = time.time,
                 log_max_bytes: int = LOG_MAX_BYTES,
                 scale_interval: float = SCALE_INTERVAL, sandbox: bool = True) -> None:
        self.config = config
        self.controller = controller
        self.reactor = reactor
        self.metrics = metrics or Metrics()
        self.workdir = os.path.abspath(workdir or os.getcwd())
        env = dict(os.environ if base_env is None else base_env)
        for key in _PRIVATE_ENV:
            env.pop(key, None)
        self.base_env = env
        self.tuning = tuning or Tuning(idle_timeout=config.idle_timeout,
                                      cold_start_timeout=config.cold_start_timeout)
        self.wall_clock = wall_clock
        self.log_dir = Path(config.data_dir) / "logs"
        self.log_max_bytes = log_max_bytes
        self.scale_interval = scale_interval
        self.token = owner_token(controller, config.data_dir)
        self.wrapper = group_wrapper()
        self.runtimes: dict[str, Runtime] = {}
        self.logs: dict[str, FunctionLog] = {}
        self.threads = ThreadPool(minthreads=0, maxthreads=2, name="process-provider")
        self._loop: LoopingCall | None = None
        #: called with a function's name when its observation changes on its own (ready,
        #: crash loop); wire it to Reconciler.kick so the FSM follows at once instead of
        #: at the next syncInterval
        self.on_change: Callable[[str], None] | None = None
        self._announced: dict[str, tuple] = {}
        # requests for functions not deployed yet (the first pass after a restart)
        self._awaiting: dict[str, list[tuple[Deferred, object]]] = {}
        #: where the functions' secrets come from (the node sets it); None: no secrets
        self.secrets: SecretStore | None = None
        self.secret_files = SecretFiles(Path(config.data_dir) / "secrets",
                                        find_bwrap() if sandbox else None)

    # -- service ---------------------------------------------------------------------
    def startService(self) -> None:
        super().startService()
        kill_orphans(self.token)
        if self.secret_files.bwrap is not None:
            self.secret_files.prepare()
        self.threads.start()
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self.reactor
        self._loop.start(self.scale_interval, now=False)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        for name in list(self._awaiting):
            self._fail_awaiting(name, "the gate is shutting down")
        stops = [runtime.stop() for runtime in self.runtimes.values()]
        count = sum(len(runtime.pids()) for runtime in self.runtimes.values())
        if count:
            log.info("stopping {count} function processes", count=count)

        def finish(_: object) -> None:
            for function_log in self.logs.values():
                function_log.file.close()
            self.threads.stop()
        return DeferredList(stops, consumeErrors=True).addCallback(finish)

    def _tick(self) -> None:
        for runtime in list(self.runtimes.values()):
            try:
                runtime.tick()
            except Exception:
                log.failure("autoscaler tick of {name} failed", name=runtime.spec.name)

    # -- building blocks --------------------------------------------------------------
    def _log(self, name: str) -> FunctionLog:
        function_log = self.logs.get(name)
        if function_log is None:
            function_log = FunctionLog(name, self.log_dir / f"{name}.log", self.reactor,
                                       self.log_max_bytes, self.wall_clock)
            self.logs[name] = function_log
        return function_log

    def _env(self, spec: FunctionSpec, port: int | None) -> dict[str, str]:
        env = dict(self.base_env)
        env["PYTHONUNBUFFERED"] = "1"   # a Python function's prints reach the log at once
        env.update(spec.env)
        if port is not None:
            env["PORT"] = str(port)
        env["FAASTWIST_FUNCTION"] = spec.name
        _, secrets_dir = self.secret_files.sandbox(spec.name, bool(spec.secrets))
        if secrets_dir is not None:
            env[SECRETS_DIR_VAR] = secrets_dir
        env[OWNER_VAR] = self.token
        env[GATE_PID_VAR] = str(os.getpid())
        return env

    def _argv(self, spec: FunctionSpec, env: Mapping[str, str]) -> list[str]:
        """The command with its program found now (the children's PATH, the workdir)."""
        program = resolve_program(spec.command[0], env.get("PATH", os.defpath), self.workdir)
        return [program or spec.command[0], *spec.command[1:]]

    def _make_replica(self, spec: FunctionSpec, on_ready: Callable[[Replica], None],
                      on_exit: Callable[[Replica, ExitInfo], None]) -> Replica:
        port = spec.port if spec.port is not None else free_port()
        env = self._env(spec, port)
        if spec.watchdog:
            # each replica is a watchdog process that runs envProcess once per request
            env["fprocess"] = spec.env_process
            env[DEFAULT_TIMEOUT_VAR] = repr(spec.timeout)
            argv = watchdog_argv(env)
        else:
            argv = self._argv(spec, env)
        argv = self.secret_files.sandbox(spec.name, bool(spec.secrets))[0] + argv
        return Replica(self.reactor, spec.name, argv, env, self.workdir,
                       port, spec.readiness_path, self._log(spec.name), on_ready, on_exit,
                       wrapper=self.wrapper)

    def _make_watchdog(self, spec: FunctionSpec) -> Watchdog:
        watchdog: Watchdog

        def env() -> dict[str, str]:
            return self._env(watchdog.spec, None)

        def argv() -> list[str]:
            sandbox = self.secret_files.sandbox(watchdog.spec.name, bool(watchdog.spec.secrets))
            return sandbox[0] + self._argv(watchdog.spec, env())
        watchdog = Watchdog(self.reactor, read_settings(spec, classic=False), argv, env,
                            self.workdir, self._log(spec.name), wrapper=self.wrapper)
        watchdog.spec = spec
        return watchdog

    def _new_runtime(self, spec: FunctionSpec) -> Runtime:
        if spec.mode is ProcessMode.FORK:
            return ForkRuntime(spec, self.tuning, self._make_watchdog, self._changed)
        return HttpRuntime(spec, self.reactor, self.tuning, self._make_replica, self._changed)

    def _changed(self, name: str, ready: int) -> None:
        self.metrics.replicas.labels(name).set(ready)
        runtime = self.runtimes.get(name)
        if runtime is None or self.on_change is None:
            return
        observation = runtime.observe()
        if observation.event is None:
            return
        key = (observation.digest, observation.stopped, observation.event)
        if self._announced.get(name) != key:
            self._announced[name] = key
            self.reactor.callLater(0, self._announce, name)

    def _announce(self, name: str) -> None:
        if self.on_change is not None and name in self.runtimes:
            try:
                self.on_change(name)
            except Exception:
                log.failure("on_change for {name} failed", name=name)

    def _runtime_for(self, spec: FunctionSpec) -> tuple[Runtime, Deferred[None] | None]:
        """The function's runtime, replaced when the mode changed (the old one stops)."""
        runtime = self.runtimes.get(spec.name)
        if runtime is not None and runtime.spec.mode is spec.mode:
            return runtime, None
        stopping = runtime.stop() if runtime is not None else None
        runtime = self._new_runtime(spec)
        self.runtimes[spec.name] = runtime
        return runtime, stopping

    # -- Provider ---------------------------------------------------------------------
    def check_spec(self, spec: FunctionSpec) -> None:
        spec.check_for_provider("process")
        if spec.port is not None and (spec.min_replica > 1 or spec.max_replica > 1):
            raise SpecError("port", "a fixed port fits one replica: leave port unset (each "
                                    "replica then gets a free port as $PORT) or set "
                                    "minReplica and maxReplica to at most 1")
        env = self._env(spec, None)
        if spec.watchdog:
            read_settings(spec, classic=True)
            try:
                program = fprocess_argv(spec.env_process)[0]
            except ValueError as exc:
                raise SpecError("envProcess", str(exc)) from None
            field = "envProcess"
        else:
            if spec.mode is ProcessMode.FORK:
                read_settings(spec, classic=False)
            program, field = spec.command[0], "command"
        if resolve_program(program, env.get("PATH", os.defpath), self.workdir) is None:
            where = (f"relative to {self.workdir}" if "/" in program
                     else "on PATH")
            raise SpecError(field, f"{program!r}: no such executable {where}")

    def observe(self, names: Sequence[str] | None = None) -> Deferred[dict[str, Observation]]:
        wanted = self.runtimes if names is None else [n for n in names if n in self.runtimes]
        return succeed({name: self.runtimes[name].observe() for name in wanted})

    def _secrets_ready(self, spec: FunctionSpec) -> Deferred[None]:
        """Write the secrets ``spec`` names into its folder before replicas start; a
        secret that does not exist is a ProviderRejected (the function fails, saying so)."""
        if not spec.secrets:
            if self.secret_files.path(spec.name) is not None:
                return deferToThreadPool(self.reactor, self.threads,
                                         self.secret_files.remove, spec.name)
            return succeed(None)

        def rejected(failure: Failure) -> None:
            failure.trap(StoreError)
            raise ProviderRejected(f"secrets: {failure.getErrorMessage()}")
        d = reveal_deferred(self.secrets, spec.secrets)
        d.addCallback(lambda values: deferToThreadPool(
            self.reactor, self.threads, self.secret_files.write, spec.name, values))
        return d.addCallbacks(lambda _: None, rejected)

    def deploy(self, spec: FunctionSpec) -> Deferred[None]:
        return self._secrets_ready(spec).addCallback(lambda _: self._deploy(spec))

    def _deploy(self, spec: FunctionSpec) -> Deferred[None]:
        self._announced.pop(spec.name, None)
        runtime, stopping = self._runtime_for(spec)
        if runtime.spec != spec:
            runtime.update(spec)
        log.info("deploying {name} ({mode}): {command}", name=spec.name, mode=spec.mode.value,
                 command=" ".join(spec.command))
        return _after(stopping, runtime.deploy).addCallback(self._deployed, spec.name)

    def _deployed(self, result: None, name: str) -> None:
        """Hand the requests that arrived before the deploy to the function."""
        runtime = self.runtimes.get(name)
        for waiter, timer in self._awaiting.pop(name, []):
            if timer.active():
                timer.cancel()
            if runtime is None:
                waiter.errback(NoCapacity(f"function {name} is not running", 5))
            else:
                maybeDeferred(runtime.acquire).chainDeferred(waiter)
        return result

    def update(self, spec: FunctionSpec) -> Deferred[None]:
        return self._secrets_ready(spec).addCallback(lambda _: self._update(spec))

    def _update(self, spec: FunctionSpec) -> Deferred[None]:
        self._announced.pop(spec.name, None)
        runtime = self.runtimes.get(spec.name)
        if runtime is None:
            return self._deploy(spec)
        was_stopped = runtime.stopped
        runtime, stopping = self._runtime_for(spec)
        if stopping is not None:
            return _after(stopping, lambda: succeed(None) if was_stopped else runtime.deploy())
        return runtime.update(spec)

    def stop(self, spec: FunctionSpec) -> Deferred[None]:
        self._announced.pop(spec.name, None)
        runtime, stopping = self._runtime_for(spec)
        runtime.set_spec(spec)  # what runs now stops: no point rolling to the new spec
        return _after(stopping, runtime.stop)

    def start(self, spec: FunctionSpec) -> Deferred[None]:
        return self._secrets_ready(spec).addCallback(lambda _: self._start(spec))

    def _start(self, spec: FunctionSpec) -> Deferred[None]:
        self._announced.pop(spec.name, None)
        runtime, stopping = self._runtime_for(spec)
        if runtime.spec != spec:
            runtime.update(spec)
        return _after(stopping, runtime.start)

    def delete(self, name: str) -> Deferred[None]:
        runtime = self.runtimes.pop(name, None)
        self._announced.pop(name, None)
        self._fail_awaiting(name, "deleted")
        stopping = runtime.stop() if runtime is not None else succeed(None)

        def remove_logs(_: object) -> None:
            function_log = self.logs.pop(name, None)
            if function_log is None:
                function_log = FunctionLog(name, self.log_dir / f"{name}.log", self.reactor,
                                           self.log_max_bytes, self.wall_clock)
            function_log.file.remove()
            self.secret_files.remove(name)
            try:
                self.metrics.replicas.remove(name)
            except KeyError:
                pass
        return stopping.addCallback(remove_logs)

    def acquire(self, spec: FunctionSpec) -> UpstreamLease | Deferred[UpstreamLease]:
        runtime = self.runtimes.get(spec.name)
        if runtime is not None:
            return runtime.acquire()
        if not self.running:
            raise NoCapacity(f"function {spec.name} is not running on this node", 5)
        # active in the store but not deployed here yet (the gate restarted and the
        # reconciler's first pass is still to come): hold it like a cold start
        return self._await_deploy(spec.name)

    def _await_deploy(self, name: str) -> Deferred[UpstreamLease]:
        def cancel(waiter: Deferred) -> None:
            entries = self._awaiting.get(name, [])
            for entry in entries:
                if entry[0] is waiter:
                    entries.remove(entry)
                    if entry[1].active():
                        entry[1].cancel()
                    break

        def expire() -> None:
            entries = self._awaiting.get(name, [])
            for entry in list(entries):
                if entry[0] is waiter:
                    entries.remove(entry)
            waiter.errback(NoCapacity(
                f"function {name} was not deployed on this node within "
                f"{self.tuning.cold_start_timeout:g}s", 5))
        waiter: Deferred[UpstreamLease] = Deferred(cancel)
        timer = self.reactor.callLater(self.tuning.cold_start_timeout, expire)
        self._awaiting.setdefault(name, []).append((waiter, timer))
        return waiter

    def _fail_awaiting(self, name: str, why: str) -> None:
        for waiter, timer in self._awaiting.pop(name, []):
            if timer.active():
                timer.cancel()
            waiter.errback(NoCapacity(f"function {name}: {why}", 5))

    def check(self) -> Deferred[None]:
        if not self.running:
            return fail(ProviderError("the process provider is not running"))
        return succeed(None)

    # -- LogSource ----------------------------------------------------------------------
    def read_logs(self, name: str, tail: int | None = None,
                  since: float | None = None) -> Deferred[list[LogLine]]:
        function_log = self._log(name)
        function_log.file.flush()
        return deferToThreadPool(self.reactor, self.threads, read_lines, name,
                                 function_log.file.path, tail, since)

    def follow_logs(self, name: str, on_line: Callable[[LogLine], None]) -> Callable[[], None]:
        return self._log(name).follow(on_line)

    # -- introspection (tests, /debug) -----------------------------------------------------
    def pids(self, name: str | None = None) -> list[int]:
        runtimes = self.runtimes.values() if name is None else (
            [self.runtimes[name]] if name in self.runtimes else [])
        return sorted(pid for runtime in runtimes for pid in runtime.pids())


def resolve_program(program: str, path: str, workdir: str) -> str | None:
    """The executable ``program`` names: a path (relative to ``workdir``) or a name on
    ``path``; None when there is no such executable."""
    if "/" in program:
        full = os.path.join(workdir, os.path.expanduser(program))
        return full if os.path.isfile(full) and os.access(full, os.X_OK) else None
    return shutil.which(program, path=path)


def _after(first: Deferred[None] | None, then: Callable[[], Deferred[None]]) -> Deferred[None]:
    if first is None:
        return then()
    return first.addCallback(lambda _: then())
