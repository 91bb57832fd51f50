"""What every exchange of one gate shares: routes, provider, pool, clock, metrics.

The transports hand it to each ``Exchange``; the service owns it. It imports nothing
from the transports or the exchange (exchanges register themselves in ``deadlines``).
"""

from __future__ import annotations

from typing import Protocol as TypingProtocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from faastwist.gate.asynccall import Enqueuer
from faastwist.gate.access import TokenBucket
from faastwist.gate.accesslog import AccessLog
from faastwist.gate.decisions import CallIds
from faastwist.gate.routes import Route, RouteTable
from faastwist.gate.upstream import UpstreamPool
from faastwist.metrics import FunctionCounts, Metrics
from faastwist.model.fsm import FunctionStatus, State
from faastwist.model.spec import FunctionSpec, RateLimit
from faastwist.providers.base import Provider, StaticLease, Upstream

log = Logger(namespace="faastwist.gate")


class Expiring(TypingProtocol):
    """An exchange as the timeout sweep sees it."""

    name: str

    def timed_out(self) -> None: ...


#: How often the gate looks for requests past their function's timeout: a timeout
#: fires at most this late.
TICK = 0.05
#: The bound on one request to OpenFaaS's API through the gate (a followed log stream)
SYSTEM_TIMEOUT = 24 * 3600.0


class GateContext:
    """What every exchange shares: routes, provider, pool, config, metrics, counters."""

    def __init__(self, routes: RouteTable, provider: Provider, pool: UpstreamPool,
                 clock: IReactorTime, metrics: Metrics, max_body_size: int, keep_alive: bool = True,
                 access_log: bool = False, call_ids: CallIds | None = None,
                 access: AccessLog | None = None) -> None:
        self.routes = routes
        self.provider = provider
        self.pool = pool
        self.clock = clock
        self.metrics = metrics
        self.max_body_size = max_body_size
        self.keep_alive = keep_alive
        self.access_log = access_log
        #: where access-log lines go (buffered to the log's stream, or log events)
        self.access = access if access is not None else AccessLog(clock)
        self.call_ids = call_ids or CallIds()
        self.queue: Enqueuer | None = None  # when async invocations are on
        self.draining = False
        self.inflight = 0
        self._idle_waiters: list[Deferred[None]] = []
        #: function -> (its rateLimit, its token bucket on this node)
        self.buckets: dict[str, tuple[RateLimit, TokenBucket]] = {}
        #: exchange -> when its function's timeout passes; swept every TICK seconds
        #: (cheaper per request than a DelayedCall each: no heap, no cancel)
        self.deadlines: dict[Expiring, float] = {}
        self._sweeper: LoopingCall | None = None
        #: where /system/* and /healthz go (the admin listener), None: not served
        self.system: Route | None = None
        self.system_lease: StaticLease | None = None
        self.namespace = b""

    def serve_system(self, host: str, port: int, namespace: str = "",
                     timeout: float = SYSTEM_TIMEOUT, scheme: str = "http") -> None:
        """Relay OpenFaaS's API paths to the admin listener at ``host:port`` (through the
        same exchange as a function call: streamed, bounded, one code path for both
        transports); invocation paths name ``namespace`` as ``/function/f.namespace``."""
        host_header = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.system = Route(FunctionSpec(name="openfaas-api", timeout=timeout),
                            FunctionStatus(name="openfaas-api", state=State.ACTIVE))
        self.system_lease = StaticLease(Upstream(scheme, host, port, host_header))
        self.namespace = namespace.encode()

    def start(self) -> None:
        """Start the timeout sweep and the access log's flush timer (GateService does
        this)."""
        self.access.start()
        if self._sweeper is None:
            self._sweeper = LoopingCall(self._expire)
            self._sweeper.clock = self.clock
            self._sweeper.start(TICK, now=False)

    def stop(self) -> None:
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        self._sweeper = None
        self.access.stop()  # the last lines, once every exchange is over

    def _expire(self) -> None:
        if not self.deadlines:
            return
        now = self.clock.seconds()
        late = [e for e, deadline in self.deadlines.items() if deadline <= now]
        for exchange in late:
            try:
                exchange.timed_out()
            except Exception:  # a bug must not stop the sweep for every other request
                log.failure("timing out a request to {function} failed",
                            function=exchange.name)
                self.deadlines.pop(exchange, None)

    def wait_idle(self) -> Deferred[None]:
        """Fires when no exchange is in flight."""
        d: Deferred[None] = Deferred()
        if self.inflight == 0:
            d.callback(None)
        else:
            self._idle_waiters.append(d)
        return d

    def _ended(self) -> None:
        self.inflight -= 1
        if self.inflight == 0 and self._idle_waiters:
            waiters, self._idle_waiters = self._idle_waiters, []
            for d in waiters:
                d.callback(None)

    def function_metrics(self, route: Route) -> FunctionCounts:
        """The function's plain counters (kept by name, not per route version, so the
        in-flight count survives a route change); cached on the route."""
        found = route.cache.counts
        if found is None:
            found = route.cache.counts = self.metrics.gate.counts(route.name)
        return found
