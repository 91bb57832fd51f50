"""A pooled, persistent HTTP/1.1 client for the gate's upstreams (kourier, local processes).

Why not ``twisted.web.client.Agent``: per request it builds an endpoint, a URI, Headers
objects and several Deferreds (about 1,100 Python calls per proxied request, measured),
and it gives no control over framing. This client sends a head the gate built as bytes,
streams the body as the gate frames it, parses the response with ``httptools`` and
hands the response to one handler object through plain method calls. Connections are
keyed by origin (scheme, host, port), not by function, so every function behind kourier
shares one pool; idle connections are closed after ``idle_timeout`` by one sweep.
"""

from __future__ import annotations

import socket
from typing import Callable, Protocol as TypingProtocol, cast

import httptools
from twisted.internet import endpoints, tcp
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import (
    ConnectError,
    ConnectionRefusedError,
    DNSLookupError,
    TimeoutError as ConnectTimeout,
)
from twisted.internet.interfaces import IAddress, IPushProducer, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from faastwist.gate.wire import filter_response, no_delay, quick_ack, tcp_socket, write_now
from faastwist.util.reactor import IFullReactor, IStreamTransport

log = Logger()

Origin = tuple[str, str, int]  # scheme, host, port


class UpstreamHandler(TypingProtocol):
    """What the gate's exchange implements to receive one response."""

    def upstream_response(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]],
                          length: int | None, bodyless: bool) -> None:
        """``headers`` are already filtered (wire.filter_response)."""

    def upstream_data(self, data: bytes) -> None: ...

    def upstream_done(self) -> None: ...

    def upstream_failed(self, kind: str, detail: str, retryable: bool) -> None:
        """``kind``: refused, reset, protocol, unreachable; ``retryable`` when a pooled
        connection died before any response byte (the request may be sent again)."""


