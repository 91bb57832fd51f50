"""A local ``nats-server`` with JetStream, for nodes whose ``queue.natsURLs`` is empty.

Supervised as the embedded etcd is (faastwist.util.supervised): loopback only, ports
chosen once and kept in the data folder (a restart serves the same URL, and clients
reconnect to it), restarted with backoff when it dies, SIGTERM then SIGKILL at stop, and
a parent-death signal so a SIGKILLed node leaves no server behind. Its JetStream storage
is under the data folder (so queued calls survive a restart of the server or of the
node). The server is configured by a file (the command line has no max_payload) and is
healthy when its monitoring endpoint's ``/healthz`` says ok.

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
                 stop_grace: float = 10.0, max_backoff: float = 10.0) -> None:
        super().__init__(reactor, data_dir, "nats.log", startup_timeout=startup_timeout,
                         stop_grace=stop_grace, max_backoff=max_backoff)
        self.max_payload = max(max_payload + HEAD_ROOM, 1024 * 1024)
        self.binary = binary
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
        text = (f"server_name: faastwist\nhost: 127.0.0.1\nport: {client}\n"
                f"http: \"127.0.0.1:{monitor}\"\nmax_payload: {self.max_payload}\n"
                f"authorization {{\n  token: {json.dumps(self.token)}\n}}\n"
                f"jetstream {{\n  store_dir: {store}\n}}\n")
        _write_private(path, text)
        return path

    def _command(self) -> tuple[list[str], dict[str, str]]:
        client, monitor = self.ports = persisted_ports(
            os.path.join(self.data_dir, "ports.json"), ("client", "monitor"), self.what)
        self.url = f"nats://127.0.0.1:{client}"
        return ([self._binary, "-c", self._write_config(client, monitor)],
                {"PATH": os.environ.get("PATH", "")})

    def _health_url(self) -> str:
        return f"http://127.0.0.1:{self.ports[1]}/healthz?js-enabled=true"

    def _healthy(self, answer: Any) -> bool:
        return answer.get("status") == "ok"


def _write_private(path: str, text: str) -> None:
    """Write ``text`` to ``path`` readable by the owner only (also when it existed)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(text)
