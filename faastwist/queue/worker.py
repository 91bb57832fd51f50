"""The queue workers of one node: run queued calls, retry them, deliver callbacks.

Every node runs one pull loop per function on the function's durable consumer (shared
by all nodes: each message goes to one of them) and one loop on the callbacks
consumer. A loop asks for at most as many messages as it has free slots, and the
consumer's ``max_ack_pending`` (the function's ``asyncConcurrency``) bounds the calls
in flight across the cluster, so a slow function only ever waits for itself.

A call is acknowledged only after its outcome is stored (the status record, the
callback message, the dead letter): a node that dies mid-call leaves the message
unacknowledged, and JetStream redelivers it after the ack wait (at least once). A
retry is a negative acknowledgement with a delay; attempts are counted in the call's
status record, so waiting for an inactive function does not use them up.
"""

from __future__ import annotations

import random
from typing import Any, Callable

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import deferLater
from twisted.logger import Logger

from faastwist.gate.routes import Route
from faastwist.model.fsm import State
from faastwist.queue.local import Answer, invoke
from faastwist.queue.messages import (
    BadMessage,
    Outcome,
    call_headers,
    outcome_headers,
    read_call,
    read_outcome,
    status_record,
)
from faastwist.queue.policy import Backoff, CallbackRefused, Outcome as Decision, decide
from faastwist.queue.policy import parse_retry_after

log = Logger(namespace="faastwist.queue")

#: How long a call for an inactive function waits before it is looked at again.
INACTIVE_RECHECK = 5.0
#: How long a fetch waits for the first message.
FETCH_WAIT = 2.0
#: Ack wait beyond the function's own timeout (the outcome still has to be stored).
ACK_MARGIN = 10.0
#: Tries of a step after the function ran (0.5 s apart) before leaving it to redelivery.
PERSIST = 40
CALLBACKS = "callbacks"


class Loop:
    """One pull loop: a consumer, its slots on this node, and what runs now."""

    __slots__ = ("key", "limit", "inflight", "pulling", "bound", "retry", "handler")

    def __init__(self, key: str, limit: int, handler: Callable[[Any], Any]) -> None:
        self.key = key
        self.limit = limit
        self.inflight = 0
        self.pulling = False
        self.bound = False
        self.retry: Any = None
        self.handler = handler


