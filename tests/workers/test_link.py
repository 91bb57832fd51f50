"""A worker's leases and queued calls through the main process, over the control channel.

The main side is a ``WorkerLink`` in front of the process provider's real per-function
accounting (``HttpRuntime`` with the tests' FakeReplicas, driven by ``task.Clock``);
the worker side is ``RemoteProvider``/``RemoteQueue`` on a ``Calls``. The two are joined
in memory, so every exchange of messages is explicit (``pump``).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import succeed
from twisted.internet.task import Clock

from faastwist.gate.asynccall import QueuedCall, QueueFull, QueueUnavailable
from faastwist.gate.decisions import RETRY_AFTER_NOT_ACTIVE
from faastwist.gate.routes import Route
from faastwist.metrics import Metrics
from faastwist.model.fsm import FunctionStatus, State
from faastwist.providers.base import NoCapacity
from faastwist.providers.runtime import HttpRuntime
from faastwist.queue.policy import CallbackRules
from faastwist.workers.channel import Calls, Channel
from faastwist.workers.link import WorkerLink
from faastwist.workers.remote import RemoteProvider, RemoteQueue
from tests.support.pipe import Pipe
from tests.support.process import FakeFactory, fast_tuning, function_spec


class Routes:
    """The main's route table as the link reads it (one dict lookup)."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}

    def add(self, spec: Any, state: State = State.ACTIVE) -> None:
        self.routes[spec.name] = Route(spec, FunctionStatus(name=spec.name, state=state))

    def lookup(self, name: str) -> Route | None:
        return self.routes.get(name)


class Runtimes:
    """The process provider's ``acquire``: each function's HttpRuntime."""

    def __init__(self) -> None:
        self.runtimes: dict[str, HttpRuntime] = {}

    def acquire(self, spec: Any) -> Any:
        return self.runtimes[spec.name].acquire()


class Recorded:
    """A queue that stores every call it is given (JetStream's part is tested elsewhere)."""

    def __init__(self) -> None:
        self.calls: list[QueuedCall] = []

    def submit(self, call: QueuedCall) -> Any:
        self.calls.append(call)
        return succeed(None)


class Node:
    """The main process's side: routes, one function's runtime, metrics, queue."""

    def __init__(self, **fields: Any) -> None:
        self.clock = Clock()
        self.factory = FakeFactory()
        self.spec = function_spec(**fields)
        self.runtime = HttpRuntime(self.spec, self.clock, fast_tuning(cold_start_timeout=20),
                                   self.factory, lambda name, n: None)
        self.runtime.deploy()
        self.routes = Routes()
        self.routes.add(self.spec)
        self.provider = Runtimes()
        self.provider.runtimes[self.spec.name] = self.runtime
        self.metrics = Metrics()
        self.queue: Any = None
        self.ready: list = []

    def worker(self, timeout: float = 30.0) -> "Worker":
        link = WorkerLink(0, self.routes, self.provider, self.metrics, lambda: self.queue,
                          self.ready.append, self.ready.append)
        return Worker(self, link, timeout)


class Worker:
    def __init__(self, node: Node, link: WorkerLink, timeout: float) -> None:
        self.link = link
        self.channel = Channel(self.received)
        self.calls = Calls(self.channel, node.clock)
        self.provider = RemoteProvider(self.calls, timeout)
        self.pipe = Pipe(self.channel, link.channel)

    def received(self, message: dict) -> None:
        if message["op"] == "reply":
            self.calls.answer(message)
        elif message["op"] == "lost":
            self.provider.lost(message)

    def acquire(self, node: Node, name: str | None = None) -> list:
        got: list = []
        spec = node.spec if name is None else function_spec(name=name)
        self.provider.acquire(spec).addBoth(got.append)
        self.pipe.pump()
        return got

    def close(self) -> None:
        self.pipe.close()
        self.calls.fail_all("closed")
        self.provider.channel_lost()


def test_a_cold_start_through_the_main_and_accounting_across_workers() -> None:
    node = Node()
    one, two = node.worker(), node.worker()
    first, second = one.acquire(node), two.acquire(node)
    assert first == [] and second == [] and len(node.factory.made) == 1  # one start
    node.factory.made[0].become_ready()
    one.pipe.pump()
    two.pipe.pump()
    assert first[0].upstream == second[0].upstream == node.factory.made[0].upstream
    assert node.runtime.inflight == 2  # both workers' requests, counted in one place
    first[0].release()
    first[0].release()  # idempotent
    one.pipe.pump()
    assert node.runtime.inflight == 1
    second[0].release()
    two.pipe.pump()
    assert node.runtime.inflight == 0 and one.link.leases == {} and two.link.leases == {}


