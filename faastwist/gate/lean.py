"""The lean HTTP/1.1 transport: a raw Twisted protocol parsing with httptools.

twisted.web builds a Request, Headers objects and a resource traversal per request,
and buffers request bodies; measured here, that (with Agent on the upstream side)
tops out near 2k req/s on one core. This protocol parses with ``httptools`` into a
``RequestHead``, hands it to an ``Exchange`` and is itself the exchange's Downstream:
it frames the response (Content-Length kept, chunked when the upstream's length is
unknown), coalesces the response head with the first body bytes, and writes straight
to the socket when nothing is queued (Twisted's ``write`` always waits for the next
reactor pass). Keep-alive, pipelining (requests answered in order), the idle timeout
(one sweep for all connections) and the head size limit are handled here.
"""

from __future__ import annotations

import enum
from typing import Any

import httptools
from twisted.internet import tcp
from twisted.internet.interfaces import IAddress, IPushProducer, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from faastwist.gate.context import GateContext
from faastwist.gate.exchange import Exchange
from faastwist.gate.decisions import GateError, RequestHead, error_headers
from faastwist.gate.connlimit import ConnectionLimit, RejectProtocol
from faastwist.gate.wire import (
    LINGER,
    error_body,
    head_lines,
    no_delay,
    quick_ack,
    reason,
    tcp_socket,
    unsupported_version_message,
    write_now,
)
from faastwist.util.reactor import IStreamTransport

log = Logger()

MAX_HEAD_SIZE = 64 * 1024
SPOKEN_VERSIONS = ("1.0", "1.1")


class UnsupportedVersion(Exception):
    """Raised from the parser's callback to stop it at a head of another HTTP version
    (``GET / HTTP/2.0`` in cleartext must not be served as HTTP/1)."""
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class Pause(enum.Flag):
    """Why the lean transport stopped reading a client; it reads again when none holds."""

    NONE = 0
    BACK_PRESSURE = enum.auto()   # the upstream cannot take the request body as fast
    PIPELINE = enum.auto()        # pipelined requests wait for the current answer
    BAD_INPUT = enum.auto()       # the input stopped making sense: read no more


class _Queued:
    """A pipelined request read while the one before it is still being answered."""

    __slots__ = ("head", "keep", "chunks", "complete")

    def __init__(self, head: RequestHead, keep: bool) -> None:
        self.head = head
        self.keep = keep
        self.chunks: list[bytes] = []
        self.complete = False

    def body(self, data: bytes) -> None:
        self.chunks.append(data)

    def body_end(self) -> None:
        self.complete = True


