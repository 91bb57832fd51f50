"""util/reactor: the reactor and transport interfaces the node's parts are typed with
are what Twisted's reactor and our transports really provide."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import tcp
from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactor
from zope.interface.verify import verifyClass

from faastwist.util.reactor import IFullReactor, IStreamTransport, global_reactor, tcp_address


def test_the_global_reactor_provides_every_interface_of_the_full_reactor() -> None:
    from twisted.internet import reactor

    assert global_reactor() is reactor
    parts = IFullReactor.__bases__
    assert len(parts) == 7
    missing = [part.__name__ for part in parts if not part.providedBy(reactor)]
    assert missing == []


@pytest.mark.parametrize("transport", [tcp.Server, tcp.Client])
def test_twisted_tcp_connections_are_stream_transports(transport: type) -> None:
    for part in IStreamTransport.__bases__:
        assert part.implementedBy(transport), part.__name__
        assert verifyClass(part, transport)


def test_the_gate_tls_connection_is_a_stream_transport_to_the_protocol_inside() -> None:
    """The lean protocol declares ``transport: IStreamTransport``; over HTTPS that
    transport is gate/tls.py's TLSServerProtocol, so it has every method of one."""
    from faastwist.gate.tls import TLSServerProtocol

    for part in IStreamTransport.__bases__:
        assert part.implementedBy(TLSServerProtocol), part.__name__
        assert verifyClass(part, TLSServerProtocol)


@pytest_twisted.ensureDeferred
async def test_tcp_address_of_a_tcp_listener() -> None:
    port = global_reactor().listenTCP(0, Factory(), interface="127.0.0.1")
    try:
        address = tcp_address(port)
        assert isinstance(address, IPv4Address)
        assert address.host == "127.0.0.1"
        assert address.port > 0   # the one the OS chose
    finally:
        await port.stopListening()


def test_tcp_address_of_another_listener_is_a_type_error_naming_its_address() -> None:
    memory = MemoryReactor()
    port = memory.listenUNIX("/tmp/faastwist-test.sock", Factory())
    assert isinstance(port.getHost(), UNIXAddress)
    with pytest.raises(TypeError, match="not a TCP listener: UNIXAddress"):
        tcp_address(port)
