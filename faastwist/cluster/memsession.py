"""The session of a node alone on a memory store: it is the only live node, and the
reports it publishes are the cluster's.

What a client sees is what it sees of ``NodeSession`` (cluster/session.py) on one node:
after start the node is live with its record and listeners hear ``None``; a report
reaches ``read_reports`` at once and the listeners on the next reactor turn (etcd's come
back through its watch, never inside ``report``); at stop the node and its reports go,
as they go with a revoked lease, and a start publishes what the node reported again
(the reports a node makes before its session registered are published once it has). tests/cluster/test_memsession.py holds both to one
contract.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from faastwist.cluster.reports import Report, Reports
from faastwist.util.timers import NamedTimers

log = Logger()


class MemorySession(Service):
    name = "node-session"

    def __init__(self, reactor: IReactorTime, node_id: str,
                 record: Mapping[str, Any]) -> None:
        self.reactor = reactor
        self.node_id = node_id
        self.record = dict(record, id=node_id)
        self.members: dict[str, dict[str, Any]] = {}
        self._mine: dict[str, Report] = {}
        self._changed: set[str | None] = set()   # told to the listeners next turn
        self._listeners: list[Callable[[str | None], None]] = []
        self._timers = NamedTimers(reactor)

    def on_reports_changed(self, listener: Callable[[str | None], None]) -> None:
        self._listeners.append(listener)

    def report(self, name: str, report: Report | None) -> None:
        if report is None:
            if self._mine.pop(name, None) is None:
                return
        elif self._mine.get(name) == report:
            return
        else:
            self._mine[name] = report
        if self.running:
            self._notify(name)

    def live(self) -> list[str]:
        return sorted(self.members)

    def read_reports(self) -> Deferred[Reports]:
        """What the cluster holds: nothing while stopped (no lease, no reports)."""
        if not self.running:
            return succeed(({}, []))
        reports = {name: {self.node_id: report} for name, report in self._mine.items()}
        return succeed((reports, self.live()))

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]  # Twisted's Service is unannotated
        self.members = {self.node_id: dict(self.record)}
        self._notify(None)
        for name in self._mine:
            self._notify(name)

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]  # Twisted's Service is unannotated
        self._timers.cancel_all()
        self._changed.clear()
        self.members = {}
        return succeed(None)

    def _notify(self, name: str | None) -> None:
        self._changed.add(name)
        if "notify" not in self._timers:
            self._timers.later("notify", 0, self._deliver)

    def _deliver(self) -> None:
        self._timers.fired("notify")
        changed, self._changed = self._changed, set()
        for name in sorted(changed, key=lambda n: (n is not None, n or "")):
            for listener in list(self._listeners):
                try:
                    listener(name)
                except Exception:
                    log.failure("report listener failed")


__all__ = ["MemorySession"]
