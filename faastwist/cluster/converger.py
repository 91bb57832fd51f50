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

Start-up order: the first full pass deploys first and reports afterwards (writing
10,000 reports, reading them back from the watch and the leader judging them competed
with the deploys for the one CPU the node has: the node was ready seconds later);
``first_pass()`` fires once the reports are handed to the session, which is when the
reconciler starts to judge them.
"""

from __future__ import annotations

import heapq
from typing import Any, Callable, Generator

from twisted.application.service import Service
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from faastwist.cluster.reports import Report
from faastwist.cluster.session import ClusterSession
from faastwist.gate.routes import Route, RouteTable
from faastwist.lifecycle.reconciler import PROVIDER_CALLS, Action, plan
from faastwist.model.fsm import Event, State
from faastwist.providers.base import Observation, ProviderRejected
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

    # provider: a node-local one (its ``runtimes``); Any until the provider registry
    # (issue 23) gives node-local providers a protocol
    def __init__(self, routes: RouteTable, provider: Any, session: ClusterSession,
                 clock: IReactorTime, interval: float) -> None:
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
        #: the observation last reported per function, with its epoch: a provider that
        #: answers an unchanged state with the same object is not re-encoded and compared
        self._reported: dict[str, tuple[Observation, int | None]] = {}
        #: per function, the status epoch this node last acted on (converged from); a
        #: report names it, so the leader knows what intent the observation follows
        self._acted: dict[str, int] = {}
        #: functions the provider refused to run as their route says (a secret that
        #: does not exist): (spec digest, why); reported as this node's error, so the
        #: function fails saying why, and /readyz does not wait for it
        self._rejected: dict[str, tuple[str, str]] = {}
        self._quiet = True  # the first pass: deploy everything, report afterwards
        self._held: dict[str, None] = {}  # what the first pass did not report yet
        self._first: list[Deferred[None]] | None = []  # first_pass() waiters (None: done)

    # -- service ---------------------------------------------------------------------
    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]  # Twisted's Service is unannotated
        self._owed = {name for name in self.routes.names()
                      if (route := self.routes.lookup(name)) is not None and route.active}
        self.routes.subscribe(self._route_changed)
        self._loop = LoopingCall(self.converge_all)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=True)

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]  # Twisted's Service is unannotated
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def first_pass(self) -> Deferred[None]:
        """Fires when the first full pass has deployed every function and handed its
        reports to the session (at once if that is done)."""
        if self._first is None:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._first.append(waiter)
        return waiter

    @inlineCallbacks
    def converge_all(self) -> Generator[Deferred[Any], Any, None]:
        """Look at every function, ``CHUNK`` per reactor turn: 10,000 of them in one
        turn held the gate for a second at start-up, and ~0.1 s every interval after."""
        names = sorted(set(self.routes.names()) | set(self.provider.runtimes))
        self._deploys = 0
        if not (yield self._chunked(names, self._look_at)):
            return
        if self._deploys:
            log.info("deployed {count} of {total} functions on this node",
                     count=self._deploys, total=len(names))
        if self._quiet:
            yield self._report_held()

    def _look_at(self, name: str) -> None:
        try:
            if name in self._busy or self._action(name) is not None:
                self.want(name)   # reports once it converged
            else:
                self._acted_on(name)   # nothing to do for the route as it is
                self.report(name)
        except Exception:
            # one function's failure must not end the pass (nor, in the first one,
            # keep the reconciler waiting for it), nor the LoopingCall
            log.failure("converging {name} failed", name=name)

    @inlineCallbacks
    def _report_held(self) -> Generator[Deferred[Any], Any, None]:
        """The end of the first pass: report what it held back, ``CHUNK`` per turn."""
        self._quiet = False
        held, self._held = list(self._held), {}
        if not (yield self._chunked(held, self.report)):
            return
        waiters, self._first = self._first or [], None
        for waiter in waiters:
            if not waiter.called:   # one that gave up waiting (timed out) is done
                waiter.callback(None)

    @inlineCallbacks
    def _chunked(self, names: list[str],
                 step: Callable[[str], None]) -> Generator[Deferred[Any], Any, bool]:
        """``step(name)`` for each of ``names``, ``CHUNK`` per reactor turn; False when
        the service stopped before the end."""
        for start in range(0, len(names), CHUNK):
            if start:
                yield deferLater(self.clock, 0, lambda: None)
                if not self.running:
                    return False
            for name in names[start:start + CHUNK]:
                step(name)
        return True

    # -- readiness -------------------------------------------------------------------
    def check(self) -> None:
        """Fails while a function active at start is not yet served by this node."""
        owed = self._owed
        if owed is None:
            raise NotServing("not started")
        if len(owed) <= NAMED:  # the last few (report() discards the others as it goes)
            for name in list(owed):
                self._settle_owed(name)
        if owed:
            # a few names, and how many: /readyz polled during a 10,000-function start
            # answered (and logged) every owed name, 145 KB a poll
            first = heapq.nsmallest(NAMED, owed)
            more = f" and {len(owed) - len(first)} more" if len(owed) > len(first) else ""
            raise NotServing(f"not yet serving {', '.join(first)}{more}")

    def _settle_owed(self, name: str) -> None:
        """``name`` is no longer owed once it is not active or this node served it."""
        owed = self._owed
        if owed is None:
            return
        route = self.routes.lookup(name)
        runtime = self.provider.runtimes.get(name)
        if route is None or not route.active:
            owed.discard(name)
        elif runtime is not None and runtime.observe().event in (Event.READY, Event.ERROR):
            owed.discard(name)
        elif name in self._rejected:
            owed.discard(name)   # it failed: that is its answer, not the node's

    # -- convergence -----------------------------------------------------------------
    def _route_changed(self, name: str, route: Route | None) -> None:
        if self._owed:
            self._settle_owed(name)
        self.want(name)

    def want(self, name: str) -> None:
        if not self.running:
            return
        self._dirty.add(name)
        if name not in self._busy:
            self._busy.add(name)
            self._run(name)

    def _run(self, name: str) -> None:
        """Converge ``name`` while it is marked dirty, reporting after each time. Plain
        callbacks, not a generator: a fork-mode deploy is done at once, and the
        generators and their Deferreds were a third of the converger's time at a
        10,000-function start-up."""
        if name not in self._dirty or not self.running:
            self._busy.discard(name)
            return
        self._dirty.discard(name)
        d = maybeDeferred(self._converge, name)
        d.addCallback(lambda _: self._rejected.pop(name, None))   # it runs as it should
        d.addErrback(self._not_converged, name)
        d.addCallback(lambda _: self._converged(name))

        def failed(failure: Failure) -> None:
            self._busy.discard(name)
            log.failure("converging {name} failed", failure, name=name)
        d.addErrback(failed)

    def _converged(self, name: str) -> None:
        self.report(name)
        if name in self._dirty and self.running:
            self._run(name)   # it changed meanwhile: again
        else:
            self._busy.discard(name)

    def _not_converged(self, failure: Failure, name: str) -> None:
        failure.trap(Exception)
        route = self.routes.lookup(name)
        if failure.check(ProviderRejected) and route is not None:
            # the function cannot run here as it is (a secret it names is gone): its
            # error, in its status; tried again every interval and on every change
            self._rejected[name] = (route.spec.digest(), failure.getErrorMessage())
        log.warn("function {name}: local convergence failed ({error}); retried in "
                 "{interval}s", name=name, error=failure.getErrorMessage(),
                 interval=self.interval)

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

    def _acted_on(self, name: str) -> None:
        route = self.routes.lookup(name)
        if route is None:
            self._acted.pop(name, None)
        else:
            self._acted[name] = route.status.epoch

    def _converge(self, name: str) -> Deferred[None] | None:
        self._acted_on(name)   # what follows acts on the route as it is now
        route = self.routes.lookup(name)
        runtime = self.provider.runtimes.get(name)
        if route is None:
            if runtime is None:
                return None
            return self._drain(name, runtime.spec.timeout).addCallback(
                lambda _: self._delete(name))
        action = self._action(name)
        if action is None:
            return None
        record = FunctionRecord(route.spec, route.status)
        if action in (Action.STOP, Action.DELETE) and runtime is not None:
            return self._drain(name, runtime.spec.timeout).addCallback(
                lambda _: self._call(action, record))
        return self._call(action, record)

    def _delete(self, name: str) -> Deferred[None]:
        log.info("function {name}: deleting the local replicas", name=name)
        deleted: Deferred[None] = self.provider.delete(name)
        return deleted

    def _call(self, action: Action, record: FunctionRecord) -> Deferred[None]:
        if action is Action.DEPLOY:
            # counted, not logged: a line per function costs ~10% of a 10,000-function
            # start-up even at debug level (converge_all logs the count)
            self._deploys += 1
        else:
            log.info("function {name}: {action} on this node", name=record.name,
                     action=action.value)
        return PROVIDER_CALLS[action](self.provider, record)

    @inlineCallbacks
    def _drain(self, name: str, timeout: float) -> Generator[Deferred[Any], Any, None]:
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
        if self._owed:
            self._settle_owed(name)
        if self._quiet:
            self._held[name] = None
            return
        runtime = self.provider.runtimes.get(name)
        rejected = self._rejected.get(name)
        if rejected is not None:
            self._reported.pop(name, None)
            self.session.report(name, Report(self.session.node_id, rejected[0], False,
                                             Event.ERROR, rejected[1],
                                             epoch=self._acted.get(name, -1)))
            return
        if runtime is None:
            self._reported.pop(name, None)
            self.session.report(name, None)
            return
        observe = getattr(self.provider, "observe_runtime", None)   # with its user, limits
        observation = observe(runtime) if observe is not None else runtime.observe()
        # -1: not acted on yet (a replica the gate started on demand); never a verdict
        epoch = self._acted.get(name, -1)
        last = self._reported.get(name)
        if last is not None and last[0] is observation and last[1] == epoch:
            return  # the provider answered with the very object it gave last time
        self._reported[name] = (observation, epoch)
        self.session.report(name, Report.of(self.session.node_id, observation, epoch))


def _inflight(runtime: Any) -> int:
    count = getattr(runtime, "inflight", None)
    if count is None:
        watchdog = getattr(runtime, "watchdog", None)
        count = getattr(watchdog, "inflight", 0) if watchdog is not None else 0
    return int(count or 0)
