"""The queue against a real nats-server: the embedded supervisor, storing calls, the
status lookups, and refusing (never losing) calls while NATS is away."""

from __future__ import annotations

import json
import os
import signal

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from faastwist.config import QueueConfig
from faastwist.gate.asynccall import QueuedCall, QueueUnavailable
from faastwist.metrics import Metrics
from faastwist.queue.embedded import EmbeddedNats
from faastwist.queue.service import QueueService

pytestmark = pytest.mark.nats


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(") ", 1)[1][:1] != "Z"


async def wait_for(predicate, timeout: float = 15.0) -> None:
    deadline = reactor.seconds() + timeout
    while not predicate():
        assert reactor.seconds() < deadline, "condition not met in time"
        await deferLater(reactor, 0.05, lambda: None)


class NoRoutes:
    def names(self) -> list[str]:
        return []

    def lookup(self, name: str) -> None:
        return None


def call(call_id: str, function: str = "fn") -> QueuedCall:
    return QueuedCall(function=function, call_id=call_id, method="POST", target="/x?y=1",
                      headers=(("content-type", "text/plain"), ("x-a", "b\u00e9")),
                      client_ip="10.0.0.9", body=b"body \x00\xff", callback=None,
                      enqueued=1700000000.25)


@pytest_twisted.ensureDeferred
async def test_embedded_server_restarts_on_the_same_url_and_stops(tmp_path) -> None:
    server = EmbeddedNats(reactor, str(tmp_path / "nats"), 2**20)
    server.startService()
    try:
        url = await server.ready()
        assert url.startswith("nats://127.0.0.1:")
        first = server.pid
        os.kill(first, signal.SIGKILL)
        await wait_for(lambda: server.pid not in (None, first) and server.healthy)
        assert await server.ready() == url  # same port: clients reconnect to it
        assert server.restarts == 1
    finally:
        pid = server.pid
        await server.stopService()
    assert pid is not None and not alive(pid)


