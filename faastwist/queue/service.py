"""The async queue of one node: the NATS connection, accepting calls, the workers,
and what the admin API shows of them.

Start-up (``start``, awaited by the node before the gate listens): the asyncio
bridge, the embedded nats-server when ``queue.natsURLs`` is empty, the connection and
the controller's streams. The workers start once the gate exists (``attach``): they
run calls through the gate's own exchange. With an external NATS that is down at
start, the node still starts: accepting answers 503 until the connection is up.
"""

from __future__ import annotations

import socket
from typing import Any, Callable

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from faastwist.config import QueueConfig
from faastwist.gate.asynccall import QueuedCall, QueueFull, QueueUnavailable
from faastwist.metrics import Metrics
from faastwist.queue.bridge import AsyncioBridge
from faastwist.queue.publisher import Publisher
from faastwist.queue.callback import CallbackSender
from faastwist.queue.jetstream import JetStream, Names, StreamLimits, is_full
from faastwist.queue.messages import (
    BadMessage,
    call_headers,
    read_call,
    read_outcome,
    status_record,
)
from faastwist.queue.policy import (
    Admission,
    CallbackRules,
    QueuedCounts,
    parse_networks,
    refuse_callback_url,
)
from faastwist.util.failures import error_of

log = Logger(namespace="faastwist.queue")

METRICS_INTERVAL = 5.0
#: Retry-After of a 429 for a function at its maxQueued, and of a 507 for a full queue.
FULL_RETRY_AFTER = 1
STORAGE_RETRY_AFTER = 30


def local_addresses() -> frozenset[str]:
    """This host's own addresses (besides loopback), as far as its name resolves."""
    found: set[str] = set()
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None):
            found.add(str(info[4][0]))
    except OSError:
        pass
    return frozenset(found)