def test_a_dead_worker_gives_back_its_leases_and_its_waiters() -> None:
    node = Node(autoScaleValue="100")
    worker = node.worker()
    waiting = worker.acquire(node)
    assert len(node.runtime.waiters) == 1
    worker.close()
    assert waiting[0].check(NoCapacity)  # the worker's request: 503 at once
    assert node.runtime.waiters == []  # the main's waiter is gone with it
    node.factory.made[0].become_ready()
    again = node.worker()
    held = [again.acquire(node)[0] for _ in range(3)]
    assert node.runtime.inflight == 3 and all(lease.upstream for lease in held)
    again.close()
    assert node.runtime.inflight == 0


def test_a_replica_dying_under_a_lease_ends_the_request_in_the_worker() -> None:
    node = Node()
    worker = node.worker()
    pending = worker.acquire(node)
    node.factory.made[0].become_ready()
    worker.pipe.pump()
    lease = pending[0]
    lost: list[str] = []
    lease.on_lost = lost.append
    node.factory.made[0].crash()
    worker.pipe.pump()
    assert len(lost) == 1 and lost[0]


def test_refusals_carry_retry_after() -> None:
    node = Node()
    worker = node.worker()
    unknown = worker.acquire(node, "ghost")
    assert unknown[0].check(NoCapacity) and unknown[0].value.retry_after == 1
    assert "not known" in unknown[0].getErrorMessage()
    node.routes.add(node.spec, State.INACTIVE)
    inactive = worker.acquire(node)
    assert inactive[0].value.retry_after == RETRY_AFTER_NOT_ACTIVE
    assert "not active (state: inactive)" in inactive[0].getErrorMessage()
    node.routes.add(node.spec)
    node.runtime.stopped = True  # the provider's own NoCapacity, passed on
    stopped = worker.acquire(node)
    assert stopped[0].check(NoCapacity) and "is stopped" in stopped[0].getErrorMessage()


def test_a_main_that_does_not_answer_times_out_the_worker_and_drops_the_waiter() -> None:
    node = Node(autoScaleValue="100")
    worker = node.worker(timeout=5.0)
    got = worker.acquire(node)
    node.clock.advance(5.0)
    worker.pipe.pump()
    assert got[0].check(NoCapacity) and got[0].value.retry_after == 1
    assert node.runtime.waiters == [] and worker.link.acquiring == {}


def test_queued_calls_are_stored_by_the_main_process() -> None:
    node = Node()
    worker = node.worker()
    queue = RemoteQueue(worker.calls, 1024, 5.0, CallbackRules(node_ports=frozenset({2381})))
    call = QueuedCall(function="fn", call_id="c-1", method="POST", target="/x?y=1",
                      headers=(("content-type", "application/octet-stream"),),
                      client_ip="127.0.0.1", body=bytes(range(256)), callback=None,
                      enqueued=12.5)
    refused: list = []
    queue.submit(call).addBoth(refused.append)
    worker.pipe.pump()
    assert refused[0].check(QueueUnavailable) and "not enabled" in refused[0].getErrorMessage()
    node.queue = Recorded()
    stored: list = []
    queue.submit(call).addBoth(stored.append)
    worker.pipe.pump()
    assert stored == [None] and node.queue.calls == [call]  # the body byte for byte
    worker.close()
    down: list = []
    queue.submit(call).addBoth(down.append)
    assert down[0].check(QueueUnavailable)


class Full:
    """A queue that refuses as a full one does."""

    def __init__(self, code: int, retry_after: int) -> None:
        self.code = code
        self.retry_after = retry_after

    def submit(self, call: QueuedCall) -> Any:
        from twisted.internet.defer import fail

        return fail(QueueFull(self.code, f"full {self.code}", self.retry_after))


def test_a_full_queue_is_429_or_507_in_the_worker_too() -> None:
    """A worker's call refused by maxQueued or maxBytes keeps its code and Retry-After
    across the channel (not a 503); a reply with another code stays a 503."""
    node = Node()
    worker = node.worker()
    queue = RemoteQueue(worker.calls, 1024, 5.0, CallbackRules())
    call = QueuedCall(function="fn", call_id="c-1", method="POST", target="/", headers=(),
                      client_ip="127.0.0.1", body=b"x", callback=None, enqueued=1.0)
    for code, retry_after in ((429, 1), (507, 30)):
        node.queue = Full(code, retry_after)
        got: list = []
        queue.submit(call).addBoth(got.append)
        worker.pipe.pump()
        assert got[0].check(QueueFull), got
        assert (got[0].value.code, got[0].value.retry_after, got[0].value.message) == (
            code, retry_after, f"full {code}")
    # a code or Retry-After the worker does not expect is not trusted: a 503
    for code, retry_after in ((500, 1), (429, "1"), (429, 10**9), (200, 1)):
        node.queue = Full(code, retry_after)  # type: ignore[arg-type]
        got = []
        queue.submit(call).addBoth(got.append)
        worker.pipe.pump()
        assert got[0].check(QueueUnavailable) and not got[0].check(QueueFull), (code, got)
    worker.close()


