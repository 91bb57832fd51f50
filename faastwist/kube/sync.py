"""Make the store match the Function objects: the leader's side of the watch.

Level-triggered, one object at a time (a change that arrives while an object is being
handled runs it again afterwards): read the object, read the function, write the
difference through the same write path the APIs use (create; ``rollout`` for a new
spec; delete), then write the object's status when it says something new. Every store
write carries the leader's fence, and every Kubernetes write the resourceVersion the
object was read at, so an ex-leader's late write fails instead of undoing a newer one.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping, Optional, Sequence

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from faastwist.admin.rollout import rollout
from faastwist.kube.kubeapi import KubeAPI, KubeError
from faastwist.kube.objects import (
    ObjectRef,
    Resource,
    owner_of,
    patch_body,
    same_status,
    spec_from_object,
    status_of_problem,
    status_of_record,
)
from faastwist.kube.schema import FINALIZER
from faastwist.model.fsm import FunctionStatus, InvalidEvent
from faastwist.model.spec import FunctionSpec, SpecError
from faastwist.providers.base import Observation
from faastwist.store.base import FunctionRecord, FunctionStore, NotFound, StoreError
from faastwist.store.leader import NotLeader
from faastwist.util.times import parse_rfc3339

#: the provider's ``observe``: one observation per function it runs (all: names None)
Observe = Callable[[Optional[Sequence[str]]], Deferred[dict[str, Observation]]]

log = Logger()


#: seconds a resync's observation of every function stands for the objects it handles
SNAPSHOT_AGE = 2.0


class _Changed(Exception):
    """The object changed under a conditional write: its watch event runs it again."""


class FunctionSync:
    """Applies Function objects (``objects``, fed by the watch) to the store."""

    def __init__(self, api: KubeAPI, store: FunctionStore, clock: IReactorTime, *,
                 check_spec: Callable[[FunctionSpec], None], kick: Callable[[str], None],
                 fence: Callable[[], Sequence[Any]], is_leader: Callable[[], bool],
                 observe: Observe | None = None,
                 finalizer_timeout: float = 300.0,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.api = api
        self.store = store
        self.clock = clock
        self.check_spec = check_spec
        self.kick = kick
        self.fence = fence
        self.is_leader = is_leader
        self.observe = observe
        self.finalizer_timeout = finalizer_timeout
        self.wall_clock = wall_clock
        #: the objects as last listed or watched
        self.objects: dict[ObjectRef, dict[str, Any]] = {}
        #: objects seen deleted (a watch event, or missing from a list): their
        #: functions go; an object merely not known is never taken for deleted
        self.gone: set[ObjectRef] = set()
        #: set while this node leads and the watch runs; nothing is written otherwise
        self.active = False
        self._busy: set[ObjectRef] = set()
        self._again: set[ObjectRef] = set()
        self._warned: dict[ObjectRef, tuple[int, str]] = {}
        self._idle: list[Deferred[None]] = []
        #: (clock time, wall time, observations) of the last resync's one observe of
        #: every function
        self.snapshot: tuple[float, float, dict[str, Observation]] | None = None
        #: store and Kubernetes writes made (the tests count them: no duplicate work)
        self.writes = 0

    # -- scheduling ------------------------------------------------------------------
    def schedule(self, ref: ObjectRef) -> None:
        """Handle ``ref`` now, or once more after the run in progress."""
        if ref in self._busy:
            self._again.add(ref)
            return
        self._busy.add(ref)
        d = ensureDeferred(self._handle(ref))
        d.addErrback(self._failed, ref)
        d.addBoth(self._done, ref)

    def _failed(self, failure: Any, ref: ObjectRef) -> None:
        if failure.check(_Changed):
            return
        # a lost compare-and-swap (Conflict) needs no retry here: the write that won
        # changed the function, and that change runs this object again
        if failure.check(KubeError, StoreError, NotLeader, InvalidEvent):
            log.warn("{ref}: {error}; the next resync retries", ref=ref.owner,
                     error=failure.getErrorMessage())
            return
        log.failure("{ref} could not be applied", failure, ref=ref.owner)

    def _done(self, _: Any, ref: ObjectRef) -> None:
        self._busy.discard(ref)
        if ref in self._again:
            self._again.discard(ref)
            self.schedule(ref)
        elif not self._busy:
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)

    def settled(self) -> Deferred[None]:
        """Fires when no object is being handled (tests wait for it)."""
        d: Deferred[None] = Deferred()
        if not self._busy:
            d.callback(None)
        else:
            self._idle.append(d)
        return d

    # -- one object ------------------------------------------------------------------
    async def _handle(self, ref: ObjectRef) -> None:
        if not (self.active and self.is_leader()):
            return
        obj = self.objects.get(ref)
        if obj is None:
            if ref in self.gone:
                self.gone.discard(ref)
                await self.collect(ref)
            return
        metadata = obj.get("metadata") or {}
        finalizers = list(metadata.get("finalizers") or ())
        if metadata.get("deletionTimestamp"):
            if FINALIZER in finalizers:
                await self._finalize(ref, obj, finalizers)
            return
        if FINALIZER not in finalizers:
            obj = await self._patch(ref, obj, {"finalizers": finalizers + [FINALIZER]})
        try:
            spec = spec_from_object(ref, obj)
            try:
                self.check_spec(spec)
            except SpecError as exc:  # the provider names the spec's field
                raise SpecError(f"spec.{exc.path}" if exc.path else "spec",
                                exc.problem) from None
        except SpecError as exc:
            await self._problem(ref, obj, "InvalidSpec", f"invalid: {exc}")
            return
        record = await self._get(spec.name)
        now = self.wall_clock()
        if record is None:
            record = await self.store.create(spec, FunctionStatus.initial(spec.name, now),
                                             fence=self.fence())
            self.writes += 1
            log.info("{ref}: created function {name}", ref=ref.owner, name=spec.name)
            self.kick(spec.name)
        elif owner_of(record.spec) != ref.owner:
            owner = owner_of(record.spec) or "the REST API"
            await self._problem(ref, obj, "NameTaken",
                                f"metadata.name: function {spec.name} already exists and is "
                                f"managed by {owner}; this object is not applied")
            return
        elif record.spec != spec:
            record = await rollout(self.store, record, spec, now, self.fence())
            self.writes += 1
            log.info("{ref}: rolling out {digest}", ref=ref.owner,
                     digest=spec.digest())
            self.kick(spec.name)
        self._warned.pop(ref, None)
        await self._write_status(ref, obj, record)

    async def _get(self, name: str) -> FunctionRecord | None:
        try:
            return await self.store.get(name)
        except NotFound:
            return None

    async def _patch(self, ref: ObjectRef, obj: dict[str, Any],
                     metadata: dict[str, Any]) -> dict[str, Any]:
        """A merge patch of ``metadata`` at the resourceVersion ``obj`` was read at."""
        if not (self.active and self.is_leader()):
            raise _Changed()   # not leading any more: the next leader does it
        version = (obj.get("metadata") or {}).get("resourceVersion")
        try:
            written = await self.api.patch(ref.resource, ref.namespace, ref.name, {
                "metadata": {**metadata, "resourceVersion": version}})
        except KubeError as exc:
            if exc.status in (404, 409):
                raise _Changed() from None
            raise
        self.writes += 1
        self._remember(ref, written)
        return written

    def _remember(self, ref: ObjectRef, written: Any) -> None:
        """Keep what a write returned unless the watch brought a newer version."""
        current = self.objects.get(ref)
        if not isinstance(written, dict) or current is None:
            return
        try:
            newer = int(written["metadata"]["resourceVersion"]) >= int(
                current["metadata"]["resourceVersion"])
        except (KeyError, TypeError, ValueError):
            newer = True
        if newer:
            self.objects[ref] = written

    async def _put_status(self, ref: ObjectRef, obj: dict[str, Any],
                          status: dict[str, Any]) -> None:
        if same_status(obj.get("status"), status) or not self.is_leader():
            return
        version = (obj.get("metadata") or {}).get("resourceVersion")
        try:
            written = await self.api.patch_status(ref.resource, ref.namespace, ref.name, {
                "metadata": {"resourceVersion": version}, "status": patch_body(status)})
        except KubeError as exc:
            if exc.status in (404, 409):
                raise _Changed() from None
            raise
        self.writes += 1
        self._remember(ref, written)

    async def _write_status(self, ref: ObjectRef, obj: dict[str, Any],
                            record: FunctionRecord) -> None:
        ext, stopped = None, False
        snapshot = self.snapshot
        if (snapshot is not None and self.clock.seconds() - snapshot[0] < SNAPSHOT_AGE
                and record.status.updated <= snapshot[1]):
            # taken after the function's last state change: it still tells the truth
            observed = snapshot[2].get(record.name)
        elif self.observe is not None:
            try:
                observed = (await self.observe([record.name])).get(record.name)
            except Exception as exc:
                log.info("{ref}: no replica counts from the provider ({error})",
                         ref=ref.owner, error=str(exc))
                observed = None
        else:
            observed = None
        if observed is not None:
            ext, stopped = observed.ext_data, observed.stopped
        generation = int((obj.get("metadata") or {}).get("generation") or 0)
        status = status_of_record(record.spec, record.status, generation, ext, stopped,
                                  obj.get("status"), self.wall_clock())
        await self._put_status(ref, obj, status)

    async def _problem(self, ref: ObjectRef, obj: dict[str, Any], reason: str,
                       message: str) -> None:
        """An object faastwist does not apply: a condition naming why, and a Warning
        Event once per generation and message."""
        generation = int((obj.get("metadata") or {}).get("generation") or 0)
        await self._put_status(ref, obj, status_of_problem(
            reason, message, generation, obj.get("status"), self.wall_clock()))
        if self._warned.get(ref) == (generation, message):
            return
        self._warned[ref] = (generation, message)
        log.warn("{ref}: {message}", ref=ref.owner, message=message)
        await self._event(ref, obj, reason, message)

    async def _event(self, ref: ObjectRef, obj: dict[str, Any], reason: str,
                     message: str) -> None:
        metadata = obj.get("metadata") or {}
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.wall_clock()))
        body = {"apiVersion": "v1", "kind": "Event", "type": "Warning", "reason": reason,
                "message": message[:1024], "count": 1,
                "firstTimestamp": now, "lastTimestamp": now,
                "source": {"component": "faastwist"},
                "metadata": {"generateName": f"{ref.name}.", "namespace": ref.namespace},
                "involvedObject": {"apiVersion": ref.resource.api_version,
                                   "kind": ref.resource.kind, "namespace": ref.namespace,
                                   "name": ref.name, "uid": metadata.get("uid"),
                                   "resourceVersion": metadata.get("resourceVersion")}}
        try:
            await self.api.create_event(ref.namespace, body)
        except KubeError as exc:  # the condition says it already: an Event is a courtesy
            log.info("{ref}: Event not written ({error})", ref=ref.owner,
                     error=str(exc))

    # -- going away ------------------------------------------------------------------
    async def _finalize(self, ref: ObjectRef, obj: dict[str, Any],
                        finalizers: list[str]) -> None:
        """The object is being deleted: remove its function, then let the object go.
        Past ``finalizer_timeout`` since the deletion was asked, the object goes even
        when the function could not be removed (a later resync collects it)."""
        since = parse_rfc3339(str((obj.get("metadata") or {}).get("deletionTimestamp")))
        overdue = since is not None and self.wall_clock() - since > self.finalizer_timeout
        try:
            await self.collect(ref)
        except Exception as exc:
            if not overdue:
                raise
            log.warn("{ref}: deleted after {timeout}s without removing its "
                     "function ({error}); a later resync removes it", ref=ref.owner,
                     timeout=self.finalizer_timeout, error=str(exc))
        await self._patch(ref, obj, {"finalizers": [f for f in finalizers if f != FINALIZER]})
        log.info("{ref}: released", ref=ref.owner)

    async def collect(self, ref: ObjectRef) -> None:
        """Delete the function ``ref`` owns, if it still exists and is still its."""
        record = await self._get(ref.name)
        if record is None or owner_of(record.spec) != ref.owner or not (
                self.active and self.is_leader()):
            return
        await self.store.delete(record, fence=self.fence())
        self.writes += 1
        log.info("{ref}: deleted function {name}", ref=ref.owner, name=ref.name)
        self.kick(ref.name)

    def owned_functions(self, records: Mapping[str, FunctionRecord],
                        resource: Resource) -> dict[str, str]:
        """name -> owner of the functions owned by objects of ``resource``'s flavour."""
        prefix = ObjectRef(resource.flavour, "", "").owner.split(" ")[0] + " "
        return {name: owner for name, record in records.items()
                if (owner := owner_of(record.spec) or "").startswith(prefix)}


