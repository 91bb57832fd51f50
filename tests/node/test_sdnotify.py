"""sd_notify over a real unix datagram socket bound by the test; watchdog timing on a Clock."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest
from twisted.internet.task import Clock

from faastwist.sdnotify import Notifier, SystemdNotifier, notify_address, watchdog_interval


class Listener:
    """The systemd side: a bound datagram socket collecting messages."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.setblocking(False)

    def messages(self) -> list[str]:
        out = []
        while True:
            try:
                out.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return out


@pytest.fixture
def listener(tmp_path) -> Iterator[tuple[Listener, str]]:
    path = str(tmp_path / "notify.sock")
    sock = Listener(path)
    yield sock, path
    sock.sock.close()


def test_address_forms() -> None:
    assert notify_address(None) is None
    assert notify_address("") is None
    assert notify_address("/run/systemd/notify") == "/run/systemd/notify"
    assert notify_address("@faastwist/notify") == b"\0faastwist/notify"
    assert notify_address("vsock:2:1234") is None


def test_unset_is_a_no_op() -> None:
    env: dict[str, str] = {}
    notifier = SystemdNotifier(Clock(), environ=env)
    assert not notifier.enabled
    notifier.startService()
    notifier.ready("up")
    notifier.stopService()
    assert notifier.watchdog_interval is None
    assert Notifier(None).send("READY=1") is False


def test_ready_watchdog_stopping_sequence(listener) -> None:
    sock, path = listener
    clock = Clock()
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}
    notifier = SystemdNotifier(clock, environ=env)
    # the variables are taken away so child processes do not notify for the unit
    assert env == {}
    assert notifier.watchdog_interval == 2.0

    notifier.startService()
    assert sock.messages() == ["WATCHDOG=1"]          # first ping at once
    clock.advance(1.9)
    assert sock.messages() == []
    clock.advance(0.1)
    assert sock.messages() == ["WATCHDOG=1"]

    notifier.ready("serving 3 functions")
    assert sock.messages() == ["READY=1\nSTATUS=serving 3 functions"]
    clock.advance(2.0)
    clock.advance(2.0)
    assert sock.messages() == ["WATCHDOG=1", "WATCHDOG=1"]

    notifier.stopService()
    assert sock.messages() == ["STOPPING=1\nSTATUS=stopping"]
    clock.advance(10)
    assert sock.messages() == []                       # no pings after stopping
    assert clock.getDelayedCalls() == []
    notifier.close()


def test_abstract_socket_name() -> None:
    name = f"faastwist-test-{os.getpid()}-{id(object())}"
    sock = Listener(b"\0" + name.encode())
    try:
        notifier = SystemdNotifier(Clock(), environ={"NOTIFY_SOCKET": "@" + name})
        notifier.ready()
        assert sock.messages() == ["READY=1"]
        notifier.status("draining")
        notifier.extend_timeout(1.5)
        assert sock.messages() == ["STATUS=draining", "EXTEND_TIMEOUT_USEC=1500000"]
    finally:
        sock.sock.close()


def test_watchdog_for_another_pid_is_not_ours(listener) -> None:
    sock, path = listener
    clock = Clock()
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}
    notifier = SystemdNotifier(clock, environ=env, pid=4242)
    notifier.startService()
    clock.advance(5)
    assert sock.messages() == []
    notifier.ready()
    assert sock.messages() == ["READY=1"]
    notifier.stopService()


@pytest.mark.parametrize("env, expected", [
    ({}, None),
    ({"WATCHDOG_USEC": "30000000"}, 15.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "7"}, 15.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "8"}, None),
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
])
def test_watchdog_interval(env, expected) -> None:
    assert watchdog_interval(env, 7) == expected


def test_unhealthy_withholds_pings(listener) -> None:
    sock, path = listener
    clock = Clock()
    healthy = [True]
    notifier = SystemdNotifier(clock, environ={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"},
                               healthy=lambda: healthy[0])
    notifier.startService()
    assert sock.messages() == ["WATCHDOG=1"]
    healthy[0] = False
    clock.advance(1)
    clock.advance(1)
    assert sock.messages() == []
    healthy[0] = True
    clock.advance(1)
    assert sock.messages() == ["WATCHDOG=1"]
    notifier.stopService()


def test_keep_environment_when_asked(listener) -> None:
    _, path = listener
    env = {"NOTIFY_SOCKET": path}
    SystemdNotifier(Clock(), environ=env, unset_environment=False)
    assert env == {"NOTIFY_SOCKET": path}


def test_unreachable_socket_is_logged_not_raised(tmp_path) -> None:
    notifier = SystemdNotifier(Clock(), environ={"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert notifier.enabled
    notifier.ready()            # ENOENT: a warning, no exception
    assert notifier.notifier.send("STATUS=x") is False
