"""The gate as a twisted.web resource: HTTPS, HTTP/2 over TLS, and any Site.

``GateResource.render`` works in any twisted.web Site (the body has then been read
into ``request.content`` by twisted.web, as in tests through StubTreq). ``GateSite``
uses ``StreamingRequest`` instead, which starts the exchange as soon as the head is
read and passes body chunks on as they arrive, so a 100 MB upload is never held by
the gate; responses are streamed in both cases.
"""

from __future__ import annotations

import io
from typing import Any

from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from faastwist.gate.context import GateContext
from faastwist.gate.exchange import Exchange
from faastwist.gate.wire import LINGER
from faastwist.gate.decisions import RequestHead
from faastwist.gate.webchannel import BodyWatch, body_message, gate_channel, reset_stream

try:
    from twisted.web._http2 import H2Stream
except ImportError:  # pragma: no cover - h2 not installed
    H2Stream = None  # type: ignore[assignment,misc]  # a None stand-in for the class

_FRAMING = (b"content-length", b"transfer-encoding")
log = Logger(namespace="faastwist.gate")


def _is_h2(request: server.Request) -> bool:
    return H2Stream is not None and isinstance(request.channel, H2Stream)


def request_head(request: server.Request, method: bytes, uri: bytes, version: bytes,
                 length: int | None) -> RequestHead:
    """A RequestHead from a twisted.web request; the framing is what the channel read
    (``length`` None: a body of unknown length, sent upstream chunked)."""
    headers = [(name.lower(), value)
               for name, values in request.requestHeaders.getAllRawHeaders()
               for value in values if name.lower() not in _FRAMING]
    codings = request.requestHeaders.getRawHeaders(b"transfer-encoding")
    if codings:
        # as sent: the gate's decisions check the final coding is chunked (twisted.web
        # reads an unknown coding as no body at all)
        headers += [(b"transfer-encoding", value) for value in codings]
    elif length is None:
        headers.append((b"transfer-encoding", b"chunked"))
    elif length:
        headers.append((b"content-length", b"%d" % length))
    client = request.getClientAddress()
    return RequestHead(method, uri, headers, getattr(client, "host", ""),
                       b"https" if request.isSecure() else b"http",
                       http11=version != b"HTTP/1.0")


@implementer(IPushProducer)
class _PauseReading:
    """Pauses reading a request body (an HTTP/1.x connection's transport, or an HTTP/2
    stream); a pause also holds the request's body idle watch (it is not a stall)."""

    def __init__(self, target: Any, request: "StreamingRequest | server.Request") -> None:
        self.target = target
        self.request = request

    def pauseProducing(self) -> None:
        watch = getattr(self.request, "gate_watch", None)
        if watch is not None:
            watch.pause()
        self.target.pauseProducing()

    def resumeProducing(self) -> None:
        self.target.resumeProducing()
        watch = getattr(self.request, "gate_watch", None)
        if watch is not None:
            watch.resume()

    def stopProducing(self) -> None:
        self.target.stopProducing()


class WebDownstream:
    """A twisted.web Request as the exchange's Downstream."""

    def __init__(self, request: server.Request) -> None:
        self.request = request
        self.h2 = _is_h2(request)
        self.body_producer: IPushProducer = _PauseReading(
            request.channel if self.h2 else request.channel.transport, request)
        self.exchange: Exchange | None = None

    def send_continue(self) -> None:
        """twisted.web answers Expect: 100-continue itself."""

    def send_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]],
                  length: int | None, bodyless: bool, close: bool) -> None:
        request = self.request
        if request._disconnected:
            return
        request.setResponseCode(status, reason)
        raw = request.responseHeaders
        raw.removeHeader(b"server")  # twisted.web's defaults; the upstream's are passed on
        raw.removeHeader(b"date")
        for name, value in headers:
            raw.addRawHeader(name, value)
        if length is not None and status not in (204, 304):
            raw.setRawHeaders(b"content-length", [b"%d" % length])
        if close and not self.h2:
            raw.setRawHeaders(b"connection", [b"close"])
            request.channel.persistent = False
        request.write(b"")

    def send_data(self, data: bytes) -> None:
        if not self.request._disconnected:
            self.request.write(data)

    def send_end(self) -> None:
        if not self.request._disconnected and not self.request.finished:
            self.request.finish()

    def send_simple(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]],
                    body: bytes, close: bool) -> None:
        self.send_head(status, reason, [h for h in headers if h[0] != b"content-length"],
                       len(body), False, close)
        self.send_data(body)
        self.send_end()

    def abort(self) -> None:
        request = self.request
        if request._disconnected:
            return
        if isinstance(request, StreamingRequest):
            request._gate_stop_watch()
        channel: Any = request.channel   # an HTTPChannel or an H2Stream (see StreamingRequest)
        if self.h2:
            channel.abortConnection()
        else:
            channel.transport.abortConnection()

    def register_producer(self, producer: IPushProducer) -> None:
        if not self.request._disconnected:
            self.request.registerProducer(producer, True)

    def unregister_producer(self) -> None:
        if not self.request._disconnected:
            self.request.unregisterProducer()

    def exchange_done(self, exchange: Exchange, close: bool) -> None:
        self.exchange = None


