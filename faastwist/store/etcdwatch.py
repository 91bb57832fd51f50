"""A resumable etcd watch over the JSON gateway's streaming ``/watch`` endpoint.

Why not txaioetcd's ``Client.watch``: it splits each network read on newlines, so a
message that straddles two reads is dropped with a warning (a lost change); it hides
the event type, ignores the ``canceled``/``compact_revision`` answer (a compacted
start revision then looks like a quiet key forever) and gives no handle to stop one
stream. This one buffers whole lines, resumes from the last seen revision + 1 after a
connection loss (backoff on the injected clock, next endpoint each time), and reports
a gap (compaction, or a store whose revision went backwards) once through ``on_lost``.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Callable, Sequence

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IResponse

from faastwist.store.base import StoreError
from faastwist.util.bodyproducer import BytesProducer

log = Logger()


@attrs.frozen
class KeyEvent:
    """One key changed at ``mod_revision``; ``value`` is None when it was deleted."""

    key: bytes
    value: bytes | None
    mod_revision: int


class WatchLost(StoreError):
    """The watch cannot resume without a gap: list again and start a new watch."""


class Compacted(WatchLost):
    def __init__(self, start_revision: int, compact_revision: int) -> None:
        super().__init__(f"etcd compacted its history up to revision {compact_revision}; "
                         f"changes from revision {start_revision} on are gone")
        self.start_revision = start_revision
        self.compact_revision = compact_revision


class StoreReset(WatchLost):
    def __init__(self, seen: int, current: int) -> None:
        super().__init__(f"etcd's revision went back from {seen} to {current} "
                         f"(a new or restored cluster)")


def parse_events(result: dict[str, Any]) -> list[KeyEvent]:
    """The KeyEvents of one watch response, in etcd's (revision) order."""
    events = []
    for evt in result.get("events") or ():
        kv = evt.get("kv") or {}
        key = base64.b64decode(kv.get("key", ""))
        value = None if evt.get("type") == "DELETE" else base64.b64decode(kv.get("value", ""))
        events.append(KeyEvent(key, value, int(kv.get("mod_revision", 0))))
    return events


