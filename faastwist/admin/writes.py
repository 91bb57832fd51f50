"""One write policy and one error table for every API that changes functions.

The Easegress API, OpenFaaS's ``/system/*`` and (through them) the CLI write a
function the same way:

- **compare-and-swap**: a write names the revisions it was computed from, so two
  writers never both win silently;
- **re-read and re-apply after a status-only race**: the leader writes a function's
  status whenever a node reports (readiness, replica counts), which says nothing
  about the operator's intent; a write that lost to it is computed again from the
  fresh record and sent again;
- **409 only for a real conflict**: another writer changed the spec since the client
  read it (the client decided on a spec that is no longer there), or the fresh state
  refuses the event (the FSM's 409);
- **503 "outcome unknown"** when the store took a write and never answered.

``ANSWERS`` maps the domain errors to ``(code, message)`` for both APIs (each had a
copy, and they drifted: OpenFaaS answered an unknown outcome as "unavailable" and a
provider error as 500). ``Settle`` is how an answer waits for this node's gate
(read-your-writes, see ``node.py``).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, TypeVar

from twisted.internet.defer import Deferred

from faastwist.admin.codec import ApiError
from faastwist.model.fsm import FunctionStatus, InvalidEvent
from faastwist.model.spec import FunctionSpec, SpecError
from faastwist.providers.base import ProviderError
from faastwist.store.base import (
    AlreadyExists,
    Conflict,
    FunctionRecord,
    FunctionStore,
    NotFound,
    OutcomeUnknown,
    StoreUnavailable,
)
from faastwist.store.secrets import SecretExists, SecretNotFound

T = TypeVar("T")

#: Attempts of one write: the first and the re-applications after status-only races.
#: A status write needs a node's report to change; a handful in the time of one
#: round trip is the most a busy function sees (measured: 4 of 40 scales lost once).
WRITE_ATTEMPTS = 10

#: What a change computes from the fresh record: the spec and/or status to write
#: (None: leave it), or None for nothing to write (the record already says it).
Change = Callable[[FunctionRecord], Optional[tuple[Optional[FunctionSpec],
                                                   Optional[FunctionStatus]]]]
#: ``settle(revision)``: fires once this node's gate reflects the store at ``revision``.
Settle = Callable[[int], "Deferred[None]"]
Timed = Callable[["Deferred[Any]"], "Deferred[Any]"]


class SecretInUse(Exception):
    """A secret that functions name cannot be deleted (409 naming them)."""

    def __init__(self, name: str, users: list[str]) -> None:
        shown = ", ".join(users[:10]) + (f" and {len(users) - 10} more"
                                         if len(users) > 10 else "")
        super().__init__(f"secret {name} is used by function(s) {shown}; remove it from "
                         f"their secrets (or delete them) first")
        self.name = name
        self.users = users


#: (exception types, code, message) for every domain error; first match wins.
ANSWERS: tuple[tuple[tuple[type[Exception], ...], int, Callable[[BaseException], str]], ...] = (
    ((SpecError,), 400, str),
    ((NotFound, SecretNotFound), 404, str),
    ((AlreadyExists, Conflict, InvalidEvent, SecretExists, SecretInUse), 409, str),
    ((OutcomeUnknown,), 503, lambda e: f"outcome unknown: {e}"),
    ((StoreUnavailable,), 503, lambda e: f"function store unavailable: {e}"),
    ((ProviderError,), 502, lambda e: f"the provider could not be asked: {e}"),
)

#: Every type ``answer`` knows (for a Klein ``handle_errors``).
ANSWERED: tuple[type[Exception], ...] = tuple(
    kind for kinds, _, _ in ANSWERS for kind in kinds)


def answer(exc: BaseException) -> tuple[int, str, dict[str, str]] | None:
    """``(code, message, headers)`` for a domain error or an ApiError; None: a bug."""
    if isinstance(exc, ApiError):
        return exc.code, exc.message, exc.headers
    for kinds, code, message in ANSWERS:
        if isinstance(exc, kinds):
            return code, message(exc), {}
    return None


async def write(store: FunctionStore, record: FunctionRecord, change: Change,
                timed: Timed) -> FunctionRecord:
    """Write ``change(record)`` by compare-and-swap; after a race lost to a status
    write, read the function again and apply ``change`` to the fresh record. A spec
    changed since ``record`` was read is a real conflict (Conflict, 409)."""
    basis = record.spec_revision
    for attempt in range(WRITE_ATTEMPTS):
        wanted = change(record)
        if wanted is None:
            return record
        spec, status = wanted
        try:
            return await timed(store.update(record, spec=spec, status=status))
        except Conflict as exc:
            if not exc.retryable or attempt == WRITE_ATTEMPTS - 1:
                raise
            record = await timed(store.get(record.name))
            if record.spec_revision != basis:
                raise
    raise AssertionError("unreachable")


async def delete(store: FunctionStore, record: FunctionRecord,
                 check: Callable[[FunctionRecord], Any], timed: Timed) -> FunctionRecord:
    """Delete the function (``check(record)`` raises when its state refuses it), read
    again and re-checked after a race lost to a status write (a changed spec: 409);
    the record that was deleted."""
    basis = record.spec_revision
    for attempt in range(WRITE_ATTEMPTS):
        check(record)
        try:
            await timed(store.delete(record))
            return record
        except Conflict as exc:   # store/owned.py's Managed is never worth a re-read
            if not exc.retryable or attempt == WRITE_ATTEMPTS - 1:
                raise
            record = await timed(store.get(record.name))
            if record.spec_revision != basis:
                raise
    raise AssertionError("unreachable")


async def settled(settle: Settle | None, revision: int, result: T) -> T:
    """``result`` once this node's gate reflects ``revision`` (at once without
    ``settle``); ``settle`` bounds its own wait."""
    if settle is not None and revision > 0:
        await settle(revision)
    return result


def record_revision(record: FunctionRecord) -> int:
    """The store revision a node must have seen to route as ``record`` says (the
    keys' own revisions: the store's header revision also counts writes the route
    table never sees, reports and leases)."""
    return max(record.spec_revision, record.status_revision)


def listing_revision(records: Mapping[str, FunctionRecord]) -> int:
    """What ``record_revision`` is for a whole list."""
    return max((record_revision(r) for r in records.values()), default=0)


__all__ = ["ANSWERED", "ANSWERS", "Change", "SecretInUse", "Settle", "WRITE_ATTEMPTS",
           "answer", "delete", "listing_revision", "record_revision", "settled", "write"]
