"""The queue's JetStream objects and the coroutines that use them (run by the bridge).

Per controller ``C``:

- stream ``FAAS_CALLS_C`` (work-queue retention, file storage), subjects
  ``faas.C.call.{function}.{callId}``: the queued calls. One durable pull consumer per
  function (``call-{function}``), shared by every node, its ``max_ack_pending`` the
  function's async concurrency: the server itself bounds the calls in flight across the
  cluster, and one function's backlog never holds another's slots. The call id in the
  subject makes "is this call still queued" one direct lookup.
- stream ``FAAS_CALLBACKS_C``, subjects ``faas.C.callback.{function}.{callId}``: answers
  waiting to be POSTed to their X-Callback-Url (so a failing callback is retried
  without running the function again); one durable consumer ``callbacks``.
- stream ``FAAS_DELAYED_C``, subjects ``faas.C.delayed.{function}.{callId}``: calls
  waiting for their next attempt (header ``Faas-Due``), moved out of the calls stream
  so that a call in its backoff does not hold one of its function's
  ``max_ack_pending`` slots; one durable consumer ``delayed`` puts each back into the
  calls stream when it is due.
- stream ``FAAS_DEAD_C`` (limits retention, kept until retried or purged), subjects
  ``faas.C.dead.{function}.{callId}``: calls that used up their attempts, expired
  waiting for an inactive function, or whose function was deleted.
- key-value bucket ``FAAS_STATUS_C``: one JSON record per call, keyed
  ``{function}.{callId}`` (state, attempts, last status and time), expiring after
  ``queue.statusTTL``.

Every function here is a coroutine run on the bridge's loop; this module does not
import asyncio itself (bridge.py is the only one that does).
"""

from __future__ import annotations

import json
from typing import Any, Callable

import attrs
import nats
from nats.errors import TimeoutError as NatsTimeout
from nats.js import api
from nats.js.errors import APIError, KeyNotFoundError, NotFoundError

DUPLICATE_WINDOW = 120.0


class Names:
    """Stream, subject, consumer and bucket names of one controller."""

    def __init__(self, controller: str) -> None:
        self.controller = controller
        self.calls = f"FAAS_CALLS_{controller}"
        self.callbacks = f"FAAS_CALLBACKS_{controller}"
        self.delayed = f"FAAS_DELAYED_{controller}"
        self.dead = f"FAAS_DEAD_{controller}"
        self.status = f"FAAS_STATUS_{controller}"

    def call_subject(self, function: str, call_id: str = ">") -> str:
        return f"faas.{self.controller}.call.{function}.{call_id}"

    def function_of_call(self, subject: str) -> str:
        """The function a call's subject names (``faas.C.call.{function}.{callId}``)."""
        return subject[len(self.controller) + 11:].partition(".")[0]

    def function_of_delayed(self, subject: str) -> str:
        """The function a delayed call's subject names."""
        return subject[len(self.controller) + 14:].partition(".")[0]

    def callback_subject(self, function: str, call_id: str = ">") -> str:
        return f"faas.{self.controller}.callback.{function}.{call_id}"

    def delayed_subject(self, function: str, call_id: str = ">") -> str:
        return f"faas.{self.controller}.delayed.{function}.{call_id}"

    def dead_subject(self, function: str, call_id: str = ">") -> str:
        return f"faas.{self.controller}.dead.{function}.{call_id}"

    @staticmethod
    def consumer(function: str) -> str:
        return f"call-{function}"

    @staticmethod
    def call_key(function: str, call_id: str) -> str:
        """A call's identity: its id within its function (the status record's key and
        JetStream's de-duplication id). The same X-Call-Id sent to two functions is two
        calls; keyed by the id alone, the second was dropped as a duplicate."""
        return f"{function}.{call_id}"


@attrs.frozen
class StreamLimits:
    """What the server enforces on the controller's streams (``queue.maxBytes``):
    the calls and callbacks streams refuse a new message when full (discard new: a
    queued call is never dropped to make room); the dead letters drop their oldest."""

    max_bytes: int = -1


#: JetStream's error code for a message sequence a stream does not hold.
SEQUENCE_NOT_FOUND = 10043

