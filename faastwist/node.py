"""One faasgate node: the store, the provider, the reconciler, the admin API and the gate.

Start-up is ordered and asynchronous (etcd must be healthy before the store connects,
the route table must be loaded before the gate listens), and shut-down runs in the
reverse order, one step at a time: the gate drains in-flight requests before the
provider stops the function processes they are talking to.
"""

from __future__ import annotations

import os
import socket
import time
import zlib
from collections.abc import Awaitable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Callable, Protocol
from urllib.parse import urlsplit

import attrs
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, ensureDeferred
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.server import Site

from faastwist import __version__
from faastwist.config import ConfigError, ControllerConfig
from faastwist.metrics import Metrics
from faastwist.providers.registry import (
    ProviderContext,
    ProviderParts,
    WorkerLeases,
    kind_of,
)
from faastwist.util.fdreserve import FdReserve, ReservedListener, guard_listener
from faastwist.util.heap import StartupCollector
from faastwist.util.reactor import IFullReactor

if TYPE_CHECKING:
    from faastwist.admin.api import AdminAPI
    from faastwist.admin.openfaas import OpenFaaSAPI
    from faastwist.admin.ops import OpsAPI
    from faastwist.auth.authorizer import Authorizer
    from faastwist.auth.reload import AuthFiles
    from faastwist.cluster.converger import LocalConverger
    from faastwist.cluster.session import ClusterSession
    from faastwist.gate.assembly import SystemRelay
    from faastwist.gate.routes import RouteTable
    from faastwist.gate.service import GateService
    from faastwist.kube.service import FunctionWatch
    from faastwist.lifecycle.reconciler import Reconciler
    from faastwist.providers.base import ServiceProvider
    from faastwist.queue.embedded import EmbeddedNats
    from faastwist.queue.service import QueueService
    from faastwist.sdnotify import SystemdNotifier
    from faastwist.store.embedded import EmbeddedEtcd
    from faastwist.store.etcd import EtcdStore
    from faastwist.store.etcdtls import EtcdTLS
    from faastwist.store.base import NodeStore
    from faastwist.store.leader import Leadership
    from faastwist.store.memory import MemoryStore
    from faastwist.store.owned import ManagedGuard
    from faastwist.store.secrets import Secrets
    from faastwist.util.tls import ReloadableTLS
    from faastwist.workers.supervisor import WorkerPool

log = Logger()


#: seconds the reconciler waits at most for the local converger's first pass
WARMUP_LIMIT = 120.0
#: seconds an API answer waits at most for this node's gate to reflect what it says
#: (read-your-writes; a watch that lags longer than this is an etcd problem, and the
#: answer then goes out rather than hang: logged)
SETTLE_LIMIT = 2.0

#: seconds /apis/v2/faas/info waits for etcd to say who leads
INFO_READ_TIMEOUT = 1.5


class _WatchedRecords(Mapping[str, Any]):
    """The route table's functions as FunctionRecords, each built when it is read: the
    stale admin list reads them a step at a time (10,000 built at once: ~20 ms of one
    reactor turn)."""

    def __init__(self, pairs: Mapping[str, tuple[Any, Any]]) -> None:
        from faastwist.store.base import FunctionRecord

        self._pairs = pairs
        self._record = FunctionRecord

    def __getitem__(self, name: str) -> Any:
        spec, status = self._pairs[name]
        return self._record(spec, status)

    def __iter__(self) -> Iterator[str]:
        return iter(self._pairs)

    def __len__(self) -> int:
        return len(self._pairs)


class StartupError(Exception):
    """The node cannot start (etcd never became healthy, a port is taken...)."""


class Child(Protocol):
    """What the node starts and stops in order: an ``IService``, or a provider (a typing
    protocol, which mypy cannot see as providing the zope interface)."""

    def startService(self) -> None: ...

    def stopService(self) -> object: ...


@attrs.frozen
class PartContext:
    """What a part made for a node (``NodeParts``' factories) gets from the node."""

    config: ControllerConfig
    reactor: IFullReactor
    metrics: Metrics
    node_id: str
    #: the node's record in the cluster (its addresses, pid, version)
    record: Mapping[str, Any]


def _parts_need_their_store(parts: NodeParts, attribute: Any, store: Any) -> None:
    if store is not None and None in (parts.leader, parts.session, parts.secrets):
        raise ValueError("NodeParts: a store of one's own comes with the leader, session "
                         "and secrets made for it (the etcd ones need the node's EtcdStore)")


