"""Named one-shot timers on an injected clock: at most one pending call per name.

Supervisors (the embedded etcd, the leader election) re-arm the same few timers -
health, restart, kill, keep-alive, campaign - and must cancel them all on stop.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime


class NamedTimers:
    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self._calls: dict[str, IDelayedCall] = {}

    def later(self, name: str, delay: float, fn: Callable[[], Any]) -> None:
        """Run ``fn`` after ``delay``, replacing a pending call of the same name."""
        self.cancel(name)
        self._calls[name] = self.clock.callLater(delay, fn)

    def cancel(self, name: str) -> None:
        call = self._calls.pop(name, None)
        if call is not None and call.active():
            call.cancel()

    def cancel_all(self) -> None:
        for name in list(self._calls):
            self.cancel(name)

    def fired(self, name: str) -> None:
        """Forget ``name``: its call ran (the callback says so first thing)."""
        self._calls.pop(name, None)

    def __contains__(self, name: str) -> bool:
        return name in self._calls
