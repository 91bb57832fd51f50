"""What the process provider keeps per function: replicas, leases, scaling, failures.

An HTTP-mode function holds a target replica count that follows minReplica, the
autoscaler and scale-from-zero demand; the replicas follow the target. Requests that
find no ready replica wait for one (all waiters share one start) up to the cold start
timeout, then fail with NoCapacity, never "forwarded anyway". A replica that exits is
restarted after an exponential backoff; too many exits in the crash window make the
function report an error until a replica becomes ready again.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Callable, Collection, Mapping

import attrs
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from faastwist.model.fsm import Event
from faastwist.providers.base import NoCapacity, Observation, UpstreamLease
from faastwist.providers.replica import ExitInfo, Replica
from faastwist.model.scaling import autoscaling_on
from faastwist.model.spec import AutoScaleType, FunctionSpec
from faastwist.providers.cpusample import group_cpu_seconds

log = Logger()

#: OpenFaaS's label: an idle function may go to zero (it still starts at one replica)
SCALE_ZERO = "com.openfaas.scale.zero"
CpuMeter = Callable[[Collection[int]], Mapping[int, float]]


@attrs.frozen
class ScaleDecision:
    """The autoscaler's last change of a function's replica count, and why."""

    at: float
    old: int
    new: int
    why: str

    def describe(self) -> str:
        return f"{self.old} -> {self.new}: {self.why}"


@attrs.frozen
class Tuning:
    """The provider's timing knobs (controller config plus internal defaults)."""

    idle_timeout: float = 300.0
    cold_start_timeout: float = 30.0
    stop_grace: float = 10.0
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    crash_window: float = 60.0
    crash_limit: int = 3
    scale_down_delay: float = 30.0   # the highest demand of this long back is kept
    max_replicas: int = 32           # the bound when maxReplica is 0 (unbounded)


ReplicaFactory = Callable[[FunctionSpec, Callable[[Replica], None],
                           Callable[[Replica, ExitInfo], None]], Replica]


def _unscaled(spec: FunctionSpec) -> FunctionSpec:
    """``spec`` without what a scale changes (the bounds, OpenFaaS's scaling labels)."""
    labels = {k: v for k, v in spec.labels.items() if not k.startswith("com.openfaas.scale.")}
    return attrs.evolve(spec, min_replica=0, max_replica=0, labels=labels)


def replica_bounds(spec: FunctionSpec, tuning: Tuning) -> tuple[int, int]:
    """(min, max) replicas: a fixed port fits one replica; max 0 is the provider's cap."""
    upper = 1 if spec.port is not None else (spec.max_replica or tuning.max_replicas)
    return min(spec.min_replica, upper), upper


class ProcessLease:
    """A request's hold on one replica; counts towards in-flight until released."""

    __slots__ = ("upstream", "on_lost", "_runtime", "_replica")

    def __init__(self, runtime: "HttpRuntime", replica: Replica) -> None:
        self.upstream = replica.upstream
        #: set by the request holding the lease: called when the replica dies under it,
        #: so the request ends at once (its connection may be paused by back-pressure,
        #: and a paused connection never reports the upstream's close)
        self.on_lost: Callable[[str], None] | None = None
        self._runtime: HttpRuntime | None = runtime
        self._replica = replica

    def notify_lost(self, callback: Callable[[str], None]) -> None:
        self.on_lost = callback

    def lost(self, why: str) -> None:
        on_lost, self.on_lost = self.on_lost, None
        if on_lost is not None and self._runtime is not None:
            on_lost(why)

    def release(self) -> None:
        runtime, self._runtime = self._runtime, None
        self.on_lost = None
        if runtime is not None:
            runtime.leases.get(self._replica, set()).discard(self)
            runtime.release(self._replica)