@implementer(IPushProducer)
class UpstreamConnection(Protocol):
    """One persistent connection; serves one exchange at a time."""

    #: connected before any method here runs (faastwist/util/reactor.py)
    transport: IStreamTransport

    def __init__(self, pool: "UpstreamPool", origin: Origin) -> None:
        self.pool = pool
        self.origin = origin
        self.handler: UpstreamHandler | None = None
        self.reused = False
        self.idle_since = 0.0
        self.connected = False
        self.paused = False
        self._parser = httptools.HttpResponseParser(self)
        self._headers: list[tuple[bytes, bytes]] = []
        self._reason = b""
        self._got_bytes = False
        self._head_only = False
        self._interim = False
        self._responded = False
        self._response_done = False
        self._close_delimited = False
        self._reset_parser = False
        self.direct = False
        self._socket: socket.socket | None = None

    # -- used by the exchange ----------------------------------------------------------

    def send(self, handler: UpstreamHandler, head: bytes, head_only: bool) -> None:
        """Start one exchange: write the request head (the body follows with ``write``)."""
        self.handler = handler
        self._headers = []
        self._got_bytes = self._responded = self._response_done = False
        self._interim = self._close_delimited = False
        self._head_only = head_only
        if self.direct:
            write_now(self.transport, head)
        else:
            self.transport.write(head)

    def write(self, data: bytes) -> None:
        if self.direct:
            write_now(self.transport, data)
        else:
            self.transport.write(data)

    def release(self, reusable: bool) -> None:
        """The exchange is over: back to the pool when the connection is clean."""
        self.handler = None
        if self.paused:
            self.resumeProducing()
        if reusable and self.connected and self._response_done and not self._close_delimited:
            self.pool._put(self)
        else:
            self.abort()

    def abort(self) -> None:
        self.handler = None
        if self.connected:
            self.connected = False
            self.transport.abortConnection()

    # -- IPushProducer: the client's transport pauses us when it cannot keep up --------

    def pauseProducing(self) -> None:
        if not self.paused:
            self.paused = True
            self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        if self.paused:
            self.paused = False
            self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.abort()

    # -- protocol ----------------------------------------------------------------------

    def connectionMade(self) -> None:
        self.connected = True
        self.direct = isinstance(self.transport, tcp.Connection)
        self._socket = tcp_socket(self.transport)
        no_delay(self._socket)

    def dataReceived(self, data: bytes) -> None:
        self._got_bytes = True
        if self.handler is None:
            # bytes on an idle connection: the server broke the protocol; drop it
            self.abort()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            log.failure("gate error handling an upstream response from {origin}",
                        Failure(exc.__context__ or exc), origin=self.origin)
            self._fail("internal", "internal gate error (logged)", False)
            return
        except httptools.HttpParserError as exc:
            self._fail("protocol", f"invalid HTTP response: {exc}", False)
            return
        if self._reset_parser:
            self._reset_parser = False
            self._parser = httptools.HttpResponseParser(self)
        if self.handler is not None and quick_ack(self._socket):
            # the response is not complete: ACK now, or a server that wrote its head
            # and body in two sends waits for our delayed ACK (wire.quick_ack)
            self.pool.quick_acks += 1

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.connected = False
        self.pool._forget(self)
        handler = self.handler
        if handler is None:
            return
        if self._responded and self._close_delimited and not self._response_done:
            self._response_done = True
            self.handler = None
            handler.upstream_done()
            return
        if self._response_done:
            return
        retryable = self.reused and not self._got_bytes
        self.handler = None
        handler.upstream_failed("reset", _describe(reason), retryable)

    def _fail(self, kind: str, detail: str, retryable: bool) -> None:
        handler = self.handler
        self.abort()
        if handler is not None:
            handler.upstream_failed(kind, detail, retryable)

    # -- httptools callbacks -----------------------------------------------------------

    def on_status(self, status: bytes) -> None:
        self._reason = status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self._interim = True  # 100 Continue and friends: not forwarded
            self._headers = []
            return
        kept, length, chunked = filter_response(self._headers)
        bodyless = self._head_only or status in (204, 304)
        # after an answer without a body (HEAD, 204, 304) the connection is never
        # reused: a function that sends a body anyway would otherwise have those bytes
        # read as the next request's response; one new connection is the price
        self._close_delimited = bodyless or (not chunked and length is None)
        self._responded = True
        handler = self.handler
        if handler is None:
            return
        handler.upstream_response(status, self._reason, kept, length, bodyless)
        if self._head_only and self.handler is handler:
            # httptools cannot be told the response had no body: finish it here and
            # parse the next response with a fresh parser
            self._reset_parser = True
            self._finish()

    def on_body(self, body: bytes) -> None:
        handler = self.handler
        if handler is not None and not self._head_only:
            handler.upstream_data(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if self._head_only:
            return
        if not self._parser.should_keep_alive():
            self._close_delimited = True  # the server closes: never reuse
        self._finish()

    def _finish(self) -> None:
        self._response_done = True
        handler = self.handler
        if handler is not None:
            handler.upstream_done()


def _describe(reason: Failure | None) -> str:
    if reason is None:
        return "connection closed"
    return reason.getErrorMessage() or type(reason.value).__name__


def classify_connect_error(failure: Failure) -> tuple[str, str]:
    """(kind, message) of a failed connect, for 502 answers and metrics."""
    if failure.check(ConnectionRefusedError):
        return "refused", "connection refused"
    if failure.check(DNSLookupError):
        return "unreachable", f"cannot resolve: {failure.getErrorMessage()}"
    if failure.check(ConnectTimeout):
        return "connect_timeout", "connect timed out"
    if failure.check(ConnectError):
        return "unreachable", failure.getErrorMessage()
    return "unreachable", failure.getErrorMessage()


class _ConnectionFactory(Factory):
    noisy = False

    def __init__(self, pool: "UpstreamPool", origin: Origin) -> None:
        self.pool = pool
        self.origin = origin

    def buildProtocol(self, addr: IAddress | None) -> UpstreamConnection:
        return UpstreamConnection(self.pool, self.origin)


Connector = Callable[[Origin, "_ConnectionFactory"], Deferred[UpstreamConnection]]


class UpstreamPool:
    """Idle connections per origin (LIFO: the warmest first)."""

    def __init__(self, reactor: IFullReactor, connect_timeout: float = 10.0,
                 max_idle_per_origin: int = 256, idle_timeout: float = 50.0,
                 connector: Connector | None = None) -> None:
        self.reactor = reactor
        self.connect_timeout = connect_timeout
        self.max_idle_per_origin = max_idle_per_origin
        self.idle_timeout = idle_timeout
        self._connector = connector or self._connect_endpoint
        self._idle: dict[Origin, list[UpstreamConnection]] = {}
        self._endpoints: dict[Origin, IStreamClientEndpoint] = {}
        self._sweeper: LoopingCall | None = None
        self.connects = 0
        #: reads that left a response incomplete and were ACKed at once (wire.quick_ack)
        self.quick_acks = 0

    def start(self) -> None:
        if self._sweeper is None:
            self._sweeper = LoopingCall(self._sweep)
            self._sweeper.clock = self.reactor
            self._sweeper.start(max(self.idle_timeout / 4, 0.05), now=False)

    def close(self) -> None:
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        self._sweeper = None
        for connections in list(self._idle.values()):
            for connection in list(connections):
                connection.abort()
        self._idle.clear()

    def get_idle(self, origin: Origin) -> UpstreamConnection | None:
        """An idle pooled connection, the most recently used first; None when there is
        none (then ``connect``)."""
        idle = self._idle.get(origin)
        while idle:
            connection = idle.pop()
            if connection.connected:
                connection.reused = True
                return connection
        return None

    def get(self, origin: Origin) -> Deferred[UpstreamConnection]:
        """A connection: pooled when one is idle, else new."""
        connection = self.get_idle(origin)
        return succeed(connection) if connection is not None else self.connect(origin)

    def connect(self, origin: Origin) -> Deferred[UpstreamConnection]:
        self.connects += 1
        return self._connector(origin, _ConnectionFactory(self, origin))

    def idle_count(self, origin: Origin | None = None) -> int:
        if origin is not None:
            return len(self._idle.get(origin, ()))
        return sum(len(v) for v in self._idle.values())

    def _connect_endpoint(self, origin: Origin,
                          factory: _ConnectionFactory) -> Deferred[UpstreamConnection]:
        endpoint = self._endpoints.get(origin)
        if endpoint is None:
            scheme, host, port = origin
            endpoint = endpoints.HostnameEndpoint(self.reactor, host, port,
                                                  timeout=self.connect_timeout)
            if scheme == "https":
                from twisted.internet.ssl import optionsForClientTLS
                endpoint = endpoints.wrapClientTLS(optionsForClientTLS(host), endpoint)
            self._endpoints[origin] = endpoint
        # connect's Deferred fires with what factory.buildProtocol made
        return cast("Deferred[UpstreamConnection]", endpoint.connect(factory))

    def _put(self, connection: UpstreamConnection) -> None:
        idle = self._idle.setdefault(connection.origin, [])
        if len(idle) >= self.max_idle_per_origin:
            connection.abort()
            return
        connection.idle_since = self.reactor.seconds()
        idle.append(connection)

    def _forget(self, connection: UpstreamConnection) -> None:
        idle = self._idle.get(connection.origin)
        if idle and connection in idle:
            idle.remove(connection)

    def _sweep(self) -> None:
        deadline = self.reactor.seconds() - self.idle_timeout
        for origin, idle in list(self._idle.items()):
            keep = []
            for connection in idle:
                if connection.idle_since < deadline:
                    connection.abort()
                else:
                    keep.append(connection)
            if keep:
                self._idle[origin] = keep
            else:
                del self._idle[origin]