#: JetStream's error codes for a stream that is full (bytes, messages, storage).
FULL_ERRORS = frozenset({10077, 10047, 10027})


def is_full(exc: BaseException) -> bool:
    """Whether a publish failed because the stream or the server's storage is full."""
    return isinstance(exc, APIError) and getattr(exc, "err_code", None) in FULL_ERRORS


class JetStream:
    """One NATS connection and the controller's streams, consumers and bucket."""

    def __init__(self, urls: list[str], names: Names, status_ttl: float,
                 on_state: Any = None, token: str | None = None,
                 limits: StreamLimits = StreamLimits()) -> None:
        self.urls = urls
        self.limits = limits
        #: the embedded server's client token (None: the URLs carry any credentials)
        self.token = token
        self.names = names
        self.status_ttl = status_ttl
        self.on_state = on_state  # called (from the loop) with "connected"/"disconnected"
        self.nc: Any = None
        self.js: Any = None
        self.kv: Any = None
        self._consumers: dict[str, tuple[str, str]] = {}   # key -> (stream, durable)
        self._wake_sub: Any = None

    # -- connection and set-up -----------------------------------------------------------

    async def connect(self, connect_timeout: float) -> int:
        """Connect (reconnecting forever afterwards) and create what is missing.
        Returns the server's max_payload."""

        async def disconnected() -> None:
            if self.on_state:
                self.on_state("disconnected")

        async def reconnected() -> None:
            if self.on_state:
                self.on_state("connected")

        async def error(exc: Exception) -> None:
            pass  # reconnects are reported through the two callbacks above

        self.nc = await nats.connect(
            servers=self.urls, name="faastwist", connect_timeout=max(1, int(connect_timeout)),
            allow_reconnect=True, max_reconnect_attempts=-1, reconnect_time_wait=0.25,
            disconnected_cb=disconnected, reconnected_cb=reconnected, error_cb=error,
            token=self.token)
        self.js = self.nc.jetstream(timeout=connect_timeout)
        n = self.names
        new, old = api.DiscardPolicy.NEW, api.DiscardPolicy.OLD
        await self._ensure_stream(n.calls, [n.call_subject("*")],
                                  api.RetentionPolicy.WORK_QUEUE, new)
        await self._ensure_stream(n.callbacks, [n.callback_subject("*")],
                                  api.RetentionPolicy.WORK_QUEUE, new)
        await self._ensure_stream(n.delayed, [n.delayed_subject("*")],
                                  api.RetentionPolicy.WORK_QUEUE, new)
        await self._ensure_stream(n.dead, [n.dead_subject("*")], api.RetentionPolicy.LIMITS,
                                  old)
        try:
            self.kv = await self.js.key_value(n.status)
        except (NotFoundError, Exception):
            self.kv = await self.js.create_key_value(
                bucket=n.status, history=1, ttl=self.status_ttl,
                storage=api.StorageType.FILE)
        if self.on_state:
            self.on_state("connected")
        return int(self.nc.max_payload)

    async def _ensure_stream(self, name: str, subjects: list[str],
                             retention: api.RetentionPolicy,
                             discard: api.DiscardPolicy) -> None:
        """Create the stream, or bring an existing one's limits to the configured ones
        (a stream made by an older version, or before ``queue.maxBytes`` changed)."""
        limits = self.limits
        try:
            info = await self.js.stream_info(name)
        except NotFoundError:
            await self.js.add_stream(name=name, subjects=subjects, retention=retention,
                                     storage=api.StorageType.FILE,
                                     duplicate_window=DUPLICATE_WINDOW,
                                     max_bytes=limits.max_bytes, discard=discard)
            return
        config = info.config
        if (config.max_bytes, api.DiscardPolicy(config.discard)) != (limits.max_bytes,
                                                                      discard):
            config.max_bytes = limits.max_bytes
            config.discard = discard
            await self.js.update_stream(config)

    async def stream_limits(self, name: str) -> tuple[int, str]:
        """(max_bytes, discard policy) the server holds for ``name``."""
        config = (await self.js.stream_info(name)).config
        return int(config.max_bytes), api.DiscardPolicy(config.discard).value

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    async def close(self) -> None:
        if self.nc is not None and not self.nc.is_closed:
            await self.nc.close()

    # -- publishing ------------------------------------------------------------------------

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str],
                      timeout: float) -> int:
        """Publish and wait for JetStream's ack; the stream sequence."""
        ack = await self.js.publish(subject, payload, timeout=timeout, headers=headers)
        return int(ack.seq)

    async def ack_inbox(self, on_ack: Callable[[Any], Any]) -> str:
        """Subscribe ``on_ack`` to a fresh inbox's subjects; the prefix a publish's
        reply subject starts with (queue.publisher: acks of many publishes on one
        subscription)."""
        prefix = self.nc.new_inbox() + "."
        await self.nc.subscribe(prefix + "*", cb=on_ack)
        return prefix

    async def send(self, subject: str, payload: bytes, headers: dict[str, str],
                   reply: str) -> None:
        """Publish without waiting: JetStream's ack goes to ``reply``."""
        await self.nc.publish(subject, payload, reply=reply, headers=headers)

    # -- consuming -------------------------------------------------------------------------

    async def bind(self, key: str, stream: str, durable: str, subject: str,
                   max_ack_pending: int, ack_wait: float) -> None:
        """Create or update the durable pull consumer that ``pull(key, ...)`` asks."""
        config = api.ConsumerConfig(
            durable_name=durable, filter_subject=subject, ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=ack_wait, max_deliver=-1, max_ack_pending=max_ack_pending,
            deliver_policy=api.DeliverPolicy.ALL)
        await self.js.add_consumer(stream, config)
        self._consumers[key] = (stream, durable)

    async def unbind(self, key: str, stream: str | None = None,
                     durable: str | None = None) -> None:
        self._consumers.pop(key, None)
        if stream and durable:
            try:
                await self.js.delete_consumer(stream, durable)
            except NotFoundError:
                pass

    async def watch_calls(self, on_function: Any) -> None:
        """``on_function(name)`` (on the loop) whenever a call of ``name`` is published:
        a plain subscription on the calls' subjects, so a function's pull loop runs
        only while it has work (10,000 loops waiting in a fetch each were 5,000 fetches
        a second). nats-py subscribes again after a reconnect."""
        function_of = self.names.function_of_call

        async def received(msg: Any) -> None:
            on_function(function_of(msg.subject))
        if self._wake_sub is None:
            self._wake_sub = await self.nc.subscribe(self.names.call_subject("*"), cb=received)

    async def backlog(self, stream: str, subjects: str) -> dict[str, int]:
        """Messages stored per subject of ``stream`` matching ``subjects``, only where
        there are some (one request, its size the backlog's, not the functions')."""
        info = await self.js.stream_info(stream, subjects_filter=subjects)
        return dict(info.state.subjects or {})

    async def oldest(self, stream: str, subject: str) -> float | None:
        """The enqueue time of the oldest message stored on ``subject``."""
        try:
            msg = await self.js.get_msg(stream, seq=1, next=True, subject=subject)
        except NotFoundError:
            return None
        return _enqueued(msg.headers)

    async def queued(self, function: str) -> int:
        """Calls of ``function`` stored in the calls stream (waiting or running): from
        its consumer when it exists (one small answer), else from the stream's
        per-subject counts (before any node bound the consumer)."""
        n = self.names
        try:
            info = await self.js.consumer_info(n.calls, n.consumer(function))
            return int(info.num_pending) + int(info.num_ack_pending)
        except NotFoundError:
            pass
        info = await self.js.stream_info(n.calls, subjects_filter=n.call_subject(function))
        return sum(int(c) for c in (info.state.subjects or {}).values())

    async def consumer_names(self, stream: str) -> list[str]:
        return [info.name for info in await self.js.consumers_info(stream)]

    async def pull(self, key: str, batch: int, expires: float,
                   deliver: Callable[[Any], None]) -> int:
        """One pull request for up to ``batch`` messages of ``key``'s consumer, each
        handed to ``deliver`` the moment it arrives (nats-py's fetch returned only
        with a full batch or at its timeout, holding the first messages meanwhile:
        they counted against max_ack_pending while nothing ran). Ends when the batch
        is delivered, the request expires (``expires`` seconds) or the server ends it
        (a status message); the number delivered."""
        consumer = self._consumers.get(key)
        if consumer is None:
            return 0
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox)
        got = 0
        try:
            request = {"batch": batch, "expires": int(expires * 1e9)}
            await self.nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{consumer[0]}.{consumer[1]}",
                                  json.dumps(request).encode(), reply=inbox)
            while got < batch:
                try:
                    msg = await sub.next_msg(timeout=expires + 2.0)
                except (NatsTimeout, TimeoutError):
                    break
                status = (msg.headers or {}).get("Status")
                if status == "100":
                    continue  # a heartbeat
                if status is not None:
                    break  # 404 no messages, 408 expired, 409 consumer gone or changed
                got += 1
                deliver(msg)
        finally:
            try:
                await sub.unsubscribe()
            except Exception:
                pass  # the connection is gone: so is the subscription
        return got

    @staticmethod
    async def progress(msg: Any) -> None:
        """Tell the server the call is still running: its ack wait starts again."""
        await msg.in_progress()

    @staticmethod
    async def ack(msg: Any) -> None:
        # not ack_sync: a lost ack means one redelivery (at least once), and waiting
        # for its confirmation would cost every call a round trip
        await msg.ack()

    @staticmethod
    async def nak(msg: Any, delay: float) -> None:
        await msg.nak(delay=delay)

    async def pending(self, stream: str, durable: str) -> tuple[int, int, float | None]:
        """(waiting, in flight, enqueue time of the oldest unacknowledged message)."""
        info = await self.js.consumer_info(stream, durable)
        oldest = None
        if info.num_pending or info.num_ack_pending:
            first = (info.ack_floor.stream_seq or 0) + 1
            try:
                msg = await self.js.get_msg(stream, seq=first, next=True,
                                            subject=info.config.filter_subject)
                oldest = _enqueued(msg.headers)
            except NotFoundError:
                pass
        return int(info.num_pending), int(info.num_ack_pending), oldest

    # -- lookups ---------------------------------------------------------------------------

    async def last_message(self, stream: str, subject: str) -> Any:
        """The last message on ``subject``, or None."""
        try:
            return await self.js.get_msg(stream, subject=subject)
        except NotFoundError:
            return None

    async def list_messages(self, stream: str, subject: str, limit: int) -> list[Any]:
        """Messages matching ``subject`` (wildcards allowed), oldest first."""
        out: list[Any] = []
        seq = 1
        while len(out) < limit:
            try:
                msg = await self.js.get_msg(stream, seq=seq, next=True, subject=subject)
            except NotFoundError:
                break
            out.append(msg)
            seq = int(msg.seq) + 1
        return out

    async def delete_message(self, stream: str, seq: int) -> None:
        """Delete one message; one already gone is fine (nats-server 2.9 answers
        400 "sequence not found" for it, not 404)."""
        try:
            await self.js.delete_msg(stream, seq)
        except NotFoundError:
            pass
        except APIError as exc:
            if getattr(exc, "err_code", None) != SEQUENCE_NOT_FOUND:
                raise

    async def purge(self, stream: str, subject: str) -> bool:
        return bool(await self.js.purge_stream(stream, subject=subject))

    # -- status records --------------------------------------------------------------------

    async def get_status(self, function: str, call_id: str) -> dict[str, Any] | None:
        try:
            entry = await self.kv.get(Names.call_key(function, call_id))
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        try:
            record = json.loads(entry.value)
        except ValueError:
            return None
        return record if isinstance(record, dict) else None

    async def put_status(self, function: str, call_id: str, record: dict[str, Any]) -> None:
        value = json.dumps(record, separators=(",", ":")).encode()
        await self.kv.put(Names.call_key(function, call_id), value)


def _enqueued(headers: dict[str, str] | None) -> float | None:
    try:
        return float((headers or {}).get("Faas-Enqueued", ""))
    except ValueError:
        return None
