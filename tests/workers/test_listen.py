"""The reuseport listener and the start-up check that the port is not served already."""

from __future__ import annotations

import socket

import pytest
import pytest_twisted

from faastwist.util.ports import free_port
from faastwist.workers.listen import check_free, reuseport_socket


def test_two_reuseport_listeners_share_a_port_and_a_plain_bind_is_refused() -> None:
    port = free_port()
    check_free("127.0.0.1", port)  # nothing there yet
    first = reuseport_socket("127.0.0.1", port)
    second = reuseport_socket("127.0.0.1", port)  # what the next worker does
    try:
        assert first.getsockname()[1] == second.getsockname()[1] == port
        assert not first.getblocking()
        with pytest.raises(OSError):
            check_free("127.0.0.1", port)  # a node started twice is refused
    finally:
        first.close()
        second.close()
    check_free("127.0.0.1", port)


def test_a_plain_listener_keeps_the_workers_out() -> None:
    with socket.socket() as plain:
        plain.bind(("127.0.0.1", 0))
        plain.listen()
        port = plain.getsockname()[1]
        with pytest.raises(OSError):
            reuseport_socket("127.0.0.1", port)
        with pytest.raises(OSError):
            check_free("127.0.0.1", port)


def test_an_ipv6_address_gets_an_ipv6_socket() -> None:
    probe = socket.socket(socket.AF_INET6)
    try:
        probe.bind(("::1", 0))                       # the machine has IPv6 loopback
        port = probe.getsockname()[1]
    finally:
        probe.close()
    sock = reuseport_socket("::1", port)
    try:
        assert sock.family == socket.AF_INET6 and sock.getsockname()[1] == port
        with pytest.raises(OSError):
            check_free("::1", port)
    finally:
        sock.close()
    check_free("::1", port)


@pytest_twisted.ensureDeferred
async def test_the_reactor_serves_the_reuseport_socket_beside_another_worker() -> None:
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory, Protocol

    from faastwist.workers.listen import listen_reuseport

    port = free_port()
    other = reuseport_socket("127.0.0.1", port)      # another worker's
    listening = listen_reuseport(reactor, "127.0.0.1", port, Factory.forProtocol(Protocol))
    try:
        assert listening.getHost().port == port
    finally:
        other.close()
        await listening.stopListening()
    check_free("127.0.0.1", port)                    # ours was closed with the port
