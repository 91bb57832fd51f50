"""Helpers for the gate's tests: an in-memory upstream for unit tests (no sockets), and
a real upstream process plus a gate for integration tests.

Unit tests run the gate's twisted.web resource through treq's StubTreq; the gate's
upstream pool connects to a twisted.web Site over ``PipeTransport`` pairs that deliver
bytes on the next ``Clock`` tick, so each test drives time and sees real HTTP framing
on both sides of the gate.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, Callable

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import IConsumer, IPushProducer, ITransport
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.resource import Resource
from zope.interface import implementer

from faastwist.config import HTTPServerConfig, KnativeConfig
from faastwist.model.fsm import FunctionStatus, State
from faastwist.gate.context import GateContext
from faastwist.gate.web import GateResource
from faastwist.metrics import Metrics
from faastwist.providers.kourier import KnativeRouting
from faastwist.gate.routes import RouteTable
from faastwist.model.spec import FunctionSpec
from faastwist.store.memory import MemoryStore
from faastwist.gate.upstream import UpstreamPool

HERE = os.path.dirname(os.path.abspath(__file__))


# -- in-memory connections -------------------------------------------------------------

@implementer(ITransport, IConsumer, IPushProducer)
class PipeTransport:
    """One end of an in-memory connection; bytes reach the peer on the next tick."""

    def __init__(self, clock: Clock, protocol: Any, host: Any, peer: Any) -> None:
        self.clock = clock
        self.protocol = protocol
        self.host = host
        self.peer_address = peer
        self.peer: PipeTransport | None = None
        self.inbox: list[bytes] = []
        self.scheduled = False
        self.paused = False
        self.closing = False
        self.closed = False
        self.producer: Any = None
        self.written = 0

    @property
    def disconnecting(self) -> bool:
        return self.closing

    # ITransport
    def write(self, data: bytes) -> None:
        if self.closing or self.closed or not data:
            return
        self.written += len(data)
        assert self.peer is not None
        self.peer._receive(data)

    def writeSequence(self, data: list[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        if self.closing or self.closed:
            return
        self.closing = True
        self.clock.callLater(0, self._close_both, ConnectionDone("closed"))

    def abortConnection(self) -> None:
        if self.closed:
            return
        self.closing = True
        self._close_both(ConnectionLost("aborted"))

    def getPeer(self) -> Any:
        return self.peer_address

    def getHost(self) -> Any:
        return self.host

    def setTcpNoDelay(self, enabled: bool) -> None:
        return None

    # IConsumer / IPushProducer
    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._schedule()

    def stopProducing(self) -> None:
        self.loseConnection()

    # delivery
    def _receive(self, data: bytes) -> None:
        if self.closed:
            return
        self.inbox.append(data)
        self._schedule()

    def _schedule(self) -> None:
        if not self.scheduled and self.inbox:
            self.scheduled = True
            self.clock.callLater(0, self._deliver)

    def _deliver(self) -> None:
        self.scheduled = False
        while self.inbox and not self.paused and not self.closed:
            self.protocol.dataReceived(self.inbox.pop(0))

    def _close_both(self, reason: Exception) -> None:
        for end in (self, self.peer):
            if end is not None and not end.closed:
                end._deliver()
        for end in (self, self.peer):
            if end is not None and not end.closed:
                end.closed = True
                end.protocol.connectionLost(Failure(reason))


def connect_pipe(clock: Clock, client: Any, server_protocol: Any) -> tuple[PipeTransport,
                                                                           PipeTransport]:
    client_addr = IPv4Address("TCP", "127.0.0.1", 40000)
    server_addr = IPv4Address("TCP", "127.0.0.1", 8080)
    client_end = PipeTransport(clock, client, client_addr, server_addr)
    server_end = PipeTransport(clock, server_protocol, server_addr, client_addr)
    client_end.peer, server_end.peer = server_end, client_end
    server_protocol.makeConnection(server_end)
    client.makeConnection(client_end)
    return client_end, server_end


class MemoryConnector:
    """The upstream pool's connector for unit tests: connects to ``site`` in memory."""

    def __init__(self, clock: Clock, site: server.Site) -> None:
        self.clock = clock
        self.site = site
        self.refuse = False
        self.connections: list[tuple[PipeTransport, PipeTransport]] = []

    def __call__(self, origin: Any, factory: Any) -> Deferred:
        if self.refuse:
            return fail(ConnectionRefusedError("refused by the test"))
        addr = IPv4Address("TCP", "127.0.0.1", 40000)
        client = factory.buildProtocol(addr)
        server_protocol = self.site.buildProtocol(addr)
        self.connections.append(connect_pipe(self.clock, client, server_protocol))
        return succeed(client)


# -- an upstream resource for unit tests -----------------------------------------------

