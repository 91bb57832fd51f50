"""Running a queued call through the gate's own path, without a socket.

The worker drives an ``Exchange`` (the same object a client request gets) with an
in-memory Downstream, so a queued call meets exactly what a synchronous one does:
route lookup, request adaptor, scale from zero, the per-function timeout, upstream
retries, metrics and the access log. The function's key and rate limit were applied
when the call was accepted (the key is stripped, never stored in the queue), so the
replay skips those two. The answer is collected in memory, bounded:
a body over ``limit`` bytes is dropped (the callback says so) rather than stored.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from faastwist.gate.asynccall import QueuedCall
from faastwist.gate.context import GateContext
from faastwist.gate.decisions import FUNC_HEADER, RequestHead
from faastwist.gate.exchange import Exchange
from faastwist.gate.wire import CALL_ID
from faastwist.queue.policy import NO_ANSWER


@attrs.frozen
class Answer:
    status: int                                   # NO_ANSWER when cut short
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    duration: float
    dropped: bool = False                         # the body was over the limit


@implementer(IPushProducer)
class _Nothing:
    """The request body is in memory: nothing to pause."""

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class MemoryDownstream:
    """An Exchange's client side that keeps the response."""

    body_producer: IPushProducer = _Nothing()

    def __init__(self, clock: Any, limit: int) -> None:
        self.clock = clock
        self.limit = limit
        self.started = clock.seconds()
        self.status = NO_ANSWER
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.size = 0
        self.dropped = False
        self.result: Deferred[Answer] = Deferred()

    def _answer(self, status: int) -> None:
        if self.result.called:
            return
        body = b"" if self.dropped else b"".join(self.chunks)
        self.result.callback(Answer(status, tuple(self.headers), body,
                                    self.clock.seconds() - self.started, self.dropped))

    def send_continue(self) -> None:
        pass

    def send_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]],
                  length: int | None, bodyless: bool, close: bool) -> None:
        self.status = status
        self.headers = list(headers)

    def send_data(self, data: bytes) -> None:
        if self.dropped:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.dropped = True
            self.chunks = []
        else:
            self.chunks.append(data)

    def send_end(self) -> None:
        pass

    def send_simple(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]],
                    body: bytes, close: bool) -> None:
        self.status = status
        self.headers = list(headers)
        self.chunks = [body]

    def abort(self) -> None:
        self._answer(NO_ANSWER)  # cut short mid-response: as if there was no answer

    def register_producer(self, producer: IPushProducer) -> None:
        pass

    def unregister_producer(self) -> None:
        pass

    def exchange_done(self, exchange: Exchange, close: bool) -> None:
        self._answer(self.status)


def request_head(call: QueuedCall) -> RequestHead:
    """The request head a queued call is replayed with: its stored headers, routed by
    X-FaaS-Func-Name to its function, its call id, its length."""
    headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in call.headers
               if n != "x-faas-func-name"]
    if not any(name == b"host" for name, _ in headers):
        headers.append((b"host", b"localhost"))  # HTTP/1.1 requires one; the gate checks
    headers.append((FUNC_HEADER, call.function.encode()))
    headers.append((CALL_ID, call.call_id.encode()))
    if call.body or call.method not in ("GET", "HEAD", "DELETE", "OPTIONS"):
        headers.append((b"content-length", b"%d" % len(call.body)))
    return RequestHead(call.method.encode("latin-1"), call.target.encode("latin-1"),
                       headers, call.client_ip or "127.0.0.1", b"http", True)


def invoke(context: GateContext, call: QueuedCall, limit: int) -> Deferred[Answer]:
    """Run ``call`` through the gate; fires with its Answer (never fails)."""
    down = MemoryDownstream(context.clock, limit)
    exchange = Exchange(context, down, request_head(call))
    exchange.replay = True  # key and rate limit were applied when the call was accepted
    exchange.begin()
    if not exchange.done and not exchange.body_complete:
        if call.body:
            exchange.body(call.body)
        exchange.body_end()
    return down.result
