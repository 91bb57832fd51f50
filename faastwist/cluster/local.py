"""Every node converges its own process replicas from the route table, leader or not.

The route table is fed by the etcd watch, so a function made active (or stopped, or
updated, or deleted) on any node reaches this node within one watch event; this
service then makes the local provider match it with the same decision table as the
reconciler (``plan``), and publishes what the provider observes as this node's report.
The FSM itself is moved by the leader alone, from every node's reports.

A stop or delete first waits for the requests in flight to finish (up to the
function's timeout): the route already turned inactive (new requests get 503), so
nothing answers 502 because a replica was stopped under it.

Readiness: after start, the node is not ready until every function that was active in
the store has been deployed here and observed ready (or failed).
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger

from faastwist.cluster.reports import Report
from faastwist.cluster.session import NodeSession
from faastwist.lifecycle.reconciler import PROVIDER_CALLS, Action, plan
from faastwist.model.fsm import Event, State
from faastwist.store.base import FunctionRecord

log = Logger()

DRAIN_POLL = 0.05
#: Functions looked at per reactor turn by a full pass.
CHUNK = 100
#: Functions a "not yet serving" answer names.
NAMED = 10


class NotServing(Exception):
    """The node has not yet deployed what it must serve."""


class LocalConverger(Service):
    name = "local-converger"

    def __init__(self, routes: Any, provider: Any, session: NodeSession, clock: Any,
                 interval: float) -> None:
        self.routes = routes
        self.provider = provider
        self.session = session
        self.clock = clock
        self.interval = interval
        self._dirty: set[str] = set()
        self._busy: set[str] = set()
        self._loop: LoopingCall | None = None
        self._owed: set[str] | None = None  # active at start, not yet served here
        self._deploys = 0  # deploys of the current full pass

    # -- service ---------------------------------------------------------------------
    def startService(self) -> None:
        super().startService()
        self._owed = {name for name in self.routes.names()
                      if (route := self.routes.lookup(name)) is not None and route.active}
        self.routes.subscribe(self._route_changed)
        self._loop = LoopingCall(self.converge_all)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=True)

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    @inlineCallbacks
    def converge_all(self):
        """Look at every function, ``CHUNK`` per reactor turn: 10,000 of them in one
        turn held the gate for a second at start-up, and ~0.1 s every interval after."""
        names = sorted(set(self.routes.names()) | set(self.provider.runtimes))
        self._deploys = 0
        for start in range(0, len(names), CHUNK):
            if start:
                yield deferLater(self.clock, 0, lambda: None)
                if not self.running:
                    return
            for name in names[start:start + CHUNK]:
                if name in self._busy or self._action(name) is not None:
                    self.want(name)
                self.report(name)
        if self._deploys:
            log.info("deployed {count} of {total} functions on this node",
                     count=self._deploys, total=len(names))

    # -- readiness -------------------------------------------------------------------
    def check(self) -> None:
        """Fails while a function active at start is not yet served by this node."""
        owed = self._owed
        if owed is None:
            raise NotServing("not started")
        for name in list(owed):
            route = self.routes.lookup(name)
            runtime = self.provider.runtimes.get(name)
            if route is None or not route.active:
                owed.discard(name)
            elif runtime is not None and runtime.observe().event in (Event.READY, Event.ERROR):
                owed.discard(name)
        if owed:
            # a few names, and how many: /readyz polled during a 10,000-function start
            # answered (and logged) every owed name, 145 KB a poll
            first = sorted(owed)[:NAMED]
            more = f" and {len(owed) - len(first)} more" if len(owed) > len(first) else ""
            raise NotServing(f"not yet serving {', '.join(first)}{more}")

    # -- convergence -----------------------------------------------------------------
    def _route_changed(self, name: str, route: Any) -> None:
        self.want(name)

    def want(self, name: str) -> None:
        if not self.running:
            return
        self._dirty.add(name)
        if name not in self._busy:
            self._busy.add(name)
            d = self._run(name)
            d.addErrback(lambda f: log.failure("converging {name} failed", f, name=name))
            d.addBoth(lambda _: self._busy.discard(name))

    @inlineCallbacks
    def _run(self, name: str):
        while name in self._dirty and self.running:
            self._dirty.discard(name)
            try:
                yield self._converge(name)
            except Exception as exc:
                log.warn("function {name}: local convergence failed ({error}); retried in "
                         "{interval}s", name=name, error=str(exc), interval=self.interval)
            self.report(name)

    def _action(self, name: str) -> Action | None:
        """What converging ``name`` would do now (None: nothing), without doing it; a
        full pass looks at every function, and most need nothing."""
        route = self.routes.lookup(name)
        runtime = self.provider.runtimes.get(name)
        if route is None:
            return None if runtime is None else Action.DELETE
        observation = None if runtime is None else runtime.observe()
        # only the provider action is used here: now and start_grace shape FSM events
        action = plan(FunctionRecord(route.spec, route.status), observation,
                      self.clock.seconds(), 0.0).action
        if action is not None and route.state is State.DESTROYED:
            return Action.DELETE
        return action

    @inlineCallbacks
    def _converge(self, name: str):
        route = self.routes.lookup(name)
        runtime = self.provider.runtimes.get(name)
        if route is None:
            if runtime is not None:
                yield self._drain(name, runtime.spec.timeout)
                log.info("function {name}: deleting the local replicas", name=name)
                yield self.provider.delete(name)
            return
        record = FunctionRecord(route.spec, route.status)
        action = self._action(name)
        if action is None:
            return
        if action in (Action.STOP, Action.DELETE) and runtime is not None:
            yield self._drain(name, runtime.spec.timeout)
        if action is Action.DEPLOY:
            # counted, not logged: a line per function costs ~10% of a 10,000-function
            # start-up even at debug level (converge_all logs the count)
            self._deploys += 1
        else:
            log.info("function {name}: {action} on this node", name=name,
                     action=action.value)
        yield PROVIDER_CALLS[action](self.provider, record)

    @inlineCallbacks
    def _drain(self, name: str, timeout: float):
        """Wait until the requests in flight on ``name`` finish, at most ``timeout``."""
        runtime = self.provider.runtimes.get(name)
        deadline = self.clock.seconds() + timeout
        while runtime is not None and _inflight(runtime) > 0:
            if self.clock.seconds() >= deadline:
                log.warn("function {name}: {count} requests still in flight after {timeout}s",
                         name=name, count=_inflight(runtime), timeout=timeout)
                return
            yield deferLater(self.clock, DRAIN_POLL, lambda: None)

    def report(self, name: str) -> None:
        """Publish this node's observation of ``name`` (withdraw it when not run here)."""
        runtime = self.provider.runtimes.get(name)
        if runtime is None:
            self.session.report(name, None)
            return
        observe = getattr(self.provider, "observe_runtime", None)   # with its user, limits
        observation = observe(runtime) if observe is not None else runtime.observe()
        self.session.report(name, Report.of(self.session.node_id, observation))


def _inflight(runtime: Any) -> int:
    count = getattr(runtime, "inflight", None)
    if count is None:
        watchdog = getattr(runtime, "watchdog", None)
        count = getattr(watchdog, "inflight", 0) if watchdog is not None else 0
    return int(count or 0)