class EchoResource(Resource):
    """What a function would answer, driven by the path.

    ``/hang``: never answers; ``/reset``: drops the connection; ``/status/{code}``;
    ``/retry-after/{seconds}``: 503 with that Retry-After;
    ``/hop``: a response with hop-by-hop headers; ``/chunks``: three chunks, one per
    clock second; anything else: JSON of method, uri, headers (all values) and body.
    """

    isLeaf = True

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock
        self.requests: list[dict[str, Any]] = []
        self.hanging: list[server.Request] = []

    def render(self, request: server.Request) -> Any:
        body = request.content.read()
        headers: dict[str, list[str]] = {}
        for name, values in request.requestHeaders.getAllRawHeaders():
            headers.setdefault(name.decode().lower(), []).extend(v.decode() for v in values)
        seen = {"method": request.method.decode(), "uri": request.uri.decode(),
                "headers": headers, "body": body.decode("latin-1")}
        self.requests.append(seen)
        path = request.path.decode()
        if path == "/hang":
            self.hanging.append(request)
            return server.NOT_DONE_YET
        if path == "/reset":
            request.channel.transport.abortConnection()
            return server.NOT_DONE_YET
        if path.startswith("/retry-after/"):
            request.setResponseCode(503)
            request.setHeader(b"retry-after", path.rsplit("/", 1)[1].encode())
            return b"later"
        if path.startswith("/status/"):
            request.setResponseCode(int(path.rsplit("/", 1)[1]))
            return b"status"
        if path == "/hop":
            request.setHeader(b"connection", b"x-secret")
            request.setHeader(b"x-secret", b"1")
            request.setHeader(b"keep-alive", b"timeout=5")
            request.setHeader(b"trailer", b"x-checksum")
            request.setHeader(b"proxy-authenticate", b"Basic")
            request.setHeader(b"upgrade", b"h2c")
            request.setHeader(b"x-call-id", b"upstream-made")
            request.setHeader(b"x-kept", b"yes")
            return b"hop"
        if path == "/chunks":
            for index in range(3):
                self.clock.callLater(index + 1, request.write, b"chunk%d;" % index)
            self.clock.callLater(3.5, request.finish)
            return server.NOT_DONE_YET
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(seen).encode()


# -- a complete gate in memory -----------------------------------------------------------

class CountingRouting(KnativeRouting):
    """KnativeRouting that counts leases out and back, and can make callers wait."""

    def __init__(self, config: KnativeConfig) -> None:
        super().__init__(config)
        self.out = 0
        self.released = 0
        self.fail_with: Exception | None = None
        self.delay: Deferred | None = None
        self.cancelled: list[str] = []

    def acquire(self, spec: FunctionSpec) -> Any:
        if self.fail_with is not None:
            raise self.fail_with
        lease = super().acquire(spec)
        if self.delay is None:
            self.out += 1
            return _CountedLease(self, lease.upstream)
        d: Deferred = Deferred(lambda _: self.cancelled.append(spec.name))

        def deliver(_: Any) -> None:
            if not d.called:
                self.out += 1
                d.callback(_CountedLease(self, lease.upstream))

        self.delay.addCallback(deliver)
        return d


class _CountedLease:
    def __init__(self, owner: CountingRouting, upstream: Any) -> None:
        self.owner = owner
        self.upstream = upstream
        self.done = False

    def release(self) -> None:
        assert not self.done, "a lease was released twice"
        self.done = True
        self.owner.released += 1

    def notify_lost(self, callback: Any) -> None:
        return None


def function(name: str, **fields: Any) -> FunctionSpec:
    return FunctionSpec.from_dict({"name": name, "image": "example/fn", **fields})


class MemoryGate:
    """Store, routes, provider, pool and the gate resource, all on one Clock."""

    def __init__(self, max_body_size: int = 2**20, clock: Clock | None = None) -> None:
        self.clock = clock if clock is not None else Clock()
        self.store = MemoryStore()
        self.metrics = Metrics()
        self.routes = RouteTable(self.store, self.clock, self.metrics)
        self.routes.startService()
        self.upstream = EchoResource(self.clock)
        self.site = server.Site(self.upstream, reactor=self.clock)
        self.connector = MemoryConnector(self.clock, self.site)
        self.pool = UpstreamPool(self.clock, connector=self.connector)
        self.provider = CountingRouting(KnativeConfig(network_layer_url="http://10.0.0.1",
                                                      namespace="fns", host_suffix="example.com"))
        self.context = GateContext(self.routes, self.provider, self.pool, self.clock, self.metrics,
                         max_body_size=max_body_size)
        self.context.start()
        self.resource = GateResource(self.context)

    def add(self, spec: FunctionSpec, state: State = State.ACTIVE) -> None:
        self.store.create(spec, FunctionStatus(spec.name, state))

    def settle(self, flush: Callable[[], None] | None = None, rounds: int = 50) -> None:
        """Run every zero-delay call (in-memory deliveries) and flush the client."""
        for _ in range(rounds):
            self.clock.advance(0)
            if flush is not None:
                flush()
            if not any(c.getTime() <= self.clock.seconds() for c in self.clock.getDelayedCalls()):
                break

    def counter(self, name: str, labels: dict[str, str]) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return value or 0.0


# -- integration: a real upstream process ------------------------------------------------

class UpstreamProcess:
    """tests/support/upstream.py in a child process; ``stop`` ends it by pid."""

    def __init__(self) -> None:
        self.process = subprocess.Popen([sys.executable, os.path.join(HERE, "upstream.py")],
                                        stdout=subprocess.PIPE)
        assert self.process.stdout is not None
        self.port = int(self.process.stdout.readline())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size from /proc (Linux)."""
    with open(f"/proc/{pid or 'self'}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc status")


def gate_config(**overrides: Any) -> HTTPServerConfig:
    values: dict[str, Any] = {"port": 0, "address": "127.0.0.1", "shutdown_timeout": 5.0}
    values.update(overrides)
    return HTTPServerConfig(**values)
