"""Connection limits: maxConnections for both transports, and the 503 past it."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.internet.interfaces import IAddress, IDelayedCall, IProtocolFactory, IReactorTime
from twisted.python.failure import Failure

from faastwist.gate.decisions import GateError, error_headers
from faastwist.gate.wire import error_body, head_lines, reason


class ConnectionLimit:
    """Counts open client connections against maxConnections."""

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self.open: set[Any] = set()
        self.refused = 0
        self._gone_waiters: list[tuple[set[Any], Deferred[None]]] = []

    def admit(self, connection: Any) -> bool:
        if len(self.open) >= self.maximum:
            self.refused += 1
            return False
        self.open.add(connection)
        return True

    def leave(self, connection: Any) -> None:
        self.open.discard(connection)
        if self._gone_waiters:
            for waiting, d in list(self._gone_waiters):
                waiting.discard(connection)
                if not waiting:
                    self._gone_waiters.remove((waiting, d))
                    d.callback(None)

    def wait_gone(self, connections: Any) -> Deferred[None]:
        """Fires when none of ``connections`` is open any more."""
        waiting = set(connections) & self.open
        d: Deferred[None] = Deferred()
        if not waiting:
            d.callback(None)
        else:
            self._gone_waiters.append((waiting, d))
        return d


def over_limit_response(maximum: int) -> bytes:
    error = GateError(503, f"too many connections (maxConnections is {maximum}); retry",
                      retry_after=1)
    body = error_body(error.code, error.message)
    headers = error_headers(error, body, None) + [(b"connection", b"close")]
    return b"HTTP/1.1 503 " + reason(503) + b"\r\n" + head_lines(headers) + b"\r\n" + body


class RejectProtocol(Protocol):
    """A connection over maxConnections: read the request head, answer 503, close.

    Reading first matters: closing a socket with unread input makes the kernel send
    RST, and the client would see a reset instead of the 503."""

    def __init__(self, response: bytes, clock: IReactorTime, grace: float = 2.0) -> None:
        self.response = response
        self.clock = clock
        self.grace = grace
        self.timer: IDelayedCall | None = None

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.timer = self.clock.callLater(self.grace, self.transport.loseConnection)

    def dataReceived(self, data: bytes) -> None:
        if self.response and self.transport is not None:
            self.transport.write(self.response)
            self.response = b""
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None


class _CountedConnection(ProtocolWrapper):
    """A twisted.web connection, counted against maxConnections."""

    def busy(self) -> bool:
        """A request is being read or answered (HTTP/1.1), or a stream is open (h2)."""
        channel = self.wrappedProtocol
        channel = getattr(channel, "_channel", channel)  # twisted.web's 1.1-or-2 wrapper
        requests = getattr(channel, "requests", None)
        if requests is not None:
            return bool(requests)
        return bool(getattr(channel, "streams", None))


class LimitingFactory(WrappingFactory):
    """maxConnections in front of a twisted.web Site (the lean transport counts itself)."""

    protocol = _CountedConnection
    noisy = False

    def __init__(self, wrapped: IProtocolFactory, limit: ConnectionLimit,
                 clock: IReactorTime) -> None:
        super().__init__(wrapped)
        self.limit = limit
        self.clock = clock
        self.reject = over_limit_response(limit.maximum)

    # a refused connection gets a RejectProtocol, not a wrapper: the listener needs only
    # an IProtocol (WrappingFactory's annotation is narrower than its contract)
    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:  # type: ignore[override]
        protocol = super().buildProtocol(addr)
        if protocol is None:
            return None
        if not self.limit.admit(protocol):
            return RejectProtocol(self.reject, self.clock)
        return protocol

    def unregisterProtocol(self, protocol: Any) -> None:
        self.limit.leave(protocol)
        super().unregisterProtocol(protocol)
