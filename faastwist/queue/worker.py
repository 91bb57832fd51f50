"""The queue workers of one node: run queued calls, retry them, deliver callbacks.

Every node runs one pull loop per function on the function's durable consumer (shared
by all nodes: each message goes to one of them) and one loop on the callbacks
consumer. A loop asks for as many messages as it has free slots, runs each the moment
it arrives and asks again as soon as a request ends, so while calls wait the calls in
flight stay at the limit; the consumer's ``max_ack_pending`` (the function's
``asyncConcurrency``) bounds them across the cluster, so a slow function only ever
waits for itself.

A function's loop runs only while it has work: it is woken when a call of the function
is published (a plain subscription on the calls' subjects), when a call it put back is
due, and by a sweep every ``SWEEP_INTERVAL`` that finds the functions with stored calls
(redeliveries after a node died); it binds its consumer the first time it is woken, and
goes idle after a pull request that found nothing. With 10,000 functions, a loop each always
waiting in a fetch was 5,000 fetches a second, and the node never became ready.

A call is acknowledged only after its outcome is stored (the status record, the
callback message, the dead letter). While it runs, the node tells the server so
every third of ``queue.ackWait`` (an in-progress acknowledgement): a node that dies
mid-call leaves the message unacknowledged, and JetStream redelivers it one ack wait
later (at least once), whatever the function's timeout. A retry waits in the delayed
stream (``steps.py``); attempts are counted in the call's status record and travel
with a delayed call, so waiting for an inactive function does not use them up.
"""

from __future__ import annotations

import random
from typing import Any, Callable

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from faastwist.gate.routes import Route
from faastwist.model.fsm import State
from faastwist.queue.replay import Answer, invoke
from faastwist.queue.messages import BadMessage, Outcome, read_call
from faastwist.queue.policy import Backoff, Outcome as Decision, decide, parse_retry_after
from faastwist.queue.steps import Steps, attempts_so_far

log = Logger(namespace="faastwist.queue")


#: How long a call for an inactive function waits before it is looked at again.
INACTIVE_RECHECK = 5.0
#: How long a pull request waits on the server for messages before it expires.
PULL_EXPIRES = 2.0
#: Keys of the two loops that are not a function's (function names have no "_").
CALLBACKS = "_callbacks"
DELAYED = "_delayed"
#: Delayed calls handled at once by a node (each is a quick republish or put-back).
DELAYED_CONCURRENCY = 64
#: How often the node looks for functions with stored calls and wakes their loops.
SWEEP_INTERVAL = 5.0


def _log_failure(failure: Failure, consumer: str) -> None:
    log.failure("queued message of {consumer} failed", failure, consumer=consumer)


class Loop:
    """One pull loop: a consumer, its slots on this node, and what runs now."""

    __slots__ = ("key", "limit", "inflight", "pulling", "bound", "binding", "wanted", "retry",
                 "handler", "bind_args")

    def __init__(self, key: str, limit: int, handler: Callable[[Any], Any]) -> None:
        self.key = key
        self.limit = limit
        self.inflight = 0
        self.pulling = False
        self.bound = False
        self.binding = False
        self.wanted = False   # woken while a fetch was under way: fetch again after it
        self.retry: Any = None
        self.handler = handler
        self.bind_args: tuple = ()   # stream, durable, subject, limit, ack wait


