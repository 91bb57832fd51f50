"""The asyncio bridge: coroutines run on the loop's thread, results and errors come
back on the reactor thread, every call is bounded, a stopped bridge refuses calls."""

from __future__ import annotations

import asyncio
import threading

import pytest
import pytest_twisted
from twisted.internet import reactor

import sys

from twisted.internet.threads import deferToThread

from faastwist.queue.bridge import SWITCH_INTERVAL, AsyncioBridge, BridgeStopped, BridgeTimeout


def within(d, seconds: float = 5.0):
    """Every wait bounded: a bridge that loses a call fails the test, never hangs it."""
    return d.addTimeout(seconds, reactor)


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
    assert await within(d) == 5
    assert seen["thread"] != reactor_thread
    assert seen["callback"] == reactor_thread


@pytest_twisted.ensureDeferred
async def test_errors_and_timeouts(bridge) -> None:
    async def boom() -> None:
        raise KeyError("x")

    async def hang() -> None:
        await asyncio.sleep(60)

    with pytest.raises(KeyError):
        await within(bridge.call(boom))
    started = reactor.seconds()
    with pytest.raises(BridgeTimeout, match="hang did not finish within 0.1s"):
        await within(bridge.call(hang, timeout=0.1))
    assert reactor.seconds() - started < 1.0


@pytest_twisted.ensureDeferred
async def test_stopped_bridge_refuses_and_stop_cancels_what_runs(bridge) -> None:
    async def hang() -> None:
        await asyncio.sleep(60)

    pending = bridge.call(hang, timeout=30)
    loop = bridge.loop
    await within(bridge.stopService())
    with pytest.raises(BridgeStopped) as stopped:
        await within(pending)
    assert str(stopped.value) == "the call was cancelled"
    assert loop.is_closed()   # the cancelled call was gathered, then the loop closed
    with pytest.raises(BridgeStopped):
        await within(bridge.call(hang))


@pytest_twisted.ensureDeferred
async def test_calls_of_one_turn_start_in_order_and_each_gets_its_own_result(bridge) -> None:
    started: list[int] = []

    async def work(n: int) -> int:
        started.append(n)
        await asyncio.sleep(0)
        return n * n

    pending = [bridge.call(work, n) for n in range(50)]
    assert [await within(d) for d in pending] == [n * n for n in range(50)]
    assert started == list(range(50))
    assert not bridge._inbox and not bridge._outbox


@pytest_twisted.ensureDeferred
async def test_cancelling_a_call_cancels_its_coroutine(bridge) -> None:
    from twisted.internet.defer import CancelledError

    running = threading.Event()
    seen: list[str] = []

    async def hang() -> None:
        running.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    d = bridge.call(hang, timeout=30)
    await deferToThread(running.wait, 5)
    d.cancel()
    with pytest.raises(CancelledError):
        await within(d)
    await within(bridge.call(asyncio.sleep, 0))   # a later call's result: the loop went on
    for _ in range(100):
        if seen:
            break
        await within(bridge.call(asyncio.sleep, 0.01))
    assert seen == ["cancelled"]


@pytest_twisted.ensureDeferred
async def test_a_function_that_fails_before_its_coroutine_and_the_default_timeout() -> None:
    service = AsyncioBridge(reactor, default_timeout=0.2)
    service.startService()
    try:
        def not_async(x: int) -> None:
            raise TypeError(f"bad {x}")

        with pytest.raises(TypeError, match="bad 3"):
            await within(service.call(not_async, 3))

        async def hang() -> None:
            await asyncio.sleep(60)

        with pytest.raises(BridgeTimeout, match="within 0.2s"):
            await within(service.call(hang))
        assert sys.getswitchinterval() <= SWITCH_INTERVAL
    finally:
        await within(service.stopService())
    assert service.loop is None
    assert await service.stopService() is None   # stopping twice: nothing to do


def test_stopping_a_bridge_that_never_started() -> None:
    service = AsyncioBridge(reactor)
    done: list = []
    service.stopService().addCallback(done.append)
    assert done == [None]


@pytest_twisted.ensureDeferred
async def test_the_switch_interval_is_lowered_and_never_raised() -> None:
    before = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)
        service = AsyncioBridge(reactor)
        service.startService()
        assert sys.getswitchinterval() == pytest.approx(0.0005)
        await within(service.stopService())
        sys.setswitchinterval(0.0001)
        service = AsyncioBridge(reactor)
        service.startService()
        assert sys.getswitchinterval() == pytest.approx(0.0001)
        await within(service.stopService())
    finally:
        sys.setswitchinterval(before)


@pytest_twisted.ensureDeferred
async def test_the_loop_runs_on_a_named_daemon_thread_started_at_once_and_closed_at_stop() -> None:
    import time

    service = AsyncioBridge(reactor)
    started = time.monotonic()
    service.startService()
    assert time.monotonic() - started < 1.0     # no wait for the handshake's bound
    thread, loop = service._thread, service.loop
    assert thread.daemon and thread.name == "faastwist-asyncio" and loop.is_running()
    await within(service.stopService())
    assert loop.is_closed() and not thread.is_alive()
    assert (service.loop, service._thread) == (None, None)


@pytest_twisted.ensureDeferred
async def test_a_timeout_names_a_callable_without_a_name(bridge) -> None:
    import functools

    async def hang(seconds: float) -> None:
        await asyncio.sleep(seconds)

    with pytest.raises(BridgeTimeout) as timed_out:
        await within(bridge.call(functools.partial(hang, 60), timeout=0.05))
    assert str(timed_out.value) == "call did not finish within 0.05s"



@pytest_twisted.ensureDeferred
async def test_a_bridge_never_started_refuses_calls() -> None:
    service = AsyncioBridge(reactor)
    assert service.default_timeout == 5.0

    async def work() -> None:
        pass

    with pytest.raises(BridgeStopped) as refused:
        await within(service.call(work))
    assert str(refused.value) == "the asyncio bridge is not running"


@pytest_twisted.ensureDeferred
async def test_calls_and_results_cross_in_batches(bridge) -> None:
    import time

    crossings = {"in": 0, "out": 0}
    start_calls, deliver = bridge._start_calls, bridge._deliver_results

    def counted_in() -> None:
        crossings["in"] += 1
        start_calls()

    def counted_out() -> None:
        crossings["out"] += 1
        deliver()
    bridge._start_calls, bridge._deliver_results = counted_in, counted_out

    async def block() -> None:
        time.sleep(0.2)   # holds the loop: the next calls wait in the inbox together

    async def work(n: int) -> int:
        return n

    first = bridge.call(block)
    await deferToThread(time.sleep, 0.05)
    pending = [bridge.call(work, n) for n in range(50)]
    time.sleep(0.5)   # holds the reactor: the results wait in the outbox together
    assert [await within(d) for d in pending] == list(range(50))
    await within(first)
    assert crossings["in"] <= 3 and crossings["out"] <= 3, crossings


@pytest_twisted.ensureDeferred
async def test_a_call_that_fails_to_start_does_not_hold_up_the_others(bridge) -> None:
    import time

    async def block() -> None:
        time.sleep(0.2)

    def not_async() -> None:
        raise TypeError("no coroutine")

    async def work() -> str:
        return "done"

    first = bridge.call(block)
    await deferToThread(time.sleep, 0.05)
    bad, good = bridge.call(not_async), bridge.call(work)   # one batch
    with pytest.raises(TypeError):
        await within(bad)
    assert await within(good) == "done"
    await within(first)
