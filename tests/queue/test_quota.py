"""The per-function queue quota (maxQueued) as this node counts it: exact values."""

from __future__ import annotations

from faastwist.queue.policy import Admission, QueuedCounts


def test_an_unknown_count_is_asked_for_first() -> None:
    counts = QueuedCounts(fresh=1.0)
    assert counts.take("fn", 3, 100.0) is Admission.COUNT
    counts.counted("fn", 1, 100.0)
    assert counts.take("fn", 3, 100.2) is Admission.ADMIT   # 2
    assert counts.take("fn", 3, 100.3) is Admission.ADMIT   # 3
    # the limit reached: refused without asking the server again
    assert counts.take("fn", 3, 100.4) is Admission.FULL
    assert counts.take("fn", 3, 100.99) is Admission.FULL
    assert counts.take("other", 3, 100.5) is Admission.COUNT  # counted per function


def test_a_stale_count_is_asked_again_and_may_admit_once_the_queue_drained() -> None:
    counts = QueuedCounts(fresh=1.0)
    counts.counted("fn", 5, 10.0)
    assert counts.take("fn", 5, 10.5) is Admission.FULL
    assert counts.take("fn", 5, 11.0) is Admission.COUNT    # exactly `fresh` old
    counts.counted("fn", 4, 11.0)
    assert counts.take("fn", 5, 11.1) is Admission.ADMIT
    assert counts.take("fn", 5, 11.2) is Admission.FULL
    # a clock that went back is not trusted
    assert counts.take("fn", 5, 10.9) is Admission.COUNT


def test_a_higher_limit_admits_more_from_the_same_count() -> None:
    counts = QueuedCounts(fresh=1.0)
    counts.counted("fn", 10, 0.0)
    assert counts.take("fn", 10, 0.1) is Admission.FULL
    assert counts.take("fn", 11, 0.1) is Admission.ADMIT


def test_forget_drops_old_counts_only() -> None:
    counts = QueuedCounts(fresh=100.0)
    counts.counted("old", 1, 0.0)
    counts.counted("new", 1, 50.0)
    counts.forget(10.0)
    assert counts.take("old", 5, 60.0) is Admission.COUNT
    assert counts.take("new", 5, 60.0) is Admission.ADMIT