def test_callback_urls_are_checked_in_the_worker_with_the_queues_rules() -> None:
    node = Node()
    queue = RemoteQueue(node.worker().calls, 1024, 5.0,
                        CallbackRules(node_ports=frozenset({2381})))
    queue.check_callback("http://example.com/hook")  # a name: checked when sent
    queue.check_callback("http://10.0.0.9:9000/hook")
    for bad in ("http://127.0.0.1:2381/apis", "ftp://x/y", "http://127.0.0.1:9000/hook",
                "http://[::ffff:127.0.0.1]:9000/"):
        try:
            queue.check_callback(bad)
        except ValueError as exc:
            assert str(exc).startswith("X-Callback-Url:")
        else:
            raise AssertionError(f"{bad} was accepted")


def test_counts_from_a_worker_reach_the_nodes_metrics() -> None:
    node = Node()
    worker = node.worker()
    worker.channel.send({"op": "counts", "counts": {"fn": {"s": 3, "a": 1}}})
    worker.channel.send({"op": "counts", "counts": {"fn": {"s": "lots"}}})  # refused whole
    worker.pipe.pump()
    counts = node.metrics.gate.counts("fn")
    assert (counts.started, counts.active) == (3, 1)
    worker.close()
    assert counts.active == 0 and counts.started == 3


class Failing:
    """A provider whose backend breaks: at once, or after a wait."""

    def __init__(self, later: bool) -> None:
        self.later = later
        self.waiting: list = []

    def acquire(self, spec: Any) -> Any:
        if not self.later:
            raise RuntimeError("backend exploded")
        from twisted.internet.defer import Deferred

        d: Deferred = Deferred()
        self.waiting.append(d)
        return d


def test_a_broken_provider_is_a_503_with_its_reason_not_a_hang() -> None:
    node = Node()
    node.provider = Failing(later=False)  # type: ignore[assignment]
    worker = node.worker()
    got = worker.acquire(node)
    assert got[0].check(NoCapacity) and "backend exploded" in got[0].getErrorMessage()
    later = Failing(later=True)
    worker.link.provider = later
    got = worker.acquire(node)
    assert got == [] and len(later.waiting) == 1
    later.waiting[0].errback(RuntimeError("lost the API"))
    worker.pipe.pump()
    assert got[0].check(NoCapacity) and got[0].value.retry_after == 5
    assert "lost the API" in got[0].getErrorMessage()


def test_malformed_messages_from_a_worker_are_logged_and_dropped() -> None:
    node = Node()
    node.queue = Recorded()
    worker = node.worker()
    for message in ({"op": "teleport"}, {"op": "acquire", "fn": "fn"},
                    {"op": "acquire", "id": 1, "fn": 7}, {"op": "release", "lease": 99},
                    {"op": "cancel", "id": 42}):
        worker.channel.send(message)
    worker.pipe.pump()
    assert worker.link.leases == {} and worker.link.acquiring == {}
    replies: list = []
    worker.calls.call("enqueue", 5.0, call={"function": "fn"}).addCallback(replies.append)
    worker.pipe.pump()
    assert replies[0]["ok"] is False and "call.body is missing" in replies[0]["message"]
    assert node.queue.calls == [] and node.runtime.inflight == 0


def test_the_api_waits_for_each_workers_routes_to_reach_a_revision() -> None:
    """Read-your-writes with gate workers: ``reached`` is answered by the worker once
    its own route table (fed by its own watch) reflects the revision."""
    from faastwist.gate.routes import RouteTable
    from faastwist.model.fsm import FunctionStatus, State
    from faastwist.store.memory import MemoryStore
    from faastwist.workers.child import Worker as Child

    node = Node()
    link = WorkerLink(0, node.routes, node.provider, node.metrics, lambda: None,
                      node.ready.append, node.ready.append)
    child = Child(node.clock, 0)
    store = MemoryStore()
    child.routes = RouteTable(store, node.clock)
    child.routes.startService()
    pipe = Pipe(child.channel, link.channel)
    record = store.create(function_spec(name="g"), FunctionStatus("g", State.ACTIVE)).result
    reached: list[None] = []
    link.reached(record.status_revision + 1).addCallback(reached.append)
    pipe.pump()
    assert reached == []                                 # the worker is behind
    store.update(record, status=FunctionStatus("g", State.INACTIVE))
    pipe.pump()
    assert reached == [None]
    behind: list[None] = []
    link.reached(99).addCallback(behind.append)
    pipe.pump()
    child.stopping = True   # (its own reaction to a lost channel is tested elsewhere)
    pipe.close()                                         # the worker died
    assert behind == [None] and link._reach == {}
    gone: list[None] = []
    link.reached(100).addCallback(gone.append)           # a channel that is down
    assert gone == [None]
