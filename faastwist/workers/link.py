"""The main process's side of one worker's control channel.

It answers the worker's ``acquire`` from the node's provider (so the process
provider's per-replica accounting and scale from zero stay in one place), keeps the
leases it handed out until the worker releases them, stores the worker's queued
calls, and adds the worker's counts into the node's metrics. When the channel goes
down (the worker died) every lease it held is released and its in-flight share is
taken off the gauges, so a crashed worker leaves no phantom load behind.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from faastwist.gate.asynccall import QueueFull
from faastwist.gate.decisions import RETRY_AFTER_NOT_ACTIVE
from faastwist.metrics import Metrics
from faastwist.providers.base import NoCapacity
from faastwist.workers.channel import Channel, Message, ident_of
from faastwist.workers.counts import apply_delta, forget_active
from faastwist.workers.remote import call_from_message, upstream_fields

log = Logger(namespace="faastwist.workers")


class WorkerLink:
    """Serves one worker's requests; ``on_ready``/``on_failed`` report its start."""

    def __init__(self, index: int, routes: Any, provider: Any, metrics: Metrics,
                 queue: Callable[[], Any], on_ready: Callable[[Message], None],
                 on_failed: Callable[[str], None]) -> None:
        self.index = index
        self.routes = routes
        self.provider = provider  # None: the worker routes by itself (Knative)
        self.metrics = metrics
        self.queue = queue
        self.on_ready = on_ready
        self.on_failed = on_failed
        self.channel = Channel(self.received, self.lost)
        self.leases: dict[int, Any] = {}
        self.acquiring: dict[int, Deferred[Any]] = {}
        self.active: dict[str, int] = {}
        self._next_lease = 0
        self._reach: dict[int, Deferred[None]] = {}   # "reach" asked, not yet "reached"
        self._next_reach = 0
        self._handlers: dict[str, Callable[[Message], None]] = {
            "ready": self.on_ready, "failed": lambda m: self.on_failed(str(m.get("message"))),
            "acquire": self._acquire, "cancel": self._cancel, "release": self._release,
            "enqueue": self._enqueue, "counts": self._counts, "reached": self._reached,
        }

    def send(self, message: Message) -> bool:
        return self.channel.send(message)

    def received(self, message: Message) -> None:
        handler = self._handlers.get(message["op"])
        if handler is None:
            log.warn("gate worker {index}: unknown message {op}", index=self.index,
                     op=message["op"])
            return
        handler(message)

    # -- leases ------------------------------------------------------------------------
    def _refuse(self, ident: int, message: str, retry_after: int) -> None:
        self.send({"op": "reply", "id": ident, "message": message, "retryAfter": retry_after})

    def _acquire(self, message: Message) -> None:
        ident, name = message.get("id"), message.get("fn")
        if not isinstance(ident, int) or not isinstance(name, str):
            log.warn("gate worker {index}: acquire without an id or a function name",
                     index=self.index)
            return
        route = self.routes.lookup(name)
        if self.provider is None or route is None:
            self._refuse(ident, f"function {name} is not known to the node yet", 1)
            return
        if not route.active:
            self._refuse(ident, f"function {name} is not active (state: {route.state.value})",
                         RETRY_AFTER_NOT_ACTIVE)
            return
        try:
            lease = self.provider.acquire(route.spec)
        except NoCapacity as exc:
            self._refuse(ident, str(exc), exc.retry_after)
            return
        except Exception as exc:
            log.failure("the provider could not give an upstream for {function}",
                        function=name)
            self._refuse(ident, f"no upstream for function {name}: {exc}", 5)
            return
        if isinstance(lease, Deferred):
            self.acquiring[ident] = lease
            lease.addCallbacks(self._granted, self._not_granted, callbackArgs=(ident,),
                               errbackArgs=(ident, name))
        else:
            self._granted(lease, ident)

    def _granted(self, lease: Any, ident: int) -> None:
        self.acquiring.pop(ident, None)
        if not self.channel.connected_:
            lease.release()
            return
        self._next_lease += 1
        number = self._next_lease
        self.leases[number] = lease
        # a local replica: tell the worker when it dies
        lease.notify_lost(lambda why: self.send({"op": "lost", "lease": number, "why": why}))
        self.send({"op": "reply", "id": ident, "lease": number,
                   "upstream": upstream_fields(lease.upstream)})

    def _not_granted(self, failure: Failure, ident: int, name: str) -> None:
        self.acquiring.pop(ident, None)
        if failure.check(CancelledError):
            return  # the worker gave up on it
        error = failure.value
        if isinstance(error, NoCapacity):
            self._refuse(ident, str(error), error.retry_after)
            return
        log.failure("the provider could not give an upstream for {function}", failure,
                    function=name)
        self._refuse(ident, f"no upstream for function {name}: {failure.getErrorMessage()}", 5)

    def _cancel(self, message: Message) -> None:
        waiting = self.acquiring.pop(ident_of(message, "id"), None)
        if waiting is not None:
            waiting.cancel()

    def _release(self, message: Message) -> None:
        lease = self.leases.pop(ident_of(message, "lease"), None)
        if lease is not None:
            lease.release()

    # -- read-your-writes ---------------------------------------------------------------
    def reached(self, revision: int) -> Deferred[None]:
        """Fires once the worker's route table reflects ``revision`` (at once when the
        worker is gone: a gate that is not there contradicts nothing)."""
        def forget(_: Deferred[None]) -> None:
            self._reach.pop(ident, None)

        done: Deferred[None] = Deferred(forget)
        self._next_reach += 1
        ident = self._next_reach
        if not self.send({"op": "reach", "id": ident, "revision": revision}):
            done.callback(None)
            return done
        self._reach[ident] = done
        return done

    def _reached(self, message: Message) -> None:
        done = self._reach.pop(ident_of(message, "id"), None)
        if done is not None:
            done.callback(None)

    # -- queue and counts --------------------------------------------------------------
    def _enqueue(self, message: Message) -> None:
        ident = message.get("id")
        queue = self.queue()
        if queue is None:
            self.send({"op": "reply", "id": ident, "ok": False,
                       "message": "asynchronous invocations are not enabled on this node"})
            return
        try:
            call = call_from_message(message.get("call"))
        except ValueError as exc:
            log.warn("gate worker {index}: bad enqueue: {problem}", index=self.index,
                     problem=str(exc))
            self.send({"op": "reply", "id": ident, "ok": False, "message": str(exc)})
            return
        def refused(failure: Any) -> None:
            reply = {"op": "reply", "id": ident, "ok": False,
                     "message": failure.getErrorMessage()}
            if failure.check(QueueFull):  # 429 or 507 with its Retry-After, not a 503
                reply.update(code=failure.value.code, retryAfter=failure.value.retry_after)
            self.send(reply)

        queue.submit(call).addCallbacks(
            lambda _: self.send({"op": "reply", "id": ident, "ok": True}), refused)

    def _counts(self, message: Message) -> None:
        try:
            apply_delta(self.metrics, message.get("counts"), self.active)
        except ValueError as exc:
            log.warn("gate worker {index}: bad counts: {problem}", index=self.index,
                     problem=str(exc))

    # -- end ---------------------------------------------------------------------------
    def lost(self, why: str) -> None:
        """The worker's channel closed: give back everything it held."""
        acquiring, self.acquiring = self.acquiring, {}
        for waiting in acquiring.values():
            waiting.cancel()
        leases, self.leases = self.leases, {}
        for lease in leases.values():
            lease.release()
        reach, self._reach = self._reach, {}
        for done in reach.values():
            done.callback(None)
        forget_active(self.metrics, self.active)
