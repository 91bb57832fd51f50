"""A whole node in the test's own process: ``FaasNode`` on the reactor pytest-twisted runs.

Usage (in a ``pytest_twisted.ensureDeferred`` test)::

    node = InProcessNode(tmp_path, store="memory", provider="fake")   # no etcd at all
    node = InProcessNode(tmp_path, etcd_endpoints=[etcd_server.client_url],
                         provider="process")                           # the test etcd
    await node.start()        # fires once the node is ready (its gate serves)
    status, body = await node.json("POST", "", spec)
    status, headers, data = await node.request("POST", f"{node.gate_url}/", b"hi",
                                               {"X-FaaS-Func-Name": "echo"})
    await node.stop()

It is the node ``twistd faasgate`` builds (store, provider, reconciler, admin API,
gate), minus what only a process has (signals, twistd's logging, the PID file): the
admin and gate listen on 127.0.0.1 with ports from the OS (port 0). With
``store="etcd"`` the store is an ``EtcdStore`` on the test etcd under a prefix of the
test's own (no embedded etcd to start per test). With ``store="memory"`` the node is
built from ``NodeParts.in_memory``: a ``MemoryStore`` (``node.store``), the
``AlwaysLeader`` (it leads while it runs; its fence holds for its term), a one-node
``MemorySession`` holding this node's reports, and ``MemorySecrets`` sealed with the key
file's Fernet box on the store; each is held to its etcd counterpart by a contract suite
(tests/store/test_leader_contract.py, tests/cluster/test_memsession.py,
tests/store/test_secrets_contract.py). Gate workers (``httpServer.workers`` > 1) need
etcd: a memory node refuses them. ``provider="fake"`` is a ``FakeProvider``
(``node.fake``) in a node configured for knative; ``parts`` can put in a provider of the
test's. The async queue is off unless the test turns it on (it starts a nats-server).

Measured (2 cores, load average 2.6-2.8): tests/node/test_node_inprocess.py's five node
tests took 1.35-1.48 s in all on a memory node and 3.15-3.52 s on the etcd node (three
runs each; the create/stop/delete walk 1.1 s against 1.9 s, most of it the reconciler's
1 s sync; the read-your-writes rounds 0.09 s against 0.65 s).

Earlier, measured (2 cores, load average 9-10 from other work): the Easegress tour on Knative took
7.6 s as a twistd node and 4.1 s in-process; the read-your-writes rounds (100 API
writes each followed by polling and an invocation) took longer in-process (lean 27 s ->
42-75 s), because the test's client and the node then share one reactor thread: tests
dominated by sustained traffic stay with a node process.

Tests that prove process-level behaviour (signals, twistd, a second node on the same
folders, the sandbox, gate worker processes) keep ``tests.support.node.FaasNodeProcess``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import treq
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred

from faastwist.config import ControllerConfig
from faastwist.node import FaasNode, NodeParts
from faastwist.providers.registry import ProviderParts
from faastwist.store.memory import MemoryStore
from faastwist.testing.provider import FakeProvider
from tests.support.etcd import unique_prefix
from tests.support.node import write_tokens_file


class InProcessNode:
    def __init__(self, workdir: Path, *, etcd_endpoints: list[str] | None = None,
                 store: str = "etcd", provider: str = "process",
                 controller: str = "faascontroller", extra: dict[str, Any] | None = None,
                 parts: NodeParts = NodeParts(), reactor: Any = None) -> None:
        """``store``: "etcd" (the test etcd at ``etcd_endpoints``) or "memory" (a
        ``MemoryStore``, ``self.store``, with the memory leader, session and secrets:
        ``NodeParts.in_memory``). ``provider``: a provider name from the registry, or
        "fake": a ``FakeProvider`` (``self.fake``) in a node configured for knative."""
        self.fake: FakeProvider | None = None
        if provider == "fake":
            self.fake = FakeProvider()
            provider = "knative"
            parts = attrs.evolve(parts, provider=ProviderParts(self.fake))
        self.store: MemoryStore | None = None
        if store == "memory":
            self.store = MemoryStore(controller)
            parts = NodeParts.in_memory(self.store, parts.provider)
        elif store != "etcd" or not etcd_endpoints:
            raise ValueError(f"store: etcd (with etcd_endpoints) or memory, not {store!r}")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.controller = controller
        self.reactor = reactor if reactor is not None else global_reactor
        data: dict[str, Any] = {
            "name": controller, "provider": provider, "syncInterval": "1s",
            "httpServer": {"address": "127.0.0.1", "drainDelay": "0s"},
            "admin": {"address": "127.0.0.1"},
            "etcd": {"endpoints": list(etcd_endpoints or ()), "prefix": unique_prefix("node")},
            "process": {"dataDir": str(self.workdir / "data")},
            "queue": {"enabled": False},
        }
        for key, value in (extra or {}).items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key].update(value)
            else:
                data[key] = value
        tokens = self.workdir / "admin-tokens"
        data["admin"].setdefault("auth", {})["tokensFile"] = str(tokens)
        self.token = write_tokens_file(tokens)
        config = ControllerConfig.from_dict(data, self.workdir)
        # ports from the OS: the config file cannot say 0 (the node reads what it got)
        self.config = attrs.evolve(
            config, http_server=attrs.evolve(config.http_server, port=0),
            admin=attrs.evolve(config.admin, port=0))
        self.parts = parts
        self.fatal: list[str] = []
        self.node: FaasNode | None = None

    async def start(self) -> "InProcessNode":
        self.node = FaasNode(self.config, self.reactor, self.fatal.append, self.parts)
        self.node.startService()
        await self.node.ready
        return self

    async def stop(self) -> None:
        if self.node is not None and self.node.running:
            await self.node.stopService()

    # -- where it listens ------------------------------------------------------------------
    @property
    def admin_port(self) -> int:
        assert self.node is not None
        return int(self.node.admin_port.getHost().port)

    @property
    def gate_port(self) -> int:
        assert self.node is not None and self.node.gate is not None
        return int(self.node.gate.address()[1])

    @property
    def admin_root(self) -> str:
        return f"{self.config.admin.scheme}://127.0.0.1:{self.admin_port}"

    @property
    def admin_url(self) -> str:
        return f"{self.admin_root}/apis/v2/faas/{self.controller}"

    @property
    def gate_url(self) -> str:
        scheme = "https" if self.config.http_server.https else "http"
        return f"{scheme}://127.0.0.1:{self.gate_port}"

    # -- HTTP ----------------------------------------------------------------------------
    async def request(self, method: str, url: str, body: bytes | str | None = None,
                      headers: dict[str, str] | None = None,
                      auth: bool = True) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body); the admin token goes to this node's admin port."""
        sent = dict(headers or {})
        if (auth and url.startswith(self.admin_root)
                and not any(k.lower() == "authorization" for k in sent)):
            sent["Authorization"] = f"Bearer {self.token}"
        data = body.encode() if isinstance(body, str) else body
        response = await treq.request(method, url, data=data, headers=sent,
                                      persistent=False, reactor=self.reactor)
        content = await treq.content(response)
        flat = {name.decode(): values[-1].decode()
                for name, values in response.headers.getAllRawHeaders()}
        return response.code, flat, content

    async def json(self, method: str, path: str = "", body: str | None = None,
                   content_type: str = "application/yaml") -> tuple[int, Any]:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        status, _, data = await self.request(method, f"{self.admin_url}{path}", body, headers)
        return status, json.loads(data) if data else None

    async def state_of(self, name: str) -> str | None:
        status, body = await self.json("GET", f"/{name}")
        return body["status"]["state"] if status == 200 else None


def sleep(seconds: float, reactor: Any = None) -> Deferred[None]:
    from twisted.internet.task import deferLater

    return deferLater(reactor if reactor is not None else global_reactor, seconds,
                      lambda: None)


async def wait_for(predicate: Any, timeout: float = 30.0, what: str = "condition",
                   reactor: Any = None) -> Any:
    """Poll an async (or plain) predicate until it is true; AssertionError after timeout."""
    clock = reactor if reactor is not None else global_reactor
    deadline = clock.seconds() + timeout
    while True:
        value = predicate()
        if isinstance(value, Deferred) or hasattr(value, "__await__"):
            value = await value
        if value:
            return value
        if clock.seconds() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await sleep(0.05, clock)


__all__ = ["InProcessNode", "sleep", "wait_for"]