class Worker(Steps):
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
        self._wakes: dict[str, Any] = {}     # function -> its delayed wake-up
        self._absent: set[str] = set()       # functions with calls but no route, last sweep
        self._sweeper: LoopingCall | None = None

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
        loop.bind_args = (names.callbacks, "callbacks", names.callback_subject("*"),
                          self.config.callback_concurrency, self.config.ack_wait)
        self._bind(loop)
        # calls waiting for their next attempt: max_ack_pending without a useful bound
        # (a delayed call put back until it is due holds a slot of this consumer only)
        loop = self.loops[DELAYED] = Loop(DELAYED, DELAYED_CONCURRENCY, self._release)
        loop.bind_args = (names.delayed, "delayed", names.delayed_subject("*"), 1_000_000,
                          self.config.ack_wait)
        self._bind(loop)
        reactor = self.reactor
        self.bridge.call(self.js.watch_calls,
                         lambda name: reactor.callFromThread(self.wake, name)).addErrback(
            lambda f: log.warn("cannot subscribe to the queued calls ({error}); the sweep "
                               "finds them", error=f.getErrorMessage()))
        self._sweeper = LoopingCall(self._sweep)
        self._sweeper.clock = reactor
        self._sweeper.start(SWEEP_INTERVAL, now=True)

    def _orphans(self, durables: list[str]) -> None:
        for durable in durables:
            name = durable[len("call-"):]
            if durable.startswith("call-") and name not in self.loops and self.running:
                self._adopt(name)

    def _adopt(self, name: str) -> None:
        """Drain the calls of a function that is gone into the dead letters."""
        loop = self.loops[name] = Loop(name, self.config.concurrency, self._run)
        loop.bind_args = (self.names.calls, self.names.consumer(name),
                          self.names.call_subject(name), self.config.concurrency,
                          self.config.ack_wait)
        loop.wanted = True
        self._bind(loop)

    def stop(self) -> None:
        self.running = False
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        for call in [loop.retry for loop in self.loops.values()] + list(self._wakes.values()):
            if call is not None and call.active():
                call.cancel()
        self._wakes.clear()

    # -- waking ----------------------------------------------------------------------------

    def wake(self, name: str) -> None:
        """A call of ``name`` may be waiting: pull until its consumer has none ready."""
        self._wakes.pop(name, None)
        loop = self.loops.get(name)
        if loop is None or not self.running:
            return  # not a function of this node's table (the sweep takes orphans)
        loop.wanted = True
        if loop.bound:
            self._pull(loop)
        elif not loop.binding:
            self._bind(loop)

    def _wake_later(self, name: str, delay: float) -> None:
        """Wake ``name`` when a call it put back (negative acknowledgement) is due."""
        current = self._wakes.get(name)
        due = self.reactor.seconds() + delay
        if current is not None and current.active():
            if current.getTime() <= due:
                return
            current.cancel()
        self._wakes[name] = self.reactor.callLater(delay + 0.05, self.wake, name)

    def _sweep(self) -> Deferred[None]:
        d = self.bridge.call(self.js.backlog, self.names.calls, self.names.call_subject("*"))
        d.addCallback(self._swept)
        d.addErrback(lambda f: log.debug("queue sweep failed: {error}",
                                         error=f.getErrorMessage()))
        return d

    def _swept(self, subjects: dict[str, int]) -> None:
        absent = set()
        for name in {self.names.function_of_call(subject) for subject in subjects}:
            if name in self.loops:
                self.wake(name)
            elif self.routes.lookup(name) is None:
                absent.add(name)
        # calls of a function this node has no route for: it was deleted, or created so
        # recently that the watch has not brought it yet; so only when seen twice
        for name in absent & self._absent:
            if self.running and name not in self.loops:
                log.info("calls of {function}, which no longer exists, go to the dead "
                         "letters", function=name)
                self._adopt(name)
        self._absent = absent

    def inflight(self) -> int:
        return sum(loop.inflight for loop in self.loops.values())

    # -- consumers -----------------------------------------------------------------------

    def _route_changed(self, name: str, route: Route | None) -> None:
        if not self.running:
            return
        loop = self.loops.get(name)
        if route is None:
            if loop is not None and (loop.bound or loop.binding):
                self.wake(name)  # it drains the function's calls into the dead letters
            elif loop is not None:
                del self.loops[name]  # never bound: the sweep finds calls left, if any
                self._settings.pop(name, None)
            return
        concurrency = route.spec.async_concurrency or self.config.concurrency
        settings = (concurrency, self.config.ack_wait)
        if loop is not None and self._settings.get(name) == settings:
            return
        self._settings[name] = settings
        if loop is None:
            loop = self.loops[name] = Loop(name, concurrency, self._run)
        loop.limit = concurrency
        loop.bind_args = (self.names.calls, self.names.consumer(name),
                          self.names.call_subject(name), *settings)
        if loop.bound or loop.binding:
            self._bind(loop)  # new settings for a consumer in use; others bind when woken

    def _bind(self, loop: Loop) -> None:
        loop.binding = True
        d = self.bridge.call(self.js.bind, loop.key, *loop.bind_args)

        def bound(_: Any) -> None:
            loop.binding = False
            loop.bound = True
            self._pull(loop)

        def failed(failure: Any) -> None:
            loop.binding = False
            log.warn("cannot bind the queue consumer {consumer}: {error}; retrying",
                     consumer=loop.bind_args[1], error=failure.getErrorMessage())
            if self.running:
                loop.retry = self.reactor.callLater(1.0, self._bind, loop)

        d.addCallbacks(bound, failed)

    def _pull(self, loop: Loop) -> None:
        """Ask for as many messages as the loop has free slots; each runs the moment it
        arrives, and the next request goes out as soon as this one ends, so the calls
        in flight stay at the limit while there are calls to run."""
        if not self.running or loop.pulling or not loop.bound:
            return
        free = loop.limit - loop.inflight
        if free <= 0:
            return
        loop.pulling = True
        loop.wanted = False
        reactor = self.reactor

        def deliver(msg: Any) -> None:  # on the bridge's loop thread
            reactor.callFromThread(self._dispatch, loop, msg)

        d = self.bridge.call(self.js.pull, loop.key, free, PULL_EXPIRES, deliver,
                             timeout=PULL_EXPIRES + 5)
        d.addCallbacks(self._pulled, self._fetch_failed, (loop,), None, (loop,))

    def _dispatch(self, loop: Loop, msg: Any) -> None:
        """Run one delivered message, telling the server it is in progress every third
        of the ack wait: a node that dies leaves its calls to be redelivered after one
        ack wait (``queue.ackWait``), not after the function's whole timeout."""
        if not self.running:
            self.bridge.call(self.js.nak, msg, 0).addErrback(lambda _: None)
            return
        loop.inflight += 1
        ticker = LoopingCall(self._progress, msg)
        ticker.clock = self.reactor
        ticker.start(self.config.ack_wait / 3, now=False)
        d = ensureDeferred(loop.handler(msg))
        d.addErrback(_log_failure, loop.key)
        d.addBoth(self._handled, loop, ticker)

    def _progress(self, msg: Any) -> None:
        self.bridge.call(self.js.progress, msg).addErrback(lambda f: log.debug(
            "in-progress acknowledgement failed: {error}", error=f.getErrorMessage()))

    def _pulled(self, count: int, loop: Loop) -> None:
        loop.pulling = False
        if loop.key not in (CALLBACKS, DELAYED) and not count:
            if self.routes.lookup(loop.key) is None:
                self._maybe_retire(loop)
                return
            if not loop.wanted:
                return  # idle until a call is published or the sweep finds one
        self._pull(loop)

    def _handled(self, _: Any, loop: Loop, ticker: LoopingCall) -> None:
        if ticker.running:
            ticker.stop()
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
            self._wake_later(call.function, INACTIVE_RECHECK)
            return
        # a first delivery has no attempts yet (a retried dead letter is published anew,
        # its record reset): only a redelivery needs its count read back
        # a call back from the delayed stream carries its attempts so far
        prior = attempts_so_far(msg.headers)
        record = None
        if int(msg.metadata.num_delivered) > 1:
            record = await self.bridge.call(self.js.get_status, call.function, call.call_id)
        attempts = max(prior, int((record or {}).get("attempts", 0))) + 1
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
            # header names come as the function sent them ("Retry-After")
            retry_after = parse_retry_after(
                next((v for n, v in answer.headers if n.lower() == b"retry-after"), None),
                self.reactor.seconds())
            delay = self.backoff.delay(attempts, self.random(), retry_after)
            due = self.reactor.seconds() + delay
            await self._status(call, "queued", attempts, answer.status, nextAttempt=due)
            await self._delay(msg, call, attempts, due)
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
