"""Process provider, reconciler, route table and gate together, on loopback.

The whole path of ``make run`` except etcd (a MemoryStore stands in): a function is
written to the store, the reconciler deploys it with real child processes, the FSM
makes it active, and requests go through the real gate with X-FaaS-Func-Name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
import yaml
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import deferLater

from faastwist.model.fsm import Event, FunctionStatus, State, apply_event
from faastwist.gate.service import GateService
from faastwist.metrics import Metrics
from faastwist.lifecycle.reconciler import Reconciler
from faastwist.gate.routes import RouteTable
from faastwist.model.spec import FunctionSpec
from faastwist.store.memory import MemoryStore
from tests.support.process import PYTHON, REPO, alive, fast_tuning, function_spec, make_provider

from tests.support.gate import gate_config

pytestmark = pytest.mark.slow


class Stack:
    """Store, provider, reconciler, routes and a listening gate."""

    def __init__(self, data_dir: Path, store: MemoryStore | None = None,
                 **provider_args: Any) -> None:
        self.data_dir = data_dir
        self.store = store if store is not None else MemoryStore()
        self.metrics = Metrics()
        self.provider = make_provider(reactor, data_dir, metrics=self.metrics, **provider_args)
        self.reconciler = Reconciler(self.store, self.provider, reactor, 60.0, self.metrics)
        self.routes = RouteTable(self.store, reactor, self.metrics)
        self.routes.startService()
        self.gate = GateService(gate_config(), self.routes, self.provider, reactor, self.metrics,
                                access_log=False)
        self.gate.startService()
        self.url = f"http://127.0.0.1:{self.gate.address()[1]}"
        self.seen: set[int] = set()

    async def create(self, spec: FunctionSpec) -> None:
        self.provider.check_spec(spec)
        await self.store.create(spec, FunctionStatus.initial(spec.name, 0.0))
        await self.converge(spec.name, State.ACTIVE)

    async def converge(self, name: str, state: State, timeout: float = 15.0) -> Any:
        """Reconcile passes until ``name`` reaches ``state``; the last record."""
        deadline = reactor.seconds() + timeout
        while True:
            await self.reconciler.run_pass([name])
            record = await self.store.get(name)
            self.seen.update(self.provider.pids())
            if record.status.state is state:
                return record
            if reactor.seconds() > deadline:
                raise AssertionError(f"{name} is {record.status.state.value}, not {state.value}: "
                                     f"{record.status.message}")
            await deferLater(reactor, 0.05, lambda: None)

    async def invoke(self, name: str, path: str = "/", body: bytes = b"",
                     headers: dict[str, str] | None = None) -> tuple[int, bytes, Any]:
        response = await treq.post(self.url + path, data=body, persistent=False,
                                   headers={"X-FaaS-Func-Name": name, **(headers or {})})
        return response.code, await treq.content(response), response

    async def close(self) -> None:
        self.seen.update(self.provider.pids())
        await self.gate.stopService()
        self.routes.stopService()
        if self.provider.running:
            await self.provider.stopService()
        assert [pid for pid in self.seen if alive(pid)] == []


@pytest.fixture
def stacks(tmp_path: Path):
    made: list[Stack] = []

    def make(**provider_args: Any) -> Stack:
        stack = Stack(tmp_path / "data", **provider_args)
        made.append(stack)
        return stack
    yield make
    for stack in made:
        pytest_twisted.blockon(Deferred.fromCoroutine(stack.close()))


def conf_spec(name: str) -> FunctionSpec:
    return FunctionSpec.from_dict(yaml.safe_load((REPO / "conf" / f"{name}.yaml").read_text()))


@pytest_twisted.ensureDeferred
async def test_example_functions_through_the_gate(stacks):
    stack = stacks()
    await stack.create(conf_spec("echo"))
    await stack.create(conf_spec("wordcount"))
    assert stack.provider.pids() == []                 # echo scales from zero
    code, body, _ = await stack.invoke("echo", "/tomcat/job/api", b'{"FaaS":"Cool"}')
    assert (code, body) == (200, b'V3 Body is \n{"FaaS":"Cool"}')
    assert len(stack.provider.pids("echo")) == 1
    code, body, _ = await stack.invoke("wordcount", "/", b"the quick brown fox\n")
    assert (code, body) == (200, b"1 4 20\n")
    lines = await stack.provider.read_logs("wordcount")
    assert lines[-1].text == "counted 20 bytes for POST /"
    # operator stop and start, as the admin API would record them
    record = await stack.store.get("echo")
    await stack.store.update(record, status=apply_event(record.status, Event.STOP, 1.0))
    await stack.converge("echo", State.INACTIVE)
    await stack.reconciler.run_pass(["echo"])
    assert stack.provider.pids("echo") == []
    code, _, response = await stack.invoke("echo")
    assert code == 503
    record = await stack.store.get("echo")
    await stack.store.update(record, status=apply_event(record.status, Event.START, 2.0))
    await stack.converge("echo", State.ACTIVE)
    code, body, _ = await stack.invoke("echo", "/", b"back")
    assert (code, body) == (200, b"V3 Body is \nback")


@pytest_twisted.ensureDeferred
async def test_fork_mode_headers_through_the_gate(stacks):
    stack = stacks()
    spec = function_spec(name="headers", mode="fork", command=[
        PYTHON, "-c", "import os; print(os.environ['Http_X_Func1'], os.environ['Http_Method'],"
                      " os.environ['Http_Path'], os.environ['Http_Query'])"],
        requestAdaptor={"header": {"set": {"X-Func1": "func-demo"}}})
    await stack.create(spec)
    code, body, _ = await stack.invoke("headers", "/a/b?c=d")
    assert (code, body) == (200, b"func-demo POST /a/b c=d\n")


@pytest_twisted.ensureDeferred
async def test_fifty_cold_requests_through_the_gate_share_one_start(stacks):
    stack = stacks()
    await stack.create(function_spec(name="echo", command=[PYTHON, "conf/functions/echo.py"],
                                     readinessPath="/healthz", autoScaleValue="1000"))
    answers = await DeferredList(
        [_defer(stack.invoke("echo", "/", str(i).encode())) for i in range(50)],
        consumeErrors=True)
    assert [(ok, result[:2]) for ok, result in answers] == [
        (True, (200, b"V3 Body is \n" + str(i).encode())) for i in range(50)]
    assert len(stack.provider.pids("echo")) == 1
    starts = [l for l in await stack.provider.read_logs("echo") if "listening" in l.text]
    assert len(starts) == 1


@pytest_twisted.ensureDeferred
async def test_cold_start_timeout_is_503_with_retry_after(stacks):
    stack = stacks(tuning=fast_tuning(cold_start_timeout=0.3))
    await stack.create(function_spec(name="sleepy",
                                     command=[PYTHON, "-c", "import time; time.sleep(30)"]))
    code, body, response = await stack.invoke("sleepy")
    assert code == 503
    assert b"did not become ready within 0.3s" in body
    assert response.headers.getRawHeaders("retry-after") == ["1"]  # ceil(0.3 / 6), at least 1


@pytest_twisted.ensureDeferred
async def test_crash_loop_fails_the_function_and_an_update_recovers_it(stacks):
    stack = stacks()
    broken = function_spec(name="app", minReplica=1, command=[
        PYTHON, "-c", "import sys; sys.stderr.write('cannot bind: permission denied\\n');"
                      " sys.exit(7)"])
    stack.provider.check_spec(broken)
    await stack.store.create(broken, FunctionStatus.initial("app", 0.0))
    record = await stack.converge("app", State.FAILED)
    assert record.status.ext_data["exitCode"] == "7"
    assert "cannot bind: permission denied" in record.status.ext_data["stderr"]
    assert "crash-looping" in record.status.message
    fixed = function_spec(name="app", minReplica=1, command=[PYTHON, "conf/functions/echo.py"])
    await stack.store.update(record, spec=fixed)
    record = await stack.store.get("app")
    await stack.store.update(record, status=apply_event(record.status, Event.UPDATE, 3.0))
    await stack.converge("app", State.ACTIVE)
    code, body, _ = await stack.invoke("app", "/", b"ok")
    assert (code, body) == (200, b"V3 Body is \nok")


@pytest_twisted.ensureDeferred
async def test_restart_redeploys_and_leaves_no_old_process(stacks):
    first = stacks()
    await first.create(function_spec(name="echo", minReplica=1,
                                      command=[PYTHON, "conf/functions/echo.py"]))
    old = first.provider.pids("echo")
    assert len(old) == 1
    await first.gate.stopService()
    await first.provider.stopService()                 # the gate's shutdown
    assert not alive(old[0])
    # a new node over the same store: the provider runs nothing, the reconciler deploys
    second = stacks(store=first.store)
    assert await second.provider.observe() == {}
    await second.reconciler.run_pass()
    await second.converge("echo", State.ACTIVE)
    await _wait(lambda: second.provider.runtimes["echo"].ready)
    code, _, _ = await second.invoke("echo", "/", b"x")
    assert code == 200 and second.provider.pids("echo") != old


def _defer(coroutine):
    return Deferred.fromCoroutine(coroutine)


async def _wait(predicate, timeout: float = 10.0) -> None:
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError("condition not met in time")
        await deferLater(reactor, 0.02, lambda: None)


@pytest_twisted.ensureDeferred
async def test_readiness_reaches_the_fsm_without_waiting_for_a_sync_pass(stacks):
    stack = stacks()
    stack.provider.on_change = stack.reconciler.kick   # as the node wires it
    spec = function_spec(name="echo", minReplica=1, command=[PYTHON, "conf/functions/echo.py"])
    await stack.store.create(spec, FunctionStatus.initial("echo", 0.0))
    stack.reconciler.kick("echo")                      # as the admin API does on create
    deadline = reactor.seconds() + 10
    while (await stack.store.get("echo")).status.state is not State.ACTIVE:  # no run_pass here
        assert reactor.seconds() < deadline, "the function did not become active"
        await deferLater(reactor, 0.02, lambda: None)
    assert stack.reconciler.passes >= 2 and stack.provider.runtimes["echo"].ready