class Worker:
    """Pull loops for every function of the route table, and the callback loop."""

    def __init__(self, service: Any, context: Any, random_: Callable[[], float] = random.random) -> None:
        self.service = service
        self.config = service.config
        self.js = service.js
        self.bridge = service.bridge
        self.names = service.names
        self.reactor = service.reactor
        self.metrics = service.metrics
        self.routes = service.routes
        self.context = context
        self.random = random_
        self.backoff = Backoff(self.config.backoff_base, self.config.backoff_max)
        self.loops: dict[str, Loop] = {}
        self.running = False
        self._settings: dict[str, tuple[int, float]] = {}

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self.running = True
        self.routes.subscribe(self._route_changed)
        for name in self.routes.names():
            self._route_changed(name, self.routes.lookup(name))
        # consumers of functions deleted while no node ran: drain them into the dead letters
        d = self.bridge.call(self.js.consumer_names, self.names.calls)
        d.addCallbacks(self._orphans, lambda f: log.warn(
            "cannot list the queue consumers: {error}", error=f.getErrorMessage()))
        loop = self.loops[CALLBACKS] = Loop(CALLBACKS, self.config.callback_concurrency,
                                            self._deliver)
        names = self.names
        self._bind(loop, names.callbacks, CALLBACKS, names.callback_subject("*"),
                   self.config.callback_concurrency, self.config.callback_timeout + ACK_MARGIN)

    def _orphans(self, durables: list[str]) -> None:
        for durable in durables:
            name = durable[len("call-"):]
            if durable.startswith("call-") and name not in self.loops and self.running:
                loop = self.loops[name] = Loop(name, self.config.concurrency, self._run)
                self._bind(loop, self.names.calls, durable, self.names.call_subject(name),
                           self.config.concurrency, ACK_MARGIN)

    def stop(self) -> None:
        self.running = False
        for loop in self.loops.values():
            if loop.retry is not None and loop.retry.active():
                loop.retry.cancel()

    def inflight(self) -> int:
        return sum(loop.inflight for loop in self.loops.values())

    # -- consumers -----------------------------------------------------------------------

    def _route_changed(self, name: str, route: Route | None) -> None:
        if not self.running:
            return
        loop = self.loops.get(name)
        if route is None:
            return  # the loop (if any) drains the function's calls into the dead letters
        concurrency = route.spec.async_concurrency or self.config.concurrency
        settings = (concurrency, route.timeout + ACK_MARGIN)
        if loop is not None and self._settings.get(name) == settings:
            return
        self._settings[name] = settings
        if loop is None:
            loop = self.loops[name] = Loop(name, concurrency, self._run)
        loop.limit = concurrency
        self._bind(loop, self.names.calls, self.names.consumer(name),
                   self.names.call_subject(name), *settings)

    def _bind(self, loop: Loop, stream: str, durable: str, subject: str, limit: int,
              ack_wait: float) -> None:
        d = self.bridge.call(self.js.bind, loop.key, stream, durable, subject, limit, ack_wait)

        def bound(_: Any) -> None:
            loop.bound = True
            self._pull(loop)

        def failed(failure: Any) -> None:
            log.warn("cannot bind the queue consumer {consumer}: {error}; retrying",
                     consumer=durable, error=failure.getErrorMessage())
            if self.running:
                loop.retry = self.reactor.callLater(
                    1.0, self._bind, loop, stream, durable, subject, limit, ack_wait)

        d.addCallbacks(bound, failed)

    def _pull(self, loop: Loop) -> None:
        if not self.running or loop.pulling or not loop.bound:
            return
        free = loop.limit - loop.inflight
        if free <= 0:
            return
        loop.pulling = True
        d = self.bridge.call(self.js.fetch, loop.key, free, FETCH_WAIT,
                             timeout=FETCH_WAIT * 2 + 5)
        d.addCallbacks(self._fetched, self._fetch_failed, (loop,), None, (loop,))

    def _fetched(self, messages: list[Any], loop: Loop) -> None:
        loop.pulling = False
        for msg in messages:
            loop.inflight += 1
            d = ensureDeferred(loop.handler(msg))
            d.addErrback(lambda f, k=loop.key: log.failure(
                "queued message of {consumer} failed", f, consumer=k))
            d.addBoth(self._handled, loop)
        if loop.key != CALLBACKS and not messages and self.routes.lookup(loop.key) is None:
            self._maybe_retire(loop)
            return
        self._pull(loop)

    def _handled(self, _: Any, loop: Loop) -> None:
        loop.inflight -= 1
        self._pull(loop)

    def _fetch_failed(self, failure: Any, loop: Loop) -> None:
        loop.pulling = False
        if self.running:
            log.debug("fetch for {consumer} failed: {error}", consumer=loop.key,
                      error=failure.getErrorMessage())
            loop.retry = self.reactor.callLater(1.0, self._pull, loop)

    def _maybe_retire(self, loop: Loop) -> None:
        """A deleted function's fetch came back empty: drop its consumer once nothing
        is left in it (calls waiting for a redelivery still go to the dead letters)."""
        d = self.bridge.call(self.js.pending, self.names.calls, self.names.consumer(loop.key))

        def counted(pending: tuple[int, int, Any]) -> None:
            if pending[0] or pending[1] or loop.inflight or self.routes.lookup(loop.key):
                self._pull(loop)
            else:
                self._retire(loop)

        def failed(failure: Any) -> None:
            if self.running:
                loop.retry = self.reactor.callLater(1.0, self._pull, loop)

        d.addCallbacks(counted, failed)

    def _retire(self, loop: Loop) -> None:
        self.loops.pop(loop.key, None)
        self._settings.pop(loop.key, None)
        self.bridge.call(self.js.unbind, loop.key, self.names.calls,
                         self.names.consumer(loop.key)).addErrback(lambda _: None)
        log.info("function {function} is gone; its queue consumer was removed",
                 function=loop.key)

    # -- running a call ------------------------------------------------------------------

    async def _run(self, msg: Any) -> None:
        try:
            call = read_call(msg.headers, msg.data)
        except BadMessage as exc:
            log.warn("dropping a message faastwist cannot read: {error}", error=str(exc))
            await self.bridge.call(self.js.ack, msg)
            return
        now = self.reactor.seconds()
        route = self.routes.lookup(call.function)
        if route is None or route.state is State.DESTROYED:
            await self._dead(msg, call, Outcome(0, 0, 0.0, reason="function deleted"))
            return
        if not route.active:
            if now - call.enqueued > self.config.max_age:
                await self._dead(msg, call, Outcome(0, 0, 0.0, reason=(
                    f"function {call.function} was not active within queue.maxAge "
                    f"(state: {route.state.value})")))
                return
            await self.bridge.call(self.js.nak, msg, INACTIVE_RECHECK)
            return
        # a first delivery has no attempts yet (a retried dead letter is published anew,
        # its record reset): only a redelivery needs its count read back
        record = None
        if int(msg.metadata.num_delivered) > 1:
            record = await self.bridge.call(self.js.get_status, call.call_id)
        attempts = int((record or {}).get("attempts", 0)) + 1
        await self._status(call, "running", attempts, (record or {}).get("lastStatus"))
        gauge = self.metrics.async_inflight.labels(call.function)
        gauge.inc()
        try:
            answer: Answer = await invoke(self.context, call, self.service.max_body_size)
        finally:
            gauge.dec()
        headers = tuple((n.decode("latin-1"), v.decode("latin-1")) for n, v in answer.headers)
        max_attempts = route.spec.max_attempts or self.config.max_attempts
        decision = decide(answer.status, attempts, max_attempts)
        outcome = Outcome(answer.status, attempts, answer.duration, headers)
        if decision is Decision.RETRY:
            retry_after = parse_retry_after(dict(answer.headers).get(b"retry-after"),
                                            self.reactor.seconds())
            delay = self.backoff.delay(attempts, self.random(), retry_after)
            await self._status(call, "queued", attempts, answer.status,
                               nextAttempt=self.reactor.seconds() + delay)
            await self._persist(self.js.nak, msg, delay)
            self.metrics.async_retries.labels(call.function).inc()
            return
        if decision is Decision.DEAD:
            outcome = Outcome(answer.status, attempts, answer.duration, headers,
                              reason=f"no attempts left ({attempts} of {max_attempts})")
            await self._dead(msg, call, outcome, answer.body)
            return
        state = "succeeded" if answer.status < 400 else "failed"
        await self._status(call, state, attempts, answer.status)
        if call.callback:
            await self._publish_callback(call, outcome, answer.body)
        await self._persist(self.js.ack, msg)
        self.metrics.async_done.labels(call.function, state).inc()

    async def _persist(self, function: Any, *args: Any) -> Any:
        """A step after the function ran, repeated while NATS is away (up to PERSIST
        tries): giving up would leave the message to be redelivered, and the function
        to run again, only after the ack wait."""
        for attempt in range(PERSIST):
            try:
                return await self.bridge.call(function, *args)
            except Exception as exc:
                if attempt == PERSIST - 1 or not self.running:
                    raise
                log.debug("queue step {step} failed ({error}); again", step=function.__name__,
                          error=str(exc))
                await deferLater(self.reactor, 0.5, lambda: None)

    async def _dead(self, msg: Any, call: Any, outcome: Outcome, body: bytes = b"") -> None:
        """Store the call in the dead letters (its request body, the last outcome)."""
        headers = call_headers(call, dedup=False)
        headers.update(outcome_headers(outcome))
        await self._persist(self.js.publish, self.names.dead_subject(call.function, call.call_id),
                            call.body, headers, self.config.timeout)
        await self._status(call, "dead", outcome.attempts, outcome.status or None,
                           reason=outcome.reason)
        if call.callback and outcome.attempts:
            await self._publish_callback(call, outcome, body)
        await self._persist(self.js.ack, msg)
        self.metrics.async_dead.labels(call.function).inc()
        self.metrics.async_done.labels(call.function, "dead").inc()
        log.info("call {call_id} of {function} moved to the dead letters: {reason}",
                 call_id=call.call_id, function=call.function, reason=outcome.reason)

    async def _publish_callback(self, call: Any, outcome: Outcome, body: bytes) -> None:
        headers = call_headers(call, dedup=False)
        headers.update(outcome_headers(outcome))
        await self._persist(self.js.publish,
                            self.names.callback_subject(call.function, call.call_id),
                            body, headers, self.config.timeout)

    async def _status(self, call: Any, state: str, attempts: int, last_status: Any,
                      reason: str = "", **extra: Any) -> None:
        record = status_record(call, state, self.reactor.seconds(), attempts, last_status,
                               reason, **extra)
        await self._persist(self.js.put_status, call.call_id, record)

    # -- callbacks -----------------------------------------------------------------------

    async def _deliver(self, msg: Any) -> None:
        try:
            call = read_call(msg.headers, msg.data)
            outcome = read_outcome(msg.headers)
        except BadMessage as exc:
            log.warn("dropping a callback faastwist cannot read: {error}", error=str(exc))
            await self.bridge.call(self.js.ack, msg)
            return
        delivery = int(msg.metadata.num_delivered)
        counter = self.metrics.async_callbacks
        try:
            status = await self.service.sender.send(call.callback or "", call.call_id,
                                                    call.function, outcome, call.body)
        except CallbackRefused as exc:
            counter.labels(call.function, "refused").inc()
            log.warn("callback of {call_id} to {url} refused: {error}", call_id=call.call_id,
                     url=call.callback, error=str(exc))
            await self._callback_result(call, {"error": str(exc), "attempts": delivery})
            await self.bridge.call(self.js.ack, msg)
            return
        decision = decide(status, delivery, self.config.max_attempts)
        if decision is Decision.RETRY:
            counter.labels(call.function, "retried").inc()
            await self.bridge.call(self.js.nak, msg, self.backoff.delay(delivery, self.random()))
            return
        counter.labels(call.function, "delivered" if decision is Decision.DONE else "failed").inc()
        await self._callback_result(call, {"status": status, "attempts": delivery})
        await self.bridge.call(self.js.ack, msg)

    async def _callback_result(self, call: Any, result: dict[str, Any]) -> None:
        record = await self.bridge.call(self.js.get_status, call.call_id)
        if record is None:
            return
        record["callback"] = result
        await self.bridge.call(self.js.put_status, call.call_id, record)

