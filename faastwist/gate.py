"""The traffic gate service: listens on httpServer and proxies to the functions.

Plain HTTP is served by the lean HTTP/1.1 transport (gate_fast.py); HTTPS by the
twisted.web resource (gate_web.py), with HTTP/2 offered through ALPN when the h2
package is installed. Both hand each request to an ``Exchange`` (exchange.py), so the
answers are the same. The service enforces maxConnections (a connection over the limit
gets a 503 and is closed; the others are unaffected) and shuts down gracefully: stop
accepting, let in-flight requests finish (bounded by shutdownTimeout), then close.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, TimeoutError as DeferredTimeout
from twisted.internet.task import LoopingCall, deferLater
from twisted.python.failure import Failure
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

from faastwist.config import HTTPServerConfig
from faastwist.exchange import Children, Downstream, Exchange
from faastwist.gate_core import CallIds, GateError, RequestHead, error_body, error_headers
from faastwist.gate_core import head_lines, reason
from faastwist.metrics import Metrics
from faastwist.providers.base import Provider
from faastwist.routes import Route, RouteTable
from faastwist.upstream import UpstreamPool

log = Logger()

#: How often the gate looks for requests past their function's timeout: a timeout
#: fires at most this late.
TICK = 0.05


class Gate:
    """What every exchange shares: routes, provider, pool, config, metrics, counters."""

    def __init__(self, routes: RouteTable, provider: Provider, pool: UpstreamPool,
                 clock: Any, metrics: Metrics, max_body_size: int, keep_alive: bool = True,
                 access_log: bool = False, call_ids: CallIds | None = None) -> None:
        self.routes = routes
        self.provider = provider
        self.pool = pool
        self.clock = clock
        self.metrics = metrics
        self.max_body_size = max_body_size
        self.keep_alive = keep_alive
        self.access_log = access_log
        self.call_ids = call_ids or CallIds()
        self.draining = False
        self.inflight = 0
        self._idle_waiters: list[Deferred] = []
        self._children: dict[str, Children] = {}
        #: exchange -> when its function's timeout passes; swept every TICK seconds
        #: (cheaper per request than a DelayedCall each: no heap, no cancel)
        self.deadlines: dict[Exchange, float] = {}
        self._sweeper: LoopingCall | None = None

    def start(self) -> None:
        """Start the timeout sweep (GateService does this)."""
        if self._sweeper is None:
            self._sweeper = LoopingCall(self._expire)
            self._sweeper.clock = self.clock
            self._sweeper.start(TICK, now=False)

    def stop(self) -> None:
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        self._sweeper = None

    def _expire(self) -> None:
        if not self.deadlines:
            return
        now = self.clock.seconds()
        late = [e for e, deadline in self.deadlines.items() if deadline <= now]
        for exchange in late:
            try:
                exchange.timed_out()
            except Exception:  # a bug must not stop the sweep for every other request
                log.failure("timing out a request to {function} failed",
                            function=exchange.name)
                self.deadlines.pop(exchange, None)

    def exchange(self, down: Downstream, head: RequestHead) -> "Exchange":
        """Start proxying one request whose head has been read."""
        exchange = Exchange(self, down, head)
        exchange.begin()
        return exchange

    def wait_idle(self) -> Deferred:
        """Fires when no exchange is in flight."""
        d: Deferred = Deferred()
        if self.inflight == 0:
            d.callback(None)
        else:
            self._idle_waiters.append(d)
        return d

    def _ended(self) -> None:
        self.inflight -= 1
        if self.inflight == 0 and self._idle_waiters:
            waiters, self._idle_waiters = self._idle_waiters, []
            for d in waiters:
                d.callback(None)

    def children(self, route: Route) -> Children:
        """Per-function metric children, kept by name (not per route version, so the
        in-flight count survives a route change)."""
        children = self._children.get(route.name)
        if children is None:
            children = self._children[route.name] = Children(self.metrics, route.name)
        return children


class ConnectionLimit:
    """Counts open client connections against maxConnections."""

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self.open: set[Any] = set()
        self.refused = 0

    def admit(self, connection: Any) -> bool:
        if len(self.open) >= self.maximum:
            self.refused += 1
            return False
        self.open.add(connection)
        return True

    def leave(self, connection: Any) -> None:
        self.open.discard(connection)


def _over_limit_response(maximum: int) -> bytes:
    error = GateError(503, f"too many connections (maxConnections is {maximum}); retry",
                      retry_after=1)
    body = error_body(error.code, error.message)
    headers = error_headers(error, body, None) + [(b"connection", b"close")]
    return b"HTTP/1.1 503 " + reason(503) + b"\r\n" + head_lines(headers) + b"\r\n" + body


class RejectProtocol(Protocol):
    """A connection over maxConnections: read the request head, answer 503, close.

    Reading first matters: closing a socket with unread input makes the kernel send
    RST, and the client would see a reset instead of the 503."""

    def __init__(self, response: bytes, clock: Any, grace: float = 2.0) -> None:
        self.response = response
        self.clock = clock
        self.grace = grace
        self.timer: Any = None

    def connectionMade(self) -> None:
        self.timer = self.clock.callLater(self.grace, self.transport.loseConnection)

    def dataReceived(self, data: bytes) -> None:
        if self.response:
            self.transport.write(self.response)
            self.response = b""
            self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None


class _CountedConnection(ProtocolWrapper):
    def drain(self) -> None:
        """twisted.web connections finish their request (Connection: close)."""


class LimitingFactory(WrappingFactory):
    """maxConnections in front of a twisted.web Site (the lean transport counts itself)."""

    protocol = _CountedConnection
    noisy = False

    def __init__(self, wrapped: Factory, limit: ConnectionLimit, clock: Any) -> None:
        super().__init__(wrapped)
        self.limit = limit
        self.clock = clock
        self.reject = _over_limit_response(limit.maximum)

    def buildProtocol(self, addr: Any) -> Protocol | None:
        protocol = super().buildProtocol(addr)
        if protocol is None:
            return None
        if not self.limit.admit(protocol):
            return RejectProtocol(self.reject, self.clock)
        return protocol

    def unregisterProtocol(self, protocol: Any) -> None:
        self.limit.leave(protocol)
        super().unregisterProtocol(protocol)


def tls_options(cert_file: str, key_file: str) -> Any:
    """Server TLS options from PEM files (a chain after the leaf is sent too), offering
    HTTP/2 through ALPN when the h2 package is installed."""
    from twisted.internet import ssl

    with open(cert_file, "rb") as handle:
        chain = handle.read()
    with open(key_file, "rb") as handle:
        key = handle.read()
    marker = b"-----BEGIN CERTIFICATE-----"
    certs = [marker + part for part in chain.split(marker)[1:]]
    if not certs:
        raise ValueError(f"{cert_file}: no PEM certificate found")
    leaf = ssl.PrivateCertificate.loadPEM(certs[0] + b"\n" + key)
    extra = [ssl.Certificate.loadPEM(c).original for c in certs[1:]]
    protocols = [b"http/1.1"]
    try:
        import h2  # noqa: F401
        protocols.insert(0, b"h2")
    except ImportError:  # pragma: no cover
        pass
    return ssl.CertificateOptions(privateKey=leaf.privateKey.original,
                                  certificate=leaf.original, extraCertChain=extra,
                                  acceptableProtocols=protocols)


class GateService(Service):
    """Listens on httpServer and proxies every request to its function's upstream.

    ``transport``: ``auto`` (lean HTTP/1.1 for plain HTTP, twisted.web for HTTPS),
    ``fast`` or ``web`` (tests run the same behaviour tests over both).
    """

    name = "gate"

    def __init__(self, config: HTTPServerConfig, routes: RouteTable, provider: Provider,
                 reactor: Any, metrics: Metrics, access_log: bool,
                 pool: UpstreamPool | None = None, transport: str = "auto") -> None:
        if transport not in ("auto", "fast", "web"):
            raise ValueError(f"transport must be auto, fast or web, got {transport!r}")
        self.config = config
        self.reactor = reactor
        self.transport = transport
        self.pool = pool if pool is not None else UpstreamPool(reactor)
        self.gate = Gate(routes, provider, self.pool, reactor, metrics, config.max_body_size,
                         keep_alive=config.keep_alive, access_log=access_log)
        self.limit = ConnectionLimit(config.max_connections)
        self.port: IListeningPort | None = None

    @property
    def kind(self) -> str:
        """Which transport serves (fast or web)."""
        if self.transport == "auto":
            return "web" if self.config.https else "fast"
        return self.transport

    def build_factory(self) -> Factory:
        config = self.config
        if self.kind == "fast":
            from faastwist.gate_fast import LeanFactory
            factory: Factory = LeanFactory(self.gate, self.limit, self.reactor,
                                           config.keep_alive_timeout,
                                           _over_limit_response(self.limit.maximum))
        else:
            from faastwist.gate_web import GateResource, GateSite
            site = GateSite(GateResource(self.gate), timeout=config.keep_alive_timeout or None)
            factory = LimitingFactory(site, self.limit, self.reactor)
        if config.https:
            if self.kind == "fast":
                raise ValueError("https is served by the twisted.web transport, not fast")
            from twisted.protocols.tls import TLSMemoryBIOFactory
            factory = TLSMemoryBIOFactory(tls_options(config.cert_file, config.key_file),
                                          False, factory)
        return factory

    def startService(self) -> None:
        super().startService()
        self.gate.draining = False
        self.gate.start()
        self.pool.start()
        self.port = self.reactor.listenTCP(self.config.port, self.build_factory(),
                                           backlog=1024, interface=self.config.address)
        host = self.port.getHost()
        log.info("gate listening on {address}:{port} ({transport}{tls})",
                 address=host.host, port=host.port, transport=self.kind,
                 tls=", TLS" if self.config.https else "")

    def stopService(self) -> Deferred:
        super().stopService()
        gate = self.gate
        gate.draining = True
        port, self.port = self.port, None
        stopped: Deferred = Deferred()
        if port is not None:
            listening = port.stopListening()
        else:
            listening = None
        for connection in list(self.limit.open):
            connection.drain()
        inflight = gate.inflight
        if inflight:
            log.info("gate draining {count} in-flight requests", count=inflight)
        waiting = gate.wait_idle()
        waiting.addTimeout(self.config.shutdown_timeout, self.reactor)

        def drained(result: Any) -> Deferred:
            late = isinstance(result, Failure)
            if late:
                result.trap(DeferredTimeout)
                log.warn("gate shutdown: {count} requests still in flight after "
                         "{timeout}s; closing them", count=gate.inflight,
                         timeout=self.config.shutdown_timeout)
            # on the next reactor pass: the last response is still being written
            return deferLater(self.reactor, 0, self._close_connections, late)

        waiting.addBoth(drained)
        if listening is not None:
            waiting.addCallback(lambda _: listening)
        waiting.chainDeferred(stopped)
        return stopped

    def _close_connections(self, abort: bool) -> None:
        """Close every client connection: flushing what is written when nothing is in
        flight any more (and aborting after a grace period), at once otherwise."""
        open_transports = [c.transport for c in list(self.limit.open)
                           if getattr(c, "transport", None) is not None]
        for transport in open_transports:
            if abort:
                transport.abortConnection()
            else:
                transport.loseConnection()
        if open_transports and not abort:
            def straggling() -> None:
                for transport in open_transports:
                    if getattr(transport, "connected", False):
                        transport.abortConnection()
            self.reactor.callLater(2.0, straggling)
        self.pool.close()
        self.gate.stop()
        log.info("gate stopped")

    def address(self) -> tuple[str, int]:
        """Where the gate listens (the port the OS chose when configured as 0)."""
        if self.port is None:
            raise RuntimeError("the gate is not listening")
        host = self.port.getHost()
        return host.host, host.port
