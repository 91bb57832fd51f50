"""The gate port shared by the workers: one SO_REUSEPORT listener per worker.

Each worker binds its own socket with SO_REUSEPORT and the kernel spreads new
connections across them (each has its own accept queue, so no worker waits on a lock
another holds). Twisted's ``listenTCP`` cannot set the option, so the socket is made
here and handed to ``reactor.adoptStreamPort``. Linux admits a socket to a
reuseport group only from the same user, but a second node of that user would join
the group silently: ``check_free`` (a bind without SO_REUSEPORT) is done by the main
process before it starts any worker, so a port already served is a start-up error.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.interfaces import IListeningPort


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def reuseport_socket(address: str, port: int, backlog: int = 1024) -> socket.socket:
    """A non-blocking listening socket on ``address:port`` in a reuseport group."""
    sock = socket.socket(_family(address), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((address, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def listen_reuseport(reactor: Any, address: str, port: int, factory: Any,
                     backlog: int = 1024) -> IListeningPort:
    """Listen with ``factory`` on a reuseport socket; the reactor owns a duplicate of
    the descriptor, so ours is closed here."""
    sock = reuseport_socket(address, port, backlog)
    try:
        return reactor.adoptStreamPort(sock.fileno(), sock.family, factory)
    finally:
        sock.close()


def check_free(address: str, port: int) -> None:
    """Raise OSError when something already listens on ``address:port`` (a plain
    listener, or another reuseport group: the bind without the option fails)."""
    with socket.socket(_family(address), socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((address, port))
