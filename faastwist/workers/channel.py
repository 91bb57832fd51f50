"""The control channel between the node's main process and a gate worker.

One message per line, each a compact JSON object with an ``op`` string, over a unix
socket pair (the worker's fd 3). Lines are cheap to read in a log or a test, JSON
carries the few shapes needed (an upstream, a metrics delta, a queued call with a
base64 body); the three messages sent for every request with the process provider
(acquire, its reply, release) have a shorter form of space-separated words, which
decodes to the same dict (``encode`` picks it when the values allow). The framing is a byte scan for ``\\n`` over new data only, so a
large message (an asynchronous call's body) costs linear time. A line that is not a
JSON object with an ``op`` is logged and skipped (the channel stays up); a line past
``max_length`` cannot be resynchronised, so the connection is dropped.

``Calls`` pairs requests with replies by ``id``, with a timeout each; when the
channel goes down every pending call fails at once (``ChannelDown``), so a worker
never waits on a main process that is gone.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from faastwist.util.reactor import IStreamTransport

log = Logger(namespace="faastwist.workers")

#: the longest line accepted: a queued call's body (queue.maxBodySize is at most 64Mi)
#: in base64, with room for its headers
MAX_LENGTH = 96 * 2**20

Message = dict[str, Any]


def ident_of(message: Message, key: str) -> int:
    """A message's integer reference (a call or lease ident); -1, which names nothing,
    when it is missing or not an integer."""
    value = message.get(key)
    return value if isinstance(value, int) else -1


class ChannelDown(Exception):
    """The other process is gone (or never answered in time)."""


class BadMessage(ValueError):
    """A line that is not a JSON object with an ``op`` string."""


#: one encoder for every message (``json.dumps`` with options builds one per call)
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_DECODE = json.JSONDecoder().decode


def _plain(*fields: Any) -> bool:
    return all(isinstance(f, str) and f and not any(c.isspace() for c in f) for f in fields)


def _short(message: Message) -> str | None:
    """The per-request messages as space-separated words (a third of JSON's cost each
    way): ``A id function``, ``L id lease scheme host port host-header``, ``R lease``.
    None when ``message`` has another shape (it is then sent as JSON)."""
    op = message["op"]
    if op == "acquire" and len(message) == 3 and type(message.get("id")) is int \
            and _plain(message.get("fn")):
        return f"A {message['id']} {message['fn']}"
    if op == "reply" and len(message) == 4 and type(message.get("id")) is int \
            and type(message.get("lease")) is int:
        upstream = message.get("upstream")
        if (isinstance(upstream, list) and len(upstream) == 4
                and _plain(upstream[0], upstream[1], upstream[3])
                and type(upstream[2]) is int):
            return (f"L {message['id']} {message['lease']} {upstream[0]} {upstream[1]} "
                    f"{upstream[2]} {upstream[3]}")
    if op == "release" and len(message) == 2 and type(message.get("lease")) is int:
        return f"R {message['lease']}"
    return None


def encode(message: Message) -> bytes:
    """One line: ``message`` in its short form, or as compact JSON; and a newline."""
    short = _short(message)
    if short is not None:
        return short.encode() + b"\n"
    return _ENCODER.encode(message).encode() + b"\n"


def _decode_short(line: bytes) -> Message:
    words = line.decode().split(" ")
    kind = words[0]
    try:
        if kind == "A" and len(words) == 3 and words[2]:
            return {"op": "acquire", "id": int(words[1]), "fn": words[2]}
        if kind == "L" and len(words) == 7:
            return {"op": "reply", "id": int(words[1]), "lease": int(words[2]),
                    "upstream": [words[3], words[4], int(words[5]), words[6]]}
        if kind == "R" and len(words) == 2:
            return {"op": "release", "lease": int(words[1])}
    except ValueError:
        pass
    raise BadMessage(f"not a short message ({kind!r} with {len(words) - 1} words)")


def decode(line: bytes) -> Message:
    """The message on ``line`` (without its newline); BadMessage when it is not one."""
    try:
        if line[:1] != b"{":
            return _decode_short(line)
        message = _DECODE(line.decode())
    except UnicodeDecodeError as exc:
        raise BadMessage(f"not UTF-8: {exc}") from None
    except BadMessage:
        raise
    except ValueError as exc:
        raise BadMessage(f"not JSON: {exc}") from None
    if not isinstance(message, dict) or not isinstance(message.get("op"), str):
        raise BadMessage("not an object with an 'op' string")
    return message


class Channel(Protocol):
    """Reads and writes messages; ``on_message`` gets each, ``on_lost`` the end."""

    #: connected before any method here runs (faastwist/util/reactor.py)
    transport: IStreamTransport

    def __init__(self, on_message: Callable[[Message], None],
                 on_lost: Callable[[str], None] | None = None,
                 max_length: int = MAX_LENGTH) -> None:
        self.on_message = on_message
        self.on_lost = on_lost
        self.max_length = max_length
        self.connected_ = False
        self.bad_lines = 0
        self._buffer = bytearray()
        self._scanned = 0  # bytes of the buffer known to hold no newline
        self._closed: list[Deferred[None]] = []

    def connectionMade(self) -> None:
        self.connected_ = True

    def send(self, message: Message) -> bool:
        """Write one message; False when the channel is down (nothing is sent)."""
        if not self.connected_ or self.transport is None:
            return False
        self.transport.write(encode(message))
        return True

    def dataReceived(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        scan = self._scanned
        while self.connected_:
            end = buffer.find(b"\n", scan)
            if end < 0:
                break
            line = bytes(buffer[start:end])
            start = scan = end + 1
            try:
                message = decode(line)
            except BadMessage as exc:
                self.bad_lines += 1
                log.warn("control channel: skipped a bad line ({problem}): {line}",
                         problem=str(exc), line=line[:200].decode("utf-8", "replace"))
                continue
            try:
                self.on_message(message)
            except Exception:
                log.failure("control channel: handling {op} failed", op=message["op"])
        del buffer[:start]
        self._scanned = len(buffer)
        if len(buffer) > self.max_length:
            log.error("control channel: a line longer than {limit} bytes; closing",
                      limit=self.max_length)
            buffer.clear()
            self._scanned = 0
            self.transport.abortConnection()

    def close(self) -> Deferred[None]:
        """Flush what is written, close, and fire once the connection is gone."""
        d: Deferred[None] = Deferred()
        if not self.connected_:
            d.callback(None)
            return d
        self._closed.append(d)
        self.transport.loseConnection()
        return d

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.connected_ = False
        waiters, self._closed = self._closed, []
        for d in waiters:
            d.callback(None)
        if self.on_lost is not None:
            self.on_lost(reason.getErrorMessage() if reason is not None else "closed")


class ChannelFactory(Factory):
    """Builds the one ``Channel`` of an adopted socket."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    def buildProtocol(self, addr: Any) -> Channel:
        return self.channel


