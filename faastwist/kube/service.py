"""The Function watch as a service: lists and watches on the leader only.

For each kind of object (faastwist's, and OpenFaaS's when its CRD is installed): list,
hand every object to ``FunctionSync``, then watch from the list's resourceVersion
(bookmarks move it on; a clean end of the stream resumes from it; 410 Gone or a broken
stream lists again). Every ``resync`` seconds each object is handled again (replica
counts change without an event) and functions whose object is gone are deleted. A node
that stops leading closes its streams at once and forgets what it saw.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet.defer import ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from faastwist.config import KubernetesConfig
from faastwist.kube.kubeapi import KubeAPI, KubeError, WatchStream, load_api_client
from faastwist.kube.objects import RESOURCES, ObjectRef, Resource, ref_of
from faastwist.kube.sync import FunctionSync, Observe
from faastwist.providers.base import Observation

log = Logger()

#: seconds before a failed list is tried again
RETRY_DELAY = 1.0


class FunctionWatch(Service):
    """Lists and watches Function objects in ``namespace`` ("": every namespace)."""

    name = "kubernetes-functions"

    def __init__(self, api: KubeAPI, sync: FunctionSync, clock: IReactorTime,
                 namespace: str, resync: float = 10.0,
                 resources: tuple[Resource, ...] = RESOURCES) -> None:
        self.api = api
        self.sync = sync
        self.clock = clock
        self.namespace = namespace
        self.resync = resync
        self.resources = resources
        self.leading = False
        self.versions: dict[Resource, str] = {}
        self.listed: set[Resource] = set()
        self.streams: dict[Resource, WatchStream] = {}
        self.lists = 0   # how many lists were made (the tests watch it across a 410)
        self._loop: LoopingCall | None = None
        self._missing: set[Resource] = set()
        self._retry: dict[Resource, Any] = {}
        self._delays: dict[Resource, float] = {}
        self._listing: set[Resource] = set()
        #: counts terms of leadership: an answer to an earlier one is dropped
        self.term = 0

    def startService(self) -> None:
        super().startService()
        self.api.start()
        if self.sync.is_leader():
            self.leadership_changed(True)

    def stopService(self) -> None:
        super().stopService()
        self.leadership_changed(False)
        self.api.stop()

    def leadership_changed(self, leader: bool) -> None:
        if leader and self.running and not self.leading:
            self.leading = True
            self.term += 1
            self.sync.active = True
            log.info("leading: watching Function objects")
            self._loop = LoopingCall(self._resync)
            self._loop.clock = self.clock
            self._loop.start(self.resync, now=True)
        elif not leader and self.leading:
            self.leading = False
            self.sync.active = False
            if self._loop is not None and self._loop.running:
                self._loop.stop()
            for call in self._retry.values():
                if call.active():
                    call.cancel()
            self._retry.clear()
            self._listing.clear()
            for stream in self.streams.values():
                stream.close()
            self.streams.clear()
            self.listed.clear()
            self.versions.clear()
            self.sync.objects.clear()
            self.sync.gone.clear()

    def function_changed(self, name: str) -> None:
        """A function's record changed in the store: its object's status may be due."""
        if not self.leading:
            return
        for ref in [ref for ref in self.sync.objects if ref.name == name]:
            self.sync.schedule(ref)

    # -- list, then watch --------------------------------------------------------------
    def _resync(self) -> None:
        for resource in self.resources:
            if resource not in self.streams and resource not in self._retry:
                self._list(resource)
        if self.sync.observe is None or not self.sync.objects:
            self._handle_all()
            return
        # one observation of every function for the whole pass (for Knative one LIST,
        # instead of a GET per object)
        taken = self.sync.wall_clock()
        d = self.sync.observe(None)

        def observed(result: dict[str, Observation]) -> None:
            self.sync.snapshot = (self.clock.seconds(), taken, dict(result))
            self._handle_all()

        def failed(failure: Any) -> None:
            log.info("resync without the provider's replica counts: {error}",
                     error=failure.getErrorMessage())
            self._handle_all()
        d.addCallbacks(observed, failed)

    def _handle_all(self) -> None:
        if not self.leading:
            return
        for ref in list(self.sync.objects):
            self.sync.schedule(ref)

    def _list(self, resource: Resource) -> None:
        if resource in self._listing:
            return   # one list at a time per kind
        self.lists += 1
        self._listing.add(resource)
        term = self.term
        d = self.api.list(resource, self.namespace)

        def answered(result: Any) -> Any:
            if not (self.leading and self.term == term):
                return None
            self._listing.discard(resource)
            return result
        d.addBoth(answered)
        d.addCallbacks(self._listed, self._list_failed, callbackArgs=(resource,),
                       errbackArgs=(resource,))

    def _listed(self, listing: dict[str, Any] | None, resource: Resource) -> None:
        if listing is None:
            return   # an answer to an earlier term of leadership
        if resource in self._missing:
            self._missing.discard(resource)
            log.info("{kind}.{group} objects are watched", kind=resource.kind,
                     group=resource.group)
        seen = {}
        for item in listing.get("items") or ():
            ref = ref_of(resource, item)
            seen[ref] = item
        gone = [ref for ref in self.sync.objects
                if ref.flavour is resource.flavour and ref not in seen]
        for ref in gone:
            del self.sync.objects[ref]
            self.sync.gone.add(ref)
        self.sync.objects.update(seen)
        self.sync.gone.difference_update(seen)
        self.listed.add(resource)
        self._delays.pop(resource, None)
        self.versions[resource] = str((listing.get("metadata") or {}).get("resourceVersion")
                                      or "")
        for ref in list(seen) + gone:
            self.sync.schedule(ref)
        ensureDeferred(self._collect_orphans(resource, set(seen))).addErrback(
            lambda f: log.warn("orphaned functions not collected: {error}",
                               error=f.getErrorMessage()))
        self._watch(resource)

    def _list_failed(self, failure: Any, resource: Resource) -> None:
        if not failure.check(KubeError):
            log.failure("listing {kind}.{group} failed", failure, kind=resource.kind,
                        group=resource.group)
            self._later(resource, self._list)
            return
        exc = failure.value
        if exc.status == 404:
            if resource not in self._missing:
                self._missing.add(resource)
                log.info("no {kind}.{group} resource in the Kubernetes API (CRD not "
                         "installed): not watched until it is", kind=resource.kind,
                         group=resource.group)
            return  # the next resync looks again
        log.warn("listing {kind}.{group} failed: {error}", kind=resource.kind,
                 group=resource.group, error=str(exc))
        self._later(resource, self._list)

    def _later(self, resource: Resource, what: Any) -> None:
        """Try again after a delay that doubles while failures last (up to ``resync``),
        so a missing permission or a down apiserver costs one call per interval."""
        delay = self._delays.get(resource, RETRY_DELAY / 2) * 2
        self._delays[resource] = delay = min(delay, max(self.resync, RETRY_DELAY))

        def run() -> None:
            self._retry.pop(resource, None)
            if self.leading:
                what(resource)
        self._retry[resource] = self.clock.callLater(delay, run)

    async def _collect_orphans(self, resource: Resource, present: set[ObjectRef]) -> None:
        """Delete functions whose owning object is not in the listing (deleted while no
        leader watched, or its finalizer removed by hand)."""
        owners = {ref.owner for ref in present}
        listing = await self.sync.store.list()
        for name, owner in self.sync.owned_functions(listing.records, resource).items():
            namespace = owner.split(" ", 1)[1].split("/", 1)[0]
            if owner in owners or (self.namespace and namespace != self.namespace):
                continue
            ref = ObjectRef(resource.flavour, namespace, name)
            if ref not in self.sync.objects and self.leading:
                self.sync.gone.add(ref)   # not in the listing: its function goes
                self.sync.schedule(ref)

    def _watch(self, resource: Resource) -> None:
        old = self.streams.pop(resource, None)
        if old is not None:
            old.close()
        self.streams[resource] = self.api.watch(
            resource, self.namespace, self.versions.get(resource, ""),
            lambda kind, obj: self._event(resource, kind, obj),
            lambda error: self._ended(resource, error))

    def _event(self, resource: Resource, kind: str, obj: dict[str, Any]) -> None:
        if not self.leading:
            return
        version = str((obj.get("metadata") or {}).get("resourceVersion") or "")
        if kind == "ERROR":
            code = obj.get("code")
            log.info("the {kind} watch ended with {code} {reason}: listing again",
                     kind=resource.kind, code=code, reason=obj.get("reason"))
            stream = self.streams.pop(resource, None)
            if stream is not None:
                stream.close()
            self._list(resource)
            return
        if version:
            self.versions[resource] = version
        if kind == "BOOKMARK":
            return
        ref = ref_of(resource, obj)
        if kind == "DELETED":
            self.sync.objects.pop(ref, None)
            self.sync.gone.add(ref)
        elif kind in ("ADDED", "MODIFIED"):
            self.sync.objects[ref] = obj
            self.sync.gone.discard(ref)
        else:
            return
        self.sync.schedule(ref)

    def _ended(self, resource: Resource, error: KubeError | None) -> None:
        self.streams.pop(resource, None)
        if not self.leading:
            return
        if error is None:
            self._watch(resource)   # the server's timeout: resume where it was
            return
        log.info("the {kind} watch broke ({error}): listing again", kind=resource.kind,
                 error=str(error))
        self._later(resource, self._list)


def build_watch(config: KubernetesConfig, fallback_kubeconfig: str, store: Any,
                reactor: Any, *, check_spec: Callable[[Any], None],
                kick: Callable[[str], None], leader: Any,
                observe: Observe | None,
                resync: float,
                api_client: Any = None) -> FunctionWatch:
    """The service for ``kubernetes.functions: watch``: credentials from
    ``kubernetes.kubeconfig``, else ``fallback_kubeconfig`` (knative's), else the
    in-cluster service account."""
    if api_client is None:
        key = "kubernetes.kubeconfig" if config.kubeconfig else "knative.kubeconfig"
        api_client = load_api_client(config.kubeconfig or fallback_kubeconfig, key)
    api = KubeAPI(api_client, reactor, config.timeout)
    sync = FunctionSync(api, store, reactor, check_spec=check_spec, kick=kick,
                        fence=leader.fence, is_leader=leader.is_leader, observe=observe,
                        finalizer_timeout=config.finalizer_timeout)
    resources = RESOURCES if config.openfaas else RESOURCES[:1]
    return FunctionWatch(api, sync, reactor, config.namespace, resync, resources)