class GateResource(Resource):
    """Proxies every request (a leaf: the gate routes on a header, not the path)."""

    isLeaf = True

    def __init__(self, context: GateContext) -> None:
        super().__init__()
        self.context = context

    def render(self, request: server.Request) -> Any:
        """A request whose body twisted.web has already read (any Site)."""
        content = request.content
        if content is None:  # not reached: a Site's request has read its body
            content = io.BytesIO()
        content.seek(0, io.SEEK_END)
        size = content.tell()
        content.seek(0)
        head = request_head(request, request.method, request.uri, request.clientproto, size)
        down = WebDownstream(request)
        exchange = down.exchange = Exchange(self.context, down, head)
        exchange.begin()
        request.notifyFinish().addErrback(lambda _: exchange.client_lost())
        while not exchange.done:
            chunk = content.read(65536)
            if not chunk:
                break
            exchange.body(chunk)
        exchange.body_end()
        return NOT_DONE_YET

    def start_streaming(self, request: "StreamingRequest") -> None:
        """The head is read: start the exchange; the body follows chunk by chunk."""
        if request._disconnected:
            return
        head = request_head(request, request.method, request.uri, request.clientproto,
                            request.gate_length)
        down = WebDownstream(request)
        exchange = down.exchange = Exchange(self.context, down, head)
        exchange.begin()
        request.gate_exchange = exchange
        request.notifyFinish().addErrback(lambda _: exchange.client_lost())
        early, request.gate_early = request.gate_early, []
        for chunk in early:
            exchange.body(chunk)
        if request.gate_body_done:
            exchange.body_end()


