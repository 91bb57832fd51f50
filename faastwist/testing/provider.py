"""An in-memory Provider for Clock-driven reconciler tests.

It keeps what a real provider would run (the deployed digest, whether it is stopped,
the verdict its backend reports) and answers synchronously, so a test drives passes
with ``task.Clock`` and inspects every call. Knobs simulate an unreachable backend,
a refused spec and a lost optimistic-concurrency race.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import attrs
from twisted.internet.defer import Deferred, fail, succeed

from faastwist.model.fsm import Event
from faastwist.providers.base import (
    Observation,
    ProviderConflict,
    ProviderError,
    ProviderRejected,
    StaticLease,
    Upstream,
)
from faastwist.model.spec import FunctionSpec
from faastwist.providers.registry import check_spec_for


@attrs.define
class Running:
    """One function as the fake backend runs it."""

    digest: str
    stopped: bool = False
    event: Event | None = None   # None: the backend has not looked at the latest change
    message: str = ""
    ext_data: dict[str, str] = attrs.field(factory=dict)


class FakeProvider:
    """A Provider; a node starts and stops it like the real ones (``startService``)."""

    kind = "fake"

    def __init__(self) -> None:
        self.running: dict[str, Running] = {}
        self.calls: list[tuple[str, str]] = []   # (verb, name) of every call, in order
        self.available = True
        self.reject: dict[str, str] = {}         # name -> refusal message for writes
        self.conflict_once: set[str] = set()     # names whose next write loses a race
        self.upstream = ("127.0.0.1", 80)        # where acquire sends every function
        self.started = False
        #: a backend ready as soon as it is told (every write's verdict: READY at once)
        self.ready_at_once = False

    # -- the node's start and stop: nothing runs in the background ----------------------
    def startService(self) -> None:
        self.started = True

    def stopService(self) -> None:
        self.started = False

    # -- test controls -----------------------------------------------------------------
    def report(self, name: str, event: Event | None, message: str = "",
               ext_data: Mapping[str, str] | None = None) -> None:
        """The backend's verdict on ``name`` (what Knative's conditions would say)."""
        running = self.running[name]
        running.event = event
        running.message = message
        running.ext_data = dict(ext_data or {})

    def verbs(self, verb: str) -> list[str]:
        return [name for v, name in self.calls if v == verb]

    # -- Provider ------------------------------------------------------------------------
    def _enter(self, verb: str, name: str) -> None:
        self.calls.append((verb, name))
        if not self.available:
            raise ProviderError(f"fake backend unreachable ({verb} {name})")

    def _write(self, verb: str, spec: FunctionSpec, stopped: bool | None) -> Deferred[None]:
        try:
            self._enter(verb, spec.name)
            if spec.name in self.conflict_once:
                self.conflict_once.discard(spec.name)
                raise ProviderConflict(f"{spec.name} changed meanwhile")
            if spec.name in self.reject:
                raise ProviderRejected(self.reject[spec.name])
            current = self.running.get(spec.name)
            if verb == "deploy":
                if current is not None:
                    raise ProviderConflict(f"{spec.name} exists")
                self.running[spec.name] = Running(spec.digest(), event=self._verdict())
            else:
                if current is None:
                    raise ProviderConflict(f"{spec.name} is gone")
                keep = current.stopped if stopped is None else stopped
                # a new template: the backend has to look at it again
                self.running[spec.name] = Running(spec.digest(), stopped=keep,
                                                  event=self._verdict())
        except Exception as exc:
            return fail(exc)
        return succeed(None)

    def _verdict(self) -> Event | None:
        return Event.READY if self.ready_at_once else None

    def check_spec(self, spec: FunctionSpec) -> None:
        check_spec_for("knative", spec)

    def observe(self, names: Sequence[str] | None = None) -> Deferred[dict[str, Observation]]:
        try:
            self._enter("observe", ",".join(names) if names is not None else "*")
        except ProviderError as exc:
            return fail(exc)
        scope = self.running if names is None else {
            n: self.running[n] for n in names if n in self.running}
        return succeed({
            name: Observation(name, r.digest, r.stopped, r.event, r.message, dict(r.ext_data))
            for name, r in scope.items()})

    def deploy(self, spec: FunctionSpec) -> Deferred[None]:
        return self._write("deploy", spec, False)

    def update(self, spec: FunctionSpec) -> Deferred[None]:
        return self._write("update", spec, None)

    def stop(self, spec: FunctionSpec) -> Deferred[None]:
        return self._write("stop", spec, True)

    def start(self, spec: FunctionSpec) -> Deferred[None]:
        return self._write("start", spec, False)

    def delete(self, name: str) -> Deferred[None]:
        try:
            self._enter("delete", name)
        except ProviderError as exc:
            return fail(exc)
        self.running.pop(name, None)
        return succeed(None)

    def acquire(self, spec: FunctionSpec) -> StaticLease:
        host, port = self.upstream
        return StaticLease(Upstream("http", host, port, f"{spec.name}.fake"))

    def check(self) -> Deferred[None]:
        if not self.available:
            return fail(ProviderError("fake backend unreachable"))
        return succeed(None)