@implementer(IPushProducer)
class LeanProtocol(Protocol):
    """One client connection; serves its requests one at a time, in order."""

    #: connected before any method here runs (faastwist/util/reactor.py)
    transport: IStreamTransport

    def __init__(self, factory: "LeanFactory", client_ip: str) -> None:
        self.factory = factory
        self.context = factory.context
        self.client_ip = client_ip
        self.parser = httptools.HttpRequestParser(self)
        self.exchange: Exchange | None = None
        self.receiving: Any = None       # where the parser's body chunks go
        self.queue: list[_Queued] = []
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_size = 0
        self.in_head = False
        self.keep = True
        self.http11 = True
        self.chunked = False
        self.closing = False
        self.lost = False
        self.pending_head = b""
        self.direct = False
        self.socket: Any = None
        self.last_active = 0.0
        self.body_producer: IPushProducer = self
        self._pauses = Pause.NONE
        self.starting = False
        self.head_began = 0.0               # when the head being read began (or the connect)
        self.body_seen = 0.0                # when the body being received last moved
        self.first = True                   # no request read yet on this connection
        self.failed = False                 # the parser gave up on this connection's input
        #: the 400 (or 505) owed once earlier requests are answered
        self.bad_input: tuple[int, str] | None = None

    # -- connection --------------------------------------------------------------------

    def connectionMade(self) -> None:
        transport = self.transport
        self.direct = isinstance(transport, tcp.Connection)
        self.socket = tcp_socket(transport)
        no_delay(self.socket)
        self.last_active = self.head_began = self.factory.clock.seconds()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost = True
        self.factory.limit.leave(self)
        self.queue = []
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.client_lost()

    def busy(self) -> bool:
        """A request is being read, answered or waits its turn (the gate's shutdown
        closes idle connections only)."""
        return self.exchange is not None or self.in_head or bool(self.queue)

    def dataReceived(self, data: bytes) -> None:
        if self.failed or (self.closing and self.exchange is None):
            return  # lingering, closing, or past unparseable bytes: the rest is dropped
        if self.in_head or self.exchange is None:
            self.head_size += len(data)
            if self.head_size > MAX_HEAD_SIZE and self.in_head:
                self._refuse(431, "request head exceeds 64 KiB")
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # llhttp stops after an Upgrade/CONNECT head; the gate does not tunnel
            # (Upgrade is hop-by-hop): the request was answered like any other
            pass
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, UnsupportedVersion):
                self._malformed(str(exc.__context__), 505)
                return
            # a bug in the gate, not the client's fault: log it, answer 500 if we can
            log.failure("gate error handling a request from {client}",
                        Failure(exc.__context__ or exc), client=self.client_ip)
            if self.exchange is None or self.exchange.done:
                self._refuse(500, "internal gate error (logged)")
            else:
                self.transport.abortConnection()
        except httptools.HttpParserError as exc:
            if str(exc) == "Invalid HTTP version":   # llhttp: not 0.9, 1.0, 1.1 or 2.0
                self._malformed(unsupported_version_message(None), 505)
                return
            self._malformed(f"malformed HTTP request: {exc}")
            return
        if self.in_head or self.receiving is not None:
            # a request still incomplete after this read: ACK it now (wire.quick_ack),
            # so a client that sends head and body apart is not held by a delayed ACK
            quick_ack(self.socket)

    def _malformed(self, message: str, code: int = 400) -> None:
        """The input cannot be parsed further: 400 (505 for an HTTP version the gate
        does not speak), then close. Requests that were read whole before the bad bytes
        are answered first, in order; a request whose body is broken gets the 400
        itself if its answer has not begun."""
        self.failed = True
        if self.closing:
            return    # already answered (an error that closes): the rest is noise
        self._pause(Pause.BAD_INPUT)
        receiving = self.receiving
        self.receiving = None
        exchange = self.exchange
        if isinstance(receiving, _Queued):
            self.queue.remove(receiving)      # the broken one: never started
        elif receiving is not None and exchange is receiving and not exchange.done:
            self.queue = []
            self.bad_input = None
            exchange.bad_request(message)     # its body is broken: 400 (or abort)
            return
        self.bad_input = (code, message)
        if exchange is None and not self.queue:
            self._refuse(code, message)

    def head_timed_out(self) -> None:
        self.failed = True
        log.info("request head from {client} incomplete after {timeout}s: 408, closing",
                 client=self.client_ip, timeout=self.factory.header_timeout)
        self._refuse(408, f"the request head did not arrive within "
                          f"{self.factory.header_timeout:g}s (headerTimeout)")

    def body_timed_out(self) -> None:
        """The body stalled: the request is cut (408 when its answer has not begun)."""
        message = (f"the request body stalled for more than "
                   f"{self.factory.body_idle_timeout:g}s (bodyIdleTimeout)")
        log.info("request body from {client} stalled for {timeout}s: cut ({protocol})",
                 client=self.client_ip, timeout=self.factory.body_idle_timeout,
                 protocol="HTTP/1.1")
        receiving, self.receiving = self.receiving, None
        self.failed = True
        exchange = self.exchange
        if receiving is exchange and exchange is not None and not exchange.done:
            exchange.bad_request(message, 408)
        else:
            self.queue = []
            self._refuse(408, message)

    def _refuse(self, code: int, message: str) -> None:
        """Answer a request the parser could not make sense of, and close."""
        self.bad_input = None
        if self.closing or self.lost:
            return
        error = GateError(code, message, close=True)
        body = error_body(code, message)
        headers = error_headers(error, body, None) + [(b"connection", b"close")]
        self._write(b"HTTP/1.1 %d %s\r\n%s\r\n%s" % (code, reason(code), head_lines(headers),
                                                     body))
        self.closing = True
        self.transport.loseConnection()

    # -- httptools callbacks -----------------------------------------------------------

    def on_message_begin(self) -> None:
        if not self.first:
            self.head_began = self.factory.clock.seconds()
        self.in_head = True
        self.url = b""
        self.headers = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        self.in_head = False
        self.first = False
        self.head_size = 0
        self.body_seen = self.factory.clock.seconds()
        version = parser.get_http_version()
        if version not in SPOKEN_VERSIONS:   # llhttp also passes 0.9 and 2.0
            raise UnsupportedVersion(unsupported_version_message(version))
        head = RequestHead(parser.get_method(), self.url, self.headers, self.client_ip,
                           self.factory.scheme, version == "1.1")
        keep = parser.should_keep_alive()
        if self.exchange is None and not self.queue:
            self._start(head, keep)
        else:
            queued = _Queued(head, keep)
            self.queue.append(queued)
            self.receiving = queued
            self._pause(Pause.PIPELINE)  # read no further until the queue is answered

    def on_body(self, body: bytes) -> None:
        receiving = self.receiving
        self.body_seen = self.factory.clock.seconds()
        if receiving is not None:
            receiving.body(body)

    def on_message_complete(self) -> None:
        receiving = self.receiving
        self.receiving = None
        if receiving is not None:
            receiving.body_end()

    # -- exchanges ---------------------------------------------------------------------

    def _start(self, head: RequestHead, keep: bool) -> Exchange:
        self.keep = keep
        self.http11 = head.http11
        self.chunked = False
        self.pending_head = b""
        exchange = Exchange(self.context, self, head)
        self.exchange = self.receiving = exchange
        exchange.begin()
        return exchange

    def exchange_done(self, exchange: Exchange, close: bool) -> None:
        if self.exchange is not exchange:
            return
        self.exchange = None
        still_sending = self.receiving is not None
        if self.receiving is exchange:
            self.receiving = None
        self.last_active = exchange.ended
        if close or self.closing or not self.keep or not self.context.keep_alive:
            self.closing = True
            if not still_sending:
                self.transport.loseConnection()
            else:  # the client is still sending the body: read it away, then close
                self.receiving = None
                self.queue = []
                self._resume(Pause.BACK_PRESSURE | Pause.PIPELINE)
                self.factory.clock.callLater(LINGER, self.transport.loseConnection)
            return
        if self.queue and not self.starting:
            self._run_queue()
        if self.bad_input is not None and self.exchange is None and not self.queue:
            self._refuse(*self.bad_input)

    def _run_queue(self) -> None:
        """Start queued (pipelined) requests in order; one may finish at once (an
        error answer), so this loops instead of recursing."""
        self.starting = True
        try:
            while self.queue and self.exchange is None and not self.closing:
                queued = self.queue.pop(0)
                current = self.receiving
                exchange = self._start(queued.head, queued.keep)
                self.receiving = exchange if current is queued else current
                for chunk in queued.chunks:
                    exchange.body(chunk)
                if queued.complete:
                    exchange.body_end()
        finally:
            self.starting = False
        if not self.queue:
            self._resume(Pause.PIPELINE)
        if self.bad_input is not None and self.exchange is None and not self.queue:
            self._refuse(*self.bad_input)

    # -- Downstream --------------------------------------------------------------------

    def send_continue(self) -> None:
        if self.http11 and not self.lost:
            self._write(_CONTINUE)

    def send_head(self, status: int, reason_: bytes, headers: list[tuple[bytes, bytes]],
                  length: int | None, bodyless: bool, close: bool) -> None:
        if bodyless:
            framing = (b"content-length: %d\r\n" % length
                       if length is not None and status not in (204, 304) else b"")
        elif length is not None:
            framing = b"content-length: %d\r\n" % length
        elif self.http11:
            framing = b"transfer-encoding: chunked\r\n"
            self.chunked = True
        else:
            framing = b""
            close = True  # HTTP/1.0 and no length: the end of the body is the close
        if close or not self.keep or not self.context.keep_alive:
            self.closing = True
            framing += b"connection: close\r\n"
        elif not self.http11:
            framing += b"connection: keep-alive\r\n"
        self.pending_head = b"HTTP/1.1 %d %s\r\n%s\r\n%s\r\n" % (
            status, reason_, b"\r\n".join(map(b": ".join, headers)), framing)

    def send_data(self, data: bytes) -> None:
        if self.chunked:
            data = b"%x\r\n%s\r\n" % (len(data), data)
        if self.pending_head:
            data = self.pending_head + data
            self.pending_head = b""
        if not self.lost:
            self._write(data)

    def send_end(self) -> None:
        data = b"0\r\n\r\n" if self.chunked else b""
        if self.pending_head:
            data = self.pending_head + data
            self.pending_head = b""
        if data and not self.lost:
            self._write(data)

    def send_simple(self, status: int, reason_: bytes, headers: list[tuple[bytes, bytes]],
                    body: bytes, close: bool) -> None:
        if self.lost:
            return
        if close or not self.keep or not self.context.keep_alive:
            self.closing = True
            headers = headers + [(b"connection", b"close")]
        elif not self.http11:
            headers = headers + [(b"connection", b"keep-alive")]
        self._write(b"HTTP/1.1 %d %s\r\n%s\r\n%s" % (status, reason_, head_lines(headers),
                                                     body))

    def abort(self) -> None:
        self.closing = True
        if not self.lost:
            self.transport.abortConnection()

    def register_producer(self, producer: IPushProducer) -> None:
        if not self.lost:
            self.transport.registerProducer(producer, True)

    def unregister_producer(self) -> None:
        if not self.lost:
            self.transport.unregisterProducer()

    def _write(self, data: bytes) -> None:
        if self.direct:
            write_now(self.transport, data)
        else:
            self.transport.write(data)

    # -- IPushProducer: pauses reading the client (request body back-pressure) ---------

    def pauseProducing(self) -> None:
        self._pause(Pause.BACK_PRESSURE)

    def resumeProducing(self) -> None:
        self._resume(Pause.BACK_PRESSURE)

    def _pause(self, why: Pause) -> None:
        """Stop reading the client while any reason holds (reasons are independent)."""
        before = self._pauses
        self._pauses |= why
        if not before and not self.lost:
            self.transport.pauseProducing()

    def _resume(self, why: Pause) -> None:
        if not self._pauses & why:
            return
        self._pauses &= ~why
        if not self._pauses and not self.lost:
            self.body_seen = self.factory.clock.seconds()   # a pause is not a stall
            self.transport.resumeProducing()

    def stopProducing(self) -> None:
        if not self.lost:
            self.transport.abortConnection()


