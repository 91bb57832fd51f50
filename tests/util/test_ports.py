"""faastwist.util.ports: the one helper for loopback ports (code, tests and benchmarks)."""

from __future__ import annotations

import socket

from faastwist.util.ports import free_port, port_is_free


def test_free_port_can_be_bound_and_is_then_taken() -> None:
    port = free_port()
    assert 1024 <= port <= 65535
    assert port_is_free(port)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", port))
        listener.listen()
        assert not port_is_free(port)
    assert port_is_free(port)
