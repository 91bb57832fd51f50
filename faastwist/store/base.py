"""The FunctionStore interface shared by the etcd and in-memory stores.

A function may also have a third key, its invocation keys (hashes only).

Every write is a compare-and-swap on the mod revisions of *both* keys of a function
(spec and status), so an admin update racing a reconciler write never both win: the
loser gets Conflict and retries with fresh data.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Literal, Protocol, Sequence

import attrs
from twisted.internet.defer import Deferred

from faastwist.model.fsm import FunctionStatus
from faastwist.model.keys import KeySet
from faastwist.model.spec import FunctionSpec


class StoreError(Exception):
    """Base of the store's domain errors."""


class NotFound(StoreError):
    def __init__(self, name: str) -> None:
        super().__init__(f"function {name} not found")
        self.name = name


class AlreadyExists(StoreError):
    def __init__(self, name: str) -> None:
        super().__init__(f"function {name} already exists")
        self.name = name


class Conflict(StoreError):
    """A compare-and-swap lost: someone else wrote the function since it was read."""

    #: whether reading again and retrying can succeed (False: the write is refused)
    retryable = True

    def __init__(self, name: str) -> None:
        super().__init__(f"function {name} was changed concurrently; read it again and retry")
        self.name = name


class StoreUnavailable(StoreError):
    """The backing store cannot be reached (etcd down, timeout)."""


class Expired(StoreError):
    """A page was asked for at a revision the store has compacted away."""


class OutcomeUnknown(StoreUnavailable):
    """A write was sent but no answer came: it may or may not have been applied."""


class Fenced(StoreError):
    """A leader's write was refused: this node no longer holds the leader key."""


@attrs.frozen
class FunctionRecord:
    """A function's spec and status with the revisions they were read at."""

    spec: FunctionSpec
    status: FunctionStatus
    spec_revision: int = 0
    status_revision: int = 0

    @property
    def name(self) -> str:
        return self.spec.name

    def to_dict(self) -> dict:
        return {"spec": self.spec.to_dict(), "status": self.status.to_dict()}


@attrs.frozen
class Listing:
    """Every function of a controller, and the store revision the list was read at."""

    records: dict[str, FunctionRecord]
    revision: int
    keys: dict[str, KeySet] = attrs.field(factory=dict)   # functions that have keys


@attrs.frozen
class Page:
    """Up to ``limit`` functions in name order, read at ``revision``.

    ``remaining`` functions (in the same range) come after the last one; list the next
    page after ``last`` at the same revision for a consistent listing.
    """

    records: dict[str, FunctionRecord]
    revision: int
    remaining: int

    @property
    def last(self) -> str:
        return max(self.records) if self.records else ""


@attrs.frozen
class Change:
    """One key changed: ``value`` is None when the key was deleted."""

    name: str
    kind: Literal["spec", "status", "keys"]
    value: FunctionSpec | FunctionStatus | KeySet | None
    revision: int


class WatchHandle(Protocol):
    def cancel(self) -> None:
        """Stop delivering changes; idempotent."""


class FunctionStore(Protocol):
    """Specs and FSM records of one controller's functions."""

    controller: str

    def create(self, spec: FunctionSpec, status: FunctionStatus,
               fence: Sequence[Any] = ()) -> Deferred[FunctionRecord]:
        """Write both keys if the function does not exist, else AlreadyExists (Fenced
        when a leader's ``fence`` comparisons fail)."""

    def get(self, name: str) -> Deferred[FunctionRecord]:
        """The function by exact name, else NotFound."""

    def list(self) -> Deferred[Listing]:
        """All functions of the controller at one revision."""

    def list_page(self, after: str = "", limit: int = 500, revision: int = 0,
                  prefix: str = "") -> Deferred[Page]:
        """Functions named after ``after`` (and starting with ``prefix``) in name order,
        at most ``limit``, at ``revision`` (0: now); Expired when compacted away."""

    def update(self, expected: FunctionRecord, spec: FunctionSpec | None = None,
               status: FunctionStatus | None = None,
               fence: Sequence[Any] = ()) -> Deferred[FunctionRecord]:
        """Replace spec and/or status if neither changed since ``expected`` was read
        (and, for the leader, if the ``fence`` comparisons on its key still hold)."""

    def delete(self, expected: FunctionRecord, fence: Sequence[Any] = ()) -> Deferred[None]:
        """Remove both keys if neither changed since ``expected`` was read."""

    def watch(self, start_revision: int, on_changes: Callable[[Sequence[Change]], None],
              on_lost: Callable[[Exception], None]) -> WatchHandle:
        """Deliver changes after ``start_revision`` in order. ``on_lost`` is called once
        when the watch cannot resume without a gap (compaction, or the store was gone
        too long): the consumer must list again and start a new watch."""

    def check(self) -> Deferred[None]:
        """Succeeds when the store answers; StoreUnavailable otherwise."""

    def get_keys(self, name: str) -> Deferred[tuple[KeySet, int]]:
        """The function's invocation keys and their revision (0: none yet); NotFound
        when the function does not exist."""

    def put_keys(self, name: str, keys: KeySet, expected_revision: int) -> Deferred[int]:
        """Replace the keys if they did not change since ``expected_revision`` (else
        Conflict) and the function exists (else NotFound); the new revision. Deleting
        the function deletes its keys."""


class NodeStore(FunctionStore, Protocol):
    """A FunctionStore as a node holds it (node.py: ``NodeParts.store``)."""

    @property
    def endpoints(self) -> Sequence[str]:
        """Where other processes (the gate workers) reach this store; empty: only this
        process can (a ``MemoryStore``)."""


def encode_spec(spec: FunctionSpec) -> bytes:
    return json.dumps(spec.to_dict(), sort_keys=True).encode()


def encode_status(status: FunctionStatus) -> bytes:
    return json.dumps(status.to_dict(), sort_keys=True).encode()


#: Decoded values by their stored bytes. Every list (the route table's, each reconcile
#: pass, the admin API's) reads every function again, and validating a spec costs
#: about 0.15 ms: 1.5 s of a busy reactor per list at 10,000 functions. Records are
#: frozen, so one decoded value serves every reader of the same bytes.
_DECODED: dict[bytes, Any] = {}
_DECODED_MAX = 100_000


def _memo(data: bytes, decode: Callable[[bytes], Any]) -> Any:
    found = _DECODED.get(data)
    if found is None:
        found = decode(data)
        if len(_DECODED) >= _DECODED_MAX:
            _DECODED.clear()  # old revisions pile up on a busy controller: start over
        _DECODED[bytes(data)] = found
    return found


def _spec(data: bytes) -> FunctionSpec:
    return FunctionSpec.from_dict(json.loads(data))


def _status(data: bytes) -> FunctionStatus:
    return FunctionStatus.from_dict(json.loads(data))


def decode_spec(data: bytes) -> FunctionSpec:
    return _memo(b"p" + data, lambda d: _spec(d[1:]))


def decode_status(data: bytes) -> FunctionStatus:
    return _memo(b"s" + data, lambda d: _status(d[1:]))
