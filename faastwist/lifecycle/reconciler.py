"""The reconciler: level-triggered convergence of the store and the provider.

Each pass reads every function of the controller (one store read) and asks the
provider about all of them (one call), then for each function makes at most one
provider call and at most one status write. Because it only compares what is with
what should be, a crash between two steps leaves nothing orphaned: the next pass
finishes the job. Admin writes ``kick`` a function so it is handled at once.
"""

from __future__ import annotations

import enum
import time
from typing import Any, Callable, Generator, Iterable, Mapping, Sequence

import attrs
from prometheus_client import Counter
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredLock, fail, inlineCallbacks, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from faastwist.model.fsm import ROLLOUT_KEY, Event, FunctionStatus, InvalidEvent, State, apply_event
from faastwist.metrics import Metrics
from faastwist.providers.base import (
    Observation,
    Provider,
    ProviderConflict,
    ProviderError,
    ProviderRejected,
)
from faastwist.store.base import (
    Conflict,
    Fenced,
    FunctionRecord,
    FunctionStore,
    Listing,
    NotFound,
    StoreUnavailable,
)
from faastwist.util.failures import error_of

log = Logger(namespace="faastwist.reconciler")  # stable: operators filter on it


class Action(enum.Enum):
    """The one provider call a pass may make for a function."""

    DEPLOY = "deploy"
    UPDATE = "update"
    STOP = "stop"
    START = "start"
    DELETE = "delete"


#: How each action calls the provider (delete takes the name: the spec may be gone).
PROVIDER_CALLS: Mapping[Action, Callable[[Provider, FunctionRecord], Deferred[None]]] = {
    Action.DEPLOY: lambda provider, record: provider.deploy(record.spec),
    Action.UPDATE: lambda provider, record: provider.update(record.spec),
    Action.STOP: lambda provider, record: provider.stop(record.spec),
    Action.START: lambda provider, record: provider.start(record.spec),
    Action.DELETE: lambda provider, record: provider.delete(record.name),
}


@attrs.frozen
class Plan:
    """What one pass does for one function: a provider action and/or FSM events."""

    action: Action | None = None
    events: tuple[Event, ...] = ()
    message: str | None = None
    ext_data: Mapping[str, str] | None = None


def plan(record: FunctionRecord, observation: Observation | None, now: float,
         start_grace: float) -> Plan:
    """Decide what to do for one function; pure, so the table of cases is unit-tested.

    ``start_grace``: for this long after a start was asked for, *pending* is not yet a
    verdict (a Knative start rolls out a new revision, Ready=Unknown meanwhile); after
    it, the table's inactive + pending -> failed applies.
    """
    status, spec = record.status, record.spec
    state = status.state
    if state is State.DESTROYED:
        # deleted over the admin API but the record is still there: remove what runs
        return Plan(None if observation is None else Action.DELETE)
    if observation is not None and observation.epoch not in (None, status.epoch):
        # the nodes' reports were made before the operator's latest event (a ready
        # from before a stop, read after the start that followed): no verdict on it
        return Plan()
    wants_running = state in (State.INITIAL, State.ACTIVE, State.FAILED) or (
        state is State.INACTIVE and status.start_pending)
    if observation is None:
        if not wants_running:
            return Plan()  # stopped and gone: nothing to run until a start is asked for
        if state is State.ACTIVE:
            return Plan(Action.DEPLOY, message="recreated: the provider had lost the function")
        return Plan(Action.DEPLOY, message="deploying")
    if observation.digest != spec.digest():
        # start/stop write the current spec too, so one call converges both differences
        if wants_running and observation.stopped:
            return Plan(Action.START, message="starting with the current spec")
        if not wants_running and not observation.stopped:
            return Plan(Action.STOP)
        return Plan(Action.UPDATE, message="updating to the current spec")
    if not wants_running:
        return Plan(None if observation.stopped else Action.STOP)
    if observation.stopped:
        return Plan(Action.START, message="starting")
    event = observation.event
    if event is None:
        return Plan()
    if (event is Event.PENDING and state is State.INACTIVE and status.start_pending
            and now - status.updated < start_grace):
        return Plan()  # the start is still rolling out
    if (state is State.ACTIVE and observation.serving_previous
            and event in (Event.PENDING, Event.ERROR)):
        # a rolling update that is not live: the old version serves, so stay active
        failed = event is Event.ERROR
        prefix = ("update failed; the previous version keeps serving: " if failed else
                  "update rolling out; the previous version serves meanwhile: ")
        return Plan(message=prefix + observation.message,
                    ext_data={**observation.ext_data,
                              ROLLOUT_KEY: "failed" if failed else "in progress"})
    if (state is State.FAILED and event is Event.READY
            and observation.ext_data.get("replicas") == "0"):
        # "ready" scaled to zero has run nothing: no evidence the failure is over (a
        # node restart forgets a crash loop; the function must not come back active
        # by itself). A replica that becomes ready, or the operator's update, is.
        return Plan()
    events: tuple[Event, ...] = (event,)
    if state is State.FAILED and event is Event.READY:
        events = (Event.READY, Event.READY)  # failed -> initial -> active: recovered
    return Plan(events=events, message=observation.message, ext_data=observation.ext_data)


