"""One proxied request: route lookup, lease, upstream head, streamed bodies both ways.

An ``Exchange`` carries one request from a client transport (the lean HTTP/1.1
protocol in lean.py, or the twisted.web resource in web.py, which serves HTTPS and
HTTP/2) to an upstream connection and back, with back-pressure in both directions,
the per-function timeout (end to end: lease, connect, response), metrics and the
access log. The transports implement the small ``Downstream`` interface, so both make
the same decisions (decisions.py, wire.py) and give the same answers.
"""

from __future__ import annotations

from typing import Any, Protocol as TypingProtocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure

from faastwist.gate.asynccall import Accept, begin_async
from faastwist.gate.access import TokenBucket, key_allowed, presented_key, retry_after
from faastwist.gate.context import GateContext
from faastwist.metrics import FunctionCounts
from faastwist.gate.decisions import (
    DURATION,
    RETRY_AFTER_NOT_ACTIVE,
    START_TIME,
    GateError,
    RequestHead,
    classify,
    error_headers,
    is_system,
    resolve,
    upstream_head,
)
from faastwist.gate.wire import CALL_ID, error_body, reason as status_reason
from faastwist.providers.base import NoCapacity, UpstreamLease
from faastwist.gate.routes import Route
from faastwist.gate.upstream import Origin, UpstreamConnection, classify_connect_error
from faastwist.model.spec import RateLimit

log = Logger()

#: Body bytes held while the upstream is not connected yet, and replayable on a retry.
BUFFER_LIMIT = 64 * 1024
CLIENT_CLOSED = 499  # nginx's code for "the client went away first"


class Downstream(TypingProtocol):
    """A client-side transport as an exchange sees it."""

    body_producer: IPushProducer  # pauses reading the request body

    def send_continue(self) -> None: ...

    def send_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]],
                  length: int | None, bodyless: bool, close: bool) -> None: ...

    def send_data(self, data: bytes) -> None: ...

    def send_end(self) -> None: ...

    def send_simple(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]],
                    body: bytes, close: bool) -> None:
        """A whole response at once (gate errors); ``headers`` include Content-Length."""

    def abort(self) -> None:
        """Drop the client connection (a response was cut short)."""

    def register_producer(self, producer: IPushProducer) -> None: ...

    def unregister_producer(self) -> None: ...

    def exchange_done(self, exchange: "Exchange", close: bool) -> None: ...


