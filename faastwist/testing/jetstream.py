"""An in-memory JetStream for Clock-driven queue tests: the interface of
``faastwist.queue.jetstream.JetStream`` (what the rest of ``queue/`` calls), over a fake
server that keeps streams, durable pull consumers and the status bucket.

What it does as nats-server does (tests/queue/test_jetstream_contract.py runs the same
cases against both): a publish with a ``Nats-Msg-Id`` seen within the duplicate window
is stored once and answers the first one's sequence; a full stream refuses new messages
(discard new) or drops its oldest (discard old); a pull request delivers up to its batch
the moment messages are there and ends at its expiry; a consumer never has more than
``max_ack_pending`` messages unacknowledged; a message not acknowledged within the ack
wait comes back (an in-progress acknowledgement starts the wait again, a negative one
brings it back after its delay); an acknowledged message leaves a work-queue stream;
status records expire after the bucket's TTL.

Time is the Clock's; results of a ``FakeBridge`` call come back on a later tick, as the
real bridge's come back through ``callFromThread``. Nothing in the node imports this.
"""

from __future__ import annotations

import inspect
import json
from typing import Any, Callable

import attrs
from nats.errors import ConnectionClosedError, MaxPayloadError
from nats.errors import Error as NatsError
from nats.js.errors import APIError, NotFoundError
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, fail
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from faastwist.queue.bridge import BridgeStopped, BridgeTimeout
from faastwist.queue.jetstream import Names, StreamLimits
from faastwist.testing.nats import Consumer, Pull, Server, Stream, subject_matches

__all__ = ["FakeBridge", "FakeJetStream", "FakeNats", "ThreadlessClock", "run_for", "settle",
           "subject_matches"]


class ThreadlessClock(Clock):
    """A Clock that is also the reactor's ``callFromThread`` (on its next tick)."""

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kw: Any) -> None:
        self.callLater(0, f, *args, **kw)


def settle(clock: Clock, rounds: int = 200) -> None:
    """Run every call due now (results, deliveries), round after round, until none is."""
    for _ in range(rounds):
        if not any(c.getTime() <= clock.seconds() for c in clock.getDelayedCalls()):
            return
        clock.advance(0)


def run_for(clock: Clock, seconds: float, step: float = 0.05) -> None:
    """Let ``seconds`` of Clock time pass in small steps, settling after each."""
    end = clock.seconds() + seconds
    settle(clock)
    while clock.seconds() < end - 1e-9:
        clock.advance(min(step, end - clock.seconds()))
        settle(clock)


class FakeBridge:
    """``AsyncioBridge`` on a Clock: ``call`` runs the coroutine function as a Twisted
    coroutine; its result is delivered on a later tick, bounded by its timeout."""

    def __init__(self, clock: Clock, default_timeout: float = 5.0) -> None:
        self.clock = clock
        self.default_timeout = default_timeout
        self.running = False
        self.calls: list[str] = []  # names of the functions called, in order
        #: the "loop" (queue.publisher posts to it), None while stopped as the real one
        self.loop: ClockLoop | None = None

    def startService(self) -> None:
        self.running = True
        self.loop = ClockLoop(self.clock)

    def stopService(self) -> Deferred[None]:
        self.running = False
        self.loop = None
        d: Deferred[None] = Deferred()
        d.callback(None)
        return d

    def call(self, function: Callable[..., Any], *args: Any, timeout: float | None = None,
             **kwargs: Any) -> Deferred[Any]:
        if not self.running:
            return fail(BridgeStopped("the asyncio bridge is not running"))
        self.calls.append(getattr(function, "__name__", "call"))
        limit = self.default_timeout if timeout is None else timeout
        inner = ensureDeferred(function(*args, **kwargs))
        outer: Deferred[Any] = Deferred(lambda _: inner.cancel())
        expired: list[bool] = []

        def expire() -> None:
            expired.append(True)
            inner.cancel()

        timer = self.clock.callLater(limit, expire)

        def done(result: Any) -> None:
            if timer.active():
                timer.cancel()
            if isinstance(result, Failure) and result.check(CancelledError):
                name = getattr(function, "__name__", "call")
                result = Failure(BridgeTimeout(f"{name} did not finish within {limit:g}s")
                                 if expired else BridgeStopped("the call was cancelled"))
            self.clock.callLater(0, _fire, outer, result)

        inner.addBoth(done)
        return outer


