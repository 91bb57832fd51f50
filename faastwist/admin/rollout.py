"""The rolling update: a new spec for a function that keeps serving meanwhile.

Easegress's FSM refuses ``update`` while a function is active (stop, update, start:
downtime). A rollout writes the new spec and keeps an active function active; the
reconciler sees the digest differ and has the provider roll (new replicas or revision
first, traffic moves when they are ready, the old ones drain). A function that is not
active is updated as the FSM says (``update`` event). Shared by ``PUT .../rollout`` on
the admin API, OpenFaaS's ``PUT /system/functions`` and the CLI's ``update``.
"""

from __future__ import annotations

from typing import Any, Sequence

import attrs
from twisted.internet.defer import Deferred, succeed

from faastwist.model.fsm import ROLLOUT_KEY, Event, FunctionStatus, State, apply_event
from faastwist.model.spec import FunctionSpec
from faastwist.store.base import FunctionRecord, FunctionStore

def rolled(record: FunctionRecord, spec: FunctionSpec, now: float
           ) -> tuple[FunctionSpec, FunctionStatus] | None:
    """The spec and status a rollout of ``spec`` writes over ``record`` (None: nothing
    to write); an active function stays active (InvalidEvent if destroyed)."""
    status = record.status
    if status.state is State.ACTIVE:
        if spec == record.spec:
            return None
        ext = dict(status.ext_data)
        ext[ROLLOUT_KEY] = "in progress"
        status = attrs.evolve(status, message=f"rolling out a new version ({spec.digest()})",
                              ext_data=ext, updated=now, epoch=status.epoch + 1)
    else:
        status = apply_event(status, Event.UPDATE, now)
    return spec, status


def rollout(store: FunctionStore, record: FunctionRecord, spec: FunctionSpec,
            now: float, fence: Sequence[Any] = ()) -> Deferred[FunctionRecord]:
    """Write ``spec`` once (a lost race is the caller's: admin/writes.py re-reads);
    ``fence``: the leader's compares (kube/sync.py writes as the leader)."""
    wanted = rolled(record, spec, now)
    if wanted is None:
        return succeed(record)
    return store.update(record, spec=wanted[0], status=wanted[1], fence=fence)
