"""The cyclic garbage collector while a node starts, and after it.

Start-up builds what lives as long as the node (specs, routes, runtimes: millions of
objects at 10,000 functions). Each of the collector's full passes walked all of them:
measured on a 10,000-function node, generation-2 passes of 0.1-0.3 s, about 1 s of the
node's start-up, and later single stalls of ~0.3 s for every gate request in flight.
So the collector is held off while the node builds, and what was built is then frozen
(left out of every later pass); reference counting frees everything else meanwhile.
"""

from __future__ import annotations

import gc
from typing import Any

#: seconds the collector stays off at most, whatever start-up does (one that waits for
#: etcd for minutes must not keep its cyclic garbage that long)
HOLD_LIMIT = 120.0


def freeze_heap() -> int:
    """Collect, then leave what exists out of the collector's passes from now on.
    Returns how many objects are frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class StartupCollector:
    """``hold()`` when start-up begins, ``release()`` when the node has built its tables
    (or after ``limit`` seconds on ``clock``): the collector is on again, with what was
    built frozen."""

    def __init__(self, clock: Any, limit: float = HOLD_LIMIT) -> None:
        self.clock = clock
        self.limit = limit
        self.held = False
        self._timer: Any = None

    def hold(self) -> None:
        if self.held or not gc.isenabled():  # someone else runs it by hand: leave it be
            return
        gc.disable()
        self.held = True
        self._timer = self.clock.callLater(self.limit, self.release)

    def release(self) -> int:
        """End the hold (if any) and freeze the heap; how many objects are frozen."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self.held:
            self.held = False
            gc.enable()
        return freeze_heap()
