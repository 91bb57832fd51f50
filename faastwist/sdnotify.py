"""systemd's service notification protocol (sd_notify), spoken directly.

systemd passes ``NOTIFY_SOCKET`` (a filesystem path, or an abstract socket name
written with a leading ``@``) to a ``Type=notify`` service; the service sends
newline-separated ``KEY=value`` assignments in one datagram per message. No
library is needed for that, and everything here is a no-op when the variable is
unset, so the same code runs under systemd, in a terminal and in tests.

``SystemdNotifier`` is the service-side policy: ``READY=1`` when the node says so,
``WATCHDOG=1`` from a reactor timer at half of ``WATCHDOG_USEC`` (a timer that only
fires while the reactor turns, so a wedged reactor stops the pings and systemd
restarts the unit), ``STOPPING=1`` when the service stops.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Callable, MutableMapping

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger()

NOTIFY_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def notify_address(value: str | None) -> str | bytes | None:
    """The socket address for ``NOTIFY_SOCKET``'s value, or None when there is none
    we can speak to (unset, empty, or a transport such as ``vsock:`` we do not)."""
    if not value:
        return None
    if value.startswith("@"):
        # abstract namespace: a leading NUL byte, the rest of the name verbatim
        return b"\0" + value[1:].encode("utf-8")
    if value.startswith("/"):
        return value
    return None


class Notifier:
    """Sends sd_notify datagrams to one address; silent when there is no address.

    The socket is non-blocking: if systemd's queue is full the message is dropped
    with a warning rather than stalling the reactor.
    """

    def __init__(self, address: str | bytes | None) -> None:
        self.address = address
        self._socket: socket.socket | None = None

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str]) -> "Notifier":
        raw = environ.get("NOTIFY_SOCKET")
        address = notify_address(raw)
        if raw and address is None:
            log.warn("NOTIFY_SOCKET={value} is not a unix socket path or @name; "
                     "systemd notifications are off", value=raw)
        return cls(address)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *assignments: str) -> bool:
        """Send ``KEY=value`` lines as one datagram; True when it was sent."""
        if self.address is None or not assignments:
            return False
        payload = "\n".join(assignments).encode("utf-8")
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._socket.setblocking(False)
            self._socket.sendto(payload, self.address)
        except OSError as exc:
            log.warn("systemd notification {message!r} not sent: {error}",
                     message=assignments[0], error=str(exc))
            return False
        return True

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def watchdog_interval(environ: MutableMapping[str, str], pid: int) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half the timeout, as sd_watchdog_enabled
    advises), or None when systemd expects none from this process."""
    usec = environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    try:
        timeout = int(usec)
    except ValueError:
        log.warn("WATCHDOG_USEC={value} is not an integer; watchdog pings are off", value=usec)
        return None
    if timeout <= 0:
        return None
    owner = environ.get("WATCHDOG_PID")
    if owner:
        try:
            if int(owner) != pid:
                return None
        except ValueError:
            return None
    return timeout / 2_000_000


class SystemdNotifier(Service):
    """READY / WATCHDOG / STOPPING for a ``Type=notify`` unit.

    Construct it before anything spawns children: with ``unset_environment`` (the
    default) it removes the ``NOTIFY_SOCKET``/``WATCHDOG_*`` variables from
    ``environ``, so child processes (the embedded etcd, function processes) do not
    talk to systemd on the unit's behalf.

    ``healthy`` is asked before each watchdog ping; returning False withholds the ping.
    """

    name = "systemd-notify"

    def __init__(self, reactor: IReactorTime, environ: MutableMapping[str, str] | None = None,
                 pid: int | None = None, healthy: Callable[[], bool] | None = None,
                 unset_environment: bool = True) -> None:
        env: MutableMapping[str, str] = os.environ if environ is None else environ
        self.clock = reactor
        self.notifier = Notifier.from_environment(env)
        self.watchdog_interval = (watchdog_interval(env, os.getpid() if pid is None else pid)
                                  if self.notifier.enabled else None)
        self.healthy = healthy
        self.is_ready = False
        self._watchdog: LoopingCall | None = None
        if unset_environment:
            for key in NOTIFY_VARIABLES:
                env.pop(key, None)

    @property
    def enabled(self) -> bool:
        return self.notifier.enabled

    def startService(self) -> None:
        super().startService()
        if self.watchdog_interval is not None:
            self._watchdog = LoopingCall(self._ping)
            self._watchdog.clock = self.clock
            # a first ping at once: start-up itself may take a while
            self._watchdog.start(self.watchdog_interval, now=True)
            log.info("systemd watchdog: pinging every {interval:.3g}s",
                     interval=self.watchdog_interval)

    def _ping(self) -> None:
        if self.healthy is not None and not self.healthy():
            log.warn("systemd watchdog ping withheld: the node reports itself unhealthy")
            return
        self.notifier.send("WATCHDOG=1")

    def ready(self, status: str = "") -> None:
        """Tell systemd start-up is complete (``systemctl start`` returns now)."""
        self.is_ready = True
        self.notifier.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> None:
        """Free-form status shown by ``systemctl status``."""
        self.notifier.send(f"STATUS={text}")

    def extend_timeout(self, seconds: float) -> None:
        """Ask for more start-up (or shut-down) time, e.g. while etcd starts."""
        self.notifier.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    def stopService(self) -> Any:
        if self._watchdog is not None and self._watchdog.running:
            self._watchdog.stop()
        self._watchdog = None
        self.notifier.send("STOPPING=1", "STATUS=stopping")
        return super().stopService()

    def close(self) -> None:
        """Release the socket (after the last message)."""
        self.notifier.close()