@attrs.frozen
class NodeParts:
    """Parts a node takes as given instead of building them from its config (Synapse's
    ``HomeServer`` builders are the model): tests build a whole node in one process on
    a ``MemoryStore`` and a ``FakeProvider`` (``NodeParts.in_memory``). None: the
    config's (its etcd, embedded or not, and the etcd leader election, node session and
    secret store on it; the registry's provider)."""

    #: connected, and closed by whoever made it (the node closes only its own)
    store: NodeStore | None = attrs.field(default=None,
                                          validator=_parts_need_their_store)
    provider: ProviderParts | None = None
    leader: Callable[[PartContext], Leadership] | None = None
    session: Callable[[PartContext], ClusterSession] | None = None
    #: KeyFileError (secrets.keyFile) stops the start-up with its message
    secrets: Callable[[PartContext], Secrets] | None = None

    @classmethod
    def in_memory(cls, store: MemoryStore | None = None,
                  provider: ProviderParts | None = None) -> NodeParts:
        """A node alone on ``store`` (a new ``MemoryStore`` by default): it always
        leads, it is the only live node, and its secrets are sealed with the key file's
        box on the store. Gate workers need etcd (the node refuses them)."""
        from faastwist.cluster.memsession import MemorySession
        from faastwist.store.leader import AlwaysLeader
        from faastwist.store.memory import MemoryStore
        from faastwist.store.secrets import MemorySecrets, load_key

        held = store if store is not None else MemoryStore()
        return cls(store=held, provider=provider,
                   leader=lambda ctx: AlwaysLeader(ctx.node_id, ctx.metrics),
                   session=lambda ctx: MemorySession(ctx.reactor, ctx.node_id, ctx.record),
                   secrets=lambda ctx: MemorySecrets(held, load_key(
                       ctx.config.secrets.key_file)))


def etcd_parts(store: EtcdStore) -> NodeParts:
    """The parts production builds on the node's etcd store."""
    from faastwist.cluster.session import NodeSession
    from faastwist.store.leader import LeaderElection
    from faastwist.store.secrets import SecretStore, load_key

    return NodeParts(
        leader=lambda ctx: LeaderElection(ctx.reactor, store, ctx.node_id,
                                          ttl=ctx.config.etcd.lease_ttl, metrics=ctx.metrics),
        session=lambda ctx: NodeSession(ctx.reactor, store, ctx.node_id,
                                        ctx.config.etcd.lease_ttl, dict(ctx.record)),
        secrets=lambda ctx: SecretStore(store, load_key(ctx.config.secrets.key_file)))


