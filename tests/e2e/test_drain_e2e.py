"""SIGTERM drains a real node: /readyz 503 for httpServer.drainDelay while the gate still
serves, then the listener closes; what was received is answered; idle keep-alive
connections get Connection: close on their next answer, or are closed after the drain.
Over the lean transport (plain HTTP), twisted.web (HTTPS) and gate worker processes."""

from __future__ import annotations

import http.client
import os
import signal
import ssl
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.node import FaasNodeProcess, http as call
from tests.support.tls import self_signed

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else "python3"
DRAIN = 2.0

SLEEPY = textwrap.dedent('''
    import os, time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            if self.path.startswith("/sleep/"):
                time.sleep(int(self.path.rsplit("/", 1)[1]) / 1000)
            body = b"slept " + self.path.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
''')


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout}s")
        time.sleep(0.05)


class Client:
    """One keep-alive connection to the gate (http.client), TLS or not."""

    def __init__(self, node: FaasNodeProcess, tls: bool) -> None:
        if tls:
            self.conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                "127.0.0.1", node.gate_port, timeout=15,
                context=ssl._create_unverified_context())
        else:
            self.conn = http.client.HTTPConnection("127.0.0.1", node.gate_port, timeout=15)

    def get(self, path: str) -> tuple[int, str | None, bytes]:
        self.conn.request("GET", path)
        response = self.conn.getresponse()
        return response.status, response.getheader("Connection"), response.read()

    def closed_by_server(self) -> bool:
        """The server ended this idle connection (EOF or reset)."""
        sock = self.conn.sock
        assert sock is not None, "the client closed it itself"
        sock.settimeout(15)
        try:
            return sock.recv(1) == b""
        except (ConnectionResetError, ssl.SSLError):
            return True


@pytest.mark.parametrize("transport", ["lean", "tls", "workers"])
def test_sigterm_drains_before_the_listener_closes(tmp_path: Path, transport: str) -> None:
    """``workers``: two gate worker processes (lean) serve the port; the node tells
    them when the drain begins."""
    tls = transport == "tls"   # the lean transport behind TLS (gate/tls.py)
    http_server: dict[str, Any] = {"drainDelay": f"{DRAIN:g}s"}
    if transport == "workers":
        http_server["workers"] = 2
    if tls:
        cert, key = self_signed(tmp_path / "certs")
        http_server.update({"https": True, "certFile": cert, "keyFile": key})
    workdir = tmp_path / "node"
    script = workdir / "fn" / f"sleepy-{os.getpid()}-{id(tmp_path):x}.py"
    script.parent.mkdir(parents=True)
    script.write_text(SLEEPY)
    node = FaasNodeProcess(workdir, provider="process",
                           extra={"httpServer": http_server}).start()
    try:
        spec = yaml.safe_dump({"name": "sleepy", "command": [PYTHON, str(script)],
                               "readinessPath": "/", "minReplica": 1})
        assert node.json("POST", "", spec)[0] == 201
        used, idle, late = Client(node, tls), Client(node, tls), Client(node, tls)

        def serves() -> bool:
            try:
                return used.get("/function/sleepy/x")[0] == 200
            except (OSError, http.client.HTTPException) as exc:
                print(f"not served yet: {exc!r}")
                used.conn.close()
                return False
        wait_for(serves, 60, "sleepy served")
        for client in (idle, late):
            status, connection, _ = client.get("/function/sleepy/warm")
            assert status == 200 and connection != "close"  # kept alive

        # a request received before the SIGTERM, still running when it comes
        slow: list[tuple[int, str | None, bytes]] = []
        slow_client = Client(node, tls)
        worker = threading.Thread(target=lambda: slow.append(
            slow_client.get("/function/sleepy/sleep/1500")))
        worker.start()
        time.sleep(0.3)  # the request is at the function (it sleeps 1.5 s)

        signalled = time.monotonic()
        node.process.send_signal(signal.SIGTERM)

        def readyz_503() -> bool:
            return call("GET", f"{node.admin_root}/readyz", timeout=5)[0] == 503
        wait_for(readyz_503, 5, "readyz 503")
        not_ready = time.monotonic() - signalled
        # the delay: new connections are served, each answer closing its connection
        fresh = Client(node, tls)
        status, connection, body = fresh.get("/function/sleepy/new")
        assert (status, connection, body) == (200, "close", b"slept /new")
        # an idle keep-alive connection used now: answered, with Connection: close
        status, connection, body = late.get("/function/sleepy/late")
        assert (status, connection, body) == (200, "close", b"slept /late")

        # the listener closes drainDelay after readyz said 503, not before
        cut: list[str] = []

        def refused() -> bool:
            try:
                status = Client(node, tls).get("/function/sleepy/probe")[0]
            except ConnectionRefusedError:
                return True
            except (OSError, http.client.HTTPException) as exc:
                # accepted in the last moment before the listener closed, and closed
                # with the connections left once nothing was in flight: not served,
                # not refused either; the next probe tells
                cut.append(type(exc).__name__)
                return False
            assert status == 200, status  # served until the listener closes
            return False
        wait_for(refused, DRAIN + 10, "the gate's listener closed")
        closed = time.monotonic() - signalled
        worker.join(15)
        assert slow == [(200, "close", b"slept /sleep/1500")]
        # the connection left idle is closed by the node once the drain is over
        assert idle.closed_by_server()
        code = node.process.wait(30)
        print(f"{transport}: SIGTERM -> /readyz 503 after {not_ready:.2f}s, listener closed "
              f"after {closed:.2f}s (drainDelay {DRAIN:g}s), exit {code}; probes cut at "
              f"the close: {cut}")
        assert not_ready < 1.0
        assert closed - not_ready >= DRAIN - 0.1, (not_ready, closed)
        assert code in (0, -signal.SIGTERM), node.log()
    finally:
        node.stop()
