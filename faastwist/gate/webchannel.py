"""Slow-client timeouts for the twisted.web transport (HTTPS, HTTP/2 through ALPN).

twisted.web has one idle timeout per connection, reset by every byte: a client that
trickles a request head, or stops in the middle of a body while keeping the connection
alive, holds it for ever. The lean transport cuts both (``headerTimeout``: 408 and
close; ``bodyIdleTimeout``: the request is cut); these classes do the same here:

- ``GateChannel`` (HTTP/1.1): the head must be complete within ``headerTimeout``,
  counted from the connect (which includes the TLS handshake) or from the first byte
  of a later request's head; then 408 and close (a client that never finished the
  TLS handshake cannot be answered: it is dropped).
- ``GateH2Connection`` (HTTP/2): a stream exists only once its whole header block has
  arrived, and while a header block is incomplete RFC 9113 (6.10) forbids every other
  frame on the connection. So a stalled head stalls the whole connection by the
  protocol's own rule, and the connection is what is cut (GOAWAY, close): from the
  connect until the first request's head, and while a later header block is pending.
- ``BodyWatch``: one per request body, for both protocols (the request's stream
  drives it): it fires when no body bytes arrived for ``bodyIdleTimeout`` while the
  gate was reading; the request then gets 408 (HTTP/1.1: then close; HTTP/2: the
  stream is reset and the connection keeps serving its other streams).
"""

from __future__ import annotations

import re
from typing import Any, Callable, cast

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http

from faastwist.gate.decisions import GateError, error_headers
from faastwist.gate.wire import (
    LINGER,
    error_body,
    head_lines,
    reason,
    unsupported_version_message,
)
from faastwist.util.reactor import IStreamTransport

try:
    import h2.errors
    import h2.exceptions
    from twisted.web._http2 import H2Connection
except ImportError:  # pragma: no cover - h2 not installed
    H2Connection = None  # type: ignore[assignment,misc]  # a None stand-in for the class

log = Logger(namespace="faastwist.gate")

#: HTTP/2 frame types that carry a header block (HEADERS, CONTINUATION).
_HEADER_FRAMES = (0x1, 0x9)


def head_message(timeout: float) -> str:
    return f"the request head did not arrive within {timeout:g}s (headerTimeout)"


def body_message(timeout: float) -> str:
    return f"the request body stalled for more than {timeout:g}s (bodyIdleTimeout)"


def _cancel(call: IDelayedCall | None) -> None:
    if call is not None and call.active():
        call.cancel()


class BodyWatch:
    """Fires ``stalled`` when a request body has not moved for ``timeout`` seconds
    while it was being read (a pause for back-pressure is not a stall)."""

    def __init__(self, clock: IReactorTime, timeout: float,
                 stalled: Callable[[], None]) -> None:
        self.clock = clock
        self.timeout = timeout
        self.stalled = stalled
        self.paused = False
        self.call: IDelayedCall | None = clock.callLater(timeout, self._fire)

    def moved(self) -> None:
        """Body bytes arrived."""
        if self.call is not None and self.call.active():
            self.call.reset(self.timeout)

    def pause(self) -> None:
        self.paused = True
        _cancel(self.call)

    def resume(self) -> None:
        if self.paused and self.call is not None:
            self.paused = False
            self.call = self.clock.callLater(self.timeout, self._fire)

    def stop(self) -> None:
        _cancel(self.call)
        self.call = None

    def _fire(self) -> None:
        self.call = None
        self.stalled()


def _watch_of(request: Any) -> BodyWatch | None:
    return getattr(request, "gate_watch", None)


def _client(transport: Any) -> str:
    try:
        return str(getattr(transport.getPeer(), "host", ""))
    except Exception:  # pragma: no cover - a transport without a peer
        return ""


def _handshake_done(transport: Any) -> bool:
    """False while a TLS handshake is still under way (nothing can be answered yet)."""
    return bool(getattr(transport, "_handshakeDone", True))


_VERSION = re.compile(rb"HTTP/([0-9])\.([0-9])")


def other_version(request_line: bytes) -> str | None:
    """``"2.0"`` for ``GET / HTTP/2.0``: a well-formed version other than 1.0 and 1.1;
    None for those two and for what is not a version at all (a 400 then)."""
    parts = request_line.split(b" ")
    if len(parts) != 3:
        return None
    found = _VERSION.fullmatch(parts[2])
    if found is None or parts[2] in (b"HTTP/1.0", b"HTTP/1.1"):
        return None
    return f"{found.group(1).decode()}.{found.group(2).decode()}"