class Calls:
    """Requests over a channel whose replies carry the request's ``id``."""

    def __init__(self, channel: Channel, clock: IReactorTime) -> None:
        self.channel = channel
        self.clock = clock
        self._next = 0
        self.pending: dict[int, tuple[Deferred[Message], IDelayedCall]] = {}

    def call(self, op: str, timeout: float, **fields: Any) -> Deferred[Message]:
        """Send ``op`` and fire with the reply (a message with ``"id"``); fails with
        ChannelDown when the channel is down, goes down, or no reply comes in
        ``timeout`` seconds. Cancelling it tells the other side (``cancel``)."""
        self._next += 1
        ident = self._next

        def cancel(d: Deferred[Message]) -> None:
            entry = self.pending.pop(ident, None)
            if entry is not None:
                if entry[1].active():
                    entry[1].cancel()
                self.channel.send({"op": "cancel", "id": ident})

        d: Deferred[Message] = Deferred(cancel)
        if not self.channel.send({"op": op, "id": ident, **fields}):
            d.errback(ChannelDown("the control channel is down"))
            return d
        timer = self.clock.callLater(timeout, self._expired, ident, op, timeout)
        self.pending[ident] = (d, timer)
        return d

    def _expired(self, ident: int, op: str, timeout: float) -> None:
        entry = self.pending.pop(ident, None)
        if entry is not None:
            self.channel.send({"op": "cancel", "id": ident})
            entry[0].errback(ChannelDown(f"no answer to {op} in {timeout:g}s"))

    def answer(self, message: Message) -> None:
        """A reply arrived: fire its call (an unknown id was cancelled or timed out)."""
        ident = message.get("id")
        entry = self.pending.pop(ident, None) if isinstance(ident, int) else None
        if entry is None:
            return
        if entry[1].active():
            entry[1].cancel()
        entry[0].callback(message)

    def fail_all(self, why: str) -> None:
        """The channel is gone: every pending call fails now."""
        pending, self.pending = self.pending, {}
        for d, timer in pending.values():
            if timer.active():
                timer.cancel()
            d.errback(ChannelDown(why))


__all__ = ["BadMessage", "Calls", "Channel", "ChannelDown",
           "ChannelFactory", "MAX_LENGTH", "Message", "decode", "encode"]
