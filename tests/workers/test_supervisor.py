"""The WorkerPool's bookkeeping without processes: log relay, restart backoff, readiness
(the processes themselves: tests/e2e/test_workers_e2e.py)."""

from __future__ import annotations

import signal

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessTerminated
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from faastwist.metrics import Metrics
from faastwist.workers.supervisor import (
    BACKOFF_FIRST,
    BACKOFF_MAX,
    KILL_AFTER,
    WorkerPool,
    WorkerStartError,
    _Slot,
)
from faastwist.workers.supervisor import _WorkerProcess


def pool(clock: Clock, written: list[str] | None = None, count: int = 2) -> WorkerPool:
    return WorkerPool(count, {"http": {"address": "127.0.0.1", "port": 1}}, clock, None, None,
                      Metrics(), lambda: None,
                      written.append if written is not None else None, 5.0)


def test_whole_lines_reach_the_log_in_order() -> None:
    written: list[str] = []
    workers = pool(Clock(), written)
    process = _WorkerProcess(workers, workers.slots[0])
    process.childDataReceived(1, b"one\ntw")
    process.childDataReceived(1, b"o\nthr")
    assert written == ["one\n", "two\n"]
    process.childDataReceived(1, b"ee")
    assert written == ["one\n", "two\n"]
    process.processEnded(Failure(ProcessTerminated(0)))  # the rest is not lost
    assert written == ["one\n", "two\n", "three\n"]


def test_a_crashed_worker_is_restarted_with_a_doubling_backoff() -> None:
    clock = Clock()
    workers = pool(clock)
    workers.startService()
    slot = workers.slots[1]
    delays = []
    for _ in range(8):
        slot.process, slot.started = object(), clock.seconds()
        workers.ended(slot, Failure(ProcessTerminated(signal=9)))
        assert slot.restart is not None and slot.process is None
        delays.append(slot.restart.getTime() - clock.seconds())
        slot.restart.cancel()
    assert delays[:3] == [BACKOFF_FIRST, BACKOFF_FIRST * 2, BACKOFF_FIRST * 4]
    assert delays[-1] == BACKOFF_MAX
    clock.advance(120)  # one that ran a long time starts from the first delay again
    slot.process = object()
    workers.ended(slot, Failure(ProcessTerminated(1)))
    assert slot.restart.getTime() - clock.seconds() == BACKOFF_FIRST


def test_no_restart_while_stopping_and_readiness_names_the_missing() -> None:
    clock = Clock()
    workers = pool(clock)
    workers.slots[0].ready = True
    try:
        workers.check()
    except RuntimeError as exc:
        assert str(exc) == "gate workers not serving: 1 of 2"
    else:
        raise AssertionError("a missing worker passed the check")
    workers.slots[1].ready = True
    workers.check()
    workers.stopping = True
    slot: _Slot = workers.slots[0]
    slot.process = object()
    workers.ended(slot, Failure(ProcessTerminated(0)))
    assert slot.restart is None and clock.getDelayedCalls() == []


class Held:
    """A worker process as the pool sees it: signals are recorded, it ends when told."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[int] = []

    def signalProcess(self, signum: int) -> None:
        self.signals.append(signum)


def capture() -> tuple[list, object]:
    from twisted.logger import formatEvent, globalLogPublisher

    seen: list = []

    def observer(event: dict) -> None:
        if event.get("log_namespace") == "faastwist.workers":
            seen.append((event["log_level"].name, formatEvent(event)))
    globalLogPublisher.addObserver(observer)
    return seen, observer


def test_without_a_log_stream_lines_become_events_and_stderr_is_a_warning() -> None:
    from twisted.logger import globalLogPublisher

    workers = pool(Clock())
    slot = workers.slots[0]
    slot.pid = 4242
    seen, observer = capture()
    try:
        process = _WorkerProcess(workers, slot)
        process.childDataReceived(1, b"2026 [faastwist.gate#info] listening\n\n")
        process.childDataReceived(2, b"Traceback (most recent call last):\n")
        process.childDataReceived(2, b"x" * (1 << 20) + b"y")  # a huge line: passed on
    finally:
        globalLogPublisher.removeObserver(observer)
    assert seen[0] == ("info", "2026 [faastwist.gate#info] listening")
    assert seen[1] == ("warn", "gate worker 0 (pid 4242): Traceback (most recent call last):")
    assert seen[2][0] == "warn" and seen[2][1].endswith("xy")


def test_a_worker_that_cannot_serve_fails_the_start_naming_the_key() -> None:
    workers = pool(Clock())
    slot = workers.slots[1]
    slot.starting = Deferred()
    failures: list = []
    slot.starting.addErrback(failures.append)
    link = slot.link = object()  # type: ignore[assignment]
    workers._failed(slot, object(), "stale")  # type: ignore[arg-type]  # an old link: ignored
    assert failures == []
    workers._failed(slot, link, "Couldn't listen on 127.0.0.1:80")  # type: ignore[arg-type]
    assert failures[0].check(WorkerStartError)
    assert failures[0].getErrorMessage() == (
        "httpServer.workers: worker 1 cannot serve: Couldn't listen on 127.0.0.1:80")


def test_a_restart_that_cannot_spawn_is_tried_again_later() -> None:
    clock = Clock()  # it has no spawnProcess: spawning raises, as out of processes would
    workers = pool(clock)
    workers.startService()
    slot = workers.slots[0]
    workers._respawn(slot)
    assert slot.restart is not None and slot.restart.getTime() == BACKOFF_FIRST
    workers.stopping = True
    clock.advance(BACKOFF_FIRST)
    assert slot.restart is None and clock.getDelayedCalls() == []


def test_stop_signals_every_worker_and_kills_the_stragglers() -> None:
    clock = Clock()
    workers = pool(clock)
    workers.startService()
    first, second = Held(11), Held(12)
    workers.slots[0].process, workers.slots[1].process = first, second
    workers.slots[0].restart = clock.callLater(3, lambda: None)
    done: list = []
    workers.stopService().addCallback(done.append)
    assert first.signals == second.signals == [signal.SIGTERM]
    workers.ended(workers.slots[0], Failure(ProcessTerminated(0)))
    clock.advance(5.0 + KILL_AFTER)  # shutdownTimeout (5 s here) and the grace after it
    assert first.signals == [signal.SIGTERM] and second.signals == [signal.SIGTERM, signal.SIGKILL]
    assert done == []
    workers.ended(workers.slots[1], Failure(ProcessTerminated(signal=9)))
    assert len(done) == 1 and clock.getDelayedCalls() == []