def timeout_response(code: int, message: str) -> bytes:
    error = GateError(code, message, close=True)
    body = error_body(code, message)
    headers = error_headers(error, body, None) + [(b"connection", b"close")]
    return b"HTTP/1.1 %d %s\r\n%s\r\n%s" % (code, reason(code), head_lines(headers), body)


def reset_stream(connection: Any, stream_id: int) -> None:
    """RST_STREAM NO_ERROR on a stream whose response is complete: the client stops
    sending its request body (RFC 9113 8.1); nothing if the stream is closed already."""
    try:
        connection.conn.reset_stream(stream_id, h2.errors.ErrorCodes.NO_ERROR)
    except h2.exceptions.ProtocolError:   # closed already
        return
    connection._tryToWriteControlData()


class GateChannel(http.HTTPChannel):
    """HTTPChannel with the gate's head timeout; pauses hold the body watch."""

    #: connected before any method here runs (faastwist/util/reactor.py)
    transport: IStreamTransport
    #: set by the Site's buildProtocol (twisted.web does not declare it)
    site: http.HTTPFactory

    header_timeout = 10.0
    head_began = 0.0
    _gate_head: IDelayedCall | None = None
    _gate_abort: IDelayedCall | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self.header_timeout = getattr(self.site, "header_timeout", self.header_timeout)
        self._arm_head()

    def _arm_head(self) -> None:
        self.head_began = self._clock_seconds()
        self._gate_head = self.callLater(self.header_timeout, self._head_timed_out)

    def _clock_seconds(self) -> float:
        clock = getattr(self.site, "reactor", None)
        return clock.seconds() if clock is not None else 0.0

    def dataReceived(self, data: bytes) -> None:
        # a new request's head begins (bytes buffered behind a request being handled
        # come back through here when that request is done)
        if (data and self._gate_head is None and not self._handlingRequest
                and self._first_line()):
            self._arm_head()
        super().dataReceived(data)

    def _first_line(self) -> bool:
        """Whether the next line is a request line: HTTPChannel's private ``__first_line``
        (name-mangled, undeclared), read where the head timer and the 505 need it."""
        return bool(getattr(self, "_HTTPChannel__first_line", False))

    def allHeadersReceived(self) -> None:
        _cancel(self._gate_head)
        self._gate_head = None
        super().allHeadersReceived()

    def lineReceived(self, line: bytes) -> None:
        # a request line of another HTTP version: 505 {code, message} and close
        # (twisted.web would answer a bare 400)
        if line and self.persistent and self._first_line():
            version = other_version(line)
            if version is not None:
                self._refuse_version(version)
                return
        super().lineReceived(line)

    def _refuse_version(self, version: str) -> None:
        _cancel(self._gate_head)
        self._gate_head = None
        self.persistent = False     # what follows on this connection is dropped
        self.setTimeout(None)
        self.transport.write(timeout_response(505, unsupported_version_message(version)))
        self.loseConnection()
        self._gate_abort = self.callLater(LINGER, self.transport.abortConnection)

    def _head_timed_out(self) -> None:
        self._gate_head = None
        transport = self.transport
        log.info("request head from {client} incomplete after {timeout}s: 408, closing",
                 client=_client(transport), timeout=self.header_timeout)
        self.persistent = False
        if not _handshake_done(transport):
            transport.abortConnection()     # no TLS session: nothing can be answered
            return
        self.setTimeout(None)
        transport.write(timeout_response(408, head_message(self.header_timeout)))
        self.loseConnection()
        # a client that does not read its answer cannot hold the connection either
        self._gate_abort = self.callLater(LINGER, transport.abortConnection)

    def pauseProducing(self) -> None:
        # the client does not read our answer: reading its body stops too (not a stall)
        receiving = self._receiving()
        if receiving is not None:
            receiving.pause()
        super().pauseProducing()

    def resumeProducing(self) -> None:
        super().resumeProducing()
        receiving = self._receiving()
        if receiving is not None:
            receiving.resume()

    def _receiving(self) -> BodyWatch | None:
        if self._handlingRequest or not self.requests:
            return None
        return _watch_of(self.requests[-1])

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        _cancel(self._gate_head)
        _cancel(self._gate_abort)
        self._gate_head = self._gate_abort = None
        super().connectionLost(reason)