def listening_ports(pid: int) -> set[int]:
    """TCP ports in LISTEN state owned by process ``pid`` (from /proc)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


@pytest_twisted.ensureDeferred
async def test_embedded_monitoring_port_is_off_unless_configured(tmp_path) -> None:
    """Functions share the node's loopback: by default the embedded server listens on
    its client port only (health is asked over the client protocol, with the token);
    queue.monitorPort opens the monitoring endpoint on loopback."""
    from faastwist.util.ports import free_port

    server = EmbeddedNats(reactor, str(tmp_path / "off"), 2**20)
    server.startService()
    try:
        url = await server.ready()
        assert listening_ports(server.pid) == {int(url.rsplit(":", 1)[1])}
        assert "http" not in (tmp_path / "off" / "nats.conf").read_text()
    finally:
        await server.stopService()
    monitor = free_port()
    server = EmbeddedNats(reactor, str(tmp_path / "on"), 2**20, monitor_port=monitor)
    server.startService()
    try:
        url = await server.ready()
        assert listening_ports(server.pid) == {int(url.rsplit(":", 1)[1]), monitor}
        assert server.ports == (int(url.rsplit(":", 1)[1]), monitor)
    finally:
        await server.stopService()


@pytest_twisted.ensureDeferred
async def test_embedded_health_needs_jetstream_and_the_token(tmp_path) -> None:
    """The health probe is a real JetStream request: with a wrong token it fails."""
    server = EmbeddedNats(reactor, str(tmp_path / "nats"), 2**20)
    server.startService()
    try:
        await server.ready()
        assert await server._probe() is True
        (tmp_path / "nats" / "client.token").write_text("wrong\n")
        assert await server._probe() is False
    finally:
        await server.stopService()


@pytest_twisted.ensureDeferred
async def test_embedded_server_refuses_clients_without_its_token(tmp_path) -> None:
    """A function process shares the node's loopback: without the token it can neither
    publish calls nor read (and acknowledge away) the queued ones."""
    import socket
    import stat

    data = tmp_path / "nats"
    server = EmbeddedNats(reactor, str(data), 2**20)
    server.startService()
    try:
        url = await server.ready()
        port = int(url.rsplit(":", 1)[1])

        def session(connect: dict) -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                info = s.recv(4096)
                assert info.startswith(b"INFO ") and b'"auth_required":true' in info
                s.sendall(b"CONNECT " + json.dumps(connect).encode() + b"\r\nPING\r\n")
                answer = b""
                while b"\r\n" not in answer:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    answer += chunk
                return answer

        assert b"Authorization Violation" in session({"verbose": False})
        assert b"Authorization Violation" in session({"verbose": False, "auth_token": "x"})
        assert session({"verbose": False, "auth_token": server.token}).startswith(b"PONG")
        for name in ("client.token", "nats.conf"):
            assert stat.S_IMODE(os.stat(data / name).st_mode) == 0o600, name
        assert server.token not in open(f"/proc/{server.pid}/cmdline").read()
    finally:
        await server.stopService()


@pytest_twisted.ensureDeferred
async def test_submit_status_and_refusal_while_nats_is_away(nats_server) -> None:
    config = QueueConfig(nats_urls=(nats_server.url,), timeout=1.0)
    queue = QueueService(config, "ctl", reactor, Metrics(), NoRoutes(), {2381})
    await queue.start()
    try:
        await queue.submit(call("c1"))
        record = await queue.status("fn", "c1")
        assert record["state"] == "queued" and record["callId"] == "c1"
        assert await queue.status("other", "c1") is None
        assert await queue.status("fn", "nope") is None
        # the same call id again within the duplicate window: stored once
        await queue.submit(call("c1"))
        waiting = await queue.bridge.call(queue.js.list_messages, queue.names.calls,
                                          queue.names.call_subject("fn"), 10)
        assert [m.subject for m in waiting] == ["faas.ctl.call.fn.c1"]
        from faastwist.queue.messages import read_call
        assert read_call(waiting[0].headers, waiting[0].data) == call("c1")
        # a callback to the node's own admin port, or to metadata, is refused up front
        with pytest.raises(ValueError, match="admin"):
            queue.check_callback("http://127.0.0.1:2381/x")
        with pytest.raises(ValueError, match="metadata"):
            queue.check_callback("http://169.254.169.254/latest")
        queue.check_callback("http://example.com/hook")  # names: checked when sent
        nats_server.kill()
        await wait_for(lambda: not queue.js.connected)
        with pytest.raises(QueueUnavailable):
            await queue.submit(call("c2"))
        nats_server.start()
        await wait_for(lambda: queue.js.connected, timeout=20)
        await queue.submit(call("c3"))
        assert (await queue.status("fn", "c3"))["state"] == "queued"
        assert (await queue.status("fn", "c1"))["state"] == "queued"  # survived the kill
    finally:
        await queue.stop()


@pytest_twisted.ensureDeferred
async def test_queue_max_bytes_is_a_stream_limit_and_a_full_queue_is_507(nats_server) -> None:
    """queue.maxBytes is enforced by JetStream itself (discard new on the calls and
    callbacks, discard old on the dead letters), set on existing streams too; a call
    the full stream refuses is a QueueFull 507, never a 202 and never a dropped call."""
    from faastwist.gate.asynccall import QueueFull
    from faastwist.queue.jetstream import Names

    names = Names("ctl")
    queue = None

    async def old_stream() -> tuple[int, str]:
        """The calls stream as an older version made it: no limits."""
        import nats
        from nats.js import api

        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        await js.add_stream(name=names.calls, subjects=[names.call_subject("*")],
                            retention=api.RetentionPolicy.WORK_QUEUE)
        config = (await js.stream_info(names.calls)).config
        await nc.close()
        return config.max_bytes, api.DiscardPolicy(config.discard).value

    try:
        bridge_owner = QueueService(QueueConfig(nats_urls=(nats_server.url,)), "ctl",
                                    reactor, Metrics(), NoRoutes(), set())
        bridge_owner.bridge.startService()
        assert await bridge_owner.bridge.call(old_stream) == (-1, "old")
        await bridge_owner.bridge.stopService()

        mib = 2**20
        config = QueueConfig(nats_urls=(nats_server.url,), timeout=2.0, max_bytes=3 * mib,
                             max_body_size=mib)
        queue = QueueService(config, "ctl", reactor, Metrics(), NoRoutes(), set())
        await queue.start()
        js = queue.js
        assert await queue.bridge.call(js.stream_limits, names.calls) == (3 * mib, "new")
        assert await queue.bridge.call(js.stream_limits, names.callbacks) == (3 * mib, "new")
        assert await queue.bridge.call(js.stream_limits, names.dead) == (3 * mib, "old")
        body = b"x" * (mib - 4096)
        stored = []
        for i in range(3):
            stored.append(await queue.submit(attrs_evolve(call(f"big{i}"), body=body)))
        with pytest.raises(QueueFull) as refused:
            await queue.submit(attrs_evolve(call("big3"), body=body))
        assert (refused.value.code, refused.value.retry_after) == (507, 30)
        assert "queue.maxBytes" in refused.value.message
        waiting = await queue.bridge.call(js.list_messages, names.calls,
                                          names.call_subject("fn"), 10)
        assert [m.subject.rsplit(".", 1)[1] for m in waiting] == ["big0", "big1", "big2"]
        assert queue.metrics.async_refused.labels("fn", "queue-full")._value.get() == 1
    finally:
        if queue is not None:
            await queue.stop()


def attrs_evolve(value, **changes):
    import attrs

    return attrs.evolve(value, **changes)
