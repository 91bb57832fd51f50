"""One way to put a gate together, for the node's main process and its gate workers.

Both load a route table from the store before they serve (a gate that listened
earlier would answer 404 for functions that exist), then build a ``GateService``
over it with the access log, the ``/system/*`` relay to the node's admin listener,
and the provider (or, in a worker, its lease source).
"""

from __future__ import annotations

from typing import Callable

import attrs
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.internet.task import deferLater

from faastwist.config import HTTPServerConfig
from faastwist.gate.accesslog import AccessLog
from faastwist.gate.routes import RouteTable
from faastwist.gate.service import GateService
from faastwist.metrics import Metrics
from faastwist.providers.base import Provider
from faastwist.store.base import FunctionStore
from faastwist.util.fdreserve import FdReserve
from faastwist.util.reactor import IFullReactor

#: how often start-up looks whether the route table has listed the store
SYNC_POLL = 0.05


class RoutesNotLoaded(Exception):
    """The route table did not list the store in time (etcd unreachable or slow)."""


@attrs.frozen
class SystemRelay:
    """Where the gate relays OpenFaaS's ``/system/*``: the node's admin listener (its
    guard applies to what is relayed), and the namespace invocation paths may name."""

    host: str
    port: int
    scheme: str
    namespace: str


async def load_routes(store: FunctionStore, reactor: IFullReactor, metrics: Metrics,
                      limit: float) -> RouteTable:
    """A started route table that has listed the store; RoutesNotLoaded after
    ``limit`` seconds (the table is stopped then)."""
    routes = RouteTable(store, reactor, metrics)
    routes.startService()
    deadline = reactor.seconds() + limit
    while not routes.synced:
        if reactor.seconds() > deadline:
            routes.stopService()
            raise RoutesNotLoaded("the route table could not be loaded from etcd")
        await deferLater(reactor, SYNC_POLL, lambda: None)
    return routes


def build_gate(http: HTTPServerConfig, routes: RouteTable, provider: Provider,
               reactor: IFullReactor, metrics: Metrics, system: SystemRelay, *,
               sink: Callable[[str], None] | None, json_lines: bool,
               fd_reserve: FdReserve | None = None, serve: bool = True,
               listen: Callable[[IProtocolFactory], IListeningPort] | None = None) -> GateService:
    """The gate over ``routes`` (not started: the caller starts it when it may listen).
    ``serve`` False: it runs the queue's calls without listening (workers serve)."""
    gate = GateService(http, routes, provider, reactor, metrics, access_log=http.access_log,
                       fd_reserve=fd_reserve, access=AccessLog(reactor, sink, json_lines),
                       serve=serve, listen=listen)
    gate.context.serve_system(system.host, system.port, system.namespace,
                              scheme=system.scheme)
    return gate


__all__ = ["RoutesNotLoaded", "SystemRelay", "build_gate", "load_routes"]
