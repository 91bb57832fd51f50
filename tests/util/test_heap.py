"""The node holds the cyclic collector off while it starts and leaves what start-up built
out of its passes (with 10,000 functions a full collection stalled the gate ~0.3 s)."""

from __future__ import annotations

import gc

from twisted.internet.task import Clock

from faastwist.util.heap import HOLD_LIMIT, StartupCollector, freeze_heap


class Held:
    """An object that lives as long as the node (a route, a spec)."""


def test_freeze_heap_takes_what_exists_out_of_collections_and_not_what_comes_later() -> None:
    before = [Held() for _ in range(100)]
    try:
        frozen = freeze_heap()
        assert frozen >= 100 and gc.get_freeze_count() == frozen
        tracked = {id(o) for o in gc.get_objects()}
        assert not any(id(o) in tracked for o in before)     # a collection skips them
        after = [Held() for _ in range(10)]
        tracked = {id(o) for o in gc.get_objects()}
        assert all(id(o) in tracked for o in after)          # new objects are collected
    finally:
        gc.unfreeze()


def test_the_collector_is_off_while_held_and_on_with_a_frozen_heap_after() -> None:
    collector = StartupCollector(Clock())
    assert gc.isenabled()
    try:
        collector.hold()
        assert not gc.isenabled() and collector.held
        built = [Held() for _ in range(50)]
        frozen = collector.release()
        assert gc.isenabled() and collector.held is False
        assert frozen == gc.get_freeze_count() >= 50
        tracked = {id(o) for o in gc.get_objects()}
        assert not any(id(o) in tracked for o in built)
        collector.release()              # a second release changes nothing
        assert gc.isenabled()
    finally:
        gc.enable()
        gc.unfreeze()


def test_the_hold_ends_by_itself_after_its_limit() -> None:
    clock = Clock()
    collector = StartupCollector(clock, limit=30.0)
    assert HOLD_LIMIT >= 30.0
    try:
        collector.hold()
        clock.advance(29.9)
        assert not gc.isenabled()
        clock.advance(0.1)               # start-up never finished: on again anyway
        assert gc.isenabled() and collector.held is False
        assert not clock.getDelayedCalls()
    finally:
        gc.enable()
        gc.unfreeze()


def test_a_collector_someone_turned_off_stays_off() -> None:
    clock = Clock()
    collector = StartupCollector(clock)
    gc.disable()
    try:
        collector.hold()
        assert collector.held is False and not clock.getDelayedCalls()
        collector.release()
        assert not gc.isenabled()        # not ours to turn on
    finally:
        gc.enable()
        gc.unfreeze()


def test_release_cancels_the_limit_timer() -> None:
    clock = Clock()
    collector = StartupCollector(clock, limit=30.0)
    try:
        collector.hold()
        collector.release()
        assert not clock.getDelayedCalls()
        gc.disable()                     # a late timer would turn it on again
        clock.advance(60)
        assert not gc.isenabled()
    finally:
        gc.enable()
        gc.unfreeze()