class ClockLoop:
    """The part of an asyncio loop ``queue.publisher`` uses, on a Clock (a
    ``FakeBridge``'s ``loop`` while it runs)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def call_soon_threadsafe(self, f: Callable[..., Any], *args: Any) -> None:
        self.clock.callLater(0, f, *args)

    def call_later(self, delay: float, f: Callable[..., Any], *args: Any) -> Any:
        return self.clock.callLater(delay, f, *args)

    def create_task(self, coroutine: Any) -> Deferred[Any]:
        return ensureDeferred(coroutine)


@attrs.frozen
class Reply:
    """A message on a reply subject, as a subscription's callback gets it."""

    subject: str
    data: bytes
    headers: dict[str, str] | None


def _run(on_message: Callable[[Any], Any], msg: Any) -> None:
    ensureDeferred(on_message(msg))


def _fire(d: Deferred[Any], result: Any) -> None:
    if d.called:
        return
    if isinstance(result, Failure):
        d.errback(result)
    else:
        d.callback(result)


class FakeNats(Server):
    """The in-memory server (testing/nats.py); ``client`` is what a test passes where a
    ``JetStream`` is made: ``QueueService(..., jetstream=server.client)``."""

    def client(self, urls: list[str], names: Names, status_ttl: float, on_state: Any = None,
               token: str | None = None,
               limits: StreamLimits = StreamLimits()) -> "FakeJetStream":
        js = FakeJetStream(self, urls, names, status_ttl, on_state, token, limits)
        self.clients.append(js)
        return js