def _same(a: FunctionStatus, b: FunctionStatus) -> bool:
    """Equal but for ``updated`` (field by field: no copies, this runs per function)."""
    return (a.state is b.state and a.event is b.event and a.message == b.message
            and a.start_pending == b.start_pending and a.name == b.name
            and a.ext_data == b.ext_data)


#: A pass gives the reactor back after this long (seconds), so 10,000 functions do not
#: stall the gate and the admin API for the length of the pass.
SLICE = 0.005
#: Functions converging at once in a pass (provider calls and status writes in flight).
WINDOW = 16
#: Kicked functions read one by one; more than this are read with one list.
KICKED_READS = 64


class LeadershipLost(Exception):
    """The pass stops: this node no longer leads (checked before every provider call and
    write; the store's fence refuses the write anyway)."""


class Reconciler(Service):
    """Runs passes every ``interval`` seconds on ``clock``; passes never overlap."""

    name = "reconciler"

    def __init__(self, store: FunctionStore, provider: Provider, clock: IReactorTime,
                 interval: float, metrics: Metrics | None = None,
                 is_leader: Callable[[], bool] = lambda: True,
                 wall_clock: Callable[[], float] = time.time,
                 start_grace: float = 120.0,
                 fence: Callable[[], Sequence[Any]] = lambda: (),  # etcd compares
                 warmup: Deferred[None] | None = None) -> None:
        self.store = store
        self.provider = provider
        self.clock = clock
        self.interval = interval
        self.metrics = metrics or Metrics()
        self.is_leader = is_leader
        self.wall_clock = wall_clock
        self.start_grace = start_grace
        self.fence = fence
        self._lock = DeferredLock()
        self._loop: LoopingCall | None = None
        self._kicked: set[str] = set()
        self._kick_call: IDelayedCall | None = None
        self._kick_queued = False   # a kicked pass waits for the lock (see _run_kicked)
        self.passes = 0
        self.last_error: str | None = None
        self._transition_counters: dict[tuple[State, State, Event], Counter] = {}
        self._stopping = False
        #: why the pass under way ends early (the store away, the lease lost): set by a
        #: function's step, acted on by the pass at its next step
        self._ended: BaseException | None = None
        self._bugs = 0  # functions whose step failed by a bug in the pass under way
        #: passes wait for ``warmup`` (the node's own functions deployed and reported):
        #: at a 10,000-function start-up a pass judging reports that are not written
        #: yet only competed with the deploys for the CPU, and kicked itself again
        self._warm = warmup is None
        if warmup is not None:
            warmup.addBoth(self._warmed)

    # -- service ---------------------------------------------------------------------
    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]  # Twisted's Service is unannotated
        self._stopping = False
        self._loop = LoopingCall(self._scheduled_pass)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=True)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()  # type: ignore[no-untyped-call]  # Twisted's Service is unannotated
        self._stopping = True
        if self._kick_call is not None and self._kick_call.active():
            self._kick_call.cancel()
        self._kick_call = None
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        # wait for a pass in progress so no provider call outlives the service
        return self._lock.acquire().addCallback(lambda lock: lock.release())

    def _warmed(self, result: object) -> None:
        self._warm = True
        self._kicked.clear()  # the full pass below looks at every function
        if self.running and self.is_leader():
            log.info("leader: this node's functions are deployed; running a full "
                     "reconcile pass now")
            self.run_pass()

    def _scheduled_pass(self) -> Deferred[None] | None:
        if not self.is_leader():
            return None
        return self.run_pass()

    def leadership_changed(self, leader: bool) -> None:
        """A new leader acts at once (a full pass); a lost lease stops the pass under way
        at its next step (every step checks ``is_leader`` first)."""
        if leader and self.running and self._warm:
            log.info("leader: running a full reconcile pass now")
            self.run_pass()

    def _require_leader(self) -> None:
        if not self.is_leader():
            raise LeadershipLost()

    def _fence(self) -> Sequence[Any]:
        try:
            return self.fence()
        except Exception as exc:
            raise LeadershipLost(str(exc)) from None

    def kick(self, name: str) -> None:
        """Handle ``name`` soon, without waiting for the next interval."""
        self._kicked.add(name)
        if self._kick_call is None or not self._kick_call.active():
            self._kick_call = self.clock.callLater(0, self._run_kicked)

    def _run_kicked(self) -> Deferred[None] | None:
        """Queue one pass over the kicked names, unless one is already waiting for the
        lock: that one takes every name kicked until it starts. (One queued pass per
        watch batch piled up hundreds of passes at a node's start-up, each reading every
        node's reports: a 2,000-function node ran them back to back for minutes.)"""
        if self._kick_queued or not self._kicked or not self._warm:
            return None
        self._kick_queued = True
        return self._lock.run(self._kicked_pass)

    def _kicked_pass(self) -> Deferred[None]:
        self._kick_queued = False
        names, self._kicked = sorted(self._kicked), set()
        if not names or not self.is_leader():
            return succeed(None)
        return self._guarded_pass(names)

    # -- passes ----------------------------------------------------------------------
    def run_pass(self, names: Sequence[str] | None = None) -> Deferred[None]:
        """One pass over ``names`` (all functions when None); never fails. Before the
        warm-up it does nothing: a full pass follows the warm-up."""
        if not self._warm:
            return succeed(None)
        return self._lock.run(self._guarded_pass, names)

    @inlineCallbacks
    def _guarded_pass(self, names: Sequence[str] | None
                      ) -> Generator[Deferred[Any], Any, None]:
        """One pass; what ends it is an expected outcome (logged in one line, counted,
        retried next pass) unless it is a bug (``internal``, with its traceback)."""
        started = self.clock.seconds()
        self._ended = None
        self._bugs = 0
        try:
            if not self.is_leader():
                return
            yield self._pass(names)
            self.last_error = "unexpected error" if self._bugs else None
        except (LeadershipLost, Fenced) as exc:
            log.info("reconcile pass stopped: this node no longer leads ({error})",
                     error=str(exc) or "lease lost")
        except StoreUnavailable as exc:
            self.last_error = str(exc)
            self._retried("unavailable")
            log.warn("reconcile pass ended, the store is unavailable; the next pass "
                     "retries: {error}", error=str(exc))
        except ProviderError as exc:
            self.last_error = str(exc)
            self.metrics.reconcile_errors.labels("provider").inc()
            log.warn("reconcile pass skipped, provider unreachable: {error}", error=str(exc))
        except Exception:
            self.last_error = "unexpected error"
            self.metrics.reconcile_errors.labels("internal").inc()
            log.failure("reconcile pass failed")
        finally:
            self.passes += 1
            self.metrics.reconcile_seconds.observe(self.clock.seconds() - started)

    @inlineCallbacks
    def _pass(self, names: Sequence[str] | None) -> Generator[Deferred[Any], Any, None]:
        records = yield self._read(names)
        observed = yield self.provider.observe(names)
        clock = self.clock
        slice_end = clock.seconds() + SLICE
        # up to WINDOW functions converge at once: each may wait for an etcd write
        # (an fsync), and 10,000 of them one after the other took minutes on a busy disk
        window: list[Deferred[None]] = []  # each never fails (see _settled)
        try:
            for record in records.values():
                if clock.seconds() > slice_end:
                    yield deferLater(clock, 0, lambda: None)
                    slice_end = clock.seconds() + SLICE
                    if self._stopping:
                        break  # shutting down: the next start's first pass goes on here
                if self._ended is not None:
                    break
                self._require_leader()
                try:
                    converging = self._converge(record, observed.get(record.name))
                except Exception as exc:
                    converging = fail(exc)
                if converging is not None:
                    window.append(self._settled(record, converging))
                    if len(window) >= WINDOW:
                        yield window.pop(0)
        finally:
            # what is in flight finishes (or fails) before the pass ends, whatever ends it
            for settling in window:
                yield settling
        if self._ended is not None:
            raise self._ended
        wanted = set(records)
        for name in self._orphans(observed, wanted, names):
            self._require_leader()
            log.info("deleting {name}: the provider runs it but the store has no such function",
                     name=name)
            try:
                yield self.provider.delete(name)
            except ProviderError as exc:
                self.metrics.reconcile_errors.labels("provider").inc()
                log.warn("orphan {name}: delete failed, retrying next pass: {error}",
                         name=name, error=str(exc))

    def _settled(self, record: FunctionRecord, converging: Deferred[None]) -> Deferred[None]:
        """``converging`` with its failure handled (logged, counted): never fails."""
        def failed(failure: Failure) -> None:
            try:
                self._function_failed(record, error_of(failure))
            except Exception:
                # a bug: counted, with its traceback; the other functions go on
                self._bugs += 1
                self.metrics.reconcile_errors.labels("internal").inc()
                log.failure("function {name}: reconcile step failed", failure,
                            name=record.name)
        return converging.addErrback(failed)

    def _retried(self, kind: str) -> None:
        self.metrics.reconcile_retried.labels(kind).inc()

    def _function_failed(self, record: FunctionRecord, exc: BaseException) -> None:
        """An expected outcome of one function's step, logged in one line (a store
        condition ending the pass is logged once, by the pass); anything else raises."""
        if isinstance(exc, ProviderConflict):
            log.info("function {name}: {error}", name=record.name, error=str(exc))
        elif isinstance(exc, ProviderError):
            self.metrics.reconcile_errors.labels("provider").inc()
            log.warn("function {name}: provider call failed, retrying next pass: {error}",
                     name=record.name, error=str(exc))
        elif isinstance(exc, (LeadershipLost, Fenced, StoreUnavailable)):
            # the lease is lost, or the store away (its answer for this write unknown
            # too): the pass ends at its next step and the next one reads afresh
            if self._ended is None:
                self._ended = exc
        elif isinstance(exc, NotFound):
            self._retried("not_found")
            log.info("function {name} was deleted during the pass; next pass takes it",
                     name=record.name)
        elif isinstance(exc, Conflict):
            self._retried("conflict")
            log.info("function {name} changed during the pass; next pass takes it",
                     name=record.name)
        else:
            raise exc

    @staticmethod
    def _orphans(observed: Mapping[str, Observation], wanted: set[str],
                 names: Sequence[str] | None) -> Iterable[str]:
        # a kicked name the store no longer has is deleted even when the provider does
        # not report it (a stopped process function leaves logs behind; "already gone"
        # is success for every provider)
        scope = set(observed) if names is None else set(names)
        return sorted(scope - wanted)

    @inlineCallbacks
    def _read(self, names: Sequence[str] | None
              ) -> Generator[Deferred[Any], Any, Mapping[str, FunctionRecord]]:
        listing: Listing
        if names is None:
            listing = yield self.store.list()
            for name, record in listing.records.items():
                self.metrics.set_state(name, record.status.state)
            return listing.records
        records: dict[str, FunctionRecord] = {}
        if len(names) > KICKED_READS:
            # many kicks at once (a node's start-up reports every function): one paged
            # list, not thousands of reads one after the other
            listing = yield self.store.list()
            for name in names:
                found = listing.records.get(name)
                if found is None:
                    self.metrics.set_state(name, None)
                else:
                    records[name] = found
            return records
        for name in names:
            try:
                records[name] = yield self.store.get(name)
            except NotFound:
                self.metrics.set_state(name, None)
        return records

    def _converge(self, record: FunctionRecord,
                  observation: Observation | None) -> Deferred[None] | None:
        """Converge one function; None when there was nothing to do (no Deferred, no
        generator: a steady pass over 10,000 functions is mostly this)."""
        decision = plan(record, observation, self.wall_clock(), self.start_grace)
        if decision.action is None:
            return self._settle(record, decision)
        return self._act(record, decision)

    @inlineCallbacks
    def _act(self, record: FunctionRecord,
             decision: Plan) -> Generator[Deferred[Any], Any, None]:
        assert decision.action is not None
        action = decision.action.value
        log.info("function {name}: {action}", name=record.name, action=action)
        self._require_leader()  # provider writes (Kubernetes) only while the lease holds
        try:
            yield PROVIDER_CALLS[decision.action](self.provider, record)
        except ProviderRejected as exc:
            # the provider will never run this spec: say so now, not never
            log.warn("function {name}: {action} refused: {error}", name=record.name,
                     action=action, error=str(exc))
            decision = Plan(events=(Event.ERROR,), message=str(exc))
        settling = self._settle(record, decision)
        if settling is not None:
            yield settling

    def _settle(self, record: FunctionRecord, decision: Plan) -> Deferred[None] | None:
        """Apply the plan's events and message to the status; write it if it changed."""
        status = record.status
        if decision.message is not None and decision.message != status.message:
            status = attrs.evolve(status, message=decision.message)
        if decision.ext_data is not None and decision.ext_data != status.ext_data:
            status = attrs.evolve(status, ext_data=dict(decision.ext_data))
        for event in decision.events:
            before = status.state
            try:
                # the time is set once below, and only when the record changes
                status = apply_event(status, event, status.updated)
            except InvalidEvent:
                # e.g. ready while inactive and no start is wanted: nothing to conclude
                break
            key = (before, status.state, event)
            counter = self._transition_counters.get(key)
            if counter is None:
                counter = self._transition_counters[key] = self.metrics.transitions.labels(
                    before.value, status.state.value, event.value)
            counter.inc()
            if before is not status.state:
                log.info("function {name}: {before} -> {after} on {event}", name=record.name,
                         before=before.value, after=status.state.value, event=event.value)
        if _same(status, record.status):
            return None
        status = attrs.evolve(status, updated=self.wall_clock())
        state = status.state
        self._require_leader()
        return self.store.update(record, status=status, fence=self._fence()).addCallback(
            lambda _: self.metrics.set_state(record.name, state))
