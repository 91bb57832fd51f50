"""This node's presence in the cluster: a lease, its node key, its reports; and the
other nodes and their reports as seen through one watch.

The node key ``{prefix}/{controller}/node/{id}`` (value: the node's addresses) and
every report ``.../report/{fn}/{id}`` are bound to the node's own lease, kept alive
every ttl/3: when the node dies its key and reports vanish with the lease, so the
leader's count of live nodes and their verdicts never includes a dead one. When the
lease is found expired (an etcd outage longer than the ttl) a new one is granted and
the key and every report are written again. A restarted node with the same id simply
overwrites its old keys.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Generator, Mapping, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from faastwist.cluster.reports import Report, Reports
from faastwist.store.etcd import EtcdStore, prefix_end
from faastwist.store.etcdwatch import EtcdWatch, KeyEvent
from faastwist.util.timers import NamedTimers

log = Logger()

#: Reports per etcd transaction (etcd refuses more than --max-txn-ops, 128 by default).
REPORT_BATCH = 64
#: Report transactions in flight at once.
REPORT_WRITES = 4
#: Reports per read when the leader reads them all.
REPORT_PAGE = 1000
#: Decoded reports kept (cleared when full).
DECODED_MAX = 100_000


class ClusterSession(Protocol):
    """What the node, the local converger and the leader's ClusterView use of a node
    session: the etcd one (``NodeSession``) or a node's alone on a memory store
    (cluster/memsession.py); tests/cluster/test_memsession.py holds both to it."""

    @property
    def node_id(self) -> str: ...

    @property
    def members(self) -> Mapping[str, Mapping[str, Any]]:
        """Live node id -> its record (``admin``, ``gate``...), as last seen."""

    def startService(self) -> None: ...

    def stopService(self) -> Deferred[None] | None: ...

    def report(self, name: str, report: Report | None) -> None:
        """Publish (or, with None, withdraw) this node's observation of ``name``."""

    def live(self) -> list[str]:
        """The live node ids, sorted."""

    def read_reports(self) -> Deferred[Reports]:
        """A fresh read: (reports by function by node, live node ids)."""

    def on_reports_changed(self, listener: Callable[[str | None], None]) -> None:
        """``listener(fn)`` when a report of ``fn`` changed; ``listener(None)`` when
        the set of live nodes changed."""


