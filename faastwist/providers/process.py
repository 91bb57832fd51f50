"""The process provider: functions as local child processes, for one machine.

OpenFaaS's provider-and-watchdog idea inside faastwist: the same FSM, API and gate as
with Knative, with local processes behind the Provider interface. State lives in
memory: after a restart the provider runs nothing, ``observe`` says so, and the
reconciler deploys again (children of a gate that was killed are swept at start).

Relative paths in a function's ``command`` are taken from the gate's working folder
(``make run`` runs in the repository root). The children run as the function user in
their own folder with an environment of their own (``faastwist.providers.isolation``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Collection, Generator, Mapping, Sequence, Union

import attrs

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, fail, inlineCallbacks, succeed
from twisted.internet.task import LoopingCall, deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

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
from faastwist.providers.logfile import FunctionLog, read_lines
from faastwist.providers.classicwatchdog import SETTINGS_VAR
from faastwist.providers.launch import Launcher
from faastwist.providers.sandbox import Network
from faastwist.providers.secretfiles import SecretFiles
from faastwist.providers.secretsync import SecretSync
from faastwist.model.watchdogenv import fprocess_argv, read_settings, settings_json
from faastwist.store.base import StoreError
from faastwist.store.secrets import Secrets, reveal_deferred
from faastwist.providers.orphans import GATE_PID_VAR, OWNER_VAR, kill_orphans, owner_token
from faastwist.providers.isolation import Tools
from faastwist.providers.limits import (Cgroup, Cgroups, Limits, detect_cgroups, limits_for,
                                        looks_oom)
from faastwist.providers.replica import ExitInfo, Replica
from faastwist.providers.runtime import HttpRuntime, Tuning
from faastwist.providers.watchdog import ForkRuntime, Watchdog
from faastwist.providers.registry import PROCESS, ProviderContext, ProviderParts
from faastwist.model.spec import AutoScaleType, FunctionSpec, ProcessMode, SpecError
from faastwist.providers.cpusample import group_cpu_seconds
from faastwist.util.ports import free_port
from faastwist.util.users import Identity
from faastwist.util.reactor import IFullReactor

log = Logger()

#: Runtimes observed per reactor turn (10,000 at once held the gate ~15 ms).
OBSERVE_CHUNK = 1000

LOG_MAX_BYTES = 10 * 2**20
SCALE_INTERVAL = 1.0
#: how often a node looks for secrets changed since it wrote them into running
#: functions' folders (one keys-only etcd read; OpenFaaS on Kubernetes: the kubelet's
#: sync, about a minute); a secret updated through this node's API is written at once
SECRET_REFRESH = 5.0

Runtime = Union[HttpRuntime, ForkRuntime]


class ProcessProvider(Service):
    """Runs the controller's functions as children of this process (an IService:
    stopping it ends every child, and its Deferred fires when all are gone)."""

    kind = "process"
    name = "process-provider"

    def __init__(self, config: ProcessConfig, controller: str, reactor: IFullReactor,
                 metrics: Metrics | None = None, *, workdir: str | None = None,
                 base_env: Mapping[str, str] | None = None, tuning: Tuning | None = None,
                 wall_clock: Callable[[], float] = time.time,
                 log_max_bytes: int = LOG_MAX_BYTES,
                 scale_interval: float = SCALE_INTERVAL,
                 identity: Identity | None = None,
                 stage_roots: Sequence[str] | None = None,
                 reserved_ports: Collection[int] | Callable[[], Collection[int]] = (),
                 tools: Tools | None = None,
                 cgroups: Cgroups | None | str = "detect", sandbox: bool = True,
                 secret_refresh: float = SECRET_REFRESH) -> None:
        self.config = config
        self.controller = controller
        self.reactor = reactor
        self.metrics = metrics or Metrics()
        self.workdir = os.path.abspath(workdir or os.getcwd())
        node_env = os.environ if base_env is None else base_env
        self.data_dir = os.path.abspath(config.data_dir)
        if stage_roots is None:
            stage_roots = [config.config_dir] if config.config_dir else []
        self.token = owner_token(controller, config.data_dir)
        #: who the children run as (never root; a uid per function) and in which
        #: sandbox: faastwist.providers.launch
        self.launcher = Launcher(config, self.token, workdir=self.workdir,
                                 node_path=node_env.get("PATH", os.defpath),
                                 identity=identity, stage_roots=tuple(stage_roots),
                                 tools=tools, sandbox=sandbox)
        self.identity = self.launcher.identity
        self.path = self.launcher.path
        #: the node's own ports (or a callable giving them now): a spec's port may not
        #: be one of them
        self.reserved_ports = reserved_ports
        #: cgroups for limits (v2, else v1: found at start), or None: rlimits apply
        self.cgroups: Cgroups | None = None
        self._detect_cgroups = cgroups == "detect"
        if not isinstance(cgroups, str):
            self.cgroups = cgroups
        self._cgroup_serial = 0
        self.tuning = tuning or Tuning(idle_timeout=config.idle_timeout,
                                      cold_start_timeout=config.cold_start_timeout)
        self.wall_clock = wall_clock
        self.log_dir = Path(config.data_dir) / "logs"
        self.log_max_bytes = log_max_bytes
        self.scale_interval = scale_interval
        self.functions_dir = self.launcher.functions_dir
        self.runtimes: dict[str, Runtime] = {}
        self._cpu_sample: dict[int, float] | None = None
        self.logs: dict[str, FunctionLog] = {}
        self.threads = ThreadPool(minthreads=0, maxthreads=2, name="process-provider")
        self._loop: LoopingCall | None = None
        #: called with a function's name when its observation changes on its own (ready,
        #: crash loop); wire it to Reconciler.kick so the FSM follows at once instead of
        #: at the next syncInterval
        self.on_change: Callable[[str], None] | None = None
        self._announced: dict[str, tuple] = {}
        #: name -> (a runtime's observation, it with user and limits): see observe_runtime
        self._described: dict[str, tuple[Observation, Observation]] = {}
        #: where the functions' secrets come from (the node sets it); None: no secrets
        self.secrets: Secrets | None = None
        self.secret_refresh = secret_refresh
        self._secret_loop: LoopingCall | None = None
        self.secret_files = SecretFiles(Path(self.functions_dir) / ".secrets",
                                        self.launcher.identity_of)
        self.secret_sync = SecretSync(self.reactor, self.threads, self.secret_files,
                                      self.runtimes)

    # -- service ---------------------------------------------------------------------
    def startService(self) -> None:
        super().startService()
        kill_orphans(self.token)
        self.launcher.start()
        self.secret_files.prepare()
        # the function user must not read the logs of any function
        self.log_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.log_dir, 0o700)
        if self._detect_cgroups:
            self.cgroups = detect_cgroups(self.token)
        log.info("functions run as {user} in {folder}; sandbox: {sandbox}; limits by {how}",
                 user=("a uid each from process.uidRange " + self.config.uid_range
                       if self.launcher.uid_range is not None
                       else f"{self.identity.user}:{self.identity.group}"),
                 folder=self.functions_dir, sandbox=self.launcher.sandbox.describe(),
                 how=f"cgroup {self.cgroups.kind}" if self.cgroups is not None else "rlimits")
        self.threads.start()
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self.reactor
        self._loop.start(self.scale_interval, now=False)
        self._secret_loop = LoopingCall(self.refresh_secrets)
        self._secret_loop.clock = self.reactor
        self._secret_loop.start(self.secret_refresh, now=False)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        for loop in (self._loop, self._secret_loop):
            if loop is not None and loop.running:
                loop.stop()
        stops = [runtime.stop() for runtime in self.runtimes.values()]
        count = sum(len(runtime.pids()) for runtime in self.runtimes.values())
        if count:
            log.info("stopping {count} function processes", count=count)

        def finish(_: object) -> None:
            for function_log in self.logs.values():
                function_log.file.close()
            self.threads.stop()
            self.secret_files.clear()
            if self.cgroups is not None:
                self.cgroups.close()   # the replicas' cgroups (and v1's node parents)
            self.launcher.finish()
        return DeferredList(stops, consumeErrors=True).addCallback(finish)

    def _tick(self) -> None:
        self._cpu_sample = None   # one /proc pass per tick, for every cpu-scaled function
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

    def home(self, name: str) -> str:
        """The function's HOME and working folder (a tmpfs of its own in the sandbox)."""
        return self.launcher.folders(name).home

    def _own(self) -> dict[str, str]:
        """The markers every function process carries (orphans.py)."""
        return {OWNER_VAR: self.token, GATE_PID_VAR: str(os.getpid())}

    def _env(self, spec: FunctionSpec, port: int | None) -> dict[str, str]:
        own = {"FAASTWIST_FUNCTION": spec.name, **self._own()}
        return self.launcher.environment(spec, port, own, self._secrets_folder(spec))

    def _secrets_folder(self, spec: FunctionSpec) -> str | None:
        return self.secret_files.path(spec.name) if spec.secrets else None

    def _launch(self, spec: FunctionSpec, program: list[str], env: Mapping[str, str],
                cgroup: Cgroup | None, network: Network | None = None
                ) -> tuple[list[str], dict[str, str]]:
        """(argv, launch environment) of one process of ``spec`` (launch.py)."""
        procs = cgroup.procs if cgroup is not None else None
        return self.launcher.launch(spec, program, env, dict(self.limits(spec).rlimits),
                                    procs, self._own(), self._secrets_folder(spec),
                                    network)

    def _program(self, spec: FunctionSpec, env: dict[str, str]) -> list[str]:
        """What runs inside the sandbox: the staged command, or (envProcess) the classic
        watchdog with its checked settings."""
        staging = self.launcher.prepare(spec)
        if not spec.watchdog:
            return list(staging.argv)
        env["fprocess"] = spec.env_process
        env[SETTINGS_VAR] = settings_json(read_settings(spec, classic=True))
        return self.launcher.watchdog_program()

    def limits(self, spec: FunctionSpec) -> Limits:
        return limits_for(spec, self.cgroups)

    def _cgroup(self, spec: FunctionSpec, name: str) -> Cgroup | None:
        limits = self.limits(spec)
        if self.cgroups is None or (limits.memory is None and limits.cpu is None):
            return None
        try:
            return self.cgroups.create(name, limits)
        except OSError as exc:
            log.warn("function {name}: cannot create cgroup {cgroup}: {error}",
                     name=spec.name, cgroup=name, error=str(exc))
            return None

    def _oom_judge(self, spec: FunctionSpec, cgroup: Cgroup | None) -> Callable[..., bool]:
        """Tells whether an exit was the memory limit (cgroup: it counted an OOM kill
        since the last look; rlimit: the exit and stderr say so)."""
        seen = [cgroup.oom_kills() if cgroup is not None else 0]
        limits = self.limits(spec)

        def judge(code: int | None, stderr: Sequence[str]) -> bool:
            if cgroup is not None:
                kills = cgroup.oom_kills()
                was, seen[0] = seen[0], kills
                return kills > was
            return looks_oom(code, tuple(stderr), limits)
        return judge

    def _make_replica(self, spec: FunctionSpec, on_ready: Callable[[Replica], None],
                      on_exit: Callable[[Replica, ExitInfo], None]) -> Replica:
        port = spec.port if spec.port is not None else free_port()
        env = self._env(spec, port)
        self._cgroup_serial += 1
        cgroup = self._cgroup(spec, f"{spec.name}-{self._cgroup_serial}")
        judge = self._oom_judge(spec, cgroup)

        def classify(info: ExitInfo) -> ExitInfo:
            oom = judge(info.code, info.stderr)
            if cgroup is not None:
                self.reactor.callLater(3.0, cgroup.remove)
            return attrs.evolve(info, oom=oom) if oom else info
        argv, launch_env = self._launch(spec, self._program(spec, env), env, cgroup)
        return Replica(self.reactor, spec.name, argv, launch_env,
                       self.home(spec.name), port, spec.readiness_path, self._log(spec.name),
                       on_ready, on_exit, classify=classify)

    def _make_watchdog(self, spec: FunctionSpec) -> Watchdog:
        watchdog: Watchdog
        cgroup = self._cgroup(spec, spec.name)

        def current() -> FunctionSpec:
            if watchdog.spec is None:  # set before the watchdog forks anything
                raise RuntimeError(f"watchdog for {spec.name} has no spec yet")
            return watchdog.spec

        def env() -> dict[str, str]:
            return self._env(current(), None)

        def launch(env: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
            spec = current()
            return self._launch(spec, list(self.launcher.prepare(spec).argv), env, cgroup,
                                self.launcher.network)
        self.launcher.prepare(spec)   # the folders exist before the first request
        watchdog = Watchdog(self.reactor, read_settings(spec, classic=False), launch, env,
                            self.home(spec.name), self._log(spec.name),
                            oom=self._oom_judge(spec, cgroup))
        watchdog.spec = spec
        return watchdog

    def _new_runtime(self, spec: FunctionSpec) -> Runtime:
        if spec.mode is ProcessMode.FORK:
            return ForkRuntime(spec, self.tuning, self._make_watchdog, self._changed)
        return HttpRuntime(spec, self.reactor, self.tuning, self._make_replica, self._changed,
                           cpu_meter=self._cpu_meter)

    def _cpu_meter(self, groups: Collection[int]) -> Mapping[int, float]:
        """CPU seconds of ``groups`` from this tick's one pass over /proc (made for the
        groups of every cpu-scaled function at the first ask)."""
        if self._cpu_sample is None:
            wanted = [pid for runtime in self.runtimes.values()
                      if getattr(runtime, "kind", None) is AutoScaleType.CPU
                      for pid in runtime.pids()]
            self._cpu_sample = group_cpu_seconds([*wanted, *groups])
        return {group: self._cpu_sample[group] for group in groups
                if group in self._cpu_sample}

    def _changed(self, name: str, ready: int) -> None:
        self.metrics.replicas[name] = ready
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
        PROCESS.check_spec(spec)
        if spec.port is not None and (spec.min_replica > 1 or spec.max_replica > 1):
            raise SpecError("port", "a fixed port fits one replica: leave port unset (each "
                                    "replica then gets a free port as $PORT) or set "
                                    "minReplica and maxReplica to at most 1")
        reserved = (self.reserved_ports() if callable(self.reserved_ports)
                    else self.reserved_ports)
        if spec.port is not None and spec.port in reserved:
            raise SpecError("port", f"{spec.port} is one of this node's own ports (gate, "
                                    f"admin, etcd, queue); a function may not claim it")
        self.launcher.check(spec)
        if spec.watchdog:
            read_settings(spec, classic=True)
            try:
                program = fprocess_argv(spec.env_process)[0]
            except ValueError as exc:
                raise SpecError("envProcess", str(exc)) from None
            try:
                self.launcher.plan(attrs.evolve(spec, command=(program,), env_process=""))
            except SpecError as exc:
                raise SpecError("envProcess", exc.problem) from None
            return
        if spec.mode is ProcessMode.FORK:
            read_settings(spec, classic=False)
        self.launcher.plan(spec)

    @inlineCallbacks
    def observe(self, names: Sequence[str] | None = None
                ) -> Generator[Deferred[Any], Any, dict[str, Observation]]:
        """Every runtime's observation (or those of ``names``), ``OBSERVE_CHUNK`` per
        reactor turn: OpenFaaS's list of 10,000 functions asks for all of them."""
        wanted = list(self.runtimes if names is None else names)
        observed: dict[str, Observation] = {}
        for start in range(0, len(wanted), OBSERVE_CHUNK):
            if start:
                yield deferLater(self.reactor, 0, lambda: None)
            for name in wanted[start:start + OBSERVE_CHUNK]:
                runtime = self.runtimes.get(name)   # gone meanwhile: not observed
                if runtime is not None:
                    observed[name] = self.observe_runtime(runtime)
        return observed

    def observe_runtime(self, runtime: Runtime) -> Observation:
        """The runtime's observation plus who the function runs as and which limits
        apply (extData); what this node reports in a cluster too."""
        observation = runtime.observe()
        if observation.stopped:
            return observation
        last = self._described.get(observation.name)
        if last is not None and last[0] is observation:  # unchanged: the same answer
            return last[1]
        extra = {**self.launcher.describe(observation.name),
                 **self.limits(runtime.spec).describe()}
        described = attrs.evolve(observation, ext_data={**extra, **observation.ext_data})
        self._described[observation.name] = (observation, described)
        return described

    def _secrets_ready(self, spec: FunctionSpec) -> Deferred[None]:
        """Write the secrets ``spec`` names into its folder before replicas start; a
        secret that does not exist is a ProviderRejected (the function fails, saying so)."""
        if not spec.secrets:
            if self.secret_files.path(spec.name) is not None:
                return self.secret_sync.remove(spec.name)
            return succeed(None)

        def rejected(failure: Failure) -> None:
            failure.trap(StoreError)
            raise ProviderRejected(f"secrets: {failure.getErrorMessage()}")
        d = reveal_deferred(self.secrets, spec.secrets, revisions=True)
        d.addCallback(lambda found: self.secret_sync.write(spec.name, found))
        return d.addCallbacks(lambda _: None, rejected)

    def refresh_secrets(self) -> Deferred[None]:
        """Rewrite the files of running functions whose secrets changed (secretsync.py)."""
        return self.secret_sync.refresh(self.secrets)

    def deploy(self, spec: FunctionSpec) -> Deferred[None]:
        return self._secrets_ready(spec).addCallback(lambda _: self._deploy(spec))

    def _deploy(self, spec: FunctionSpec) -> Deferred[None]:
        self._announced.pop(spec.name, None)
        runtime, stopping = self._runtime_for(spec)
        changed = runtime.spec != spec
        if changed:
            runtime.update(spec)
        if changed or spec.mode is not ProcessMode.FORK:
            # a fork-mode deploy starts no process: no line per function (10,000 lines
            # were ~18% of a 10,000-function node's start-up CPU); the local converger
            # logs how many it deployed
            log.info("deploying {name} ({mode}): {command}", name=spec.name,
                     mode=spec.mode.value,
                     command=" ".join(spec.command) or f"watchdog: {spec.env_process}")
        return _after(stopping, runtime.deploy)

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
        stopping = runtime.stop() if runtime is not None else succeed(None)

        self.secret_sync.forget(name)

        def remove_logs(_: object) -> None:
            self.launcher.remove(name)
            self.launcher.forget(name)
            self.secret_files.remove(name)
            function_log = self.logs.pop(name, None)
            if function_log is None:
                function_log = FunctionLog(name, self.log_dir / f"{name}.log", self.reactor,
                                           self.log_max_bytes, self.wall_clock)
            function_log.file.remove()
            self.metrics.replicas.pop(name, None)
            self._described.pop(name, None)
        return stopping.addCallback(remove_logs)

    def acquire(self, spec: FunctionSpec) -> UpstreamLease | Deferred[UpstreamLease]:
        runtime = self.runtimes.get(spec.name)
        if runtime is not None:
            return runtime.acquire()
        if not self.running:
            raise NoCapacity(f"function {spec.name} is not running on this node", 5)
        # active in the store (the gate asks only for active routes) but not deployed
        # here yet: the node restarted and the reconciler's first pass has not reached
        # it (with 10,000 functions that pass takes a while). Deploy it now, like a
        # cold start; the pass then finds it running and has nothing to do.
        return self.deploy(spec).addCallback(lambda _: self._acquire_deployed(spec.name))

    def _acquire_deployed(self, name: str) -> UpstreamLease | Deferred[UpstreamLease]:
        runtime = self.runtimes.get(name)
        if runtime is None:
            raise NoCapacity(f"function {name} was deleted", 5)
        return runtime.acquire()

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

    def runs_here(self, name: str) -> bool:
        """Whether this node runs ``name`` or kept logs of it (logs are node-local)."""
        if name in self.runtimes or name in self.logs:
            return True
        path = self.log_dir / f"{name}.log"
        return path.exists() or path.with_name(path.name + ".1").exists()

    def follow_logs(self, name: str, on_line: Callable[[LogLine], None]) -> Callable[[], None]:
        return self._log(name).follow(on_line)

    # -- introspection (tests, /debug) -----------------------------------------------------
    def pids(self, name: str | None = None) -> list[int]:
        runtimes = self.runtimes.values() if name is None else (
            [self.runtimes[name]] if name in self.runtimes else [])
        return sorted(pid for runtime in runtimes for pid in runtime.pids())


def _after(first: Deferred[None] | None, then: Callable[[], Deferred[None]]) -> Deferred[None]:
    if first is None:
        return then()
    return first.addCallback(lambda _: then())


def build(context: ProviderContext) -> ProviderParts:
    """The registry's factory (registry.PROCESS)."""
    config = context.config
    provider = ProcessProvider(config.process, config.name, context.reactor, context.metrics,
                               reserved_ports=context.reserved_ports)
    return ProviderParts(provider, logs=provider, changes=provider, secrets=provider)
