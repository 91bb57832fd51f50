"""The gate's sockets against a function that writes its head and body in two sends.

Python's unbuffered ``http.server`` (Nagle on, its default) holds the body until the
head is ACKed; with the gate's delayed ACK that was a 40 ms stall per request. The gate
sets TCP_NODELAY on both of its sockets and ACKs at once after a read that left a
message incomplete (TCP_QUICKACK). These tests check the options on the real sockets
and that the quick ACKs happen; the latency itself is measured by
``bench/gate.py --only two-write`` (a timed test would be flaky on a shared machine).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

from faastwist.config import KnativeConfig
from faastwist.gate.routes import RouteTable
from faastwist.gate.service import GateService
from faastwist.gate.wire import TCP_QUICKACK
from faastwist.metrics import Metrics
from faastwist.model.fsm import FunctionStatus, State
from faastwist.model.spec import FunctionSpec
from faastwist.providers.kourier import KnativeRouting
from faastwist.store.memory import MemoryStore

from tests.gate.test_gate_integration import RawClient
from tests.support.gate import gate_config

pytestmark = pytest.mark.slow
HERE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "support")


@pytest.fixture(params=["two", "one"])
def function_server(request: Any) -> Any:
    process = subprocess.Popen([sys.executable, os.path.join(HERE, "twowrite.py"),
                                request.param], stdout=subprocess.PIPE)
    assert process.stdout is not None
    port = int(process.stdout.readline())
    yield request.param, port
    process.terminate()
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(params=["lean", "web"])
def gate(request: Any, function_server: tuple[str, int]) -> Any:
    store = MemoryStore()
    store.create(FunctionSpec(name="demo10", image="x"), FunctionStatus("demo10", State.ACTIVE))
    routes = RouteTable(store, reactor)
    routes.startService()
    service = GateService(gate_config(), routes, KnativeRouting(KnativeConfig(
        network_layer_url=f"http://127.0.0.1:{function_server[1]}")), reactor, Metrics(),
        access_log=False, transport=request.param)
    service.startService()
    yield service, function_server[0]
    pytest_twisted.blockon(service.stopService())
    routes.stopService()


def real_socket(transport: Any) -> socket.socket:
    """The socket under a transport and its wrappers (the connection limit's)."""
    while not isinstance(transport.getHandle(), socket.socket):
        transport = transport.transport
    return transport.getHandle()


def option(sock: socket.socket, name: int) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, name)


@pytest_twisted.ensureDeferred
async def test_both_sockets_have_nodelay_and_split_answers_are_acked_at_once(
        gate: tuple[GateService, str]) -> None:
    service, kind = gate
    client = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1",
                                                      service.address()[1]), RawClient())
    try:
        for i in range(5):
            # /gap/20: the function sleeps between head and body, so the gate surely
            # reads the head alone (with "one", the path is ignored: one send)
            status, headers, body = await client.request("/gap/20")
            assert (status, body) == (200, b"hello from demo10"), (i, status, body)
        pool = service.pool
        idle = [c for conns in pool._idle.values() for c in conns]
        assert len(idle) == 1 and pool.connects == 1      # one kept-alive upstream
        upstream_sock = idle[0].transport.socket
        assert option(upstream_sock, socket.TCP_NODELAY) == 1
        downstream = [c for c in service.limit.open if hasattr(c, "transport")]
        assert len(downstream) == 1
        assert option(real_socket(downstream[0].transport), socket.TCP_NODELAY) == 1
        if TCP_QUICKACK is None:
            pytest.fail("not Linux: no TCP_QUICKACK (the delayed-ACK fix needs it)")
        if kind == "two":
            # every response came in two reads: the head's read was ACKed at once
            assert pool.quick_acks >= 5
        else:
            assert pool.quick_acks == 0   # one read per response: no extra system call
    finally:
        client.transport.loseConnection()
        await client.closed()
