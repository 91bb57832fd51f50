"""The asyncio bridge: coroutines run on the loop's thread, results and errors come
back on the reactor thread, every call is bounded, a stopped bridge refuses calls."""

from __future__ import annotations

import asyncio
import threading

import pytest
import pytest_twisted
from twisted.internet import reactor

from faastwist.queue.bridge import AsyncioBridge, BridgeStopped, BridgeTimeout


@pytest.fixture
def bridge():
    service = AsyncioBridge(reactor, default_timeout=1.0)
    service.startService()
    yield service
    if service.running:
        pytest_twisted.blockon(service.stopService())


@pytest_twisted.ensureDeferred
async def test_result_comes_back_on_the_reactor_thread(bridge) -> None:
    reactor_thread = threading.get_ident()
    seen = {}

    async def work(a: int, b: int = 0) -> int:
        seen["thread"] = threading.get_ident()
        await asyncio.sleep(0.01)
        return a + b

    d = bridge.call(work, 2, b=3)
    d.addCallback(lambda r: seen.setdefault("callback", threading.get_ident()) and r)
    assert await d == 5
    assert seen["thread"] != reactor_thread
    assert seen["callback"] == reactor_thread


@pytest_twisted.ensureDeferred
async def test_errors_and_timeouts(bridge) -> None:
    async def boom() -> None:
        raise KeyError("x")

    async def hang() -> None:
        await asyncio.sleep(60)

    with pytest.raises(KeyError):
        await bridge.call(boom)
    started = reactor.seconds()
    with pytest.raises(BridgeTimeout, match="hang did not finish within 0.1s"):
        await bridge.call(hang, timeout=0.1)
    assert reactor.seconds() - started < 1.0


@pytest_twisted.ensureDeferred
async def test_stopped_bridge_refuses_and_stop_cancels_what_runs(bridge) -> None:
    async def hang() -> None:
        await asyncio.sleep(60)

    pending = bridge.call(hang, timeout=30)
    await bridge.stopService()
    with pytest.raises(BridgeStopped):
        await pending
    with pytest.raises(BridgeStopped):
        await bridge.call(hang)