class LeanFactory(Factory):
    """Builds LeanProtocols within maxConnections and closes idle ones."""

    noisy = False

    def __init__(self, context: GateContext, limit: ConnectionLimit, clock: IReactorTime,
                 keep_alive_timeout: float, reject: bytes, header_timeout: float = 10.0,
                 body_idle_timeout: float = 30.0) -> None:
        self.context = context
        self.limit = limit
        self.clock = clock
        self.keep_alive_timeout = keep_alive_timeout
        self.header_timeout = header_timeout
        self.body_idle_timeout = body_idle_timeout
        self.reject = reject
        #: what X-Forwarded-Proto says (https when TLS is in front: gate/tls.py)
        self.scheme = b"http"
        self._sweeper: LoopingCall | None = None

    def startFactory(self) -> None:
        if self._sweeper is None:
            # one sweep for every connection's timers (no timer per request)
            shortest = min(t for t in (self.keep_alive_timeout, self.header_timeout,
                                       self.body_idle_timeout) if t > 0)
            self._sweeper = LoopingCall(self._sweep)
            self._sweeper.clock = self.clock
            self._sweeper.start(min(max(shortest / 4, 0.05), 5.0), now=False)

    def stopFactory(self) -> None:
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        self._sweeper = None

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        protocol = LeanProtocol(self, getattr(addr, "host", ""))
        if not self.limit.admit(protocol):

            return RejectProtocol(self.reject, self.clock)
        return protocol

    def _sweep(self) -> None:
        now = self.clock.seconds()
        deadline = now - self.keep_alive_timeout
        head_deadline = now - self.header_timeout
        body_deadline = now - self.body_idle_timeout
        for protocol in list(self.limit.open):
            if not isinstance(protocol, LeanProtocol) or protocol.closing:
                continue
            if ((protocol.in_head or (protocol.first and protocol.exchange is None))
                    and protocol.head_began < head_deadline):
                # a head that trickles in (or never comes) holds a connection: 408
                protocol.head_timed_out()
            elif (protocol.receiving is not None and not protocol._pauses
                  and protocol.body_seen < body_deadline):
                protocol.body_timed_out()
            elif (self.keep_alive_timeout > 0 and protocol.exchange is None
                  and not protocol.queue and not protocol.in_head
                  and protocol.last_active < deadline):
                protocol.closing = True
                protocol.transport.loseConnection()
