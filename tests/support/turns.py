"""Reactor turns on a ``twisted.internet.task.Clock``.

``Clock.advance(0)`` also runs the calls that the calls it runs schedule for now, so
work that yields with ``callLater(0)`` finishes in one advance. A reactor runs those
at its next turn, after it has served I/O; ``turn`` does the same, so a test can see
what one turn does.
"""

from __future__ import annotations

from twisted.internet.task import Clock


def turn(clock: Clock) -> int:
    """Run the calls due now that were scheduled before this turn (the ones they
    schedule wait for the next); how many ran."""
    due = [call for call in clock.getDelayedCalls() if call.getTime() <= clock.seconds()]
    for call in due:
        if call.active():
            clock.calls.remove(call)
            call.called = 1
            call.func(*call.args, **call.kw)
    return len(due)
