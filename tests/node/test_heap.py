"""The node leaves what start-up built out of the cyclic collector's passes (with 10,000
functions a full collection stalled the gate ~0.3 s)."""

from __future__ import annotations

import gc

from faastwist.node import freeze_heap


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
