"""An in-memory FunctionStore with etcd's revision semantics, for unit tests.

It shares the contract test suite with the etcd store, so code tested against it
behaves the same against etcd. Watches are delivered synchronously.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import attrs
from twisted.internet.defer import Deferred, fail, succeed

from faastwist.model.fsm import FunctionStatus
from faastwist.model.keys import KeySet
from faastwist.model.spec import FunctionSpec
from faastwist.store.base import (
    AlreadyExists,
    Change,
    Conflict,
    Expired,
    Fenced,
    FunctionRecord,
    Listing,
    NotFound,
    Page,
    StoreUnavailable,
)


@attrs.frozen
class MemoryFence:
    """A leader's write condition on a memory store (``AlwaysLeader.fence``): it holds
    while ``now()`` still gives ``term`` (the term and the holder now; etcd's fence
    compares the leader key's revision and value the same way)."""

    term: int
    now: Callable[[], tuple[int, str | None]]


def _check_fence(fence: Sequence[Any]) -> None:
    """Fenced when a ``MemoryFence``'s term ended (other conditions, tests' tokens or
    etcd's comparisons, have nothing to compare against here)."""
    for condition in fence:
        if not isinstance(condition, MemoryFence):
            continue
        term, holder = condition.now()
        if term != condition.term:
            raise Fenced(f"not written: this node no longer holds the leader key "
                         f"(its holder: {holder or 'none'})")


@attrs.define
class _MemoryWatch:
    store: "MemoryStore"
    on_changes: Callable[[Sequence[Change]], None]
    on_lost: Callable[[Exception], None]
    active: bool = True

    def cancel(self) -> None:
        self.active = False
        if self in self.store._watches:
            self.store._watches.remove(self)


class MemoryStore:
    """Keeps records in a dict; ``available = False`` simulates an unreachable store."""

    def __init__(self, controller: str = "faascontroller") -> None:
        self.controller = controller
        self.revision = 1
        self.available = True
        self._records: dict[str, FunctionRecord] = {}
        self._keys: dict[str, tuple[KeySet, int]] = {}
        self._history: list[Change] = []
        self._watches: list[_MemoryWatch] = []
        self.writes = 0
        #: pages at an older revision fail as etcd's do once compacted (test hook: compact)
        self.compacted = 0
        #: where other processes reach this store: none (gate workers need etcd)
        self.endpoints: tuple[str, ...] = ()
        #: sealed secrets by name, with their revision (store/secrets.py MemorySecrets)
        self.secrets: dict[str, tuple[bytes, int]] = {}

    def _check(self) -> None:
        if not self.available:
            raise StoreUnavailable("memory store marked unavailable")

    def _emit(self, changes: list[Change]) -> None:
        self._history.extend(changes)
        for watch in list(self._watches):
            if watch.active:
                watch.on_changes(changes)

    def create(self, spec: FunctionSpec, status: FunctionStatus,
               fence: Sequence[Any] = ()) -> Deferred[FunctionRecord]:
        try:
            self._check()
            _check_fence(fence)
            if spec.name in self._records:
                raise AlreadyExists(spec.name)
        except Exception as exc:
            return fail(exc)
        self.revision += 1
        self.writes += 1
        record = FunctionRecord(spec, status, self.revision, self.revision)
        self._records[spec.name] = record
        self._emit([Change(spec.name, "spec", spec, self.revision),
                    Change(spec.name, "status", status, self.revision)])
        return succeed(record)

    def get(self, name: str) -> Deferred[FunctionRecord]:
        try:
            self._check()
            return succeed(self._records[name])
        except KeyError:
            return fail(NotFound(name))
        except Exception as exc:
            return fail(exc)

    def list(self) -> Deferred[Listing]:
        try:
            self._check()
        except Exception as exc:
            return fail(exc)
        return succeed(Listing(dict(self._records), self.revision,
                               {name: keys for name, (keys, _) in self._keys.items()}))

    def list_page(self, after: str = "", limit: int = 500, revision: int = 0,
                  prefix: str = "") -> Deferred[Page]:
        """A page of the current records (memory keeps no history: ``revision`` only
        comes back in the page, as etcd's would; Expired below ``compact``'s revision)."""
        try:
            self._check()
        except Exception as exc:
            return fail(exc)
        if 0 < revision < self.compacted:
            return fail(Expired(f"revision {revision} was compacted (at {self.compacted})"))
        names = sorted(n for n in self._records if n > after and n.startswith(prefix))
        chosen = names[:limit]
        return succeed(Page({n: self._records[n] for n in chosen}, revision or self.revision,
                            len(names) - len(chosen)))

    def _current(self, expected: FunctionRecord) -> FunctionRecord:
        self._check()
        current = self._records.get(expected.name)
        if current is None:
            raise NotFound(expected.name)
        if (current.spec_revision, current.status_revision) != (
                expected.spec_revision, expected.status_revision):
            raise Conflict(expected.name)
        return current

    def update(self, expected: FunctionRecord, spec: FunctionSpec | None = None,
               status: FunctionStatus | None = None, fence: Sequence[Any] = ()) -> Deferred[FunctionRecord]:
        try:
            self._check()
            _check_fence(fence)
            current = self._current(expected)
        except Exception as exc:
            return fail(exc)
        if spec is None and status is None:
            return succeed(current)
        self.revision += 1
        self.writes += 1
        changes = []
        record = current
        if spec is not None:
            record = attrs.evolve(record, spec=spec, spec_revision=self.revision)
            changes.append(Change(record.name, "spec", spec, self.revision))
        if status is not None:
            record = attrs.evolve(record, status=status, status_revision=self.revision)
            changes.append(Change(record.name, "status", status, self.revision))
        self._records[record.name] = record
        self._emit(changes)
        return succeed(record)

    def delete(self, expected: FunctionRecord, fence: Sequence[Any] = ()) -> Deferred[None]:
        try:
            self._check()
            _check_fence(fence)
            self._current(expected)
        except Exception as exc:
            return fail(exc)
        self.revision += 1
        self.writes += 1
        del self._records[expected.name]
        changes = [Change(expected.name, "spec", None, self.revision),
                   Change(expected.name, "status", None, self.revision)]
        if self._keys.pop(expected.name, None) is not None:
            changes.append(Change(expected.name, "keys", None, self.revision))
        self._emit(changes)
        return succeed(None)

    def get_keys(self, name: str) -> Deferred[tuple[KeySet, int]]:
        try:
            self._check()
            if name not in self._records:
                raise NotFound(name)
        except Exception as exc:
            return fail(exc)
        return succeed(self._keys.get(name, (KeySet(), 0)))

    def put_keys(self, name: str, keys: KeySet, expected_revision: int) -> Deferred[int]:
        try:
            self._check()
            if name not in self._records:
                raise NotFound(name)
            if self._keys.get(name, (None, 0))[1] != expected_revision:
                raise Conflict(name)
        except Exception as exc:
            return fail(exc)
        self.revision += 1
        self.writes += 1
        self._keys[name] = (keys, self.revision)
        self._emit([Change(name, "keys", keys, self.revision)])
        return succeed(self.revision)

    def watch(self, start_revision: int, on_changes: Callable[[Sequence[Change]], None],
              on_lost: Callable[[Exception], None]) -> _MemoryWatch:
        handle = _MemoryWatch(self, on_changes, on_lost)
        backlog = [c for c in self._history if c.revision > start_revision]
        if backlog:
            on_changes(backlog)
        self._watches.append(handle)
        return handle

    def compact(self) -> None:
        """Test hook: forget the history before now, as etcd's compaction does."""
        self.compacted = self.revision

    def lose_watches(self, reason: Exception) -> None:
        """Test hook: end every watch as a compaction would."""
        for watch in list(self._watches):
            watch.cancel()
            watch.on_lost(reason)

    def check(self) -> Deferred[None]:
        try:
            self._check()
        except Exception as exc:
            return fail(exc)
        return succeed(None)
