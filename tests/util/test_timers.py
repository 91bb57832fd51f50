"""NamedTimers on a Clock: one pending call per name, cancel one or all."""

from twisted.internet.task import Clock

from faastwist.util.timers import NamedTimers


def test_a_name_has_at_most_one_pending_call_and_all_can_be_cancelled() -> None:
    clock, ran = Clock(), []
    timers = NamedTimers(clock)
    timers.later("health", 1.0, lambda: ran.append("first"))
    timers.later("health", 2.0, lambda: ran.append("second"))   # replaces the first
    timers.later("kill", 3.0, lambda: ran.append("kill"))
    assert "health" in timers and len(clock.getDelayedCalls()) == 2
    clock.advance(2.0)
    assert ran == ["second"]
    timers.fired("health")
    assert "health" not in timers
    timers.cancel_all()
    clock.advance(5.0)
    assert ran == ["second"] and clock.getDelayedCalls() == []
    timers.cancel("never-set")   # harmless
