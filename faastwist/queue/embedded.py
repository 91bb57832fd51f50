"""A local ``nats-server`` with JetStream, for nodes whose ``queue.natsURLs`` is empty.

Supervised as the embedded etcd is (faastwist.util.supervised): loopback only, ports
chosen once and kept in the data folder (a restart serves the same URL, and clients
reconnect to it), restarted with backoff when it dies, SIGTERM then SIGKILL at stop, and
a parent-death signal so a SIGKILLed node leaves no server behind. Its JetStream storage
is under the data folder (so queued calls survive a restart of the server or of the
node). The server is configured by a file (the command line has no max_payload) and is
healthy when JetStream answers an account-info request on the client port (with the
token). Its HTTP monitoring port is off unless ``queue.monitorPort`` is set: function
processes share the node's loopback, and ``/connz``, ``/subsz`` and ``/jsz`` show every
client, subject and stream (function names, call ids) to whoever asks.

Clients must present a token (kept in the data folder, mode 0600, made at first start and
written only into the 0600 config file, never onto a command line that ``ps`` shows):
function processes share the node's loopback, and without it any of them could publish
calls, or read and acknowledge (delete) every queued one.
"""

from __future__ import annotations

import json
import os
import secrets
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

from faastwist.util.reactor import IStreamTransport
from faastwist.util.supervised import SupervisedChild, find_binary, persisted_ports

NATS_BINARY_CANDIDATES = ("/usr/sbin/nats-server", "/usr/bin/nats-server",
                          "/usr/local/bin/nats-server")
MISSING_NATS_MESSAGE = (
    "the embedded queue needs the nats-server binary, and none was found on PATH (nor "
    "/usr/sbin/nats-server): install it with `apt-get install -y nats-server`, set "
    "queue.natsURLs to use an existing NATS cluster, or set queue.enabled: false")
#: Room for the request head the gate stores next to a body of maxBodySize.
HEAD_ROOM = 128 * 1024
#: The clients' token, in the data folder.
TOKEN_FILE = "client.token"


class EmbeddedNatsError(Exception):
    """The embedded nats-server cannot be started or did not become healthy."""


def find_nats_binary() -> str | None:
    return find_binary("nats-server", NATS_BINARY_CANDIDATES)


class EmbeddedNats(SupervisedChild):
    """Supervises one nats-server whose JetStream data lives in ``data_dir``."""

    name = "embedded-nats"
    what = "embedded nats-server"
    error = EmbeddedNatsError
    first_backoff = 0.2
    health_interval = 0.05
    dir_mode = 0o700
    log_mode = 0o600

    def __init__(self, reactor: Any, data_dir: str, max_payload: int,
                 binary: str | None = None, startup_timeout: float = 20.0,
                 stop_grace: float = 10.0, max_backoff: float = 10.0,
                 monitor_port: int = 0) -> None:
        super().__init__(reactor, data_dir, "nats.log", startup_timeout=startup_timeout,
                         stop_grace=stop_grace, max_backoff=max_backoff)
        self.max_payload = max(max_payload + HEAD_ROOM, 1024 * 1024)
        self.binary = binary
        #: the monitoring port on loopback (0: none)
        self.monitor_port = monitor_port
        #: (client, monitoring) ports; the monitoring one 0 when it is off
        self.ports: tuple[int, int] = (0, 0)

    def startService(self) -> None:
        binary = self.binary or find_nats_binary()
        if binary is None or not os.access(binary, os.X_OK):
            raise EmbeddedNatsError(MISSING_NATS_MESSAGE)
        self._start_with(binary)

    @property
    def token(self) -> str:
        """The token clients present (made at first use, then read from the data folder)."""
        path = os.path.join(self.data_dir, TOKEN_FILE)
        try:
            with open(path) as f:
                token = f.read().strip()
            if token:
                return token
        except FileNotFoundError:
            pass
        token = secrets.token_hex(32)
        _write_private(path, token + "\n")
        return token

    def _write_config(self, client: int, monitor: int) -> str:
        path = os.path.join(self.data_dir, "nats.conf")
        store = json.dumps(os.path.join(self.data_dir, "jetstream"))
        # JSON strings are valid NATS config strings
        http = f"http: \"127.0.0.1:{monitor}\"\n" if monitor else ""
        text = (f"server_name: faastwist\nhost: 127.0.0.1\nport: {client}\n"
                f"{http}max_payload: {self.max_payload}\n"
                f"authorization {{\n  token: {json.dumps(self.token)}\n}}\n"
                f"jetstream {{\n  store_dir: {store}\n}}\n")
        _write_private(path, text)
        return path

    def _command(self) -> tuple[list[str], dict[str, str]]:
        # the client port is chosen once and kept (clients reconnect to the same URL)
        client, _ = persisted_ports(os.path.join(self.data_dir, "ports.json"),
                                    ("client", "monitor"), self.what)
        self.ports = (client, self.monitor_port)
        self.url = f"nats://127.0.0.1:{client}"
        return ([self._binary, "-c", self._write_config(client, self.monitor_port)],
                {"PATH": os.environ.get("PATH", "")})

    def _health_url(self) -> str:  # only for the base class's default probe
        return f"nats://127.0.0.1:{self.ports[0]}"

    def _healthy(self, answer: Any) -> bool:
        return False

    def _probe(self) -> Deferred[bool]:
        """Healthy once JetStream answers an account-info request on the client port."""
        probe = _JetStreamProbe(self.token)
        endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.ports[0], timeout=1)
        d = connectProtocol(endpoint, probe)
        d.addCallback(lambda _: probe.answered)
        d.addTimeout(1.0, self.reactor)
        d.addErrback(lambda _: False)

        def close(result: bool) -> bool:
            if probe.transport is not None:
                probe.transport.abortConnection()
            return result
        return d.addCallback(close)


class _JetStreamProbe(Protocol):
    """One NATS client exchange: CONNECT with the token, ask $JS.API.INFO, and fire
    ``answered`` with whether an account-info answer without an error came back."""

    transport: IStreamTransport  # connected before connectionMade

    def __init__(self, token: str) -> None:
        self.token = token
        self.buffer = b""
        self.answered: Deferred[bool] = Deferred()

    def connectionMade(self) -> None:
        connect = json.dumps({"verbose": False, "pedantic": False, "auth_token": self.token,
                              "name": "faastwist-health"})
        self.transport.write(f"CONNECT {connect}\r\nSUB _INBOX.health 1\r\n"
                             f"PUB $JS.API.INFO _INBOX.health 0\r\n\r\n".encode())

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > 65536:
            self._done(False)
            return
        while b"\r\n" in self.buffer and not self.answered.called:
            line, _, rest = self.buffer.partition(b"\r\n")
            if line.startswith(b"MSG "):
                size = int(line.rsplit(b" ", 1)[1])
                if len(rest) < size + 2:
                    return  # the payload is not all here yet
                payload = rest[:size]
                self._done(b"account_info_response" in payload and b'"error"' not in payload)
                return
            if line.startswith(b"-ERR"):
                self._done(False)
                return
            if line == b"PING":
                self.transport.write(b"PONG\r\n")
            self.buffer = rest

    def connectionLost(self, reason: Any = None) -> None:
        self._done(False)

    def _done(self, healthy: bool) -> None:
        if not self.answered.called:
            self.answered.callback(healthy)


def _write_private(path: str, text: str) -> None:
    """Write ``text`` to ``path`` readable by the owner only (also when it existed)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(text)