class Exchange:
    """One proxied request, from its head to the end of its response."""

    __slots__ = (
        "context", "down", "head", "started", "route", "meters", "call_id", "name",
        "target", "lease", "waiting", "conn", "origin", "head_bytes",
        "body_override", "pending", "pending_size", "sent", "sent_size", "retried",
        "body_complete", "bytes_in", "bytes_out", "responded", "status", "done",
        "response_length", "producing_down", "producing_up", "client_paused",
        "head_only", "ended", "terminated", "accept", "replay",
    )

    def __init__(self, context: GateContext, down: Downstream, head: RequestHead) -> None:
        self.context = context
        self.down = down
        self.head = head
        self.started = context.clock.seconds()
        self.route: Route | None = None
        self.meters: FunctionCounts | None = None
        self.call_id = b""
        self.name = ""
        self.target = head.target
        self.lease: Any = None
        self.waiting: Deferred[UpstreamLease] | None = None
        self.conn: UpstreamConnection | None = None
        self.origin: Origin | None = None
        self.head_bytes = b""
        self.body_override: bytes | None = None
        self.pending: list[bytes] = []
        self.pending_size = 0
        self.sent: list[bytes] | None = []
        self.sent_size = 0
        self.retried = False
        self.body_complete = False
        self.bytes_in = 0
        self.bytes_out = 0
        self.responded = False
        self.status = 0
        self.done = False
        self.response_length: int | None = None
        self.producing_down = False
        self.producing_up = False
        self.client_paused = False
        self.head_only = head.method == b"HEAD"
        self.ended = 0.0
        self.terminated = False  # the chunked body's last chunk went upstream
        self.accept: Accept | None = None  # an asynchronous call being queued
        #: a queued call run by the queue's worker: its key and rate were checked when
        #: it was accepted (the key is not stored with it)
        self.replay = False

    # -- start -------------------------------------------------------------------------

    def begin(self) -> None:
        context = self.context
        context.inflight += 1
        head = self.head
        try:
            classify(head)
            self.call_id = head.call_id or context.call_ids()
            if not head.chunked and not head.content_length:
                self.body_complete = True
            if head.func is None and context.system is not None and is_system(head.target):
                self._begin_system(context.system)
                return
            self.name, self.target = resolve(head, context.namespace)
            route = context.routes.lookup(self.name)
            if route is None:
                if not context.routes.synced:
                    raise GateError(503, "the route table is still loading", retry_after=1)
                raise GateError(404, f"function {self.name} not found")
            if route.key_digests and not self.replay:
                self._check_key(route)
            if route.rate_limit is not None and not self.replay:
                self._check_rate(route.rate_limit)
            if head.async_call:  # queued, even for an inactive function
                self.accept = begin_async(self, route)
                if self.accept is not None and self.body_complete:
                    self.accept.body_end()
                return
            if not route.active:
                raise GateError(503, f"function {self.name} is not active "
                                     f"(state: {route.state.value})",
                                retry_after=RETRY_AFTER_NOT_ACTIVE)
            if head.content_length is not None and head.content_length > context.max_body_size:
                raise GateError(413, f"request body of {head.content_length} bytes exceeds "
                                     f"the limit of {context.max_body_size} bytes (maxBodySize)",
                                close=True)
        except GateError as error:
            self.reply_error(error)
            return
        self.route = route
        meters = self.meters = context.function_metrics(route)
        meters.started += 1
        meters.active += 1
        context.deadlines[self] = self.started + route.timeout
        try:
            lease = context.provider.acquire(route.spec)
        except Exception:
            self._lease_failed(Failure())
            return
        if isinstance(lease, Deferred):  # a cold start, say
            self.waiting = lease
            lease.addCallbacks(self._leased, self._lease_failed)
        else:
            self._leased(lease)

    def _begin_system(self, route: Route) -> None:
        """OpenFaaS's API on the gate's port: relayed to the admin listener."""
        self.route = route
        self.name = route.name
        self.context.deadlines[self] = self.started + route.timeout
        self._leased(self.context.system_lease)

    def _check_key(self, route: Route) -> None:
        """401 unless the caller presents one of the function's keys (before any
        upstream work or scale from zero); the key itself is not forwarded."""
        head = self.head
        key, header = presented_key(head.headers)
        if not key_allowed(key, route.key_digests):
            self.context.metrics.unauthorized.labels(self.name).inc()
            raise GateError(401, f"function {self.name} needs a key: send it as "
                                 f"'Authorization: Bearer KEY' or 'X-API-Key: KEY'"
                            if key is None else f"function {self.name}: the key is not valid")
        head.headers = [h for h in head.headers if h[0] != header]

    def _check_rate(self, limit: RateLimit) -> None:
        context = self.context
        entry = context.buckets.get(self.name)
        now = context.clock.seconds()
        if entry is None or entry[0] != limit:
            entry = context.buckets[self.name] = (limit, TokenBucket(limit.rps, limit.burst,
                                                                     now))
        wait = entry[1].take(now)
        if wait:
            context.metrics.rate_limited.labels(self.name).inc()
            raise GateError(429, f"function {self.name} is over its rate limit of "
                                 f"{limit.rps:g} requests/s (burst {limit.burst}) on this node",
                            retry_after=retry_after(wait))

    def _lease_failed(self, failure: Failure) -> None:
        self.waiting = None
        if self.done:
            return
        error = failure.value
        if isinstance(error, NoCapacity):
            self.reply_error(GateError(503, str(error), retry_after=error.retry_after))
            return
        if isinstance(error, GateError):
            self.reply_error(error)
            return
        log.failure("provider could not give an upstream for {function}", failure,
                    function=self.name)
        self.reply_error(GateError(503, f"no upstream for function {self.name}: "
                                        f"{failure.getErrorMessage()}", retry_after=5))

    def _leased(self, lease: Any) -> None:
        self.waiting = None
        if self.done:
            lease.release()
            return
        self.lease = lease
        lease.notify_lost(self.upstream_lost)   # a local replica's death ends this at once
        route = self.route
        assert route is not None  # set by begin before the lease is asked for
        upstream = lease.upstream
        cached = route.cache.upstream
        if cached is None or cached[0] is not upstream:
            cached = route.cache.upstream = (
                upstream, (upstream.scheme, upstream.host, upstream.port),
                (upstream.host_header or f"{upstream.host}:{upstream.port}").encode())
        self.origin = cached[1]
        self.head_bytes, self.body_override = upstream_head(
            self.head, self.target, route.adaptor, cached[2], self.call_id)
        if self.head.expect_continue and not self.body_complete:
            self.down.send_continue()
        conn = self.context.pool.get_idle(self.origin)
        if conn is None:
            self.context.pool.connect(self.origin).addCallbacks(self._connected,
                                                             self._connect_failed)
        else:
            self._connected(conn)

    def _connect_failed(self, failure: Failure) -> None:
        if self.done:
            return
        kind, detail = classify_connect_error(failure)
        self._upstream_error(kind, detail)

    def _connected(self, conn: UpstreamConnection) -> None:
        if self.done:
            conn.release(False)
            return
        self.conn = conn
        if self.retried:  # everything sent on the connection that died, once more
            out = [b"".join(self.sent or ())]
        else:
            out = [self.head_bytes]
            if self.body_override is not None:
                out.append(self.body_override)
        if self.pending:  # body read while no connection was there
            out.extend(self.pending)
            self.pending = []
            self.pending_size = 0
        if (self.body_complete and self.head.chunked and self.body_override is None
                and not self.terminated):
            out.append(b"0\r\n\r\n")
            self.terminated = True
        data = b"".join(out) if len(out) > 1 else out[0]
        if self.retried or len(data) > BUFFER_LIMIT:
            self.sent = None  # no second retry; or too much to keep for one
        elif self.sent is not None:
            self.sent.append(data)
            self.sent_size = len(data)
        conn.send(self, data, self.head_only)
        self._streaming(conn)

    def _streaming(self, conn: UpstreamConnection) -> None:
        """The upstream is connected: let the request body flow, with back-pressure."""
        if self.done or self.conn is not conn:
            return
        if self.client_paused:
            self.client_paused = False
            self.down.body_producer.resumeProducing()
        if not self.body_complete and not self.producing_up:
            self.producing_up = True
            conn.transport.registerProducer(self.down.body_producer, True)

    # -- request body from the client --------------------------------------------------

    def body(self, data: bytes) -> None:
        if self.done:
            return
        self.bytes_in += len(data)
        if self.accept is not None:
            self.accept.body(data)
            return
        if self.bytes_in > self.context.max_body_size:
            self._too_large()
            return
        if self.body_override is not None or self.route is None:
            return
        if self.head.chunked:
            data = b"%x\r\n%s\r\n" % (len(data), data)
        conn = self.conn
        if conn is None:
            self.pending.append(data)
            self.pending_size += len(data)
            if self.pending_size > BUFFER_LIMIT and not self.client_paused:
                self.client_paused = True
                self.down.body_producer.pauseProducing()
            return
        self._remember(data)
        conn.write(data)

    def body_end(self) -> None:
        if self.body_complete:
            return
        self.body_complete = True
        if self.accept is not None and not self.done:
            self.accept.body_end()
            return
        if self.done or self.route is None:
            return
        if self.producing_up and self.conn is not None:
            self.producing_up = False
            self.conn.transport.unregisterProducer()
            self.down.body_producer.resumeProducing()
        if self.head.chunked and self.body_override is None and self.conn is not None:
            self.terminated = True
            self._remember(b"0\r\n\r\n")
            self.conn.write(b"0\r\n\r\n")

    def _remember(self, data: bytes) -> None:
        sent = self.sent
        if sent is not None:
            self.sent_size += len(data)
            if self.sent_size > BUFFER_LIMIT or self.responded:
                self.sent = None
            else:
                sent.append(data)

    def _too_large(self) -> None:
        error = GateError(413, f"request body exceeds the limit of {self.context.max_body_size} "
                               f"bytes (maxBodySize)", close=True)
        if self.responded:
            self._abort_both(413)
        else:
            self._drop_upstream()
            self.reply_error(error)

    # -- the upstream's response (UpstreamHandler) -------------------------------------

    def upstream_response(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]],
                          length: int | None, bodyless: bool) -> None:
        if self.done:
            return
        self.responded = True
        self.sent = None
        self.status = status
        self.response_length = length
        started = self.started
        headers.append((CALL_ID, self.call_id))
        headers.append((START_TIME, b"%d000" % (started * 1e6)))  # Unix ns (microsecond precision)
        headers.append((DURATION, b"%.6f" % (self.context.clock.seconds() - started)))
        self.down.send_head(status, reason, headers, length, bodyless,
                            self.context.draining or not self.context.keep_alive)

    def upstream_data(self, data: bytes) -> None:
        if self.done:
            return
        self.bytes_out += len(data)
        self.down.send_data(data)
        if not self.producing_down and (self.response_length is None
                                        or self.bytes_out < self.response_length):
            self.producing_down = True
            assert self.conn is not None  # the data comes from it
            self.down.register_producer(self.conn)

    def upstream_done(self) -> None:
        if self.done:
            return
        self._detach_upstream()
        self.down.send_end()
        self._finish(self.status, reusable=self.body_complete)

    def upstream_failed(self, kind: str, detail: str, retryable: bool) -> None:
        if self.done:
            return
        conn = self.conn
        origin = self.origin
        if (retryable and not self.retried and self.sent is not None and conn is not None
                and origin is not None and not self.responded):
            # a pooled connection the upstream had closed meanwhile: send again, once
            self.retried = True
            self._detach_upstream()
            conn.release(False)
            self.conn = None
            d = self.context.pool.connect(origin)
            d.addCallbacks(self._connected, self._connect_failed)
            return
        self._upstream_error(kind, detail)

    def upstream_lost(self, detail: str) -> None:
        """The replica behind this request died: 502 if nothing was answered yet, else
        cut the client's connection, now (whatever back-pressure paused meanwhile)."""
        if self.done:
            return
        waiting, self.waiting = self.waiting, None
        self._upstream_error("exit", detail)
        if waiting is not None:
            waiting.cancel()

    def _upstream_error(self, kind: str, detail: str) -> None:
        meters = self.meters
        if meters is not None:
            meters.error(kind)
        if self.responded:
            log.info("upstream of {function} failed mid-response: {detail}",
                     function=self.name, detail=detail)
            self._abort_both(self.status)
            return
        self._drop_upstream()
        origin = "%s://%s:%d" % self.origin if self.origin else "?"
        self.reply_error(GateError(502, f"upstream of function {self.name} ({origin}) "
                                        f"failed: {detail}"))

    def timed_out(self) -> None:
        """The function's timeout passed (called by the gate's deadline sweep)."""
        if self.done:
            return
        if self.meters is not None:
            self.meters.error("timeout")
        waiting, self.waiting = self.waiting, None
        if self.responded:
            self._abort_both(504)
        else:
            self._drop_upstream()
            timeout = self.route.timeout if self.route is not None else 0
            self.reply_error(GateError(504, f"function {self.name} did not answer within "
                                            f"{timeout:g}s (its timeout)"))
        if waiting is not None:
            waiting.cancel()

    def bad_request(self, message: str, code: int = 400) -> None:
        """The client's body cannot be parsed (bad chunk framing): 400 and close when
        the answer has not begun, else end both sides."""
        if self.done:
            return
        waiting, self.waiting = self.waiting, None
        if self.responded:
            self._abort_both(self.status)
        else:
            self._drop_upstream()
            self.reply_error(GateError(code, message, close=True))
        if waiting is not None:
            waiting.cancel()

    # -- the client went away ----------------------------------------------------------

    def client_lost(self) -> None:
        if self.done:
            return
        waiting, self.waiting = self.waiting, None
        self._drop_upstream()
        self._finish(CLIENT_CLOSED if not self.responded else self.status, reusable=False,
                     notify=False)
        if waiting is not None:
            waiting.cancel()

    # -- endings -----------------------------------------------------------------------

    def reply_error(self, error: GateError) -> None:
        body = error_body(error.code, error.message)
        headers = error_headers(error, body, self.call_id or None)
        close = (error.close or not self.body_complete or self.context.draining
                 or not self.context.keep_alive)
        self.responded = True
        self.down.send_simple(error.code, status_reason(error.code), headers, body, close)
        self._finish(error.code, reusable=False, close=close)

    def reply_simple(self, code: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """A whole answer of the gate's own that is not an error (202 for a queued call)."""
        close = not self.body_complete or self.context.draining or not self.context.keep_alive
        self.responded = True
        self.down.send_simple(code, status_reason(code), headers, body, close)
        self._finish(code, reusable=False, close=close)

    def _drop_upstream(self) -> None:
        conn = self.conn
        if conn is not None:
            self._detach_upstream()
            self.conn = None
            conn.release(False)

    def _detach_upstream(self) -> None:
        if self.producing_up and self.conn is not None:
            self.producing_up = False
            self.conn.transport.unregisterProducer()
            # the upstream may have paused the client's body, and unregistering does
            # not resume it: do, or a kept-alive client connection would stall
            self.down.body_producer.resumeProducing()
        if self.producing_down:
            self.producing_down = False
            self.down.unregister_producer()

    def _abort_both(self, code: int) -> None:
        self._drop_upstream()
        self.down.abort()
        self._finish(code, reusable=False, notify=False)

    def _finish(self, code: int, reusable: bool, close: bool = False,
                notify: bool = True) -> None:
        if self.done:
            return
        self.done = True
        context = self.context
        context.deadlines.pop(self, None)
        conn = self.conn
        if conn is not None:
            self._detach_upstream()
            self.conn = None
            conn.release(reusable)
        if self.client_paused:
            self.client_paused = False
            self.down.body_producer.resumeProducing()
        if self.lease is not None:
            lease, self.lease = self.lease, None
            lease.release()
        self.ended = context.clock.seconds()
        elapsed = self.ended - self.started
        meters = self.meters
        if meters is not None:
            meters.active -= 1
            meters.finished(code, elapsed)
            meters.bytes_in += self.bytes_in
            meters.bytes_out += self.bytes_out
        if context.access_log:
            head = self.head
            context.access.record(self.ended, head.method, head.target, self.name, code,
                                  elapsed, self.bytes_out, self.call_id)
        context._ended()
        if notify:
            self.down.exchange_done(self, close or not self.body_complete)