class NodeSession(Service):
    name = "node-session"

    def __init__(self, reactor: IReactorTime, store: EtcdStore, node_id: str, ttl: float,
                 record: dict[str, Any]) -> None:
        self.reactor = reactor
        self.store = store
        self.node_id = node_id
        self.ttl = max(1, int(round(ttl)))
        self.record = dict(record, id=node_id)
        self.node_prefix = store.key("node", "")
        self.report_prefix = store.key("report", "")
        self.members: dict[str, dict[str, Any]] = {}  # live node id -> its record
        self.reports: dict[str, dict[str, Report]] = {}  # fn -> node -> report (watch-fed)
        self.lease_id: int | None = None
        self.registered = False
        self._mine: dict[str, bytes] = {}      # what this node reports, by function
        self._reported: dict[str, Report] = {}  # the same, decoded (to skip encoding)
        #: reports by their stored bytes: the leader reads every report each pass, and
        #: an unchanged one (the same object) is folded from its cache (ClusterView)
        self._decoded: dict[bytes, Report] = {}
        self._written: dict[str, bytes | None] = {}  # what etcd has (as far as we know)
        self._dirty: set[str] = set()          # reports still to write or withdraw
        self._sending: set[str] = set()        # reports whose write is in flight
        self._writes = 0                       # report transactions in flight
        self._timers = NamedTimers(reactor)
        self._watches: list[EtcdWatch] = []
        self._listeners: list[Callable[[str | None], None]] = []
        self._failures = 0

    # -- public ----------------------------------------------------------------------
    def on_reports_changed(self, listener: Callable[[str | None], None]) -> None:
        """``listener(fn)`` when a report of ``fn`` changed; ``listener(None)`` when the
        set of live nodes changed."""
        self._listeners.append(listener)

    def report(self, name: str, report: Report | None) -> None:
        """Publish (or, with None, withdraw) this node's observation of ``name``."""
        if report is None:
            self._mine.pop(name, None)
            self._reported.pop(name, None)
        else:
            if self._reported.get(name) == report and name in self._mine:
                return  # unchanged (every full pass reports every function again)
            self._reported[name] = report
            self._mine[name] = report.encode()
        self._flush(name)

    def live(self) -> list[str]:
        return sorted(self.members)

    @inlineCallbacks
    def read_reports(self) -> Generator[Deferred[Any], Any, Reports]:
        """A fresh read for the leader: (reports by fn by node, live node ids), in pages
        of ``REPORT_PAGE`` at one revision, each parsed as it comes (10,000 reports in
        one answer were one reactor turn of ~0.1 s, every pass)."""
        (nodes,), revision = yield self.store.read_prefixes(self.node_prefix)
        live = sorted(self._node_of(kv.key) for kv in nodes)
        by_function: dict[str, dict[str, Report]] = {}
        after = b""
        while True:
            kvs, more = yield self.store.read_page(self.report_prefix, after, REPORT_PAGE,
                                                   revision)
            for kv in kvs:
                parsed = self._report_of(kv.key, kv.value)
                if parsed is not None:
                    by_function.setdefault(parsed[0], {})[parsed[1].node] = parsed[1]
            if not more or not kvs:
                return by_function, live
            after = kvs[-1].key

    # -- service ---------------------------------------------------------------------
    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]  # Twisted's Service is unannotated
        self._establish()
        self._list_and_watch()

    @inlineCallbacks
    def stopService(self) -> Generator[Deferred[Any], Any, None]:
        super().stopService()  # type: ignore[no-untyped-call]  # Twisted's Service is unannotated
        self._timers.cancel_all()
        for watch in self._watches:
            watch.cancel()
        self._watches = []
        lease, self.lease_id = self.lease_id, None
        if lease is not None:
            try:  # the node key and the reports go with it, at once
                yield self.store.lease_revoke(lease)
            except Exception as exc:
                log.warn("could not revoke node lease {lease}: {error}", lease=lease,
                         error=str(exc))

    # -- lease -----------------------------------------------------------------------
    def _establish(self) -> None:
        self._timers.fired("establish")
        if not self.running:
            return
        d = self._grant_and_register()
        d.addErrback(self._establish_failed)

    @inlineCallbacks
    def _grant_and_register(self) -> Generator[Deferred[Any], Any, None]:
        lease_id, granted = yield self.store.lease_grant(self.ttl)
        if not self.running:
            yield self.store.lease_revoke(lease_id)
            return
        self.lease_id = lease_id
        self._written.clear()
        yield self.store.put(self.store.key("node", self.node_id),
                             json.dumps(self.record, sort_keys=True).encode(), lease_id)
        self.registered = True
        self._failures = 0
        log.info("node {node} joined controller {controller} (lease {lease}, ttl {ttl}s)",
                 node=self.node_id, controller=self.store.controller, lease=lease_id,
                 ttl=granted)
        self._timers.later("keepalive", granted / 3.0, self._keepalive)
        for name in sorted(set(self._mine) | self._dirty):
            self._flush(name)

    def _establish_failed(self, failure: Any) -> None:
        if not self.running:
            return
        self._failures += 1
        delay = min(self.ttl / 3.0, 0.1 * 2 ** (self._failures - 1))
        log.warn("node {node}: cannot register in etcd ({error}); again in {delay}s",
                 node=self.node_id, error=failure.getErrorMessage(), delay=delay)
        self._timers.later("establish", delay, self._establish)

    def _keepalive(self) -> None:
        self._timers.fired("keepalive")
        lease = self.lease_id
        if lease is None or not self.running:
            return
        d = self.store.lease_keepalive(lease)

        def refreshed(remaining: int) -> None:
            if lease != self.lease_id or not self.running:
                return
            if remaining <= 0:
                log.warn("node {node}: its lease expired; registering again",
                         node=self.node_id)
                self.lease_id = None
                self.registered = False
                self._establish()
                return
            self._timers.later("keepalive", self.ttl / 3.0, self._keepalive)
            for name in sorted(self._dirty):
                self._flush(name)

        def failed(failure: Failure) -> None:
            if lease == self.lease_id and self.running:
                self._timers.later("keepalive", min(1.0, self.ttl / 3.0), self._keepalive)
        d.addCallbacks(refreshed, failed)

    def _flush(self, name: str) -> None:
        """Mark this node's report of ``name`` for writing; the writes of one reactor
        turn go out together (``_write_dirty``)."""
        self._dirty.add(name)
        if self.lease_id is not None and "flush" not in self._timers:
            self._timers.later("flush", 0, self._write_dirty)

    def _write_dirty(self) -> None:
        """Bring etcd's copy of this node's dirty reports in line, ``REPORT_BATCH`` keys
        per transaction and at most ``REPORT_WRITES`` transactions in flight: at start
        a node reports every function (10,000 one-key writes took most of a start-up's
        CPU, measured). A key already in flight waits for its write to finish (two
        writes of one key in flight could land in either order); a failure leaves the
        report dirty for the next keep-alive."""
        self._timers.fired("flush")
        lease = self.lease_id
        if lease is None or not self.running:
            return
        batch: list[tuple[str, bytes | None]] = []
        for name in sorted(self._dirty - self._sending):
            value = self._mine.get(name)
            if name in self._written and self._written[name] == value:
                self._dirty.discard(name)
                continue
            batch.append((name, value))
            if len(batch) == REPORT_BATCH:
                if self._writes >= REPORT_WRITES:
                    return  # the next one to finish starts the rest
                self._write(lease, batch)
                batch = []
        if batch and self._writes < REPORT_WRITES:
            self._write(lease, batch)

    def _write(self, lease: int, batch: list[tuple[str, bytes | None]]) -> None:
        names = {name for name, _ in batch}
        self._sending |= names
        self._writes += 1
        d = self.store.put_many([(self.store.key("report", name, self.node_id), value)
                                 for name, value in batch], lease)

        def done(_: object) -> None:
            if lease == self.lease_id:
                for name, value in batch:
                    self._written[name] = value
                    if self._mine.get(name) == value:
                        self._dirty.discard(name)

        def failed(failure: Failure) -> None:
            for name, _ in batch:
                self._written.pop(name, None)
            log.info("{count} reports not written yet ({error}); retried", count=len(batch),
                     error=failure.getErrorMessage())

        def finished(_: object) -> None:
            self._writes -= 1
            self._sending -= names
            if self._dirty - self._sending and self.lease_id is not None:
                self._timers.later("flush", 0, self._write_dirty)
        d.addCallbacks(done, failed)
        d.addBoth(finished)

    # -- watching the others -----------------------------------------------------------
    def _list_and_watch(self) -> None:
        self._timers.fired("watch")
        if not self.running:
            return
        for watch in self._watches:
            watch.cancel()
        self._watches = []

        def listed(result: tuple[list[list[Any]], int]) -> None:
            (nodes, reports), revision = result
            self.members = {}
            self.reports = {}
            for kv in nodes:
                self._apply_node(kv.key, kv.value)
            for kv in reports:
                self._apply_report(kv.key, kv.value)
            for prefix in (self.node_prefix, self.report_prefix):
                self._watches.append(self.store.watch_keys(
                    prefix, prefix_end(prefix), revision, self._events, self._lost))
            self._notify(None)

        def failed(failure: Failure) -> None:
            if self.running:
                self._timers.later("watch", 1.0, self._list_and_watch)
        d = self.store.read_prefixes(self.node_prefix, self.report_prefix)
        d.addCallbacks(listed, failed)

    def _lost(self, reason: Exception) -> None:
        if self.running and "watch" not in self._timers:
            self._timers.later("watch", 0.1, self._list_and_watch)

    def _events(self, events: list[KeyEvent]) -> None:
        touched: set[str | None] = set()
        for event in events:
            if event.key.startswith(self.node_prefix):
                self._apply_node(event.key, event.value)
                touched.add(None)
            else:
                name = self._apply_report(event.key, event.value)
                if name is not None:
                    touched.add(name)
        for name in touched:
            self._notify(name)

    def _node_of(self, key: bytes) -> str:
        return key[len(self.node_prefix):].decode("utf-8", "replace")

    def _apply_node(self, key: bytes, value: bytes | None) -> None:
        node = self._node_of(key)
        if value is None:
            if self.members.pop(node, None) is not None:
                log.info("node {other} left controller {controller}", other=node,
                         controller=self.store.controller)
            return
        try:
            record = json.loads(value)
        except ValueError:
            record = {}
        if node not in self.members and node != self.node_id:
            log.info("node {other} joined controller {controller}", other=node,
                     controller=self.store.controller)
        self.members[node] = record if isinstance(record, dict) else {}

    def _report_of(self, key: bytes, value: bytes) -> tuple[str, Report] | None:
        rest = key[len(self.report_prefix):].decode("utf-8", "replace")
        name, _, node = rest.partition("/")
        report = self._decoded.get(value)
        if report is None:
            try:
                report = Report.decode(value)
            except Exception:
                return None
            if len(self._decoded) >= DECODED_MAX:
                self._decoded.clear()
            self._decoded[bytes(value)] = report
        return (name, report) if node == report.node else None

    def _apply_report(self, key: bytes, value: bytes | None) -> str | None:
        rest = key[len(self.report_prefix):].decode("utf-8", "replace")
        name, _, node = rest.partition("/")
        if not name or not node:
            return None
        if value is None:
            self.reports.get(name, {}).pop(node, None)
            return name
        if node == self.node_id and self._mine.get(name) == value:
            # this node's own write coming back: no need to decode it again
            self.reports.setdefault(name, {})[node] = self._reported[name]
            return name
        parsed = self._report_of(key, value)
        if parsed is None:
            return None
        self.reports.setdefault(name, {})[node] = parsed[1]
        return name

    def _notify(self, name: str | None) -> None:
        for listener in list(self._listeners):
            try:
                listener(name)
            except Exception:
                log.failure("report listener failed")
