"""One contract for the Provider protocol (providers/base.py): the in-memory FakeProvider
(faastwist/testing/provider.py) that the reconciler's and the admin API's Clock tests use,
and the ProcessProvider with real processes, answer the same cases the same way.

What differs by design stays out: which specs each accepts (``check_spec``: the fake
judges as Knative does), and calls outside the protocol's preconditions (``deploy`` of a
function that exists, ``update`` of one that does not). "The backend acted" is the fake's
``report`` and the process provider's replicas becoming ready: each variant's ``acted``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from faastwist.model.fsm import Event
from faastwist.model.spec import FunctionSpec
from faastwist.providers.base import Observation, ProviderError
from faastwist.testing.provider import FakeProvider
from tests.support.process import PYTHON, REPO, alive, function_spec, make_provider

ECHO = str(REPO / "conf" / "functions" / "echo.py")


class FakeVariant:
    def __init__(self) -> None:
        self.provider = FakeProvider()

    async def acted(self, name: str, stopped: bool = False) -> Observation:
        """The backend looked at the latest change and found it ready."""
        self.provider.report(name, Event.READY)
        return (await self.provider.observe([name]))[name]

    async def down(self) -> None:
        self.provider.available = False

    async def close(self) -> None:
        pass


class ProcessVariant:
    def __init__(self, data: Path) -> None:
        self.provider = make_provider(reactor, data)
        self.pids: set[int] = set()

    async def acted(self, name: str, stopped: bool = False) -> Observation:
        deadline = reactor.seconds() + 15.0
        while True:
            self.pids.update(self.provider.pids())
            observation = (await self.provider.observe([name]))[name]
            runtime = self.provider.runtimes[name]
            settled = (not runtime.ready) if stopped else bool(runtime.ready)
            if observation.event is Event.READY and settled:
                return observation
            assert reactor.seconds() < deadline, f"{name}: {observation}"
            await deferLater(reactor, 0.02, lambda: None)

    async def down(self) -> None:
        self.pids.update(self.provider.pids())
        await self.provider.stopService()

    async def close(self) -> None:
        self.pids.update(self.provider.pids())
        if self.provider.running:
            await self.provider.stopService()
        assert [pid for pid in self.pids if alive(pid)] == []


@pytest.fixture(params=["fake", pytest.param("process", marks=pytest.mark.process)])
def variant(request: pytest.FixtureRequest, tmp_path: Path):
    made = FakeVariant() if request.param == "fake" else ProcessVariant(tmp_path / "data")
    yield made
    pytest_twisted.blockon(_ensure(made.close()))


def _ensure(coroutine: Any):
    from twisted.internet.defer import ensureDeferred

    return ensureDeferred(coroutine)


def spec(name: str = "echo", **fields: Any) -> FunctionSpec:
    return function_spec(name=name, command=[PYTHON, ECHO], minReplica=1,
                         readinessPath="/healthz", **fields)


@pytest_twisted.ensureDeferred
async def test_a_deployed_function_is_observed_with_its_digest(variant) -> None:
    provider = variant.provider
    assert await provider.observe() == {}
    assert await provider.observe(["echo"]) == {}
    first = spec()
    await provider.deploy(first)
    # before the backend acted on it, nothing is concluded
    starting = (await provider.observe(["echo"]))["echo"]
    assert (starting.digest, starting.event) == (first.digest(), None)
    observation = await variant.acted("echo")
    assert (observation.name, observation.digest, observation.stopped) == (
        "echo", first.digest(), False)
    assert observation.event is Event.READY


@pytest_twisted.ensureDeferred
async def test_observe_answers_for_the_names_asked_or_all(variant) -> None:
    provider = variant.provider
    await provider.deploy(spec("one"))
    await provider.deploy(spec("two"))
    assert sorted(await provider.observe()) == ["one", "two"]
    assert sorted(await provider.observe(["two", "nope"])) == ["two"]
    assert await provider.observe([]) == {}


@pytest_twisted.ensureDeferred
async def test_an_update_is_observed_with_the_new_digest(variant) -> None:
    provider = variant.provider
    await provider.deploy(spec())
    await variant.acted("echo")
    second = spec(env={"VERSION": "2"})
    assert second.digest() != spec().digest()
    await provider.update(second)
    observation = await variant.acted("echo")
    assert (observation.digest, observation.stopped, observation.event) == (
        second.digest(), False, Event.READY)


@pytest_twisted.ensureDeferred
async def test_stop_keeps_the_function_scaled_to_zero_until_start(variant) -> None:
    provider = variant.provider
    await provider.deploy(spec())
    await variant.acted("echo")
    await provider.stop(spec())
    stopped = (await provider.observe(["echo"]))["echo"]
    assert (stopped.name, stopped.digest, stopped.stopped) == ("echo", spec().digest(), True)
    assert sorted(await provider.observe()) == ["echo"]   # still there, at zero
    await provider.start(spec())
    started = await variant.acted("echo")
    assert (started.digest, started.stopped, started.event) == (
        spec().digest(), False, Event.READY)


@pytest_twisted.ensureDeferred
async def test_delete_removes_everything_and_twice_is_fine(variant) -> None:
    provider = variant.provider
    await provider.deploy(spec())
    await provider.deploy(spec("other"))
    await variant.acted("echo")
    await provider.delete("echo")
    assert sorted(await provider.observe()) == ["other"]
    assert await provider.observe(["echo"]) == {}
    await provider.delete("echo")
    await provider.delete("never-there")
    # the name can be used again
    await provider.deploy(spec())
    assert (await variant.acted("echo")).digest == spec().digest()


@pytest_twisted.ensureDeferred
async def test_a_lease_names_a_loopback_upstream_and_is_released(variant) -> None:
    provider = variant.provider
    await provider.deploy(spec())
    await variant.acted("echo")
    lease = await _maybe(provider.acquire(spec()))
    try:
        upstream = lease.upstream
        assert (upstream.scheme, upstream.host) == ("http", "127.0.0.1")
        assert upstream.port > 0 and upstream.origin.startswith(b"http://127.0.0.1:")
    finally:
        lease.release()


async def _maybe(value: Any) -> Any:
    from twisted.internet.defer import Deferred

    return await value if isinstance(value, Deferred) else value


@pytest_twisted.ensureDeferred
async def test_check_answers_while_the_backend_does_and_fails_after(variant) -> None:
    provider = variant.provider
    assert await provider.check() is None
    await variant.down()
    with pytest.raises(ProviderError):
        await provider.check()
