"""Slicer: steps of work per reactor turn, on a task.Clock (turns as a reactor runs them)."""

from __future__ import annotations

from typing import Iterator

from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock, SchedulerStopped

from faastwist.util.slices import Slicer
from tests.support.turns import turn


def counting(done: list[str], label: str, steps: int, clock: Clock | None = None,
             cost: float = 0.0) -> Iterator[None]:
    """``steps`` steps, each noting itself in ``done`` and taking ``cost`` of clock time."""
    for i in range(steps):
        done.append(f"{label}{i}")
        if clock is not None:
            clock.rightNow += cost
        yield None


def test_a_budget_of_zero_runs_one_step_per_turn_and_tasks_take_turns() -> None:
    clock = Clock()
    slicer = Slicer(clock, budget=0)
    done: list[str] = []
    results: list[object] = []
    slicer.run(counting(done, "a", 3)).addCallback(lambda r: results.append(("a", r)))
    slicer.run(counting(done, "b", 2)).addCallback(lambda r: results.append(("b", r)))
    assert done == []                        # nothing runs in the caller's turn
    seen = []
    while turn(clock):
        seen.append(list(done))
    assert seen[:5] == [["a0"], ["a0", "b0"], ["a0", "b0", "a1"], ["a0", "b0", "a1", "b1"],
                        ["a0", "b0", "a1", "b1", "a2"]]   # one step a turn, in turn
    assert results == [("b", None), ("a", None)]        # each fires when its steps end
    assert clock.getDelayedCalls() == []     # nothing left scheduled


def test_a_turn_runs_steps_until_the_budget_is_spent() -> None:
    clock = Clock()
    slicer = Slicer(clock, budget=0.0025)
    done: list[str] = []
    slicer.run(counting(done, "s", 10, clock, cost=0.001))
    per_turn = []
    while len(done) < 10:
        before = len(done)
        assert turn(clock) == 1
        per_turn.append(len(done) - before)
    assert per_turn == [3, 3, 3, 1]          # 1 ms each, 2.5 ms a turn: three, then yield


def test_a_failing_step_fails_the_run_and_cancelling_stops_the_steps() -> None:
    clock = Clock()
    slicer = Slicer(clock, budget=0)

    def failing() -> Iterator[None]:
        yield None
        raise ValueError("step two")
    failures: list[object] = []
    slicer.run(failing()).addErrback(failures.append)
    turn(clock)
    turn(clock)
    assert len(failures) == 1 and failures[0].check(ValueError)  # type: ignore[attr-defined]

    done: list[str] = []
    running = slicer.run(counting(done, "c", 100))
    turn(clock)
    running.cancel()
    cancelled: list[object] = []
    running.addErrback(cancelled.append)
    for _ in range(5):
        turn(clock)
    assert done == ["c0"] and cancelled[0].check(CancelledError)  # type: ignore[attr-defined]


def test_stop_ends_every_task() -> None:
    clock = Clock()
    slicer = Slicer(clock, budget=0)
    done: list[str] = []
    task = slicer.cooperate(counting(done, "t", 100))
    ended: list[object] = []
    task.whenDone().addErrback(ended.append)
    turn(clock)
    slicer.stop()
    for _ in range(3):
        turn(clock)
    assert done == ["t0"] and ended[0].check(SchedulerStopped)  # type: ignore[attr-defined]
    late: list[object] = []
    slicer.run(counting(done, "late", 1)).addErrback(late.append)
    turn(clock)
    assert done == ["t0"] and late[0].check(SchedulerStopped)  # type: ignore[attr-defined]


def test_the_default_budget_is_two_milliseconds_a_turn() -> None:
    """SLICE: short enough that requests in flight wait at most ~2 ms a turn."""
    clock = Clock()
    slicer = Slicer(clock)
    done: list[str] = []
    slicer.run(counting(done, "s", 6, clock, cost=0.0009))
    per_turn = []
    while len(done) < 6:
        before = len(done)
        assert turn(clock) == 1
        per_turn.append(len(done) - before)
    assert per_turn == [3, 3]                # 0.9 ms each: the third passes 2 ms
