"""The traffic gate service: listens on httpServer and proxies to the functions.

HTTP/1.1 is served by the lean transport (lean.py), over TLS too (tls.py: the standard
library's ssl on memory BIOs); HTTP/2, offered through ALPN over TLS when the h2
package is installed, by the twisted.web resource (web.py). Both hand each request to an ``Exchange`` (exchange.py), so the
answers are the same. The service enforces maxConnections (a connection over the limit
gets a 503 and is closed; the others are unaffected) and shuts down gracefully: first
(``begin_drain``, for the node's drain delay) every answer closes its connection while
the port still accepts; then stop accepting, answer what was received and what arrives
on open connections meanwhile (with ``Connection: close``) until nothing is in flight
(bounded by shutdownTimeout), then close the connections left, idle ones included.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred, TimeoutError as DeferredTimeout
from twisted.internet.task import LoopingCall, deferLater
from twisted.python.failure import Failure
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.logger import Logger

from faastwist.config import HTTPServerConfig
from faastwist.gate.accesslog import AccessLog
from faastwist.gate.context import GateContext
from faastwist.gate.connlimit import ConnectionLimit, LimitingFactory, over_limit_response
from faastwist.metrics import Metrics
from faastwist.util.tls import ReloadableTLS, default_protocols
from faastwist.providers.base import Provider
from faastwist.gate.routes import RouteTable
from faastwist.gate.upstream import UpstreamPool
from faastwist.util.fdreserve import FdReserve, SheddingListener, guard_listener
from faastwist.util.reactor import IFullReactor, tcp_address

if TYPE_CHECKING:
    from faastwist.gate.tls import ReloadableServerContext

log = Logger(namespace="faastwist.gate")

#: after the drain, how long a request that arrived as the gate closed may take to be
#: answered, and a closing connection to flush, before it is aborted
STRAGGLER_GRACE = 2.0

class GateService(Service):
    """Listens on httpServer and proxies every request to its function's upstream.

    ``transport``: ``auto`` or ``lean`` (the lean HTTP/1.1 transport, with TLS when
    httpServer.https; HTTP/2 through ALPN on twisted.web), or ``web`` (twisted.web for
    everything, TLS by pyOpenSSL; tests run the same behaviour tests over both).
    """

    name = "gate"

    def __init__(self, config: HTTPServerConfig, routes: RouteTable, provider: Provider,
                 reactor: IFullReactor, metrics: Metrics, access_log: bool,
                 pool: UpstreamPool | None = None, transport: str = "auto",
                 fd_reserve: FdReserve | None = None, access: AccessLog | None = None,
                 serve: bool = True,
                 listen: Callable[[IProtocolFactory], IListeningPort] | None = None) -> None:
        if transport not in ("auto", "lean", "web"):
            raise ValueError(f"transport must be auto, lean or web, got {transport!r}")
        self.config = config
        self.reactor = reactor
        self.transport = transport
        self.pool = pool if pool is not None else UpstreamPool(reactor)
        self.context = GateContext(routes, provider, self.pool, reactor, metrics, config.max_body_size,
                                   keep_alive=config.keep_alive, access_log=access_log,
                                   access=access)
        self.limit = ConnectionLimit(config.max_connections)
        self.port: IListeningPort | None = None
        #: the certificates SIGHUP reloads: the lean transport's or twisted.web's
        self.tls: ReloadableServerContext | ReloadableTLS | None = None
        #: descriptors held for the admin port (the node's); the gate sheds before them
        self.fd_reserve = fd_reserve
        self._refill: LoopingCall | None = None
        #: False: no listener (the node's worker processes serve the port; this gate
        #: runs the queue's calls); ``listen``: how to listen (a worker's SO_REUSEPORT)
        self.serve = serve
        self.listen = listen

    @property
    def kind(self) -> str:
        """Which transport serves (lean or web)."""
        if self.transport == "auto":
            return "lean"
        return self.transport

    def build_factory(self) -> IProtocolFactory:
        config = self.config
        if self.kind == "lean":
            from faastwist.gate.lean import LeanFactory
            lean = LeanFactory(self.context, self.limit, self.reactor,
                               config.keep_alive_timeout,
                               over_limit_response(self.limit.maximum),
                               header_timeout=config.header_timeout,
                               body_idle_timeout=config.body_idle_timeout)
            if not config.https:
                return lean
            # HTTPS on the lean transport (gate/tls.py); HTTP/2, when ALPN chooses it,
            # on twisted.web's channel
            from faastwist.gate.tls import ReloadableServerContext, TLSServerFactory
            lean.scheme = b"https"
            protocols = default_protocols()
            self.tls = ReloadableServerContext(config.cert_file, config.key_file, protocols)
            return TLSServerFactory(self.tls, lean, self.reactor, config.header_timeout,
                                    h2=self._web_factory() if b"h2" in protocols else None)
        factory = self._web_factory()
        if config.https:
            from twisted.protocols.tls import TLSMemoryBIOFactory
            self.tls = ReloadableTLS(config.cert_file, config.key_file)
            factory = TLSMemoryBIOFactory(self.tls, False, factory)
        return factory

    def _web_factory(self) -> IProtocolFactory:
        """The twisted.web transport (HTTP/1.1 and HTTP/2), counted in maxConnections."""
        from faastwist.gate.web import GateResource, GateSite
        config = self.config
        site = GateSite(GateResource(self.context), reactor=self.reactor,
                        timeout=config.keep_alive_timeout or None,
                        header_timeout=config.header_timeout,
                        body_idle_timeout=config.body_idle_timeout)
        return LimitingFactory(site, self.limit, self.reactor)

    def reload_tls(self) -> None:
        """Load the certificate files again for new connections (SIGHUP); open
        connections keep theirs. Raises, keeping the old one, when the files are bad."""
        if self.tls is not None:
            self.tls.reload()

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]  # Twisted's Service is unannotated
        self.context.draining = False
        self.context.start()
        self.pool.start()
        if not self.serve:
            return
        if self.listen is not None:
            self.port = self.listen(self.build_factory())
        else:
            # listenTCP is annotated ServerFactory, but takes any IProtocolFactory (Twisted's
            # own WrappingFactory, TLS included, is none)
            self.port = self.reactor.listenTCP(
                self.config.port, self.build_factory(),  # type: ignore[arg-type]
                backlog=1024, interface=self.config.address)
        if self.fd_reserve is None:
            self.fd_reserve = FdReserve()
        reserve = self.fd_reserve
        guard_listener(self.port, lambda sock: SheddingListener(
            sock, reserve, lambda count: self._shedding(count)))
        self._refill = LoopingCall(reserve.refill)
        self._refill.clock = self.reactor
        self._refill.start(1.0, now=False)
        host = tcp_address(self.port)
        log.info("gate listening on {address}:{port} ({transport}{tls})",
                 address=host.host, port=host.port, transport=self.kind,
                 tls=", TLS" if self.config.https else "")

    def _shedding(self, count: int) -> None:
        log.warn("out of file descriptors: shedding new gate connections ({count} so far "
                 "in this burst; the admin port keeps {held} in reserve)", count=count,
                 held=len(self.fd_reserve.held) if self.fd_reserve else 0)

    def begin_drain(self) -> None:
        """The node is going (httpServer.drainDelay): keep accepting and serving, but
        every answer says ``Connection: close``, so clients and load balancers move
        their connections away before the listener closes."""
        if not self.context.draining:
            self.context.draining = True
            log.info("gate draining: every answer closes its connection")

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]  # Twisted's Service is unannotated
        if self._refill is not None and self._refill.running:
            self._refill.stop()
        context = self.context
        context.draining = True
        port, self.port = self.port, None
        stopped: Deferred[None] = Deferred()
        if port is not None:
            listening = port.stopListening()
        else:
            listening = None
        # idle connections stay open: a request already on the wire is answered (with
        # Connection: close); what is left is closed once nothing is in flight
        inflight = context.inflight
        if inflight:
            log.info("gate draining {count} in-flight requests", count=inflight)
        waiting = context.wait_idle()
        waiting.addTimeout(self.config.shutdown_timeout, self.reactor)

        def drained(result: object) -> Deferred[Deferred[None] | None]:
            late = isinstance(result, Failure)
            if isinstance(result, Failure):
                result.trap(DeferredTimeout)
                log.warn("gate shutdown: {count} requests still in flight after "
                         "{timeout}s; closing them", count=context.inflight,
                         timeout=self.config.shutdown_timeout)
            # on the next reactor pass: the last response is still being written
            return deferLater(self.reactor, 0, self._close_connections, late)

        waiting.addBoth(drained)
        if listening is not None:
            waiting.addCallback(lambda _: listening)
        waiting.chainDeferred(stopped)
        return stopped

    def _close_connections(self, abort: bool) -> Deferred[None] | None:
        """Close the client connections: at once when the drain timed out; else the
        idle ones now (flushing what is written, aborting after a grace period), and
        one whose request arrived in the last moment once it is answered (its answer
        says Connection: close), within the same grace."""
        connections = [c for c in list(self.limit.open)
                       if getattr(c, "transport", None) is not None]
        if abort:
            for connection in connections:
                connection.transport.abortConnection()
            self._stopped()
            return None
        busy = [c for c in connections if getattr(c, "busy", lambda: False)()]
        for connection in connections:
            if connection not in busy:
                connection.transport.loseConnection()

        def straggling() -> None:
            for connection in connections:
                if getattr(connection.transport, "connected", False):
                    connection.transport.abortConnection()
        if connections:
            self.reactor.callLater(STRAGGLER_GRACE, straggling)
        if not busy:
            self._stopped()
            return None
        log.info("gate shutdown: answering {count} requests that arrived as it closed",
                 count=len(busy))
        # each closes itself after its answer (Connection: close); straggling() ends
        # the rest
        waiting = self.limit.wait_gone(busy)
        waiting.addTimeout(STRAGGLER_GRACE, self.reactor)
        return waiting.addBoth(lambda _: self._stopped())

    def _stopped(self) -> None:
        self.pool.close()
        self.context.stop()
        log.info("gate stopped")

    def address(self) -> tuple[str, int]:
        """Where the gate listens (the port the OS chose when configured as 0)."""
        if self.port is None:
            raise RuntimeError("the gate is not listening")
        host = tcp_address(self.port)
        return host.host, host.port
