"""The Provider interface the reconciler and the gate talk to.

The reconciler is level-triggered: each pass it asks ``observe`` for the state of
every function of the controller in one call, compares that with the store and calls
deploy/update/stop/start/delete to converge. The gate asks ``acquire`` for an
upstream per request (which may wait while a replica starts from zero).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Protocol, Sequence

import attrs
from twisted.internet.defer import Deferred

from faastwist.model.fsm import Event
from faastwist.model.spec import FunctionSpec


class ProviderError(Exception):
    """The provider could not be asked (API down, timeout, auth). Retried next pass;
    never marks a function failed by itself."""


class ProviderConflict(ProviderError):
    """The object changed between the observation and the write (e.g. Kubernetes 409 on a
    stale resourceVersion): not a failure, the next pass works from fresh data."""


class ProviderRejected(ProviderError):
    """The provider refused what the spec asks for (e.g. a 422 from the API server, a
    name taken by something this controller does not manage): the function cannot run,
    so the reconciler records an error with this message instead of retrying silently."""


class NoCapacity(Exception):
    """No replica could serve in time (cold start timed out); the gate answers 503."""

    def __init__(self, message: str, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@attrs.frozen
class Observation:
    """What the provider reports about one function it runs.

    ``event`` is None while the provider has not yet acted on the latest change (for
    Knative: ``observedGeneration != generation``): nothing is concluded then.
    """

    name: str
    digest: str = ""          # FunctionSpec.digest() of what is deployed
    stopped: bool = False     # scaled to zero by a stop
    event: Event | None = None
    message: str = ""
    ext_data: Mapping[str, str] = attrs.field(factory=dict)
    #: a rolling update is not live (yet, or failed) but the previous version still
    #: serves: an active function stays active, with the reason in its status
    serving_previous: bool = False
    #: the status epoch every node acted on before observing this (node-local
    #: providers); None: not tied to one (a provider observed directly)
    epoch: int | None = None


@attrs.frozen
class Upstream:
    """Where the gate sends a request, and the Host header it sends."""

    scheme: str
    host: str
    port: int
    host_header: str

    @property
    def origin(self) -> bytes:
        return f"{self.scheme}://{self.host}:{self.port}".encode()


class UpstreamLease(Protocol):
    """One request's hold on an upstream; ``release`` when the response is done."""

    @property
    def upstream(self) -> Upstream: ...   # read-only: a frozen lease qualifies

    def release(self) -> None: ...

    def notify_lost(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(why)`` if the upstream dies while the lease is held (a local
        replica exited: the request ends at once); a lease on an upstream the node does
        not run never calls it."""


@attrs.frozen
class StaticLease:
    """A lease on an upstream that needs no accounting (Knative: kourier does it)."""

    upstream: Upstream

    def release(self) -> None:
        return None

    def notify_lost(self, callback: Callable[[str], None]) -> None:
        return None  # shared by every request to the function: nothing to tell


class Provider(Protocol):
    """What runs the functions: Knative services, or local processes.

    The reconciler drives the lifecycle calls (``deploy`` .. ``delete``) from what
    ``observe`` reports; the gate only calls ``acquire``; the admin API only calls
    ``check_spec`` (so a slow backend cannot hang it) and the ops endpoints ``check``.
    Every call that talks to the backend returns a Deferred and never blocks the
    reactor. A provider is also an ``IService``: the node starts and stops it.

    Optional capabilities are separate protocols that the provider's registry entry
    hands out typed with it (``registry.ProviderParts``): ``ChangeNotifier`` (it
    reports changes between reconcile passes), ``LogSource`` (it serves function logs)
    and ``SecretConsumer`` (it gives functions their secrets).
    """

    kind: str

    def check_spec(self, spec: FunctionSpec) -> None:
        """Raise SpecError for what this provider cannot run."""

    def observe(self, names: Sequence[str] | None = None) -> Deferred[dict[str, Observation]]:
        """Observations of the controller's functions (all of them when ``names`` is None)
        in one call; a function the provider does not run is absent from the result."""

    def deploy(self, spec: FunctionSpec) -> Deferred[None]:
        """Create the function (it is absent)."""

    def update(self, spec: FunctionSpec) -> Deferred[None]:
        """Make the running function match ``spec`` (its digest differs)."""

    def stop(self, spec: FunctionSpec) -> Deferred[None]:
        """Scale to zero and keep it that way until ``start``."""

    def start(self, spec: FunctionSpec) -> Deferred[None]:
        """Undo ``stop``: the spec's minReplica again."""

    def delete(self, name: str) -> Deferred[None]:
        """Remove everything of the function; already gone is success."""

    def acquire(self, spec: FunctionSpec) -> UpstreamLease | Deferred[UpstreamLease]:
        """An upstream for one request; may wait (scale from zero) or fail with NoCapacity."""

    def check(self) -> Deferred[None]:
        """Succeeds when the provider's backend answers (for /readyz)."""


class ServiceProvider(Provider, Protocol):
    """A provider the node runs: started and stopped with the node like its services
    (a worker's ``RemoteProvider`` only routes, so it is a plain ``Provider``)."""

    def startService(self) -> None:
        """Start the provider's own work (watches, supervisors)."""

    def stopService(self) -> object:
        """Stop it; a Deferred when stopping takes time (``Service.stopService``)."""


@attrs.frozen
class LogLine:
    """One line a function wrote (OpenFaaS's log message shape)."""

    name: str
    instance: str
    timestamp: float
    text: str

    def to_dict(self) -> dict[str, object]:
        from datetime import datetime, timezone

        stamp = datetime.fromtimestamp(self.timestamp, tz=timezone.utc)
        return {"name": self.name, "instance": self.instance,
                "timestamp": stamp.isoformat().replace("+00:00", "Z"), "text": self.text}


class ChangeNotifier(Protocol):
    """A provider that notices changes on its own (a replica became ready, a crash loop).

    The node sets ``on_change`` to the reconciler's ``kick``, so the FSM follows at once
    instead of at the next ``syncInterval``; None (the default) turns it off.
    """

    on_change: Callable[[str], None] | None


class LogSource(Protocol):
    """Function logs for the admin API's ``/{fn}/logs`` (a provider may offer it)."""

    def read_logs(self, name: str, tail: int | None = None,
                  since: float | None = None) -> Deferred[list[LogLine]]:
        """Recent lines, oldest first: the last ``tail`` ones, none older than ``since``."""

    def follow_logs(self, name: str, on_line: Callable[[LogLine], None]) -> Callable[[], None]:
        """Call ``on_line`` for each new line until the returned function is called."""


class SecretConsumer(Protocol):
    """A provider that hands functions their secrets (read from the node's secret store,
    which the node sets once it has it)."""

    secrets: Any   # store.secrets.Secrets, or None: no secrets

    def refresh_secrets(self) -> Deferred[None] | None:
        """A secret was replaced: give running functions the new value now (None: the
        provider gives secrets only when it deploys or updates a function)."""
