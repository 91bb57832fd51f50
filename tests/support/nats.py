"""A real nats-server with JetStream for tests, on free loopback ports.

    # the fixture is registered for every module in tests/conftest.py

    @pytest.mark.nats
    def test_something(nats_server):
        nats_server.url      # nats://127.0.0.1:<port>

``nats_server`` is function-scoped (a fresh store per test: JetStream state would
leak otherwise); ``NatsProcess`` can be stopped, killed and restarted with the same
port and store. Tests skip when no nats-server binary is installed. Every process is
stopped by pid at teardown.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from typing import Iterator

import pytest

from faastwist.queue.embedded import find_nats_binary
from faastwist.util.ports import free_port


class NatsProcess:
    def __init__(self, data_dir: str) -> None:
        binary = find_nats_binary()
        if binary is None:  # the nats tests are deselected then (tests/conftest.py)
            pytest.fail("no nats-server binary, and this test is not marked nats, the "
                        "marker that deselects it then")
        self.binary = binary
        self.data_dir = str(data_dir)
        os.makedirs(self.data_dir, exist_ok=True)
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.log_path = os.path.join(self.data_dir, "nats.log")
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 10.0) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [self.binary, "-js", "-sd", os.path.join(self.data_dir, "js"),
                 "-a", "127.0.0.1", "-p", str(self.port), "-n", "test"],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nats-server exited; see {self.log_path}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"nats-server did not listen within {timeout}s")

    def kill(self) -> None:
        """SIGKILL (a crash): the store keeps what was acknowledged."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self.process = None


@pytest.fixture
def nats_server(tmp_path) -> Iterator[NatsProcess]:
    server = NatsProcess(str(tmp_path / "nats"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
