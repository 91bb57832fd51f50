"""Accepting an asynchronous call: read the body, queue it, answer 202 once stored.

A request marked async (``/async-function/{name}`` or ``X-FaaS-Async: true``) for a
known function is not proxied: its body is read (bounded by ``queue.maxBodySize``),
handed to the queue, and answered 202 with ``X-Call-Id`` only when JetStream has
acknowledged the message; when the queue cannot store it the client gets 503, never
a 202 for a call that was not stored. The queue itself is injected into the gate's
context (``GateContext.queue``); the gate knows it only through ``Enqueuer``.
"""

from __future__ import annotations

import json
import re
from typing import Any, Protocol as TypingProtocol

import attrs
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from faastwist.gate.decisions import ASYNC_HEADER, GateError
from faastwist.gate.routes import Route
from faastwist.gate.wire import CALL_ID

CALLBACK_HEADER = b"x-callback-url"
#: Call ids become NATS subject tokens and key-value keys: keep them to this alphabet.
CALL_ID_PATTERN = re.compile(rb"^[A-Za-z0-9_-]{1,128}$")
#: Headers not stored with a queued call (the gate sets them again when it runs).
_NOT_STORED = frozenset({b"content-length", b"transfer-encoding", b"expect", ASYNC_HEADER,
                         b"connection", b"keep-alive", b"te", b"trailer", b"upgrade",
                         b"proxy-connection", CALL_ID})


@attrs.frozen
class QueuedCall:
    """One asynchronous call as stored in the queue (header names lower-case)."""

    function: str
    call_id: str
    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    client_ip: str
    body: bytes
    callback: str | None
    enqueued: float


class QueueUnavailable(Exception):
    """The queue could not store a call (NATS unreachable, timeout): answer 503."""


class QueueFull(Exception):
    """The queue will not store a call: the function has ``maxQueued`` calls waiting
    (429), or the queue's streams are at ``queue.maxBytes`` (507)."""

    def __init__(self, code: int, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after


class Enqueuer(TypingProtocol):
    """What the gate needs of the queue."""

    max_body_size: int

    def check_callback(self, url: str) -> None:
        """Raise ValueError (its message for the client) for an unacceptable URL."""

    def submit(self, call: QueuedCall) -> Deferred[Any]:
        """Fires once the call is stored; fails with QueueFull or QueueUnavailable."""


class Accept:
    """The async side of one exchange: collects the body, then submits it."""

    __slots__ = ("exchange", "route", "queue", "chunks", "size", "callback")

    def __init__(self, exchange: Any, route: Route, queue: Enqueuer,
                 callback: str | None) -> None:
        self.exchange = exchange
        self.route = route
        self.queue = queue
        self.chunks: list[bytes] = []
        self.size = 0
        self.callback = callback

    def body(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.queue.max_body_size:
            self.exchange.reply_error(GateError(
                413, f"request body exceeds the limit of {self.queue.max_body_size} bytes "
                     f"for asynchronous calls (queue.maxBodySize)", close=True))
            return
        self.chunks.append(data)

    def body_end(self) -> None:
        exchange = self.exchange
        head = exchange.head
        call = QueuedCall(
            function=exchange.name, call_id=exchange.call_id.decode("ascii"),
            method=head.method.decode("latin-1"), target=exchange.target.decode("latin-1"),
            headers=tuple((n.decode("latin-1"), v.decode("latin-1"))
                          for n, v in head.headers if n not in _NOT_STORED),
            client_ip=head.client_ip, body=b"".join(self.chunks), callback=self.callback,
            enqueued=exchange.context.clock.seconds())
        self.chunks = []
        self.queue.submit(call).addCallbacks(self._stored, self._not_stored)

    def _stored(self, _: object) -> None:
        exchange = self.exchange
        if exchange.done:
            return
        body = json.dumps({"callId": exchange.call_id.decode("ascii"),
                           "function": exchange.name, "state": "queued"}).encode()
        headers = [(b"content-type", b"application/json"), (CALL_ID, exchange.call_id),
                   (b"content-length", b"%d" % len(body))]
        exchange.reply_simple(202, headers, body)

    def _not_stored(self, failure: Failure) -> None:
        if self.exchange.done:
            return
        full = failure.value
        if isinstance(full, QueueFull):
            self.exchange.reply_error(GateError(full.code, full.message,
                                                retry_after=full.retry_after))
            return
        self.exchange.reply_error(GateError(
            503, f"the queue could not store the call: {failure.getErrorMessage()}",
            retry_after=1))


def begin_async(exchange: Any, route: Route) -> Accept | None:
    """Check an async request for ``route``; an Accept to feed the body to, or None
    when it was answered with an error."""
    queue: Enqueuer | None = exchange.context.queue
    head = exchange.head
    try:
        if queue is None:
            raise GateError(503, "asynchronous invocations are not enabled on this node "
                                 "(queue.enabled)")
        if head.call_id is not None and not CALL_ID_PATTERN.match(head.call_id):
            raise GateError(400, "X-Call-Id: an asynchronous call id must be 1-128 letters, "
                                 "digits, '-' or '_'")
        if head.content_length is not None and head.content_length > queue.max_body_size:
            raise GateError(413, f"request body of {head.content_length} bytes exceeds the "
                                 f"limit of {queue.max_body_size} bytes for asynchronous "
                                 f"calls (queue.maxBodySize)", close=True)
        callback = None
        for name, value in head.headers:
            if name == CALLBACK_HEADER:
                if callback is not None:
                    raise GateError(400, "X-Callback-Url: sent more than once")
                callback = value.decode("latin-1").strip()
                try:
                    queue.check_callback(callback)
                except ValueError as exc:
                    raise GateError(400, str(exc)) from None
    except GateError as error:
        exchange.reply_error(error)
        return None
    accept = Accept(exchange, route, queue, callback)
    if head.expect_continue and not exchange.body_complete:
        exchange.down.send_continue()
    return accept
