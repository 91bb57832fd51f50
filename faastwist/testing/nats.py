"""The in-memory NATS server behind ``faastwist.testing.jetstream``: streams (work-queue
and limits retention, discard new or old, de-duplication within the window), durable
pull consumers (ack wait, max_ack_pending, acknowledgements, redelivery) and the status
bucket, all on a Clock. Tests look at it directly (``journal``, ``pull_requests``,
``naks``) and make one operation fail (``refusing``) or the whole server go away
(``stop``/``start``)."""

from __future__ import annotations

import datetime
from typing import Any, Callable

import attrs
from nats.errors import ConnectionClosedError, MsgAlreadyAckdError
from nats.js.errors import APIError, NotFoundError
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from faastwist.queue.jetstream import DUPLICATE_WINDOW

#: nats-server's default max_payload (1 MiB)
MAX_PAYLOAD = 2**20
#: JetStream's error code for "maximum bytes exceeded" (a stream full, discard new)
BYTES_EXCEEDED = 10077


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` one token, ``>`` one or more at the end."""
    want, got = pattern.split("."), subject.split(".")
    for index, token in enumerate(want):
        if token == ">":
            return len(got) > index
        if index >= len(got) or (token != "*" and token != got[index]):
            return False
    return len(want) == len(got)


@attrs.frozen
class Sequence:
    stream: int
    consumer: int = 0


@attrs.frozen
class Metadata:
    sequence: Sequence
    num_delivered: int


@attrs.define
class Stored:
    """A message as a stream keeps it (and as a direct get returns it)."""

    subject: str
    data: bytes
    headers: dict[str, str] | None
    seq: int
    time: datetime.datetime
    size: int


@attrs.define(eq=False)
class Delivered:
    """A message handed to a pull request: what ``JetStream.ack`` and friends take."""

    subject: str
    data: bytes
    headers: dict[str, str] | None
    metadata: Metadata
    consumer: "Consumer"
    client: Any   # the connection it came on: acknowledged through it
    acked: bool = False   # acknowledged or negatively: nats-py refuses a second one

    def settle(self, operation: str) -> None:
        self.client._live().enter(operation, self.subject)
        if self.acked:
            raise MsgAlreadyAckdError(self)
        self.acked = True

    @property
    def seq(self) -> int:
        return self.metadata.sequence.stream


def message_size(subject: str, headers: dict[str, str] | None, data: bytes) -> int:
    """What a file-store stream counts against its max_bytes (record header, subject,
    headers as NATS encodes them, payload, checksum)."""
    encoded = 0
    if headers:
        encoded = len("NATS/1.0\r\n\r\n") + sum(len(k) + len(v) + 4 for k, v in headers.items())
    return 22 + len(subject) + encoded + len(data) + 8


@attrs.define(eq=False)
class Stream:
    name: str
    subjects: list[str]
    work_queue: bool
    discard_new: bool
    max_bytes: int
    messages: dict[int, Stored] = attrs.field(factory=dict)
    last_seq: int = 0
    dedupe: dict[str, tuple[int, float]] = attrs.field(factory=dict)
    consumers: dict[str, "Consumer"] = attrs.field(factory=dict)

    def takes(self, subject: str) -> bool:
        return any(subject_matches(p, subject) for p in self.subjects)

    @property
    def bytes(self) -> int:
        return sum(m.size for m in self.messages.values())

    def matching(self, subject: str) -> list[Stored]:
        return [m for m in self.messages.values() if subject_matches(subject, m.subject)]


@attrs.define(eq=False)
class Pull:
    batch: int
    deliver: Callable[[Any], None]
    done: Deferred[int]
    client: Any
    timer: Any = None
    got: int = 0


@attrs.define(eq=False)
class Pending:
    deliveries: int
    timer: Any = None
    due: bool = False   # waiting to be redelivered now


@attrs.define(eq=False)
class Consumer:
    server: "Server"
    stream: Stream
    durable: str
    filter_subject: str
    ack_wait: float
    max_ack_pending: int
    delivered: int = 0                               # stream floor of first deliveries
    pending: dict[int, Pending] = attrs.field(factory=dict)
    pulls: list[Pull] = attrs.field(factory=list)
    deleted: bool = False

    # -- counts as consumer info shows them
    def num_pending(self) -> int:
        return sum(1 for m in self.stream.messages.values()
                   if m.seq > self.delivered and subject_matches(self.filter_subject, m.subject))

    def ack_floor(self) -> int:
        return min(self.pending) - 1 if self.pending else self.delivered

    # -- deliveries
    def _next(self) -> int | None:
        due = sorted(seq for seq, p in self.pending.items() if p.due)
        for seq in due:
            if seq in self.stream.messages:
                return seq
            self._drop(seq)
        if len(self.pending) >= self.max_ack_pending:
            return None
        for seq in sorted(self.stream.messages):
            message = self.stream.messages[seq]
            if seq > self.delivered and subject_matches(self.filter_subject, message.subject):
                return seq
        return None

    def dispatch(self) -> None:
        while self.pulls and not self.deleted:
            seq = self._next()
            if seq is None:
                return
            pull = self.pulls[0]
            entry = self.pending.get(seq)
            if entry is None:
                entry = self.pending[seq] = Pending(0)
                self.delivered = max(self.delivered, seq)
            entry.deliveries += 1
            entry.due = False
            self._arm(seq, entry, self.ack_wait)
            stored = self.stream.messages[seq]
            msg = Delivered(stored.subject, stored.data,
                            dict(stored.headers) if stored.headers else None,
                            Metadata(Sequence(seq), entry.deliveries), self, pull.client)
            pull.got += 1
            pull.deliver(msg)   # before the request ends, as the real client hands them
            if pull.got >= pull.batch:
                self._end(pull)

    def _arm(self, seq: int, entry: Pending, delay: float) -> None:
        if entry.timer is not None and entry.timer.active():
            entry.timer.cancel()
        entry.timer = self.server.clock.callLater(delay, self._redeliver, seq)

    def _redeliver(self, seq: int) -> None:
        entry = self.pending.get(seq)
        if entry is not None:
            entry.timer = None
            entry.due = True
            self.dispatch()

    def _drop(self, seq: int) -> None:
        entry = self.pending.pop(seq, None)
        if entry is not None and entry.timer is not None and entry.timer.active():
            entry.timer.cancel()

    def _end(self, pull: Pull) -> None:
        if pull in self.pulls:
            self.pulls.remove(pull)
        if pull.timer is not None and pull.timer.active():
            pull.timer.cancel()
        if not pull.done.called:
            pull.done.callback(pull.got)

    def ack(self, seq: int) -> None:
        if seq not in self.pending:
            return
        self._drop(seq)
        if self.stream.work_queue:
            self.stream.messages.pop(seq, None)
        self.dispatch()

    def nak(self, seq: int, delay: float) -> None:
        entry = self.pending.get(seq)
        if entry is None:
            return
        if delay > 0:
            self._arm(seq, entry, delay)
        else:
            if entry.timer is not None and entry.timer.active():
                entry.timer.cancel()
            entry.due = True
            self.dispatch()

    def progress(self, seq: int) -> None:
        entry = self.pending.get(seq)
        if entry is not None and not entry.due:
            self._arm(seq, entry, self.ack_wait)

    def delete(self) -> None:
        self.deleted = True
        for seq in list(self.pending):
            self._drop(seq)
        for pull in list(self.pulls):
            self._end(pull)


class Server:
    """One JetStream server (shared by the clients of every "node" of a test)."""

    def __init__(self, clock: Clock, max_payload: int = MAX_PAYLOAD) -> None:
        """Clients (testing.jetstream.FakeJetStream) register in ``clients``."""
        self.clock = clock
        self.max_payload = max_payload
        self.up = True
        self.streams: dict[str, Stream] = {}
        self.buckets: dict[str, dict[str, tuple[bytes, float]]] = {}
        self.bucket_ttl: dict[str, float] = {}
        self.clients: list[Any] = []
        self.watchers: list[tuple[str, Callable[[str], None]]] = []
        #: (operation, what) of every write, in order: publish (subject), ack, nak and
        #: progress (the message's subject), put_status ("{key} {state}"), bind and pull
        #: (the durable)
        self.journal: list[tuple[str, str]] = []
        #: operation -> predicate of ``what``: while it holds, the operation fails as a
        #: lost connection would (what a test uses to cut NATS off for one step)
        self.refusing: dict[str, Callable[[str], bool]] = {}
        #: (durable, batch, expires) of every pull request, and (subject, delay) of every
        #: negative acknowledgement, in order
        self.pull_requests: list[tuple[str, int, float]] = []
        self.naks: list[tuple[str, float]] = []
        self.inboxes = 0   # ack inboxes handed out (their names)

    def enter(self, operation: str, what: str) -> None:
        """One write by a client: refused while the server is down or a test says so."""
        self._check()
        refuse = self.refusing.get(operation)
        if refuse is not None and refuse(what):
            raise ConnectionClosedError()
        self.journal.append((operation, what))

    # -- outages
    def stop(self) -> None:
        """The server goes away: every client is disconnected until ``start``."""
        self.up = False
        for js in self.clients:
            if js.is_connected and js.on_state:
                js.on_state("disconnected")

    def start(self) -> None:
        self.up = True
        for js in self.clients:
            if js.is_connected and js.on_state:
                js.on_state("connected")
        for js in self.clients:
            js.flush()   # what a client buffered while reconnecting goes out now

    # -- what the tests look at
    def stream(self, name: str) -> Stream:
        return self.streams[name]

    def subjects(self, stream: str) -> list[str]:
        return [m.subject for _, m in sorted(self.streams[stream].messages.items())]

    def consumer(self, stream: str, durable: str) -> Consumer:
        return self.streams[stream].consumers[durable]

    # -- operations
    def _check(self) -> None:
        if not self.up:
            raise ConnectionClosedError()

    def publish(self, subject: str, payload: bytes, headers: dict[str, str] | None) -> int:
        return self.store(subject, payload, headers)[0]

    def store(self, subject: str, payload: bytes,
              headers: dict[str, str] | None) -> tuple[int, bool]:
        """(sequence, whether it was a duplicate) of a published message."""
        self._check()
        stream = next((s for s in self.streams.values() if s.takes(subject)), None)
        if stream is None:
            raise NotFoundError(code=503, description="no responders: no stream takes "
                                + subject)
        now = self.clock.seconds()
        stream.dedupe = {k: v for k, v in stream.dedupe.items()
                         if now - v[1] < DUPLICATE_WINDOW}
        msg_id = (headers or {}).get("Nats-Msg-Id")
        if msg_id and msg_id in stream.dedupe:
            return stream.dedupe[msg_id][0], True
        size = message_size(subject, headers, payload)
        if stream.max_bytes >= 0:
            if stream.discard_new and stream.bytes + size > stream.max_bytes:
                raise APIError(code=503, err_code=BYTES_EXCEEDED,
                               description="maximum bytes exceeded", stream=stream.name)
            while stream.messages and stream.bytes + size > stream.max_bytes:
                stream.messages.pop(min(stream.messages))
        stream.last_seq += 1
        seq = stream.last_seq
        stream.messages[seq] = Stored(subject, bytes(payload), dict(headers) if headers else None,
                                      seq, datetime.datetime.fromtimestamp(
                                          now, tz=datetime.timezone.utc), size)
        if msg_id:
            stream.dedupe[msg_id] = (seq, now)
        for pattern, on_message in list(self.watchers):
            if subject_matches(pattern, subject):
                self.clock.callLater(0, on_message, subject)
        for consumer in list(stream.consumers.values()):
            consumer.dispatch()
        return seq, False
