"""The reuseport listener and the start-up check that the port is not served already."""

from __future__ import annotations

import socket

import pytest

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
