"""Publishing accepted calls to JetStream in batches, their acks awaited together.

Each accepted call is one JetStream publish whose ack must arrive before the gate
answers 202. Through ``AsyncioBridge.call`` + nats-py's ``js.publish`` a call cost an
asyncio Task, a timer, a Future, a ``wait_for`` and a random token on the loop's thread
(about 350 Python calls per call, profiled), and a Twisted coroutine on the reactor's.
Here the calls one reactor turn accepted cross to the loop together (one wake-up), go
out as one run of PUBs on one task, each with a reply subject on one subscription of
this publisher's (a counter names each: no Future, no token from urandom), share one
timeout timer, and their acks cross back together (one ``callFromThread`` per loop
turn). The gate still answers 202 only once JetStream has acknowledged the message.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Coroutine
from typing import Any, Callable, Protocol

from nats.js.errors import APIError, NoStreamResponseError
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads

from faastwist.queue.bridge import BridgeStopped, BridgeTimeout
from faastwist.queue.jetstream import JetStream


class Loop(Protocol):
    """The part of an asyncio loop the publisher posts to (``AbstractEventLoop``; on a
    Clock, faastwist.testing.jetstream's ``ClockLoop``)."""

    def call_soon_threadsafe(self, callback: Callable[[], object]) -> object: ...

    def call_later(self, delay: float, callback: Callable[[list[_Publish]], object],
                   batch: list[_Publish], /) -> object: ...

    def create_task(self, coroutine: Coroutine[Any, Any, None], /) -> object: ...


class Bridge(Protocol):
    """What the publisher needs of ``AsyncioBridge`` (or of the tests' ``FakeBridge``)."""

    @property
    def loop(self) -> Loop | None:
        """The running loop; None while the bridge is stopped."""


class _Publish:
    """One message on its way to the stream, from the reactor and back."""

    __slots__ = ("subject", "payload", "headers", "deferred", "token", "result", "error")

    def __init__(self, subject: str, payload: bytes, headers: dict[str, str]) -> None:
        self.subject = subject
        self.payload = payload
        self.headers = headers
        self.deferred: Deferred[int] = Deferred()
        self.token = ""
        self.result = 0
        self.error: BaseException | None = None


class Publisher:
    """``publish`` from the reactor; fires with the stream sequence once acked."""

    def __init__(self, bridge: Bridge, reactor: IReactorFromThreads,
                 timeout: float) -> None:
        self.bridge = bridge
        self.reactor = reactor
        self.timeout = timeout
        self.js: JetStream | None = None     # set on the loop once the ack inbox is up
        self._prefix = ""                    # the ack subscription's subject prefix
        self._count = 0
        self._outgoing: deque[_Publish] = deque()
        self._outgoing_armed = False
        self._waiting: dict[str, _Publish] = {}   # loop thread: token -> publish
        self._done: deque[_Publish] = deque()
        self._done_armed = False
        #: runs of PUBs sent (one per loop wake-up that found publishes waiting)
        self.batches = 0

    async def start(self, js: JetStream) -> None:
        """On the loop: subscribe to this publisher's acks (nats-py renews the
        subscription after a reconnect)."""
        self._prefix = await js.ack_inbox(self._on_ack)
        self.js = js

    @property
    def ready(self) -> bool:
        return self.js is not None

    # -- on the reactor thread ---------------------------------------------------------

    def publish(self, subject: str, payload: bytes, headers: dict[str, str]) -> Deferred[int]:
        loop = self.bridge.loop
        publish = _Publish(subject, payload, headers)
        if loop is None or self.js is None:
            publish.deferred.errback(BridgeStopped("the asyncio bridge is not running"))
            return publish.deferred
        self._outgoing.append(publish)
        if not self._outgoing_armed:
            self._outgoing_armed = True
            loop.call_soon_threadsafe(self._send)
        return publish.deferred

    def _deliver(self) -> None:
        self._done_armed = False     # before draining: an ack appended now re-arms
        done = self._done
        while done:
            publish = done.popleft()
            if publish.error is not None:
                publish.deferred.errback(publish.error)
            else:
                publish.deferred.callback(publish.result)

    # -- on the loop's thread ----------------------------------------------------------

    def _send(self) -> None:
        self._outgoing_armed = False  # before draining: a publish appended now re-arms
        outgoing = self._outgoing
        batch = []
        while outgoing:
            batch.append(outgoing.popleft())
        if not batch:
            return
        loop, js = self.bridge.loop, self.js
        if loop is None or js is None:   # the bridge stopped since publish() posted this
            for publish in batch:
                self._finish(publish, BridgeStopped("the asyncio bridge is not running"))
            return
        loop.create_task(self._send_batch(batch, loop, js))

    async def _send_batch(self, batch: list[_Publish], loop: Loop, js: JetStream) -> None:
        self.batches += 1
        send, prefix, waiting = js.send, self._prefix, self._waiting
        for publish in batch:
            self._count += 1
            token = publish.token = str(self._count)
            waiting[token] = publish
            try:
                await send(publish.subject, publish.payload, publish.headers, prefix + token)
            except Exception as exc:   # closed, draining, the outbound buffer full
                if waiting.pop(token, None) is not None:
                    self._finish(publish, exc)
        loop.call_later(self.timeout, self._expire, batch)

    def _expire(self, batch: list[_Publish]) -> None:
        waiting = self._waiting
        for publish in batch:
            if waiting.pop(publish.token, None) is not None:
                self._finish(publish, BridgeTimeout(
                    f"JetStream did not acknowledge within {self.timeout:g}s"))

    async def _on_ack(self, msg: Any) -> None:
        publish = self._waiting.pop(msg.subject[len(self._prefix):], None)
        if publish is None:
            return    # timed out already (answered 503)
        headers = msg.headers
        if headers and headers.get("Status") == "503":   # no stream took the subject
            self._finish(publish, NoStreamResponseError())
            return
        try:
            ack = json.loads(msg.data)
            error = ack.get("error")
            if error:
                APIError.from_error(error)   # raises the error's class
            publish.result = int(ack["seq"])
        except Exception as exc:
            self._finish(publish, exc)
            return
        self._finish(publish, None)

    def _finish(self, publish: _Publish, error: BaseException | None) -> None:
        publish.error = error
        self._done.append(publish)
        if not self._done_armed:
            self._done_armed = True
            self.reactor.callFromThread(self._deliver)
