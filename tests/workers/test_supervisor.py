"""The WorkerPool's bookkeeping without processes: log relay, restart backoff, readiness
(the processes themselves: tests/e2e/test_workers_e2e.py)."""

from __future__ import annotations

from twisted.internet.error import ProcessTerminated
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from faastwist.metrics import Metrics
from faastwist.workers.supervisor import BACKOFF_FIRST, BACKOFF_MAX, WorkerPool, _Slot
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