class FaasNode(Service):
    """The whole node as one IService for twistd.

    ``reactor`` is the global reactor: the parts need its timers, TCP, processes and
    threads (IReactorTime, IReactorTCP, IReactorProcess, IReactorFromThreads).
    """

    name = "faasgate"

    def __init__(self, config: ControllerConfig, reactor: IFullReactor,
                 on_fatal: Callable[[str], None] | None = None,
                 parts: NodeParts = NodeParts()) -> None:
        self.config = config
        self.reactor = reactor
        self.given = parts
        self.metrics = Metrics()
        self.on_fatal = on_fatal
        self.started_at = reactor.seconds()
        self.node_id = config.node_id
        self.kind = kind_of(config)   # the provider as the registry declares it
        self.parts: ProviderParts | None = None   # the built provider and its capabilities
        self.converger: LocalConverger | None = None
        self._stack: list[tuple[str, Callable[[], Any]]] = []  # what to stop, in order
        self.ready: Deferred[None] = Deferred()
        # set in start-up order; read only once their step ran
        self.session: ClusterSession = None  # type: ignore[assignment]
        self.store: NodeStore = None  # type: ignore[assignment]
        # the leader, session and secrets factories: the given ones, else etcd's
        self.built: NodeParts = parts
        self.embedded_etcd: EmbeddedEtcd | None = None
        self.embedded_nats: EmbeddedNats | None = None
        self.fd_reserve = FdReserve()
        self.provider: ServiceProvider = None  # type: ignore[assignment]
        self.routes: RouteTable = None  # type: ignore[assignment]
        self.reconciler: Reconciler = None  # type: ignore[assignment]
        self.leader: Leadership = None  # type: ignore[assignment]
        self.admin: AdminAPI = None  # type: ignore[assignment]
        self.gate: GateService = None  # type: ignore[assignment]
        self.workers: WorkerPool | None = None  # the gate worker processes (httpServer.workers > 1)
        self.admin_port: Any = None   # IListeningPort
        self.ops: OpsAPI = None  # type: ignore[assignment]
        self.notifier: SystemdNotifier = None  # type: ignore[assignment]
        self.openfaas: OpenFaaSAPI | None = None
        self.secrets: Secrets | None = None
        self.authorizer: Authorizer | None = None
        self.auth_files: AuthFiles | None = None
        self.admin_tls: ReloadableTLS | None = None
        self.queue: QueueService | None = None
        self.kube: FunctionWatch | None = None  # the Function objects' watch (kubernetes.functions)
        self.api_store: ManagedGuard = None  # type: ignore[assignment]
        self.etcd_endpoints: list[str] = []
        self.etcd_tls_files: EtcdTLS | None = None  # the embedded etcd's CA and client certificate

    # -- helpers ---------------------------------------------------------------------
    def _push(self, what: str, stop: Callable[[], Any]) -> None:
        self._stack.append((what, stop))

    def _start_child(self, what: str, service: Child) -> None:
        service.startService()
        self._push(what, service.stopService)

    # -- start -----------------------------------------------------------------------
    def startService(self) -> None:
        super().startService()
        self.collector = StartupCollector(self.reactor)
        self.collector.hold()   # until the tables are built (util/heap.py)
        starting = ensureDeferred(self._start())
        starting.addCallbacks(self._started, self._failed)

    def _started(self, _: None) -> None:
        if self.converger is not None:  # after its first pass: what start-up built
            self.converger.first_pass().addCallback(lambda _: self.collector.release())
        else:
            self.collector.release()
        log.info("faasgate {version} ready: controller {controller}, provider {provider}, "
                 "gate on {gate}, admin on {admin}", version=__version__,
                 controller=self.config.name, provider=self.config.provider,
                 gate=f"{self.config.http_server.address}:{self.config.http_server.port}",
                 admin=f"{self.config.admin.address}:{self.config.admin.port}")
        self.ready.callback(None)

    def _failed(self, failure: Any) -> None:
        if failure.check(StartupError):
            message = failure.getErrorMessage()
            log.critical("faasgate cannot start: {message}", message=message)
        elif failure.check(ConfigError):
            message = f"config error: {failure.getErrorMessage()}"
            log.critical("faasgate cannot start: {message}", message=message)
        else:
            message = "unexpected error during start-up"
            log.failure(message, failure)
        self.collector.release()
        self.ready.errback(failure)
        if self.on_fatal is not None:
            self.on_fatal(message)

    async def _start(self) -> None:
        from faastwist.sdnotify import SystemdNotifier

        # first: a second node on these folders stops here, before it touches them
        self._lock_folders()
        # before anything spawns children: it takes NOTIFY_SOCKET out of their environment
        self.notifier = SystemdNotifier(self.reactor)
        self.notifier.startService()
        await self._start_store()
        self._spawn_nats()
        self._start_provider()
        await self._start_routes()
        self._start_session()
        self._start_reconciler()
        self._start_kubernetes()
        await self._start_queue()
        self._start_admin()
        self._start_gate()
        await self._start_workers()
        self._attach_queue()
        # popped first at shut-down: STOPPING=1 and /readyz 503 before anything stops,
        # then the drain delay while the gate still serves
        self._push("drain delay", self._drain_delay)
        self._push("systemd notifier", self.notifier.stopService)
        self._push("readiness", self.ops.mark_stopping)
        self.notifier.ready(f"serving: gate {self.config.http_server.address}:"
                            f"{self.config.http_server.port}, admin {self.config.admin.address}:"
                            f"{self.config.admin.port}")

    def _drain_delay(self) -> Deferred[None] | None:
        """/readyz says 503 from now on; for httpServer.drainDelay the gate keeps
        serving (each answer closing its connection) before it stops accepting, so a
        load balancer polling /readyz takes this node out without a failed request."""
        delay = self.config.http_server.drain_delay
        if self.gate is not None:
            self.gate.begin_drain()
        if self.workers is not None:
            self.workers.begin_drain()
        if delay <= 0:
            return None
        log.info("draining: /readyz answers 503 for {delay}s (httpServer.drainDelay) "
                 "before the gate stops accepting", delay=delay)
        return deferLater(self.reactor, delay, lambda: None)

    def _lock_folders(self) -> None:
        """Hold the data folders this node owns (util/folderlock.py) until it stops."""
        from faastwist.util.folderlock import FolderInUse, lock_folder

        config = self.config
        folders = []
        provider_data = self.kind.data_dir(config)
        if provider_data is not None:
            folders.append(provider_data)
        if config.etcd.embedded and self.given.store is None:
            folders.append(("etcd.dataDir", config.etcd.data_dir))
        if config.queue.enabled and config.queue.embedded:
            folders.append(("queue.dataDir", config.queue.data_dir))
        for key, folder in folders:
            try:
                lock = lock_folder(folder, key)
            except FolderInUse as exc:
                raise StartupError(str(exc)) from None
            except OSError as exc:
                raise StartupError(f"{key}: cannot lock {folder}: {exc}") from None
            self._push(f"the lock on {key}", lock.release)

    async def _start_store(self) -> None:
        from faastwist.store.etcd import EtcdStore
        from faastwist.store.base import StoreUnavailable

        etcd = self.config.etcd
        endpoints = list(etcd.endpoints)
        if self.given.store is not None:
            self.store = self.given.store
            self.etcd_endpoints = list(self.store.endpoints)
            self._load_secrets()
            return
        etcd_tls = None
        if etcd.embedded:
            from faastwist.store.embedded import EmbeddedEtcd
            from faastwist.store.etcdtls import ensure_tls

            # only the node may reach it: functions share its loopback (etcdtls.py)
            try:
                tls = self.etcd_tls_files = ensure_tls(etcd.data_dir)
                etcd_tls = tls.policy()
            except (OSError, ValueError) as exc:
                raise StartupError(
                    f"embedded etcd TLS files in {etcd.data_dir}/tls: {exc}") from exc
            embedded = EmbeddedEtcd(self.reactor, etcd.data_dir, tls=tls)
            self.embedded_etcd = embedded
            self._start_child("embedded etcd", embedded)
            try:
                endpoints = [await embedded.ready()]
            except Exception as exc:
                raise StartupError(
                    f"embedded etcd in {etcd.data_dir} did not start: {exc}") from exc
        store = EtcdStore(self.reactor, endpoints, etcd.prefix, self.config.name,
                          etcd.timeout, self.metrics,
                          start_index=zlib.crc32(self.node_id.encode()), tls=etcd_tls)
        self.store = store
        try:
            await store.connect()
        except StoreUnavailable as exc:
            raise StartupError(f"etcd at {', '.join(endpoints)} is not reachable: {exc}") from exc
        self._push("store", store.close)
        self.etcd_endpoints = endpoints
        etcd_built = etcd_parts(store)
        given = self.given
        self.built = attrs.evolve(given, leader=given.leader or etcd_built.leader,
                                  session=given.session or etcd_built.session,
                                  secrets=given.secrets or etcd_built.secrets)
        self._load_secrets()

    def part_context(self) -> PartContext:
        admin, http = self.config.admin, self.config.http_server
        return PartContext(self.config, self.reactor, self.metrics, self.node_id,
                           {"admin": f"{admin.address}:{admin.port}",
                            "gate": f"{http.address}:{http.port}",
                            "pid": os.getpid(), "version": __version__})

    def _load_secrets(self) -> None:
        from faastwist.store.secrets import KeyFileError

        assert self.built.secrets is not None   # given with the store, or etcd's
        try:
            self.secrets = self.built.secrets(self.part_context())
        except KeyFileError as exc:
            raise StartupError(str(exc)) from None

    def node_ports(self) -> set[int]:
        """This node's own ports (gate, admin, etcd client and peer, the queue's
        nats-server) on this machine: a function may not claim one (its traffic would
        go to the node)."""
        ports = self._own_ports() | {self.config.http_server.port}
        urls = list(self.config.etcd.endpoints) + list(self.config.queue.nats_urls)
        embedded = self.embedded_etcd
        if embedded is not None:
            urls += [u for u in (embedded.client_url, embedded.peer_url) if u]
        for url in urls:
            try:
                port = urlsplit(url).port
            except ValueError:
                continue
            if port:
                ports.add(port)
        if self.embedded_nats is not None:
            ports.update(p for p in self.embedded_nats.ports if p)
        return ports

    def _start_provider(self) -> None:
        parts = self.parts = self.given.provider or self.kind.build(ProviderContext(
            self.config, self.reactor, self.metrics, reserved_ports=self.node_ports))
        self.provider = parts.provider
        if parts.changes is not None:
            # readiness and crash loops reach this node's report (and so the leader's
            # FSM) at once, not at the next sync
            parts.changes.on_change = self._provider_changed
        if parts.secrets is not None:
            parts.secrets.secrets = self.secrets
        self._start_child("provider", self.provider)

    def _provider_changed(self, name: str) -> None:
        if self.converger is not None:
            self.converger.report(name)
        elif self.reconciler is not None:
            self.reconciler.kick(name)

    @property
    def node_local(self) -> bool:
        """Functions run on every node (process provider), not in a shared cluster."""
        return self.kind.node_local

    def _start_session(self) -> None:
        from faastwist.cluster.converger import LocalConverger

        assert self.built.session is not None   # given with the store, or etcd's
        self.session = self.built.session(self.part_context())
        self._start_child("node session", self.session)
        if self.node_local:
            self.converger = LocalConverger(self.routes, self.provider, self.session,
                                            self.reactor, self.config.sync_interval)
            self._start_child("local converger", self.converger)

    async def _start_routes(self) -> None:
        from faastwist.gate.assembly import RoutesNotLoaded, load_routes

        try:
            self.routes = await load_routes(self.store, self.reactor, self.metrics,
                                            self.config.etcd.timeout * 4)
        except RoutesNotLoaded as exc:
            raise StartupError(str(exc)) from None
        self._push("route table", self.routes.stopService)

    def _start_reconciler(self) -> None:
        from faastwist.lifecycle.reconciler import Reconciler

        assert self.built.leader is not None   # given with the store, or etcd's
        self.leader = self.built.leader(self.part_context())
        provider: Any = self.provider
        if self.node_local:
            from faastwist.cluster.reports import ClusterView

            provider = ClusterView(self.provider, self.session.read_reports, self.reactor)
        warmup = None
        if self.converger is not None:
            # the reconciler waits for this node's own first pass, but not for ever
            warmup = self.converger.first_pass().addTimeout(WARMUP_LIMIT, self.reactor)
        self.reconciler = Reconciler(self.store, provider, self.reactor,
                                     self.config.sync_interval, self.metrics,
                                     is_leader=self.leader.is_leader, fence=self.leader.fence,
                                     warmup=warmup)
        self.leader.add_listener(self.reconciler.leadership_changed)
        # the leader acts within one watch event of a write on any node, and of a report
        self.routes.subscribe(lambda name, route: self.reconciler.kick(name))
        self.session.on_reports_changed(self._reports_changed)
        self._start_child("reconciler", self.reconciler)
        self._start_child("leader election", self.leader)

    def _start_kubernetes(self) -> None:
        """``kubernetes.functions: watch``: the leader applies Function objects."""
        if not self.config.kubernetes.watch:
            return
        from faastwist.kube.service import build_watch

        kube = self.kube = build_watch(
            self.config.kubernetes, self.config.knative.kubeconfig, self.store, self.reactor,
            check_spec=self.provider.check_spec, kick=self.reconciler.kick, leader=self.leader,
            observe=self.reconciler.provider.observe, resync=self.config.sync_interval)
        self.leader.add_listener(kube.leadership_changed)
        self.routes.subscribe(lambda name, route: kube.function_changed(name))
        self._start_child("kubernetes functions", kube)

    def _reports_changed(self, name: str | None) -> None:
        if name is not None:
            self.reconciler.kick(name)
        elif self.leader.is_leader():
            self.reconciler.run_pass()

    async def _start_queue(self) -> None:
        """The async queue: connected (and the embedded nats-server healthy) before the
        gate listens, stopped after it."""
        queue = self.config.queue
        if not queue.enabled:
            return
        from faastwist.queue.service import QueueService

        self.queue = QueueService(queue, self.config.name, self.reactor, self.metrics,
                                  self.routes, self._own_ports())
        try:
            await self.queue.start(self.embedded_nats)
        except Exception as exc:
            raise StartupError(f"queue: the embedded nats-server in {queue.data_dir} did not "
                               f"start: {exc}") from exc
        finally:
            self._push("queue connection", self.queue.stop)

    def _spawn_nats(self) -> None:
        """The embedded nats-server starts while the route table loads (it is waited
        for in ``_start_queue``): a 10,000-function node's start-up is shorter by it."""
        queue = self.config.queue
        if not (queue.enabled and queue.embedded):
            return
        from faastwist.queue.embedded import EmbeddedNats, EmbeddedNatsError

        self.embedded_nats = EmbeddedNats(self.reactor, queue.data_dir, queue.max_body_size,
                                          monitor_port=queue.monitor_port)
        try:
            self._start_child("embedded nats-server", self.embedded_nats)
        except EmbeddedNatsError as exc:
            raise StartupError(f"queue: {exc}") from exc

    def _own_ports(self) -> set[int]:
        """The node's ports a callback must never reach: admin, etcd (client and peer)."""
        from urllib.parse import urlsplit

        ports = {self.config.admin.port}
        for url in self.etcd_endpoints:
            try:
                ports.add(urlsplit(url).port or 2379)
            except ValueError:
                pass
        try:
            with open(os.path.join(self.config.etcd.data_dir, "ports.json")) as f:
                import json

                ports.update(int(p) for p in json.load(f).values())
        except (OSError, ValueError, TypeError, AttributeError):
            pass
        return ports

    def _attach_queue(self) -> None:
        if self.queue is None:
            return
        self.queue.attach(self.gate.context)
        self.admin.async_calls = self.queue
        # popped before the gate: no new calls are fetched while it drains
        self._push("queue workers", self.queue.stop_worker)

    def _start_admin(self) -> None:
        from faastwist.admin.api import AdminAPI
        from faastwist.admin.codec import bounded_request_factory
        from faastwist.admin.console import ConsoleResource, gate_url_for, mount_console
        from faastwist.admin.openapi import document as openapi_document
        from faastwist.admin.ops import OpsAPI, compose, node_info

        admin, http = self.config.admin, self.config.http_server
        log_source = self.parts.logs if self.parts is not None else None
        from faastwist.store.owned import ManagedGuard

        # the APIs may not write functions a Kubernetes object owns (store/owned.py)
        self.api_store = ManagedGuard(self.store)
        self.admin = AdminAPI(self.api_store, self.config.name, self.provider.check_spec,
                              self.reconciler.kick, self.reactor, admin.max_body_size,
                              log_source=log_source, cache=self._cached_records,
                              node_id=self.node_id, settle=self.settle)
        self._push("admin list writer", self.admin.close)
        checks = {"etcd": self.store.check, "watch": self._routes_current,
                  "provider": self._provider_ready}
        if http.workers > 1:
            checks["gate workers"] = self._workers_ready
        self.ops = OpsAPI(
            self.metrics, checks,
            node_info(__version__, self.config.provider, self.config.name, self.node_id,
                      time.time(), self.leader.is_leader, self._cluster_info),
            self.reactor, openapi=openapi_document(self.config.name))
        self._push("metrics scrape thread", self.ops.close)
        console = ConsoleResource(self.reactor, self.config.name,
                                  gate_url_for(http.address, http.port, http.https),
                                  max_body_size=admin.max_body_size)
        self.openfaas = self._openfaas_api()
        # the guard covers OpenFaaS's /system/* too (also when relayed by the gate)
        root = self._guard(mount_console(compose(self.admin.resource(), self.ops.resource(),
                                                 self.openfaas.resource()), console))
        site: Any = Site(root, requestFactory=bounded_request_factory(admin.max_body_size),
                         parsePOSTFormSubmission=False, reactor=self.reactor)
        if admin.https:
            from twisted.protocols.tls import TLSMemoryBIOFactory

            from faastwist.util.tls import ReloadableTLS

            try:
                self.admin_tls = ReloadableTLS(admin.cert_file, admin.key_file, [b"http/1.1"])
            except Exception as exc:
                raise StartupError(f"admin.certFile/keyFile: cannot load {admin.cert_file} and "
                                   f"{admin.key_file}: {exc}") from None
            site = TLSMemoryBIOFactory(self.admin_tls, False, site)
        try:
            self.admin_port = self.reactor.listenTCP(admin.port, site, interface=admin.address)
        except Exception as exc:
            raise StartupError(
                f"admin.port: cannot listen on {admin.address}:{admin.port}: {exc}") from exc
        # out of descriptors (gate connections), the admin port still accepts: it spends
        # descriptors held back from the start
        guard_listener(self.admin_port, lambda sock: ReservedListener(sock, self.fd_reserve))
        self._push("admin listener", self.admin_port.stopListening)

    @property
    def namespace(self) -> str:
        """The one namespace OpenFaaS clients see: Knative's, or OpenFaaS's default."""
        return self.kind.namespace(self.config)

    def _openfaas_api(self) -> Any:
        from faastwist.admin.openfaas import OpenFaaSAPI, Versions
        from faastwist.util.revision import source_revision

        versions = Versions(orchestration=self.config.provider,
                            sha=source_revision(os.path.dirname(__file__)))
        from faastwist.catalogue import Catalogue

        catalogue = Catalogue(self.config.store.url, self.config.store.file, self.reactor)
        parts = self.parts
        return OpenFaaSAPI(self.api_store, self.provider, self.reconciler.kick, self.metrics,
                           self.reactor, versions, self.namespace,
                           max_body_size=self.config.admin.max_body_size, secrets=self.secrets,
                           slicer=self.admin.slicer,   # the admin port's lists: one budget
                           parser=self.admin.parser,   # and one pool of parsing threads
                           settle=self.settle, catalogue=catalogue,
                           cache=self._cached_records,
                           log_source=parts.logs if parts is not None else None,
                           refresh_secrets=(parts.secrets.refresh_secrets
                                            if parts is not None and parts.secrets is not None
                                            else None))

    def _guard(self, root: Any) -> Any:
        """Put the Host/Origin/credential checks in front of the admin port's root."""
        from faastwist.admin.guard import AdminGuard
        from faastwist.auth.authorizer import Authorizer, anonymous_role
        from faastwist.auth.origin import OriginPolicy
        from faastwist.auth.reload import AuthFiles
        from faastwist.auth.tokens import TokenFileError

        admin = self.config.admin
        auth = admin.auth
        self.authorizer = Authorizer(anonymous=anonymous_role(auth.anonymous))
        self.auth_files = AuthFiles(self.authorizer, self.reactor, auth.tokens_file,
                                    auth.basic_user_file, auth.basic_password_file)
        try:
            self.auth_files.load()
        except (TokenFileError, OSError) as exc:
            raise StartupError(f"admin.auth.tokensFile: {exc}") from None
        self._start_child("admin auth files", self.auth_files)
        own = [socket.gethostname()]
        if admin.address not in ("", "0.0.0.0", "::"):
            own.append(admin.address)
        policy = OriginPolicy.build(admin.scheme, admin.port, own, admin.allowed_hosts,
                                    admin.allowed_origins)
        if auth.anonymous != "none":
            log.warn("admin.auth.anonymous is {anonymous}: callers without credentials may "
                     "{what} on {address}:{port}", anonymous=auth.anonymous,
                     what="change everything" if auth.anonymous == "admin" else "read",
                     address=admin.address, port=admin.port)
        return AdminGuard(root, self.authorizer, policy, metrics_open=auth.metrics_open)

    def reload(self) -> None:
        """SIGHUP: re-read the admin credentials (and the TLS certificates)."""
        log.info("SIGHUP: reloading credentials and certificates")
        if self.auth_files is not None:
            self.auth_files.reload("SIGHUP")
        if self.workers is not None:
            self.workers.reload()
        for what, reload in (("admin", self.admin_tls.reload if self.admin_tls else None),
                             ("gate", self.gate.reload_tls
                              if self.gate and self.workers is None else None)):
            if reload is None:
                continue
            try:
                reload()
                log.info("the {what} certificate was reloaded", what=what)
            except Exception as exc:
                log.error("the {what} certificate was not reloaded, the previous one stays: "
                          "{error}", what=what, error=str(exc))

    def system_relay(self) -> SystemRelay:
        """The admin listener as the gate relays /system/* to it (its guard, with the
        credentials, Host and Origin checks, applies to what is relayed)."""
        from faastwist.gate.assembly import SystemRelay

        admin = self.admin_port.getHost()
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(admin.host, admin.host)
        return SystemRelay(host, admin.port, self.config.admin.scheme, self.namespace)

    def _start_gate(self) -> None:
        from faastwist.gate.assembly import build_gate
        from faastwist.logformat import access_sink

        http = self.config.http_server
        sink, json_lines = access_sink()
        # with worker processes this gate does not listen: it runs the queue's calls
        self.gate = build_gate(http, self.routes, self.provider, self.reactor, self.metrics,
                               self.system_relay(), sink=sink, json_lines=json_lines,
                               fd_reserve=self.fd_reserve, serve=http.workers == 1)
        try:
            self.gate.startService()
        except Exception as exc:
            raise StartupError(
                f"httpServer.port: cannot listen on {http.address}:{http.port}: {exc}") from exc
        self._push("gate", self.gate.stopService)

    async def _start_workers(self) -> None:
        """httpServer.workers > 1: the gate's port is served by worker processes."""
        http = self.config.http_server
        if http.workers == 1:
            return
        if not self.etcd_endpoints:
            raise StartupError(f"httpServer.workers: {http.workers} gate workers need etcd "
                               f"(they watch it); this node's store is in its own memory")
        from faastwist.logformat import access_sink
        from faastwist.workers.setup import worker_setup
        from faastwist.workers.supervisor import WorkerPool, WorkerStartError

        sink, json_lines = access_sink()
        setup = worker_setup(self.config, self.etcd_endpoints, self.system_relay(),
                             self.queue, json_lines, self.etcd_tls_files)
        # None: the workers route by themselves (the registry's LOCAL_ROUTING)
        provider = self.provider if self.kind.worker_leases is WorkerLeases.FROM_NODE else None
        self.workers = WorkerPool(http.workers, setup, self.reactor, self.routes, provider,
                                  self.metrics, lambda: self.queue, sink, http.shutdown_timeout)
        self._push("gate workers", self.workers.stopService)
        try:
            await self.workers.start()
        except WorkerStartError as exc:
            raise StartupError(str(exc)) from None
        except Exception as exc:
            raise StartupError(f"httpServer.workers: the workers did not start: {exc}") from None

    def settle(self, revision: int) -> Deferred[None]:
        """Fires once this node's gate (the route table, and every gate worker's)
        reflects the store at ``revision``, or after ``SETTLE_LIMIT``: an API answer
        that reports a state waits for it, so the gate of the node that answered never
        contradicts it. With the process provider the FSM turns active only after every
        node, this one included, acted on the latest start (cluster/reports.py)."""
        from twisted.internet.defer import DeferredList

        waits = [self.routes.reached(revision)]
        if self.workers is not None:
            waits.append(self.workers.reached(revision))
        done = DeferredList(waits, consumeErrors=True).addCallback(lambda _: None)

        def late(failure: Any) -> None:
            failure.trap(TimeoutError)
            log.warn("the gate has not reached store revision {revision} after {limit}s "
                     "(it is at {current}); answering anyway", revision=revision,
                     limit=SETTLE_LIMIT, current=self.routes.revision)
        done.addTimeout(SETTLE_LIMIT, self.reactor)
        done.addErrback(late)
        return done

    def _workers_ready(self) -> None:
        if self.workers is not None:
            self.workers.check()

    def _cached_records(self) -> Mapping[str, Any]:
        return _WatchedRecords(self.routes.snapshot())

    def _provider_ready(self) -> Any:
        if self.converger is not None:
            self.converger.check()
        return self.provider.check()

    async def _cluster_info(self) -> dict[str, Any]:
        """Who leads, as etcd says now (the key as last watched can name a node whose
        lease nobody can keep alive: during a quorum loss nobody leads), and the nodes."""
        from faastwist.store.base import StoreError

        members = self.session.members if self.session is not None else {}
        body: dict[str, Any] = {}
        holder = None
        if self.leader.is_leader():
            holder = self.node_id
        else:
            try:
                holder = await self.leader.read_holder().addTimeout(INFO_READ_TIMEOUT,
                                                                    self.reactor)
            except (StoreError, CancelledError, TimeoutError) as exc:
                body["leaderError"] = (f"no leader known: etcd did not answer "
                                       f"({str(exc) or type(exc).__name__})")
        leader = None
        if holder is not None:
            leader = {"id": holder, "admin": members.get(holder, {}).get("admin")}
        nodes = [{"id": node, "admin": record.get("admin"), "gate": record.get("gate")}
                 for node, record in sorted(members.items())]
        return {"leaderNode": leader, "nodes": nodes, **body}

    def _routes_current(self) -> None:
        if not self.routes.synced:
            raise RuntimeError("the route table is not in step with the store")

    # -- stop ------------------------------------------------------------------------
    def stopService(self) -> Deferred[None]:
        super().stopService()
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        while self._stack:
            what, stop = self._stack.pop()
            try:
                result = stop()
                if isinstance(result, (Deferred, Awaitable)):
                    await result
            except Exception:
                log.failure("error while stopping {what}", what=what)
        log.info("faasgate stopped")