class FakeJetStream:
    """``faastwist.queue.jetstream.JetStream`` over a ``FakeNats``: the same coroutines,
    the same answers, on the test's Clock."""

    def __init__(self, server: Server, urls: list[str], names: Names, status_ttl: float,
                 on_state: Any = None, token: str | None = None,
                 limits: StreamLimits = StreamLimits()) -> None:
        self.server = server
        self.urls = urls
        self.names = names
        self.status_ttl = status_ttl
        self.on_state = on_state
        self.token = token
        self.limits = limits
        self.is_connected = False
        self.closed = False
        self._consumers: dict[str, tuple[str, str]] = {}
        self._watching = False
        self._inboxes: dict[str, Callable[[Any], Any]] = {}   # prefix -> on_ack
        self._buffered: list[tuple[str, bytes, dict[str, str], str]] = []

    # -- connection and set-up
    async def connect(self, connect_timeout: float) -> int:
        server = self.server
        server._check()
        n, limit = self.names, self.limits.max_bytes
        for name, subject, work, new in ((n.calls, n.call_subject("*"), True, True),
                                         (n.callbacks, n.callback_subject("*"), True, True),
                                         (n.delayed, n.delayed_subject("*"), True, True),
                                         (n.dead, n.dead_subject("*"), False, False)):
            stream = server.streams.get(name)
            if stream is None:
                server.streams[name] = Stream(name, [subject], work, new, limit)
            else:
                stream.max_bytes, stream.discard_new = limit, new
        if n.status not in server.buckets:
            server.buckets[n.status] = {}
            server.bucket_ttl[n.status] = self.status_ttl
        self.is_connected = True
        self.closed = False
        if self.on_state:
            self.on_state("connected")
        return server.max_payload

    async def stream_limits(self, name: str) -> tuple[int, str]:
        self.server._check()
        stream = self.server.streams[name]
        return stream.max_bytes, "new" if stream.discard_new else "old"

    @property
    def connected(self) -> bool:
        return self.is_connected and self.server.up

    async def close(self) -> None:
        self.is_connected = False
        self.closed = True
        self.server.watchers = [w for w in self.server.watchers if w[1] != self._on_call]

    def _live(self) -> Server:
        if not self.is_connected:
            raise ConnectionClosedError()
        self.server._check()
        return self.server

    # -- publishing
    async def publish(self, subject: str, payload: bytes, headers: dict[str, str],
                      timeout: float) -> int:
        server = self._live()
        if len(payload) > server.max_payload:
            raise APIError(code=400, description="maximum payload exceeded")
        server.enter("publish", subject)
        return server.publish(subject, payload, headers)

    async def ack_inbox(self, on_ack: Callable[[Any], Any]) -> str:
        """A fresh inbox whose subjects ``on_ack`` receives (queue.publisher)."""
        server = self._live()
        if not inspect.iscoroutinefunction(on_ack):
            raise NatsError("nats: must use coroutine for subscriptions")
        server.inboxes += 1
        prefix = f"_INBOX.fake{server.inboxes}."
        self._inboxes[prefix] = on_ack
        return prefix

    async def send(self, subject: str, payload: bytes, headers: dict[str, str],
                   reply: str) -> None:
        """Publish without waiting; JetStream's answer goes to ``reply`` on a later tick
        as nats-server sends it: ``{"stream", "seq"}`` (``"duplicate": true`` for a
        message id seen within the window), ``{"error": {code, err_code, description}}``
        for a full stream, a no-responders status (``Status: 503``, no body) when no
        stream takes the subject. While the server is away the message waits in the
        client's buffer, as nats-py's does while it reconnects."""
        if self.closed or not self.is_connected:
            raise ConnectionClosedError()
        if len(payload) > self.server.max_payload:
            raise MaxPayloadError()
        if not self.server.up:
            self._buffered.append((subject, payload, headers, reply))
            return
        self._store(subject, payload, headers, reply)

    def flush(self) -> None:
        """The server is back: what was buffered goes out, in order."""
        buffered, self._buffered = self._buffered, []
        for subject, payload, headers, reply in buffered:
            if self.closed or not self.is_connected:
                return
            try:
                self._store(subject, payload, headers, reply)
            except ConnectionClosedError:
                pass   # refused by the test: lost, as on a broken connection

    def _store(self, subject: str, payload: bytes, headers: dict[str, str],
               reply: str) -> None:
        server = self.server
        server.enter("publish", subject)
        answer: dict[str, Any]
        try:
            seq, duplicate = server.store(subject, payload, headers)
        except NotFoundError:
            self._reply(reply, b"", {"Status": "503"})
            return
        except APIError as exc:
            answer = {"error": {"code": exc.code, "err_code": exc.err_code,
                                "description": exc.description}}
        else:
            answer = {"stream": next(s.name for s in server.streams.values()
                                     if s.takes(subject)), "seq": seq}
            if duplicate:
                answer["duplicate"] = True
        self._reply(reply, json.dumps(answer).encode(), None)

    def _reply(self, subject: str, data: bytes, headers: dict[str, str] | None) -> None:
        for client in self.server.clients:
            for prefix, on_ack in client._inboxes.items():
                if subject.startswith(prefix) and not client.closed:
                    self.server.clock.callLater(0, _run, on_ack, Reply(subject, data, headers))

    # -- consuming
    async def bind(self, key: str, stream: str, durable: str, subject: str,
                   max_ack_pending: int, ack_wait: float) -> None:
        server = self._live()
        server.enter("bind", durable)
        target = server.streams[stream]
        consumer = target.consumers.get(durable)
        if consumer is None:
            consumer = target.consumers[durable] = Consumer(
                server, target, durable, subject, ack_wait, max_ack_pending)
        else:
            consumer.ack_wait, consumer.max_ack_pending = ack_wait, max_ack_pending
        self._consumers[key] = (stream, durable)
        consumer.dispatch()

    async def unbind(self, key: str, stream: str | None = None,
                     durable: str | None = None) -> None:
        self._consumers.pop(key, None)
        if stream and durable:
            consumer = self._live().streams[stream].consumers.pop(durable, None)
            if consumer is not None:
                consumer.delete()

    async def watch_calls(self, on_function: Any) -> None:
        server = self._live()
        self._on_function = on_function
        if not self._watching:
            self._watching = True
            server.watchers.append((self.names.call_subject("*"), self._on_call))

    def _on_call(self, subject: str) -> None:
        if self.connected:
            self._on_function(self.names.function_of_call(subject))

    async def backlog(self, stream: str, subjects: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        for message in self._live().streams[stream].matching(subjects):
            counts[message.subject] = counts.get(message.subject, 0) + 1
        return counts

    async def oldest(self, stream: str, subject: str) -> float | None:
        found = self._live().streams[stream].matching(subject)
        if not found:
            return None
        return _enqueued(min(found, key=lambda m: m.seq).headers)

    async def queued(self, function: str) -> int:
        n = self.names
        calls = self._live().streams[n.calls]
        consumer = calls.consumers.get(n.consumer(function))
        if consumer is not None:
            return consumer.num_pending() + len(consumer.pending)
        return len(calls.matching(n.call_subject(function)))

    async def consumer_names(self, stream: str) -> list[str]:
        return list(self._live().streams[stream].consumers)

    async def pull(self, key: str, batch: int, expires: float,
                   deliver: Callable[[Any], None]) -> int:
        consumer_key = self._consumers.get(key)
        if consumer_key is None:
            return 0
        server = self._live()
        server.enter("pull", consumer_key[1])
        consumer = server.streams[consumer_key[0]].consumers.get(consumer_key[1])
        if consumer is None:
            return 0
        server.pull_requests.append((consumer_key[1], batch, expires))
        pull = Pull(batch, deliver, Deferred(lambda _: consumer._end(pull)), self)
        pull.timer = server.clock.callLater(expires, consumer._end, pull)
        consumer.pulls.append(pull)
        consumer.dispatch()
        return await pull.done

    @staticmethod
    async def progress(msg: Any) -> None:
        msg.client._live().enter("progress", msg.subject)
        msg.consumer.progress(msg.seq)

    @staticmethod
    async def ack(msg: Any) -> None:
        msg.settle("ack")
        msg.consumer.ack(msg.seq)

    @staticmethod
    async def nak(msg: Any, delay: float) -> None:
        msg.settle("nak")
        msg.client.server.naks.append((msg.subject, delay))
        msg.consumer.nak(msg.seq, delay)

    async def pending(self, stream: str, durable: str) -> tuple[int, int, float | None]:
        server = self._live()
        server.enter("pending", durable)
        target = server.streams[stream]
        consumer = target.consumers.get(durable)
        if consumer is None:
            raise NotFoundError(code=404, description="consumer not found")
        oldest = None
        waiting, inflight = consumer.num_pending(), len(consumer.pending)
        if waiting or inflight:
            floor = consumer.ack_floor()
            later = [m for m in target.matching(consumer.filter_subject) if m.seq > floor]
            if later:
                oldest = _enqueued(min(later, key=lambda m: m.seq).headers)
        return waiting, inflight, oldest

    # -- lookups
    async def last_message(self, stream: str, subject: str) -> Any:
        found = self._live().streams[stream].matching(subject)
        return max(found, key=lambda m: m.seq) if found else None

    async def list_messages(self, stream: str, subject: str, limit: int) -> list[Any]:
        found = sorted(self._live().streams[stream].matching(subject), key=lambda m: m.seq)
        return found[:limit]

    async def delete_message(self, stream: str, seq: int) -> None:
        self._live().streams[stream].messages.pop(seq, None)

    async def purge(self, stream: str, subject: str) -> bool:
        target = self._live().streams[stream]
        for message in target.matching(subject):
            del target.messages[message.seq]
        return True

    # -- status records
    def _bucket(self) -> dict[str, tuple[bytes, float]]:
        server = self._live()
        bucket = server.buckets[self.names.status]
        ttl, now = server.bucket_ttl[self.names.status], server.clock.seconds()
        for key in [k for k, (_, put) in bucket.items() if now - put >= ttl]:
            del bucket[key]
        return bucket

    async def get_status(self, function: str, call_id: str) -> dict[str, Any] | None:
        entry = self._bucket().get(Names.call_key(function, call_id))
        if entry is None or not entry[0]:
            return None
        try:
            record = json.loads(entry[0])
        except ValueError:
            return None
        return record if isinstance(record, dict) else None

    async def put_status(self, function: str, call_id: str, record: dict[str, Any]) -> None:
        value = json.dumps(record, separators=(",", ":")).encode()
        key = Names.call_key(function, call_id)
        self.server.enter("put_status", f"{key} {record.get('state')}")
        self._bucket()[Names.call_key(function, call_id)] = (value, self.server.clock.seconds())


def _enqueued(headers: dict[str, str] | None) -> float | None:
    try:
        return float((headers or {}).get("Faas-Enqueued", ""))
    except ValueError:
        return None
