"""The REST APIs' view of the store: functions owned by a Kubernetes object are
read-only there.

A function made from a Function object carries ``faastwist.io/managed-by`` in its
spec's annotations. Through this wrapper a write to such a function (update, rollout,
start, stop, scale, delete) is a ``Managed`` conflict (409 "managed by Function
ns/name"), and no spec written through an API may carry the annotation (400 naming
it), so a function made through an API is never taken over by the watch. Reads,
invocation keys and everything else pass through unchanged.
"""

from __future__ import annotations

from typing import Any, Sequence

from twisted.internet.defer import Deferred, fail

from faastwist.model.fsm import FunctionStatus
from faastwist.model.spec import FunctionSpec, SpecError
from faastwist.store.base import Conflict, FunctionRecord

#: the spec annotation that marks a function as owned by a Kubernetes object
#: ("Function ns/name"); faastwist/kube/ writes it
MANAGED_BY = "faastwist.io/managed-by"


class Managed(Conflict):
    """A REST write to a function a Kubernetes object owns."""

    retryable = False

    def __init__(self, name: str, owner: str) -> None:
        super().__init__(name)
        self.args = (f"function {name} is managed by {owner}: change or delete that "
                     f"object instead (kubectl edit/delete), or remove the function from it",)
        self.owner = owner

    def __str__(self) -> str:
        return str(self.args[0])


def check_writable(record: FunctionRecord) -> None:
    """Raise Managed for a function an object owns (before any FSM check, so that the
    409 names the owner rather than the function's state)."""
    owner = record.spec.annotations.get(MANAGED_BY)
    if owner:
        raise Managed(record.name, owner)


def _refuse_marker(spec: FunctionSpec | None) -> None:
    if spec is not None and MANAGED_BY in spec.annotations:
        raise SpecError(f"annotations.{MANAGED_BY}", "is set by faastwist for functions "
                                                     "made from Kubernetes objects only")


class ManagedGuard:
    """Wraps a FunctionStore for the admin and OpenFaaS APIs."""

    def __init__(self, store: Any) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    @staticmethod
    def _owned(record: FunctionRecord) -> Managed | None:
        owner = record.spec.annotations.get(MANAGED_BY)
        return Managed(record.name, owner) if owner else None

    def create(self, spec: FunctionSpec, status: FunctionStatus,
               fence: Sequence[Any] = ()) -> Deferred[FunctionRecord]:
        try:
            _refuse_marker(spec)
        except SpecError as exc:
            return fail(exc)
        return self._store.create(spec, status, fence)

    def update(self, expected: FunctionRecord, spec: FunctionSpec | None = None,
               status: FunctionStatus | None = None,
               fence: Sequence[Any] = ()) -> Deferred[FunctionRecord]:
        owned = self._owned(expected)
        if owned is not None:
            return fail(owned)
        try:
            _refuse_marker(spec)
        except SpecError as exc:
            return fail(exc)
        return self._store.update(expected, spec=spec, status=status, fence=fence)

    def delete(self, expected: FunctionRecord, fence: Sequence[Any] = ()) -> Deferred[None]:
        owned = self._owned(expected)
        if owned is not None:
            return fail(owned)
        return self._store.delete(expected, fence)
