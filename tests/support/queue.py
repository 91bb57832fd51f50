"""A node's queue on one Clock: the in-memory gate (tests/support/gate.MemoryGate), the
QueueService over the in-memory JetStream (faastwist.testing.jetstream, held to the real
server by tests/queue/test_jetstream_contract.py) and a callback receiver that records
what the worker asks it to send. No thread, no socket: every test drives time."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred

from faastwist.config import QueueConfig
from faastwist.gate.asynccall import QueuedCall
from faastwist.model.fsm import FunctionStatus, State
from faastwist.queue.messages import Outcome
from faastwist.queue.policy import CallbackRefused
from faastwist.queue.service import QueueService
from faastwist.testing.jetstream import FakeBridge, FakeNats, ThreadlessClock, run_for, settle
from tests.support.gate import MemoryGate, function


class Receiver:
    """The worker's CallbackSender for Clock tests: records each send and answers
    ``status`` (or refuses, when ``refuse`` is set)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str, Outcome, bytes]] = []
        self.status = 200
        self.refuse: str | None = None

    async def send(self, url: str, call_id: str, function: str, outcome: Outcome,
                   body: bytes) -> int:
        self.sent.append((url, call_id, function, outcome, body))
        if self.refuse:
            raise CallbackRefused(self.refuse)
        return self.status

    def close(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        d.callback(None)
        return d


class QueueNode:
    def __init__(self, server: FakeNats | None = None, gate: MemoryGate | None = None,
                 **config: Any) -> None:
        self.gate = gate or MemoryGate(clock=ThreadlessClock())
        self.clock = self.gate.clock
        self.server = server or FakeNats(self.clock)
        settings = dict(nats_urls=("nats://fake",), timeout=1.0, ack_wait=3.0)
        settings.update(config)
        self.config = QueueConfig(**settings)
        self.bridge = FakeBridge(self.clock, self.config.timeout)
        self.queue = QueueService(self.config, "ctl", self.clock, self.gate.metrics,
                                  self.gate.routes, {2381}, bridge=self.bridge,
                                  jetstream=self.server.client)
        self.receiver = Receiver()
        self.queue.sender = self.receiver  # type: ignore[assignment]

    # -- set-up
    def start(self, attach: bool = True) -> "QueueNode":
        self.wait(ensureDeferred(self.queue.start()))
        if attach:
            self.queue.attach(self.gate.context)
            self.worker = self.queue.worker
            self.settle()
        return self

    def add(self, name: str, state: State = State.ACTIVE, **fields: Any) -> None:
        self.gate.add(function(name, **fields), state)
        self.settle()

    def set_state(self, name: str, state: State) -> None:
        record = self.wait(self.gate.store.get(name))
        self.wait(self.gate.store.update(record, status=FunctionStatus(name, state)))

    def delete(self, name: str) -> None:
        self.wait(self.gate.store.delete(self.wait(self.gate.store.get(name))))

    # -- time
    def settle(self) -> None:
        settle(self.clock)

    def run_for(self, seconds: float) -> None:
        run_for(self.clock, seconds)

    def wait(self, d: Deferred[Any], horizon: float = 10.0) -> Any:
        """Drive the clock until ``d`` fires; its result (or its exception, raised)."""
        results: list[Any] = []
        d.addBoth(results.append)
        self.settle()
        end = self.clock.seconds() + horizon
        while not results and self.clock.seconds() < end:
            self.clock.advance(0.05)
            self.settle()
        assert results, "did not finish on the clock"
        result = results[0]
        if hasattr(result, "raiseException"):
            result.raiseException()
        return result

    # -- calls
    def call(self, call_id: str, fn: str = "fn", target: str = "/", body: bytes = b"hello",
             callback: str | None = None, enqueued: float | None = None) -> QueuedCall:
        return QueuedCall(function=fn, call_id=call_id, method="POST", target=target,
                          headers=(("content-type", "text/plain"),), client_ip="10.0.0.9",
                          body=body, callback=callback,
                          enqueued=self.clock.seconds() if enqueued is None else enqueued)

    def submit(self, *args: Any, **kwargs: Any) -> int:
        return self.wait(self.queue.submit(self.call(*args, **kwargs)))

    def status(self, fn: str, call_id: str) -> dict[str, Any] | None:
        return self.wait(ensureDeferred(self.queue.status(fn, call_id)))

    def record(self, fn: str, call_id: str) -> dict[str, Any] | None:
        """The status record as stored (no fallback to the streams)."""
        return self.wait(self.bridge.call(self.queue.js.get_status, fn, call_id))

    def subjects(self, stream: str) -> list[str]:
        return self.server.subjects(getattr(self.queue.names, stream))

    def stored(self, stream: str) -> list[Any]:
        return [m for _, m in sorted(self.server.stream(
            getattr(self.queue.names, stream)).messages.items())]

    def journal(self, *operations: str) -> list[tuple[str, str]]:
        return [entry for entry in self.server.journal if entry[0] in operations]