if H2Connection is not None:

    class GateH2Connection(H2Connection):
        """H2Connection that cuts a connection whose header block stalls."""

        transport: IStreamTransport  # connected before any method here runs

        header_timeout = 10.0
        head_began: float | None = None
        _gate_head: IDelayedCall | None = None
        _gate_first = True                 # no stream's head has arrived yet

        def connectionMade(self) -> None:
            super().connectionMade()
            self._rearm_head()

        def dataReceived(self, data: bytes) -> None:
            super().dataReceived(data)
            if self.transport is not None and not getattr(self.transport, "disconnecting",
                                                          False):
                self._rearm_head()

        def _requestReceived(self, event: Any) -> None:
            self._gate_first = False
            super()._requestReceived(event)

        def _head_pending(self) -> bool:
            """A header block (or a frame of one) is incomplete in h2's buffer."""
            if self._gate_first:
                return True
            buffer = self.conn.incoming_buffer
            if getattr(buffer, "_headers_buffer", None):
                return True
            data = getattr(buffer, "_data", b"")
            return len(data) >= 4 and data[3] in _HEADER_FRAMES

        def _rearm_head(self) -> None:
            if not self._head_pending():
                _cancel(self._gate_head)
                self._gate_head = None
                self.head_began = None
            elif self._gate_head is None:
                if self.head_began is None:
                    self.head_began = self._reactor.seconds()
                left = self.head_began + self.header_timeout - self._reactor.seconds()
                self._gate_head = self._reactor.callLater(max(left, 0.0),
                                                          self._head_timed_out)

        def _head_timed_out(self) -> None:
            self._gate_head = None
            log.info("HTTP/2 request head from {client} incomplete after {timeout}s: "
                     "closing the connection (a pending header block blocks every "
                     "stream)", client=_client(self.transport), timeout=self.header_timeout)
            self.conn.close_connection(error_code=h2.errors.ErrorCodes.PROTOCOL_ERROR,
                                       additional_data=head_message(
                                           self.header_timeout).encode())
            self.transport.write(self.conn.data_to_send())
            self.transport.unregisterProducer()   # (TLS would wait for it before closing)
            self.transport.loseConnection()
            self._abortingCall = self._reactor.callLater(LINGER, self.forceAbortClient)

        def connectionLost(self, reason: Failure = connectionDone,
                           _cancelTimeouts: bool = True) -> None:
            _cancel(self._gate_head)
            self._gate_head = None
            super().connectionLost(reason, _cancelTimeouts)

else:  # pragma: no cover
    GateH2Connection = None  # type: ignore[assignment,misc]  # a None stand-in for the class


class GateChannelSwitch(http._GenericHTTPChannelProtocol):
    """twisted.web's HTTP/1.1-or-HTTP/2 switch, building the gate's channels."""

    def dataReceived(self, data: bytes) -> None:
        if self._negotiatedProtocol is None and GateH2Connection is not None:
            channel = self._channel
            if (isinstance(channel, GateChannel)
                    and getattr(channel.transport, "negotiatedProtocol", None) == b"h2"):
                self._switch_to_h2(channel)
        super().dataReceived(data)

    def _switch_to_h2(self, old: GateChannel) -> None:
        """As twisted.web's switch, with GateH2Connection on the site's clock; the head
        timer carries over (it counts from the connect, TLS handshake included)."""
        # the connection's transport (HTTPChannel holds it adapted to IPushProducer)
        network = cast(IStreamTransport, old._networkProducer)
        network.unregisterProducer()
        old.setTimeout(None)
        _cancel(old._gate_head)
        old._gate_head = None
        channel = GateH2Connection(reactor=getattr(self._site, "reactor", None))
        # as twisted.web's own switch sets them (attributes its classes do not declare)
        channel.requestFactory = self._requestFactory  # type: ignore[attr-defined]
        channel.site = self._site
        channel.factory = self._factory
        channel.timeOut = self._timeOut
        channel.callLater = self._callLater  # type: ignore[method-assign,assignment]
        channel.header_timeout = old.header_timeout
        channel.head_began = old.head_began
        self._channel = channel
        channel.makeConnection(old.transport)
        network.registerProducer(channel, True)
        self._negotiatedProtocol = b"h2"  # type: ignore[assignment]  # declared as None


def gate_channel(site: http.HTTPFactory) -> GateChannelSwitch:
    """The Site's ``protocol``: a switch holding a GateChannel until ALPN says h2."""
    return GateChannelSwitch(GateChannel())
