"""Descriptors held back for the admin port (faastwist/util/fdreserve.py), on real
sockets and descriptors; EMFILE itself comes from a socket that raises it on cue (the
real exhaustion, with a node process at its limit, is in tests/gate/test_gate_hardening.py)."""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

import pytest

from faastwist.util.fdreserve import (
    BURST_QUIET,
    RESERVE,
    FdReserve,
    ReservedListener,
    SheddingListener,
    guard_listener,
)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_the_reserve_holds_real_descriptors_and_gives_them_back() -> None:
    before = open_fds()
    reserve = FdReserve(3)
    assert (RESERVE, BURST_QUIET) == (8, 10.0)
    assert len(reserve.held) == 3 and open_fds() == before + 3
    assert all(os.fstat(fd) for fd in reserve.held)
    assert reserve.release() and open_fds() == before + 2
    reserve.refill()
    assert len(reserve.held) == 3
    reserve.close()
    assert reserve.held == [] and open_fds() == before and not reserve.release()
    assert len(FdReserve().held) == RESERVE
    FdReserve().close()


class Emfile:
    """A listening socket whose accept fails with ``errors`` first, then is real."""

    def __init__(self, sock: socket.socket, *errors: int) -> None:
        self.sock = sock
        self.errors = list(errors)
        self.accepts = 0

    def accept(self) -> tuple[socket.socket, Any]:
        self.accepts += 1
        if self.errors:
            code = self.errors.pop(0)
            raise OSError(code, os.strerror(code))
        return self.sock.accept()

    def arm(self, *errors: int) -> "Emfile":
        self.errors.extend(errors)
        return self

    def fileno(self) -> int:
        return self.sock.fileno()


@pytest.fixture
def listener() -> Any:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    yield sock
    sock.close()


def clients(listener: socket.socket, count: int) -> list[socket.socket]:
    made = []
    for _ in range(count):
        client = socket.create_connection(listener.getsockname(), timeout=5)
        made.append(client)
    return made


def shed_by_peer(client: socket.socket) -> bool:
    """The gate closed it: the client reads end of stream (or a reset)."""
    client.settimeout(5)
    try:
        return client.recv(1) == b""
    except ConnectionResetError:
        return True


@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENFILE])
def test_out_of_descriptors_the_gate_sheds_pending_clients_and_reports_once(
        listener: socket.socket, code: int) -> None:
    reserve = FdReserve(2)
    reports: list[int] = []
    now = [100.0]
    gate = SheddingListener(Emfile(listener, code), reserve, reports.append, lambda: now[0])
    waiting = clients(listener, 3)
    with pytest.raises(BlockingIOError) as caught:
        gate.accept()
    assert caught.value.errno == errno.EAGAIN
    assert caught.value.strerror == "no descriptors: shed"
    assert reports == [3] and gate.shed == 3
    assert all(shed_by_peer(c) for c in waiting)
    assert len(reserve.held) == 2          # every descriptor it spent came back
    for c in waiting:
        c.close()
    reserve.close()


def test_a_burst_is_reported_once_and_a_new_one_after_a_quiet_spell(
        listener: socket.socket) -> None:
    reserve = FdReserve(1)
    reports: list[int] = []
    now = [100.0]
    socket_ = Emfile(listener)
    gate = SheddingListener(socket_, reserve, reports.append, lambda: now[0])
    held = clients(listener, 1)
    socket_.arm(errno.EMFILE)
    with pytest.raises(BlockingIOError):
        gate.accept()
    assert reports == [1]
    held += clients(listener, 2)
    now[0] += BURST_QUIET                      # not more than the quiet spell: same burst
    socket_.arm(errno.EMFILE)
    with pytest.raises(BlockingIOError):
        gate.accept()
    assert reports == [1] and gate.shed == 3
    held += clients(listener, 1)
    now[0] += BURST_QUIET + 0.1                # quiet long enough: a new burst
    socket_.arm(errno.EMFILE)
    with pytest.raises(BlockingIOError):
        gate.accept()
    assert reports == [1, 1] and gate.shed == 1
    for c in held:
        c.close()
    reserve.close()


def test_nothing_pending_sheds_nothing_and_reports_nothing(listener: socket.socket) -> None:
    reserve = FdReserve(1)
    reports: list[int] = []
    gate = SheddingListener(Emfile(listener, errno.EMFILE), reserve, reports.append)
    with pytest.raises(BlockingIOError):
        gate.accept()
    assert reports == [] and gate.shed == 0 and len(reserve.held) == 1
    reserve.close()


def test_with_no_reserve_left_the_gate_still_answers_eagain(listener: socket.socket) -> None:
    reserve = FdReserve(0)
    gate = SheddingListener(Emfile(listener, errno.EMFILE), reserve, lambda n: None)
    waiting = clients(listener, 1)
    with pytest.raises(BlockingIOError):
        gate.accept()
    assert gate.shed == 0
    waiting[0].close()


def test_other_accept_errors_and_a_normal_accept_pass_through(listener: socket.socket) -> None:
    reserve = FdReserve(1)
    gate = SheddingListener(Emfile(listener, errno.ECONNABORTED), reserve, lambda n: None)
    with pytest.raises(OSError) as caught:
        gate.accept()
    assert caught.value.errno == errno.ECONNABORTED
    waiting = clients(listener, 1)
    accepted, address = gate.accept()
    assert address[0] == "127.0.0.1" and gate.shed == 0
    assert gate.fileno() == listener.fileno()     # the rest is the socket's
    accepted.close()
    waiting[0].close()
    reserve.close()


def test_the_admin_spends_a_held_descriptor_to_accept_its_client(
        listener: socket.socket) -> None:
    reserve = FdReserve(2)
    admin = ReservedListener(Emfile(listener, errno.EMFILE), reserve)
    waiting = clients(listener, 1)
    accepted, _ = admin.accept()
    assert len(reserve.held) == 1              # one spent; refill comes later
    accepted.sendall(b"ok")
    assert waiting[0].recv(2) == b"ok"
    accepted.close()
    waiting[0].close()
    reserve.close()


def test_the_admin_refills_and_raises_when_even_that_accept_fails(
        listener: socket.socket) -> None:
    reserve = FdReserve(2)
    admin = ReservedListener(Emfile(listener, errno.EMFILE, errno.EMFILE), reserve)
    with pytest.raises(OSError) as caught:
        admin.accept()
    assert caught.value.errno == errno.EMFILE and len(reserve.held) == 2
    empty = ReservedListener(Emfile(listener, errno.EMFILE), FdReserve(0))
    with pytest.raises(OSError):
        empty.accept()
    other = ReservedListener(Emfile(listener, errno.ECONNABORTED), reserve)
    with pytest.raises(OSError) as aborted:
        other.accept()
    assert aborted.value.errno == errno.ECONNABORTED and len(reserve.held) == 2
    assert other.fileno() == listener.fileno()
    reserve.close()


def test_guard_listener_wraps_the_ports_socket(listener: socket.socket) -> None:
    class Port:
        socket: Any = listener
    port = Port()
    reserve = FdReserve(1)
    guard_listener(port, lambda sock: ReservedListener(sock, reserve))
    assert isinstance(port.socket, ReservedListener) and port.socket._sock is listener
    reserve.close()