class _LineStream(Protocol):
    """Feeds each complete newline-terminated JSON message of a streamed body onwards."""

    #: a response body's transport (twisted.web's TransportProxyProducer)
    transport: IPushProducer | None  # type: ignore[assignment]

    def __init__(self, on_message: Callable[[dict], None],
                 on_end: Callable[[Failure], None]) -> None:
        self._on_message = on_message
        self._on_end = on_end
        self._buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            self._line(line)

    def _line(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            message = json.loads(line)
        except ValueError:
            log.warn("etcd watch: unparsable message skipped: {line!r}", line=line[:200])
            return
        if isinstance(message, dict):
            self._on_message(message)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._buffer.strip():
            self._line(self._buffer)
            self._buffer = b""
        self._on_end(reason)


class EtcdWatch:
    """Watches ``[key, range_end)`` for changes after ``after_revision`` until cancelled."""

    def __init__(self, reactor: IReactorTime, agent: IAgent, endpoints: Sequence[str], api_prefix: str,
                 key: bytes, range_end: bytes | None, after_revision: int,
                 on_events: Callable[[list[KeyEvent]], None],
                 on_lost: Callable[[Exception], None], *,
                 connect_timeout: float = 5.0,
                 on_reconnect: Callable[[], None] | None = None,
                 min_backoff: float = 0.1, max_backoff: float = 5.0) -> None:
        self.reactor = reactor
        self.agent = agent
        self.endpoints = list(endpoints)
        self.api_prefix = api_prefix
        self.key = key
        self.range_end = range_end
        self.last_revision = after_revision
        self.on_events = on_events
        self.on_lost = on_lost
        self.connect_timeout = connect_timeout
        self.on_reconnect = on_reconnect
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.connected = False
        self._endpoint = 0
        self._failures = 0
        self._stopped = False
        self._request: Deferred | None = None
        self._stream: _LineStream | None = None
        self._retry: IDelayedCall | None = None

    def start(self) -> "EtcdWatch":
        self._connect()
        return self

    def cancel(self) -> None:
        """Stop for good; idempotent, never calls on_lost."""
        self._stopped = True
        self.connected = False
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._request is not None:
            self._request.cancel()
            self._request = None
        if self._stream is not None and self._stream.transport is not None:
            self._stream.transport.stopProducing()
        self._stream = None

    # connection

    def _connect(self) -> None:
        self._retry = None
        if self._stopped:
            return
        endpoint = self.endpoints[self._endpoint % len(self.endpoints)]
        create: dict[str, Any] = {
            "key": base64.b64encode(self.key).decode(),
            "start_revision": self.last_revision + 1,
            "progress_notify": True,
        }
        if self.range_end is not None:
            create["range_end"] = base64.b64encode(self.range_end).decode()
        body = json.dumps({"create_request": create}).encode()
        url = f"{endpoint}{self.api_prefix}/watch"
        d = self.agent.request(b"POST", url.encode(),
                               Headers({b"Content-Type": [b"application/json"]}),
                               BytesProducer(body))
        d.addTimeout(self.connect_timeout, self.reactor)
        self._request = d
        d.addCallback(self._got_response, url)
        d.addErrback(self._failed, url)

    def _got_response(self, response: IResponse, url: str) -> Deferred | None:
        self._request = None
        if self._stopped:
            response.deliverBody(_Discard())
            return None
        if response.code != 200:
            d = readBody(response)
            d.addTimeout(self.connect_timeout, self.reactor)

            def refuse(body: bytes) -> None:
                raise StoreError(f"etcd watch {url}: HTTP {response.code}: "
                                 f"{body[:200].decode('utf-8', 'replace')}")
            return d.addCallback(refuse)
        self._stream = _LineStream(self._message, self._stream_ended)
        response.deliverBody(self._stream)
        return None

    def _failed(self, failure: Failure, url: str) -> None:
        self._request = None
        if self._stopped:
            return
        log.warn("etcd watch {url} failed: {error}", url=url, error=failure.getErrorMessage()
                 or type(failure.value).__name__)
        self._schedule_retry()

    def _stream_ended(self, reason: Failure) -> None:
        self._stream = None
        was_connected, self.connected = self.connected, False
        if self._stopped:
            return
        if was_connected:
            log.info("etcd watch stream ended ({error}); resuming from revision {revision}",
                     error=reason.getErrorMessage() or type(reason.value).__name__,
                     revision=self.last_revision + 1)
        self._schedule_retry()

    def _schedule_retry(self) -> None:
        if self._stopped or self._retry is not None:
            return
        self._failures += 1
        self._endpoint += 1
        delay = min(self.max_backoff, self.min_backoff * 2 ** (self._failures - 1))
        if self.on_reconnect is not None:
            self.on_reconnect()
        self._retry = self.reactor.callLater(delay, self._connect)

    # messages

    def _message(self, message: dict) -> None:
        if self._stopped:
            return
        result = message.get("result")
        if not isinstance(result, dict):
            error = message.get("error")
            log.warn("etcd watch stream error: {error}", error=error)
            self._drop_stream()
            return
        header = result.get("header") or {}
        revision = int(header.get("revision", 0))
        if result.get("canceled"):
            compact = int(result.get("compact_revision", 0))
            if compact:
                self._lose(Compacted(self.last_revision + 1, compact))
            else:
                self._lose(WatchLost("etcd cancelled the watch: "
                                     f"{result.get('cancel_reason') or 'no reason given'}"))
            return
        if result.get("created"):
            if revision and revision < self.last_revision:
                self._lose(StoreReset(self.last_revision, revision))
                return
            self.connected = True
            self._failures = 0
            return
        events = [e for e in parse_events(result) if e.mod_revision > self.last_revision]
        if not events:
            # a progress notification: every change up to ``revision`` was delivered
            if revision > self.last_revision:
                self.last_revision = revision
            return
        self.last_revision = events[-1].mod_revision
        try:
            self.on_events(events)
        except Exception:
            log.failure("etcd watch consumer failed on {count} events", count=len(events))

    def _drop_stream(self) -> None:
        """Close the current stream; its end schedules a resume."""
        if self._stream is not None and self._stream.transport is not None:
            self._stream.transport.stopProducing()

    def _lose(self, reason: Exception) -> None:
        self.cancel()
        log.warn("etcd watch lost: {reason}", reason=str(reason))
        try:
            self.on_lost(reason)
        except Exception:
            log.failure("etcd watch on_lost consumer failed")


class _Discard(Protocol):
    """Closes a stream nobody wants any more (a watch cancelled while connecting)."""

    transport: IPushProducer  # type: ignore[assignment]  # a response body's

    def connectionMade(self) -> None:
        self.transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        pass