class StreamingRequest(server.Request):
    """Starts proxying when the head is read instead of when the body is complete."""

    #: an HTTP/1.1 GateChannel or, under HTTP/2, an H2Stream with the same duties under
    #: other names (twisted.web declares HTTPChannel): the library's duck type
    channel: Any

    gate_length: int | None = None
    gate_exchange: Exchange | None = None
    gate_body_done = False
    gate_streaming = False
    gate_watch: BodyWatch | None = None
    _gate_finish_pending = False
    _gate_cut = False

    def gotLength(self, length: int | None) -> None:
        self.site = site = self.channel.site  # server.Request sets it only in process()
        resource = getattr(site, "resource", None)
        if not isinstance(resource, GateResource):
            super().gotLength(length)
            return
        self.gate_streaming = True
        self.gate_length = length
        self.gate_early: list[bytes] = []
        self.content = io.BytesIO()
        channel = self.channel
        if H2Stream is not None and isinstance(channel, H2Stream):
            # (set from the stream's header block, which is complete here)
            method, uri, version = channel.command or b"", channel.path or b"", b"HTTP/2"
        else:
            method, uri, version = channel._command, channel._path, channel._version
        self.method, self.uri, self.clientproto = method, uri, version
        self.path = uri.split(b"?", 1)[0]
        self.args = {}
        clock = resource.context.clock
        if length != 0:
            self.gate_watch = BodyWatch(clock, getattr(site, "body_idle_timeout", 30.0),
                                        self._gate_body_stalled)
        # start on the next reactor pass: an HTTP/2 stream is not registered with its
        # connection until its constructor (which calls us) returns
        clock.callLater(0, resource.start_streaming, self)

    def handleContentChunk(self, data: bytes) -> None:
        if not self.gate_streaming:
            super().handleContentChunk(data)
            return
        if self.gate_watch is not None:
            self.gate_watch.moved()
        if self.gate_exchange is not None:
            self.gate_exchange.body(data)
        elif not self.finished:
            self.gate_early.append(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if not self.gate_streaming:
            super().requestReceived(command, path, version)
            return
        self.gate_body_done = True
        self._gate_stop_watch()
        if self.gate_exchange is not None:
            self.gate_exchange.body_end()
        if self._gate_finish_pending:
            self._gate_finish_pending = False
            super().finish()

    def finish(self) -> None:
        if self.gate_streaming and not self.gate_body_done and not self.finished:
            # answered before the body was read (413, 404, timeout). Ending the response
            # now would make the kernel reset an HTTP/1 connection under a client still
            # uploading (it would never read the answer), and on HTTP/2 Twisted cannot
            # take DATA for a stream it has ended. So read the body away and finish when
            # it is complete, bounded by LINGER; then close (HTTP/1) or reset the stream.
            self._gate_finish_pending = True
            if self._gate_cut:
                self._gate_close()
                return
            clock = self.channel.site.resource.context.clock
            if _is_h2(self):
                clock.callLater(LINGER, self._gate_give_up)
                return
            self.channel.persistent = False
            if self.chunked:
                self.channel.write(b"0\r\n\r\n")
                self.chunked = 0
            clock.callLater(LINGER, self.channel.loseConnection)
            return
        super().finish()

    def _gate_give_up(self) -> None:
        if self._gate_finish_pending and not self._disconnected:
            self._gate_stop_watch()
            self.channel.abortConnection()

    def _gate_stop_watch(self) -> None:
        watch, self.gate_watch = self.gate_watch, None
        if watch is not None:
            watch.stop()

    def _gate_body_stalled(self) -> None:
        """No body bytes for bodyIdleTimeout while the gate read: 408 when the answer
        has not begun (the exchange logs and counts it), the request cut otherwise."""
        watch, self.gate_watch = self.gate_watch, None
        if self._disconnected or self.gate_body_done or watch is None:
            return
        exchange = self.gate_exchange
        if not self._gate_finish_pending and (exchange is None or exchange.done):
            return   # aborted already (an HTTP/2 reset): nothing is waiting
        log.info("request body from {client} stalled for {timeout}s: cut ({protocol})",
                 client=getattr(self.getClientAddress(), "host", ""), timeout=watch.timeout,
                 protocol="HTTP/2" if _is_h2(self) else "HTTP/1.1")
        self._gate_cut = True
        if exchange is not None and not exchange.done:
            exchange.bad_request(body_message(watch.timeout), 408)
        if self._gate_finish_pending and not self._disconnected:
            self._gate_close()

    def _gate_close(self) -> None:
        """End a request whose body stalled, now: HTTP/1.1 closes the connection once
        the answer is written; HTTP/2 ends the response and then resets the stream with
        NO_ERROR (RFC 9113 8.1: stop sending), the connection serves its other streams."""
        self._gate_finish_pending = False
        channel = self.channel
        if not _is_h2(self):
            channel.persistent = False
            if self.chunked:
                channel.write(b"0\r\n\r\n")
                self.chunked = 0
            channel.loseConnection()   # (it unregisters itself: TLS would wait for it)
            return
        if self.finished or not self.startedWriting:
            channel.abortConnection()      # nothing to end cleanly: reset at once
            return
        connection, stream_id = channel._conn, channel.streamID
        ended = connection._streamCleanupCallbacks.get(stream_id)
        super().finish()
        if ended is not None:
            ended.addCallback(lambda _: reset_stream(connection, stream_id))

    def connectionLost(self, reason: Failure) -> None:
        self._gate_stop_watch()
        super().connectionLost(reason)


class GateSite(server.Site):
    """A Site whose requests stream; twisted.web's own access log is off (the gate
    logs one line per exchange with named fields when accessLog is on)."""

    requestFactory = StreamingRequest
    protocol = gate_channel
    noisy = False

    def __init__(self, resource: GateResource, *, reactor: IReactorTime,
                 timeout: float | None = None, header_timeout: float = 10.0,
                 body_idle_timeout: float = 30.0) -> None:
        super().__init__(resource, timeout=timeout, reactor=reactor)
        #: a request head must be complete this long after the connect or its first byte
        self.header_timeout = header_timeout
        #: a request body that does not move this long (while read) is cut
        self.body_idle_timeout = body_idle_timeout

    def log(self, request: http.Request) -> None:
        return None