class HttpRuntime:
    """One HTTP-mode function: its replicas and everything that decides their number."""

    def __init__(self, spec: FunctionSpec, clock: IReactorTime, tuning: Tuning,
                 factory: ReplicaFactory, on_change: Callable[[str, int], None],
                 cpu_meter: CpuMeter = group_cpu_seconds) -> None:
        self.spec = spec
        self.cpu_meter = cpu_meter
        self.cpu_seen: dict[int, float] = {}   # process group -> CPU seconds at last tick
        self.last_scale: ScaleDecision | None = None
        self.clock = clock
        self.tuning = tuning
        self.factory = factory
        self.on_change = on_change   # (name, ready replicas) after each change
        self.replicas: list[Replica] = []     # current spec, starting or ready
        self.ready: list[Replica] = []        # current spec, ready and taking requests
        self.retiring: list[Replica] = []     # previous spec, serving until a new one is ready
        self.target = 0
        self.stopped = True
        self.settled = False
        self.since = clock.seconds()
        self.waiters: list[tuple[Deferred, IDelayedCall]] = []
        self.exits: deque[tuple[float, ExitInfo]] = deque()
        self.error: ExitInfo | None = None
        self.oom_kills = 0                    # exits past limitMemory, since the deploy
        self.inflight = 0
        self.leases: dict[Replica, set[ProcessLease]] = {}  # the requests on each replica
        self.peak = 0
        self.requests = 0
        self.last_activity = self.since
        self.last_tick = self.since
        self.history: deque[tuple[float, int]] = deque()
        self._rr = 0
        self._restart_call: IDelayedCall | None = None
        self._stopping: list[Deferred[None]] = []
        self._configure()

    def _configure(self) -> None:
        self.digest = self.spec.digest()
        self.minimum, self.maximum = replica_bounds(self.spec, self.tuning)
        self.scale_value = float(self.spec.auto_scale_value)
        self.kind = self.spec.auto_scale_type
        #: com.openfaas.scale.factor 0: the count stays at min (scale from zero still works)
        self.autoscale = autoscaling_on(self.spec)
        self.by_concurrency = self.kind is AutoScaleType.CONCURRENCY and self.autoscale
        zero = self.spec.labels.get(SCALE_ZERO, "").strip().lower() in ("true", "1")
        #: OpenFaaS starts a scale-to-zero function at one replica and idles it down
        self.initial = max(self.minimum, 1) if zero and self.maximum else self.minimum

    # -- operator actions -------------------------------------------------------------
    def deploy(self) -> Deferred[None]:
        self.stopped = False
        self._begin()
        return succeed(None)

    def start(self) -> Deferred[None]:
        return self.deploy()

    def _begin(self) -> None:
        now = self.clock.seconds()
        self.since = self.last_activity = now
        self.settled = self.minimum == 0
        self.exits.clear()
        self.error = None
        self.oom_kills = 0
        self.history.clear()
        self.target = self.initial
        self._fill()
        self._report()

    def stop(self) -> Deferred[None]:
        """Scale to zero and stay there; fires when every child is gone."""
        self.stopped = True
        self.target = 0
        self._cancel_restart()
        self._fail_waiters(f"function {self.spec.name} is stopped", 5)
        for replica in self.replicas + self.retiring:
            self._stop_replica(replica)
        self.replicas, self.ready, self.retiring = [], [], []
        self._report()
        return self._all_stopped()

    def set_spec(self, spec: FunctionSpec) -> None:
        """Record ``spec`` without touching the replicas (they are about to stop)."""
        self.spec = spec
        self._configure()

    def update(self, spec: FunctionSpec) -> Deferred[None]:
        """Roll to ``spec``: the old replicas serve until a new one is ready (a fixed
        port cannot be shared, so then the old ones go first). A change of the replica
        bounds alone (a scale) restarts nothing: the count follows the new bounds."""
        old, self.spec = self.spec, spec
        self._configure()
        if self.stopped:
            return succeed(None)
        if _unscaled(old) == _unscaled(spec):
            target = max(self.minimum, min(self.target, self.maximum))
            if self.minimum < old.min_replica:
                target = self.minimum   # scaled down: idle replicas go now
            if target != self.target:
                self._decide(target, f"replica bounds changed to {self.minimum}-"
                                     f"{self.maximum} (a scale request or an alert)")
            self.settled = len(self.ready) >= self.minimum or self.settled
            self._report()
            return succeed(None)
        if old.port is not None or spec.port is not None:
            keep_target = self.target
            stopped = self.stop()
            self.stopped = False
            self._begin()
            self.target = max(self.minimum, min(keep_target, self.maximum))
            self._fill()
            return stopped
        for replica in self.replicas:
            if replica.ready and not replica.draining:
                self.retiring.append(replica)
            else:
                self._stop_replica(replica)
        self.replicas, self.ready = [], []
        keep_target = self.target
        self._begin()
        self.target = max(self.minimum, min(keep_target, self.maximum))
        self._fill()
        return succeed(None)

    def _all_stopped(self) -> Deferred[None]:
        pending = [d for d in self._stopping if not d.called]
        return DeferredList(pending).addCallback(lambda _: None)

    # -- replicas -------------------------------------------------------------------------
    def _live(self) -> list[Replica]:
        return [r for r in self.replicas if r.alive and not r.draining]

    def _fill(self) -> None:
        if self.stopped or self._restart_call is not None:
            return
        for _ in range(self.target - len(self._live())):
            replica = self.factory(self.spec, self._on_ready, self._on_exit)
            self.replicas.append(replica)
            replica.start()

    def _want(self, count: int) -> None:
        count = min(count, self.maximum)
        if count > self.target:
            self.target = count
            self._fill()

    def _shrink(self, count: int) -> None:
        self.target = count
        live = self._live()
        excess = len(live) - count
        if excess <= 0:
            return
        # starting ones first, then the least busy
        live.sort(key=lambda r: (r.ready, r.inflight))
        for replica in live[:excess]:
            self._drain(replica)

    def _drain(self, replica: Replica) -> None:
        replica.draining = True
        if replica in self.ready:
            self.ready.remove(replica)
            self._report()
        if replica.inflight == 0:
            self._stop_replica(replica)

    def _stop_replica(self, replica: Replica) -> None:
        replica.draining = True
        if replica.alive:
            done = replica.stop(self.tuning.stop_grace)
            self._stopping.append(done)
            done.addBoth(self._forget_stop, done)

    def _forget_stop(self, result: object, done: Deferred) -> object:
        if done in self._stopping:
            self._stopping.remove(done)
        return result

    def _on_ready(self, replica: Replica) -> None:
        if replica not in self.replicas or replica.draining:
            return
        self.ready.append(replica)
        self.error = None
        if len(self.ready) >= self.minimum:
            self.settled = True
        for old in self.retiring:
            self._drain(old)
        self.retiring = [r for r in self.retiring if r.alive and r.inflight > 0]
        self._report()
        waiters, self.waiters = self.waiters, []
        for waiter, timer in waiters:
            if timer.active():
                timer.cancel()
            waiter.callback(self._lease(self._next_ready()))

    def _on_exit(self, replica: Replica, info: ExitInfo) -> None:
        for lease in list(self.leases.pop(replica, ())):
            lease.lost(f"replica {replica.instance} exited ({info.describe()})")
        current = replica in self.replicas
        for group in (self.replicas, self.ready, self.retiring):
            if replica in group:
                group.remove(replica)
        self._report()
        if info.expected or not current or self.stopped:
            return
        now = self.clock.seconds()
        if info.oom:
            self.oom_kills += 1
        self.exits.append((now, info))
        while self.exits and now - self.exits[0][0] > self.tuning.crash_window:
            self.exits.popleft()
        count = len(self.exits)
        log.warn("function {name}: replica {instance} {how} ({count} in {window:g}s)",
                 name=self.spec.name, instance=replica.instance, how=info.describe(),
                 count=count, window=self.tuning.crash_window)
        if count >= self.tuning.crash_limit:
            self.error = info
            self._fail_waiters(self.error_message(), self._retry_after())
            self._report()
        delay = min(self.tuning.backoff_base * 2 ** (count - 1), self.tuning.backoff_max)
        self._cancel_restart()
        self._restart_call = self.clock.callLater(delay, self._restart)

    def _restart(self) -> None:
        self._restart_call = None
        self._fill()

    def _cancel_restart(self) -> None:
        if self._restart_call is not None and self._restart_call.active():
            self._restart_call.cancel()
        self._restart_call = None

    def _report(self) -> None:
        """Tell the provider something observable changed (ready count, error)."""
        self.on_change(self.spec.name, len(self.ready))

    # -- requests -------------------------------------------------------------------------
    def _next_ready(self) -> Replica:
        pool = self.ready or [r for r in self.retiring if r.ready and not r.draining]
        replica = pool[self._rr % len(pool)]
        self._rr += 1
        return replica

    def _lease(self, replica: Replica) -> ProcessLease:
        replica.inflight += 1
        self.inflight += 1
        if self.inflight > self.peak:
            self.peak = self.inflight
            if self.by_concurrency:
                wanted = min(math.ceil(self.inflight / self.scale_value), self.maximum)
                if wanted > self.target:
                    self._decide(wanted, f"capacity: {self.inflight} in flight, target "
                                         f"{self.scale_value:g} per replica")
        lease = ProcessLease(self, replica)
        self.leases.setdefault(replica, set()).add(lease)
        return lease

    def acquire(self) -> UpstreamLease | Deferred[UpstreamLease]:
        if self.stopped:
            raise NoCapacity(f"function {self.spec.name} is stopped", 5)
        self.requests += 1
        self.last_activity = self.clock.seconds()
        if self.ready or any(r.ready and not r.draining for r in self.retiring):
            return self._lease(self._next_ready())
        self._want(1)
        if self.error is not None:
            raise NoCapacity(self.error_message(), self._retry_after())
        return self._wait()

    def release(self, replica: Replica) -> None:
        replica.inflight -= 1
        self.inflight -= 1
        self.last_activity = self.clock.seconds()
        if replica.draining and replica.inflight == 0:
            self._stop_replica(replica)
            if replica in self.retiring:
                self.retiring.remove(replica)

    def _wait(self) -> Deferred[UpstreamLease]:
        waiter: Deferred[UpstreamLease] = Deferred(self._drop_waiter)
        timer = self.clock.callLater(self.tuning.cold_start_timeout, self._expire, waiter)
        self.waiters.append((waiter, timer))
        return waiter

    def _drop_waiter(self, waiter: Deferred) -> None:
        for entry in self.waiters:
            if entry[0] is waiter:
                self.waiters.remove(entry)
                if entry[1].active():
                    entry[1].cancel()
                return

    def _expire(self, waiter: Deferred) -> None:
        self.waiters = [entry for entry in self.waiters if entry[0] is not waiter]
        waiter.errback(NoCapacity(
            f"function {self.spec.name} did not become ready within "
            f"{self.tuning.cold_start_timeout:g}s", self._retry_after()))

    def _fail_waiters(self, message: str, retry_after: int) -> None:
        waiters, self.waiters = self.waiters, []
        for waiter, timer in waiters:
            if timer.active():
                timer.cancel()
            waiter.errback(NoCapacity(message, retry_after))

    def _retry_after(self) -> int:
        if self._restart_call is not None and self._restart_call.active():
            return max(1, math.ceil(self._restart_call.getTime() - self.clock.seconds()))
        return max(1, math.ceil(min(self.tuning.cold_start_timeout, 30.0) / 6))

    # -- periodic --------------------------------------------------------------------------
    def _load(self, elapsed: float) -> tuple[float, str]:
        """The load since the last tick in the unit of the scaling type, and its name."""
        if self.kind is AutoScaleType.CONCURRENCY:
            return float(self.peak), "in flight"
        if self.kind is AutoScaleType.CPU:
            groups = [r.pid for r in self.replicas + self.retiring
                      if r.alive and r.pid is not None]
            now = self.cpu_meter(groups)
            used = sum(max(0.0, seconds - self.cpu_seen.get(group, seconds))
                       for group, seconds in now.items())
            self.cpu_seen = dict(now)
            return used / max(elapsed, 1e-3) * 1000, "millicores"
        return self.requests / max(elapsed, 1e-3), "req/s"

    def _decide(self, count: int, why: str) -> None:
        """Change the target to ``count``; the decision shows in extData and the log."""
        old = self.target
        if count == old:
            return
        self.last_scale = ScaleDecision(self.clock.seconds(), old, count, why)
        log.info("function {name}: scaling from {old} to {new} replicas: {why}",
                 name=self.spec.name, old=old, new=count, why=why)
        if count > old:
            self._want(count)
        else:
            self._shrink(count)

    def tick(self) -> None:
        """Autoscale and idle-to-zero, from the load seen since the last tick."""
        now = self.clock.seconds()
        elapsed, self.last_tick = now - self.last_tick, now
        if self.stopped:
            return
        load, unit = self._load(elapsed)
        demand = math.ceil(load / self.scale_value) if self.autoscale else 0
        self.requests, self.peak = 0, self.inflight
        self.history.append((now, demand))
        while self.history and now - self.history[0][0] > self.tuning.scale_down_delay:
            self.history.popleft()
        desired = max(d for _, d in self.history)
        why = (f"{self.kind.value}: {load:.1f} {unit}, target {self.scale_value:g} per "
               f"replica (highest need of the last {self.tuning.scale_down_delay:g}s: "
               f"{desired})")
        if self.minimum == 0 and self.target > 0:
            idle = (self.inflight == 0 and not self.waiters
                    and now - self.last_activity >= self.tuning.idle_timeout)
            if idle:
                self.history.clear()
                desired = 0
                why = f"idle for {now - self.last_activity:g}s, scaling to zero"
            else:
                desired = max(desired, 1)
        desired = max(self.minimum, min(desired, self.maximum))
        if desired != self.target:
            self._decide(desired, why)

    # -- reporting --------------------------------------------------------------------------
    def error_message(self) -> str:
        assert self.error is not None
        last = self.error.stderr[-1] if self.error.stderr else "no stderr output"
        return (f"function {self.spec.name} is crash-looping: {self.error.describe()} "
                f"{len(self.exits)} times within {self.tuning.crash_window:g}s; last stderr: "
                f"{last}")

    def observe(self) -> Observation:
        name, digest = self.spec.name, self.digest
        if self.stopped:
            return Observation(name, digest, stopped=True)
        previous = any(r.ready and not r.draining for r in self.retiring)
        if self.error is not None:
            ext = {"exitCode": "" if self.error.code is None else str(self.error.code),
                   "stderr": "\n".join(self.error.stderr), "restarts": str(len(self.exits))}
            if self.error.signal is not None:
                ext["signal"] = str(self.error.signal)
            if self.error.oom:
                ext["reason"] = "OOM"
            if self.oom_kills:
                ext["oomKills"] = str(self.oom_kills)
            return Observation(name, digest, event=Event.ERROR, message=self.error_message(),
                               ext_data=ext, serving_previous=previous)
        ready = len(self.ready)
        if ready >= self.minimum:
            self.settled = True
        if self.settled:
            message = (f"{ready} of {self.target} replicas ready" if self.target
                       else "scaled to zero; the first request starts a replica")
            ext = {"replicas": str(ready), "desired": str(self.target)}
            if self.last_scale is not None:
                ext["lastScale"] = self.last_scale.describe()
            if self.oom_kills:
                ext.update(oomKills=str(self.oom_kills), reason="OOM")
            return Observation(name, digest, event=Event.READY, message=message,
                               ext_data=ext)
        waited = self.clock.seconds() - self.since
        message = f"{ready} of {self.minimum} replicas ready after {waited:.0f}s"
        if waited < self.tuning.cold_start_timeout:
            return Observation(name, digest, event=None, message=message,
                               serving_previous=previous)
        return Observation(name, digest, event=Event.PENDING, message=message,
                           serving_previous=previous)

    def pids(self) -> list[int]:
        return [r.pid for r in self.replicas + self.retiring if r.alive and r.pid is not None]
