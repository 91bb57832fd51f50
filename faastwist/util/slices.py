"""CPU work on the reactor in slices of a few milliseconds.

Work that would hold the reactor for tens of milliseconds (a list of 10,000 functions
decoded or encoded) is written as an iterator of small steps. A ``Slicer`` runs the
steps of every iterator it was given, round robin, until its budget is spent, then
lets the reactor serve I/O before the next slice (``callLater(0)`` on the injected
clock). One Slicer shared by concurrent work bounds the total per turn; a thread
instead would hold the GIL against the reactor (every syscall the reactor makes hands
it over and may wait up to ``sys.getswitchinterval()`` to get it back).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import CooperativeTask, Cooperator

__all__ = ["SLICE", "Slicer"]

#: Seconds of work per reactor turn: a gate request waits at most about this long (plus
#: one step) behind a slice.
SLICE = 0.002


class Slicer:
    """Runs iterators' steps on ``clock``, ``budget`` seconds of them per turn, the
    iterators taking turns step by step (at least one step per turn: a budget of 0 runs
    one step per turn, which is what tests use)."""

    def __init__(self, clock: IReactorTime, budget: float = SLICE) -> None:
        self.clock = clock
        self.budget = budget
        self._cooperator = Cooperator(terminationPredicateFactory=self._deadline,
                                      scheduler=lambda tick: clock.callLater(0, tick))

    def _deadline(self) -> Callable[[], bool]:
        seconds = self.clock.seconds
        end = seconds() + self.budget
        return lambda: seconds() >= end

    def cooperate(self, steps: Iterable[Any]) -> CooperativeTask:
        """Start running ``steps``; the task can be paused, resumed and stopped."""
        return self._cooperator.cooperate(iter(steps))

    def run(self, steps: Iterable[Any]) -> Deferred[None]:
        """Run ``steps`` to the end: fires with None, or fails with what a step raised.
        Cancelling the Deferred stops the steps (a caller's timeout ends the work too)."""
        task = self.cooperate(steps)
        cancelled = False

        def cancel(_: Deferred[None]) -> None:
            nonlocal cancelled
            cancelled = True
            task.stop()
        done: Deferred[None] = Deferred(cancel)

        def finished(result: Any) -> None:
            if not (done.called or cancelled):
                done.callback(None)

        def failed(failure: Any) -> None:
            if not (done.called or cancelled):
                done.errback(failure)
        task.whenDone().addCallbacks(finished, failed)
        return done

    def stop(self) -> None:
        """Stop every task and refuse new ones (at shutdown): their Deferreds fail
        with SchedulerStopped."""
        self._cooperator.stop()
