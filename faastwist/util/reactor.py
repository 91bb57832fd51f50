"""The reactor's and a connection's types as the node's parts use them.

Twisted describes a reactor by many small interfaces (timers, TCP, processes, threads);
a part that schedules timers *and* opens connections needs both, which a single
``IReactorTCP`` annotation does not say. ``IFullReactor`` names the set the node's
reactor provides, so one annotation covers a part's needs and mypy (with mypy-zope)
still accepts it wherever one of the smaller interfaces is asked for. Tests pass
``twisted.internet.testing.MemoryReactorClock`` or ``task.Clock`` for the parts they use.
"""

from __future__ import annotations

from typing import cast

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import (IConsumer, IListeningPort, IPushProducer, IReactorCore,
                                         IReactorPluggableNameResolver, IReactorProcess,
                                         IReactorSocket, IReactorTCP, IReactorThreads,
                                         IReactorTime, ITCPTransport)


class IFullReactor(IReactorCore, IReactorTime, IReactorTCP, IReactorProcess, IReactorThreads,
                   IReactorPluggableNameResolver, IReactorSocket):
    """The interfaces Twisted's default (epoll) reactor provides that faastwist uses."""


class IStreamTransport(ITCPTransport, IConsumer, IPushProducer):
    """A connected TCP transport (TLS over TCP alike) as the gate and the workers' links
    drive it: write, close or abort, flow control both ways. A protocol class declares
    ``transport: IStreamTransport`` (Twisted's ``Protocol`` says ``ITransport | None``:
    None only before ``makeConnection``, which none of their methods run before)."""


def tcp_address(port: IListeningPort) -> IPv4Address | IPv6Address:
    """Where a TCP listener listens (``IListeningPort.getHost`` is typed as any address)."""
    host = port.getHost()
    if not isinstance(host, (IPv4Address, IPv6Address)):
        raise TypeError(f"not a TCP listener: {host!r}")
    return host


def global_reactor() -> IFullReactor:
    """The process's reactor, typed: ``twisted.internet.reactor`` is installed at import
    and its module attribute carries no useful type."""
    from twisted.internet import reactor
    return cast(IFullReactor, reactor)