class QueueService:
    """Owns the bridge, the NATS connection and the workers; the gate's Enqueuer."""

    def __init__(self, config: QueueConfig, controller: str, reactor: Any, metrics: Metrics,
                 routes: Any, node_ports: set[int], bridge: Any = None,
                 jetstream: Callable[..., Any] = JetStream) -> None:
        """``bridge`` and ``jetstream`` (a JetStream's constructor): the real ones unless
        a test passes faastwist.testing.jetstream's fakes."""
        self.config = config
        self.reactor = reactor
        self.metrics = metrics
        self.routes = routes
        self.names = Names(controller)
        self.bridge = bridge if bridge is not None else AsyncioBridge(reactor, config.timeout)
        self._jetstream = jetstream
        self.publisher = Publisher(self.bridge, reactor, config.timeout)
        #: the accepted-calls counter per function (a labels() lookup per call costs)
        self._accepted: dict[str, Any] = {}
        self.js: JetStream | None = None
        self.max_body_size = config.max_body_size
        self.node_ports = set(node_ports)
        self.rules = CallbackRules(parse_networks(config.callback_allow),
                                   frozenset(self.node_ports), local_addresses())
        self.sender = CallbackSender(reactor, self.rules, config.callback_timeout)
        self.worker: Any = None
        self._measured: set[str] = set()   # functions whose queue gauges are not zero
        self._meter: LoopingCall | None = None
        self.counts = QueuedCounts()
        self._counting: dict[str, list[Deferred[None]]] = {}

    # -- start and stop ------------------------------------------------------------------

    async def start(self, embedded: Any = None) -> None:
        """Connect (waiting for the embedded server, if any); with external URLs an
        unreachable NATS does not stop the node: it keeps trying in the background."""
        self.bridge.startService()
        urls = list(self.config.nats_urls)
        token = None
        if embedded is not None:
            urls = [await embedded.ready()]
            self.node_ports.update(p for p in embedded.ports if p)
            self.rules = CallbackRules(self.rules.allow, frozenset(self.node_ports),
                                       self.rules.local_addresses)
            self.sender.rules = self.rules
            token = embedded.token
        self.js = self._jetstream(urls, self.names, self.config.status_ttl, self._connection,
                            token=token,
                            limits=StreamLimits(max_bytes=self.config.max_bytes))
        try:
            await self._connect()
        except Exception as exc:
            if embedded is not None:
                raise
            log.warn("NATS at {urls} is not reachable ({error}); asynchronous calls get "
                     "503 until it is", urls=", ".join(urls), error=str(exc))
            self._connect_later()

    async def _connect(self) -> None:
        assert self.js is not None
        max_payload = await self.bridge.call(self.js.connect, self.config.timeout,
                                             timeout=self.config.timeout * 3)
        await self.bridge.call(self.publisher.start, self.js)
        room = max_payload - 128 * 1024
        if room < self.max_body_size:
            log.warn("the NATS server's max_payload ({payload}) leaves room for bodies of "
                     "{room} bytes only; queue.maxBodySize is lowered to that",
                     payload=max_payload, room=room)
            self.max_body_size = max(room, 0)

    def _connect_later(self) -> None:
        async def retry() -> None:
            while self.js is not None and not self.js.connected:
                await deferLater(self.reactor, 2.0, lambda: None)
                try:
                    await self._connect()
                except Exception:
                    continue
            if self.worker is not None and not self.worker.running:
                self.worker.start()
        ensureDeferred(retry()).addErrback(lambda f: log.failure("NATS connect loop", f))

    def _connection(self, state: str) -> None:
        """Called on the asyncio thread when the connection drops or comes back."""
        self.reactor.callFromThread(log.info, "NATS connection {state}", state=state)

    def attach(self, context: Any) -> None:
        """The gate exists: accept through it and start the workers."""
        from faastwist.queue.worker import Worker

        context.queue = self
        self.worker = Worker(self, context)
        if self.js is not None and self.js.connected:
            self.worker.start()
        self._meter = LoopingCall(self._measure)
        self._meter.clock = self.reactor
        self._meter.start(METRICS_INTERVAL, now=False)

    def stop_worker(self) -> None:
        if self._meter is not None and self._meter.running:
            self._meter.stop()
        if self.worker is not None:
            self.worker.stop()

    async def stop(self) -> None:
        """Close the connection and the bridge (after the gate and the workers)."""
        js, self.js = self.js, None
        if js is not None:
            try:
                await self.bridge.call(js.close, timeout=5.0)
            except Exception:
                pass
        await self.bridge.stopService()
        await self.sender.close()

    # -- accepting (gate.asynccall.Enqueuer) ------------------------------------------------

    def check_callback(self, url: str) -> None:
        """Refuse a malformed callback URL, or a literal address the rules forbid;
        host names are checked when the callback is sent (they may change)."""
        refuse_callback_url(url, self.rules)

    def submit(self, call: QueuedCall) -> Deferred[Any]:
        """Admit the call against its function's ``maxQueued`` (asking the server for
        the count when this node's is stale), then publish it; a full stream
        (``queue.maxBytes``) is 507, a full function 429. Plain Deferreds, no coroutine:
        this runs once per accepted call."""
        js = self.js
        if js is None or not js.connected or not self.publisher.ready:
            return _failed(QueueUnavailable("NATS is not connected"))
        function = call.function
        route = self.routes.lookup(function)
        limit = (route.spec.max_queued if route is not None else 0) or self.config.max_queued
        admission = self.counts.take(function, limit, self.reactor.seconds())
        if admission is Admission.COUNT:
            return ensureDeferred(self._submit_counted(js, call, limit))
        if admission is not Admission.ADMIT:
            return _failed(self._function_full(function, limit))
        return self._publish(call)

    async def _submit_counted(self, js: JetStream, call: QueuedCall, limit: int) -> int:
        function = call.function
        await self._count(js, function)
        if self.counts.take(function, limit, self.reactor.seconds()) is not Admission.ADMIT:
            raise self._function_full(function, limit)
        return await self._publish(call)

    def _function_full(self, function: str, limit: int) -> QueueFull:
        self.metrics.async_refused.labels(function, "function-full").inc()
        return QueueFull(429, f"function {function} has {limit} calls queued, its limit "
                              f"(maxQueued in its spec, else queue.maxQueued); try "
                              f"again later", FULL_RETRY_AFTER)

    def _publish(self, call: QueuedCall) -> Deferred[Any]:
        function = call.function
        d = self.publisher.publish(self.names.call_subject(function, call.call_id),
                                   call.body, call_headers(call))
        return d.addCallbacks(self._published, self._not_published,
                              callbackArgs=(function,), errbackArgs=(function,))

    def _published(self, seq: int, function: str) -> int:
        counter = self._accepted.get(function)
        if counter is None:
            counter = self._accepted[function] = self.metrics.async_accepted.labels(function)
        counter.inc()
        return seq

    def _not_published(self, failure: Failure, function: str) -> Failure:
        exc = error_of(failure)
        if is_full(exc):
            self.metrics.async_refused.labels(function, "queue-full").inc()
            return Failure(QueueFull(507, "the queue is full (queue.maxBytes); try again "
                                          "later", STORAGE_RETRY_AFTER))
        return Failure(QueueUnavailable(str(exc) or type(exc).__name__))

    def _count(self, js: JetStream, function: str) -> Deferred[None]:
        """Ask the server how many calls ``function`` has queued; callers that need the
        count while it is being asked share the one request."""
        waiters = self._counting.get(function)
        d: Deferred[None] = Deferred()
        if waiters is not None:
            waiters.append(d)
            return d
        waiters = self._counting[function] = [d]
        asked = self.reactor.seconds()

        def done(result: Any) -> None:
            del self._counting[function]
            if isinstance(result, Failure):
                error: Failure | None = Failure(QueueUnavailable(
                    f"cannot count the queued calls: {result.getErrorMessage()}"))
            else:
                error = None
                self.counts.counted(function, int(result), asked)
            for waiter in waiters:
                if error is None:
                    waiter.callback(None)
                else:
                    waiter.errback(error)

        self.bridge.call(js.queued, function).addBoth(done)
        return d

    # -- visibility (the admin API) ------------------------------------------------------

    def _require(self) -> JetStream:
        if self.js is None or not self.js.connected:
            raise QueueUnavailable("NATS is not connected")
        return self.js

    async def status(self, function: str, call_id: str) -> dict[str, Any] | None:
        js = self._require()
        record = await self.bridge.call(js.get_status, function, call_id)
        if record is not None and record.get("function") == function:
            if record.get("state") == "dead":
                record.update(await self._dead_details(function, call_id) or {})
            return record
        msg = await self.bridge.call(js.last_message, self.names.calls,
                                     self.names.call_subject(function, call_id))
        if msg is not None:
            call = read_call(msg.headers, b"")
            return status_record(call, "queued", self.reactor.seconds())
        dead = await self._dead_details(function, call_id)
        if dead is not None:
            return dead
        return None

    async def _dead_details(self, function: str, call_id: str) -> dict[str, Any] | None:
        js = self._require()
        msg = await self.bridge.call(js.last_message, self.names.dead,
                                     self.names.dead_subject(function, call_id))
        return None if msg is None else _dead_entry(msg)

    async def dead_letters(self, function: str, limit: int = 1000) -> list[dict[str, Any]]:
        js = self._require()
        messages = await self.bridge.call(js.list_messages, self.names.dead,
                                          self.names.dead_subject(function), limit,
                                          timeout=self.config.timeout * 6)
        return [entry for entry in map(_dead_entry, messages) if entry is not None]

    async def retry(self, function: str, call_id: str) -> dict[str, Any] | None:
        """Queue a dead letter again with fresh attempts; None when there is none."""
        js = self._require()
        msg = await self.bridge.call(js.last_message, self.names.dead,
                                     self.names.dead_subject(function, call_id))
        if msg is None:
            return None
        call = read_call(msg.headers, msg.data)
        record = status_record(call, "queued", self.reactor.seconds(), 0, None, "", retried=True)
        await self.bridge.call(js.put_status, function, call.call_id, record)
        await self.bridge.call(js.publish, self.names.call_subject(function, call_id),
                               call.body, call_headers(call, dedup=False), self.config.timeout)
        await self.bridge.call(js.delete_message, self.names.dead, int(msg.seq))
        return record

    async def purge(self, function: str) -> None:
        js = self._require()
        await self.bridge.call(js.purge, self.names.dead, self.names.dead_subject(function))

    # -- metrics -------------------------------------------------------------------------

    def _measure(self) -> Deferred[Any]:
        return ensureDeferred(self._measure_all())

    async def _measure_all(self) -> None:
        """Queued calls per function from one request whose size is the backlog's (one
        consumer lookup per function took 10,000 requests per round at 10,000
        functions); the oldest call's age for the functions that have calls."""
        js = self.js
        if js is None or not js.connected:
            return
        now = self.reactor.seconds()
        self.counts.forget(self.reactor.seconds() - 60.0)
        try:
            subjects = await self.bridge.call(js.backlog, self.names.calls,
                                              self.names.call_subject("*"))
        except Exception:
            return
        counts: dict[str, int] = {}
        for subject, count in subjects.items():
            name = self.names.function_of_call(subject)
            counts[name] = counts.get(name, 0) + int(count)
        for name in self._measured - set(counts):
            self.metrics.async_queued.labels(name).set(0)
            self.metrics.async_oldest.labels(name).set(0)
        self._measured = set(counts)
        for name, count in counts.items():
            try:
                oldest = await self.bridge.call(js.oldest, self.names.calls,
                                                self.names.call_subject(name))
            except Exception:
                oldest = None
            self.metrics.async_queued.labels(name).set(count)
            self.metrics.async_oldest.labels(name).set(max(0.0, now - oldest) if oldest else 0)


def _dead_entry(msg: Any) -> dict[str, Any] | None:
    try:
        call = read_call(msg.headers, b"")
        outcome = read_outcome(msg.headers)
    except BadMessage:
        return None
    entry = status_record(call, "dead", msg.time.timestamp() if msg.time else 0.0,
                          outcome.attempts, outcome.status or None, outcome.reason)
    entry["deadAt"] = entry.pop("updated")
    return entry


def _failed(error: Exception) -> Deferred[Any]:
    d: Deferred[Any] = Deferred()
    d.errback(error)
    return d
