"""File descriptors held back so that running out of them never silences the admin port.

When clients open gate connections until the process hits its descriptor limit, every
``accept`` fails with EMFILE, the admin port's included (Twisted's own recovery sheds
admin connections like any other). The node holds a few descriptors open from the
start. The gate's listener, on EMFILE, sheds its pending connections (accept with one
held descriptor, close at once) and logs once per burst; the admin listener, on EMFILE,
gives up one held descriptor to accept its client. Held descriptors come back as the
process frees others (``refill``, called periodically).
"""

from __future__ import annotations

import errno
import os
import socket
import time
from typing import Any, Callable

RESERVE = 8
BURST_QUIET = 10.0   # seconds without shedding that end a burst (for the log)


class FdReserve:
    def __init__(self, count: int = RESERVE) -> None:
        self.count = count
        self.held: list[int] = []
        self.refill()

    def refill(self) -> None:
        while len(self.held) < self.count:
            try:
                self.held.append(os.open(os.devnull, os.O_RDONLY))
            except OSError:
                return

    def release(self) -> bool:
        if not self.held:
            return False
        os.close(self.held.pop())
        return True

    def close(self) -> None:
        while self.release():
            pass


def _again() -> BlockingIOError:
    # ends Twisted's accept loop for this reactor pass without a log line
    return BlockingIOError(errno.EAGAIN, "no descriptors: shed")


class SheddingListener:
    """The gate's listening socket: on EMFILE, pending clients are accepted into a held
    descriptor and closed at once (they see a closed connection, not a hang), and
    ``on_shed(count)`` reports a burst once."""

    def __init__(self, sock: socket.socket, reserve: FdReserve,
                 on_shed: Callable[[int], None], clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self._sock = sock
        self.reserve = reserve
        self.on_shed = on_shed
        self.clock = clock
        self.shed = 0
        self.last_shed = float("-inf")

    def accept(self) -> tuple[socket.socket, Any]:
        try:
            return self._sock.accept()
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE):
                raise
        now = self.clock()
        if now - self.last_shed > BURST_QUIET:
            self.shed = 0
        self.last_shed = now
        count = 0
        while self.reserve.release():
            try:
                client, _ = self._sock.accept()
            except OSError:
                self.reserve.refill()
                break
            client.close()
            count += 1
            self.reserve.refill()
        if count and self.shed == 0:
            self.on_shed(count)
        self.shed += count
        raise _again()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class ReservedListener:
    """The admin's listening socket: on EMFILE it spends a held descriptor."""

    def __init__(self, sock: socket.socket, reserve: FdReserve) -> None:
        self._sock = sock
        self.reserve = reserve

    def accept(self) -> tuple[socket.socket, Any]:
        try:
            return self._sock.accept()
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE) or not self.reserve.release():
                raise
        try:
            return self._sock.accept()
        except OSError:
            self.reserve.refill()
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def guard_listener(port: Any, wrapper: Callable[[socket.socket], Any]) -> None:
    """Put ``wrapper`` around a Twisted listening port's socket (its ``accept``)."""
    port.socket = wrapper(port.socket)
