"""Large lists as response bodies, encoded and written in reactor slices.

A list of 10,000 functions is ~4.7 MB of JSON. Built in one go it held the reactor
for seconds; built on a thread it held the GIL against the reactor instead (each
syscall the reactor made could wait a switch interval, 5 ms, to get it back). Here
the body is encoded ``STEP`` functions per step, a ``Slicer``'s budget of steps per
reactor turn, and written as it grows (``FLUSH`` bytes per write, chunked: the length
is not known up front). The transport's back-pressure pauses the work, so a slow
client does not make the node buffer the whole body, and a client that goes away
stops it: the rest is never encoded.

The bytes are what one ``json.dumps`` per function always gave: one function per line
(``[\\n{...},\\n{...}\\n]\\n``, a page as ``{"items": [...], "metadata": {...}}``),
for YAML too, in YAML's flow style (JSON is YAML), since block YAML of 10,000 functions
takes seconds even with libyaml.
"""

from __future__ import annotations

import json
from operator import is_
from typing import Any, Iterable, Iterator, Mapping, Sequence, cast

from twisted.internet.task import NotPaused, SchedulerStopped, TaskFinished, TaskStopped
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.server import Request
from zope.interface import implementer

from faastwist.admin.codec import record_document
from faastwist.store.base import FunctionRecord
from faastwist.util.slices import Slicer

__all__ = ["FLUSH", "STEP", "LineCache", "list_pieces", "stream"]

log = Logger()

#: Functions encoded per step (a function not in the line cache: ~50 µs).
STEP = 16
#: Bytes of body gathered before a write (one chunk on the wire).
FLUSH = 64 * 1024
#: Lines kept by a LineCache (cleared when full).
LINE_CACHE = 50_000


class LineCache:
    """Encoded functions, kept for as long as they are unchanged: a console or a client
    polling the full list pays for the functions that changed, not for all of them.

    Two levels: each run of ``STEP`` records as one encoded piece, known by the record
    objects themselves (the store hands out the same frozen object while a function
    is unchanged, and an entry holds its records, so their ids are not reused
    meanwhile): a list of 10,000 unchanged functions is 625 lookups; and each
    function's JSON line by name and both revisions, for the runs that changed."""

    def __init__(self, limit: int = LINE_CACHE) -> None:
        self.limit = limit
        self._lines: dict[tuple[str, int, int], str] = {}
        self._pieces: dict[tuple[int, ...], tuple[tuple[FunctionRecord, ...], bytes]] = {}

    def line(self, record: FunctionRecord, stale: bool = False) -> str:
        if stale:  # from the watch cache: no revisions, and marked
            return json.dumps(dict(record_document(record), stale=True))
        key = (record.name, record.spec_revision, record.status_revision)
        line = self._lines.get(key)
        if line is None or key[1] == 0:  # no revision to tell versions apart: encode
            line = json.dumps(record_document(record))
            if len(self._lines) >= self.limit:
                self._lines.clear()
            self._lines[key] = line
        return line

    def piece(self, records: tuple[FunctionRecord, ...], stale: bool = False) -> bytes:
        """``records``' lines, each after ``,\\n``, as UTF-8."""
        if stale:
            return "".join([",\n" + self.line(r, True) for r in records]).encode()
        key = tuple(map(id, records))
        found = self._pieces.get(key)
        if found is not None and all(map(is_, found[0], records)):
            return found[1]
        piece = "".join([",\n" + self.line(r) for r in records]).encode()
        if len(self._pieces) * STEP >= self.limit:
            self._pieces.clear()
        self._pieces[key] = (records, piece)
        return piece


def list_pieces(records: Mapping[str, FunctionRecord], names: Sequence[str],
                cache: LineCache, stale: bool = False,
                metadata: dict[str, Any] | None = None) -> Iterator[bytes]:
    """The body of ``records[name] for name in names``, one piece per ``STEP``
    functions (each piece is one step's work, records fetched as it goes)."""
    yield b'{"items": [\n' if metadata is not None else b"[\n"
    get = records.__getitem__
    for start in range(0, len(names), STEP):
        piece = cache.piece(tuple(map(get, names[start:start + STEP])), stale)
        yield piece[2:] if start == 0 else piece   # the first without its ",\n"
    tail = "\n]"
    if metadata is not None:
        tail += ', "metadata": ' + json.dumps(metadata) + "}"
    yield (tail + "\n").encode()


@implementer(IPushProducer)
class _Producer:
    """The transport's back-pressure applied to the task writing the body."""

    def __init__(self, task: Any) -> None:
        self.task = task
        self.paused = False

    def pauseProducing(self) -> None:
        if not self.paused:
            self.paused = True
            try:
                self.task.pause()
            except TaskFinished:
                return  # the work is done: nothing left to pause

    def resumeProducing(self) -> None:
        if self.paused:
            self.paused = False
            try:
                self.task.resume()
            except (TaskFinished, NotPaused):
                return  # done, or never paused: nothing to resume

    def stopProducing(self) -> None:
        try:
            self.task.stop()
        except TaskFinished:
            return  # already done: nothing to stop


async def stream(request: IRequest, slicer: Slicer, pieces: Iterable[bytes],
                 flush: int = FLUSH) -> bytes:
    """Write ``pieces`` to ``request`` as ``slicer`` runs them, after the status and
    headers the caller set. Returns ``b""`` (nothing more to write) when all is
    written or the client went away; when a piece cannot be made, or the node stops
    meanwhile, the response is cut (see ``_cut``)."""
    if getattr(request, "_disconnected", False):
        return b""
    buffered: list[bytes] = []
    size = 0

    def steps() -> Iterator[None]:
        nonlocal size
        for piece in pieces:
            buffered.append(piece)
            size += len(piece)
            if size >= flush:
                request.write(b"".join(buffered))
                buffered.clear()
                size = 0
            yield None
        if buffered:
            request.write(b"".join(buffered))

    task = slicer.cooperate(steps())
    producer = _Producer(task)
    # the admin site's request is twisted.web's (IRequest omits producers, notifyFinish)
    web = cast(Request, request)
    web.registerProducer(producer, True)
    gone = web.notifyFinish()
    gone.addErrback(lambda _: producer.stopProducing())
    try:
        await task.whenDone()
    except TaskStopped:
        return b""   # the client went away: the rest is not encoded
    except SchedulerStopped:
        log.info("the node is stopping: cutting a list being written to {path}",
                 path=request.path.decode("latin-1"))
        return await _cut(request, gone, slicer.clock)
    except Exception:
        log.failure("writing a list to {path} failed; cutting the connection",
                    path=request.path.decode("latin-1"))
        return await _cut(request, gone, slicer.clock)
    finally:
        producer.stopProducing()
        _unregister(request)
    return b""


async def _cut(request: Any, gone: Any, clock: Any) -> bytes:
    """Abort the response (HTTP/1.1: the connection; HTTP/2: the stream), so the client
    sees a cut body, never a complete-looking one, and wait until it is gone:
    returning first would let the caller finish the response. The abort runs at the
    next turn: a transport that reported the loss at once would cancel this coroutine
    while it runs."""
    _unregister(request)
    channel = request.channel
    if channel is not None:
        abort = getattr(channel, "abortConnection", None)
        if abort is None:
            abort = channel.transport.abortConnection
        clock.callLater(0, abort)
    await gone
    return b""


def _unregister(request: Any) -> None:
    if request.producer is not None:
        if request.channel is not None:
            request.unregisterProducer()
        else:   # the connection is gone, and the channel with it
            request.producer = None
