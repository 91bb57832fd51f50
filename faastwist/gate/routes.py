"""The per-node route table: every function's spec and state, kept current by a watch.

Each node lists the store once at start, then follows its watch from the listing's
revision, so a stop, start or update written on any node changes the routes of every
node within one watch event (not one sync interval). When the watch is lost (etcd
compacted past it, or was gone too long) the table lists again and re-watches,
serving the old routes meanwhile. What the gate needs per request (the compiled
request adaptor, the name as bytes) is computed here when a route changes, so the hot
path is one dict lookup.
"""

from __future__ import annotations

from typing import Callable, Sequence

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from faastwist.model.fsm import FunctionStatus, State
from faastwist.model.keys import KeySet
from faastwist.gate.adaptor import CompiledAdaptor, compile_adaptor
from faastwist.gate.upstream import Origin
from faastwist.metrics import FunctionCounts, Metrics
from faastwist.model.spec import FunctionSpec
from faastwist.providers.base import Upstream
from faastwist.store.base import Change, FunctionStore, Listing, WatchHandle

log = Logger()

_NO_KEYS = KeySet()
#: Routes built per reactor turn when the whole table is rebuilt.
CHUNK = 500
_NO_DIGESTS: frozenset[bytes] = frozenset()


class RouteCache:
    """The per-function hot-path objects the gate keeps on a route (a new route version
    starts empty)."""

    __slots__ = ("upstream", "counts")

    def __init__(self) -> None:
        #: the lease's upstream, its origin and its Host header, made once per upstream
        self.upstream: tuple[Upstream, Origin, bytes] | None = None
        self.counts: FunctionCounts | None = None


class Route:
    """One function as the gate sees it; rebuilt (never mutated) when it changes,
    except for ``cache``, where the gate keeps per-function hot-path objects."""

    __slots__ = ("name", "spec", "status", "state", "active", "adaptor", "timeout", "cache",
                 "keys", "key_digests", "rate_limit")

    def __init__(self, spec: FunctionSpec, status: FunctionStatus,
                 keys: KeySet | None = None) -> None:
        self.name = spec.name
        self.keys = keys or _NO_KEYS
        #: SHA-256 hex digests (bytes) of the keys callers must present; empty: open
        self.key_digests: frozenset[bytes] = frozenset(
            d.encode() for d in self.keys.digests()) if self.keys.entries else _NO_DIGESTS
        self.rate_limit = spec.rate_limit
        self.spec = spec
        self.status = status
        self.state: State = status.state
        self.active = status.state is State.ACTIVE
        self.adaptor: CompiledAdaptor | None = compile_adaptor(spec.request_adaptor)
        self.timeout = spec.timeout
        self.cache = RouteCache()

    def __repr__(self) -> str:
        return f"<Route {self.name} {self.state.value}>"


Listener = Callable[[str, "Route | None"], None]


class RouteTable(Service):
    """Routes of one controller's functions; ``lookup`` is a dict lookup."""

    name = "routes"

    def __init__(self, store: FunctionStore, clock: IReactorTime,
                 metrics: Metrics | None = None, retry_interval: float = 0.5,
                 max_retry_interval: float = 10.0) -> None:
        self.store = store
        self.clock = clock
        self.metrics = metrics
        self.retry_interval = retry_interval
        self.max_retry_interval = max_retry_interval
        self.synced = False
        self._routes: dict[str, Route] = {}
        self._specs: dict[str, FunctionSpec] = {}
        self._statuses: dict[str, FunctionStatus] = {}
        self._keys: dict[str, KeySet] = {}
        self._watch: WatchHandle | None = None
        self._retry: IDelayedCall | None = None
        self._delay = retry_interval
        self._generation = 0
        self._listeners: list[Listener] = []
        #: the store revision the table reflects (a listing's, then each watch batch's)
        self.revision = 0
        self._waiters: list[tuple[int, Deferred[None]]] = []

    # -- queries ---------------------------------------------------------------------

    def lookup(self, name: str) -> Route | None:
        return self._routes.get(name)

    def names(self) -> list[str]:
        return sorted(self._routes)

    def snapshot(self) -> dict[str, tuple[FunctionSpec, FunctionStatus]]:
        """Every function's spec and status as the watch last delivered them (what the
        admin API answers, marked stale, when etcd has no quorum)."""
        return {name: (spec, self._statuses[name]) for name, spec in self._specs.items()
                if name in self._statuses}

    def reached(self, revision: int) -> Deferred[None]:
        """Fires once the table reflects the store at ``revision`` or later (at once if
        it does): an API answer waits for it, so the gate of the node that answered
        never contradicts what it said (read-your-writes)."""
        done: Deferred[None] = Deferred(self._forget_waiter)
        if revision <= self.revision:
            done.callback(None)
        else:
            self._waiters.append((revision, done))
        return done

    def _forget_waiter(self, done: Deferred[None]) -> None:
        self._waiters = [(r, d) for r, d in self._waiters if d is not done]

    def _advance(self, revision: int) -> None:
        if revision <= self.revision:
            return
        self.revision = revision
        if not self._waiters:
            return
        due = [d for r, d in self._waiters if r <= revision]
        self._waiters = [(r, d) for r, d in self._waiters if r > revision]
        for done in due:
            done.callback(None)

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(name, route_or_None)`` whenever a function's route changes."""
        self._listeners.append(listener)

    # -- service ---------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]  # Twisted's Service is unannotated
        self._sync()

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]  # Twisted's Service is unannotated
        self._generation += 1
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None

    # -- sync ------------------------------------------------------------------------

    def _sync(self) -> None:
        """List everything, then watch from the listing's revision."""
        self._retry = None
        generation = self._generation = self._generation + 1
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None

        def listed(listing: Listing) -> None:
            if generation != self._generation or not self.running:
                return
            self._delay = self.retry_interval
            self._replace(listing, generation, lambda: watch(listing.revision))

        def watch(revision: int) -> None:
            # from the listing's revision: what changed while the table was rebuilt
            # comes through the watch, nothing is missed
            self._watch = self.store.watch(
                revision,
                lambda changes: self._changed(generation, changes),
                lambda reason: self._lost(generation, reason))

        def failed(failure: Failure) -> None:
            if generation != self._generation or not self.running:
                return
            log.warn("cannot list functions for the route table ({error}); retrying in "
                     "{delay}s", error=failure.getErrorMessage(), delay=self._delay)
            self._retry = self.clock.callLater(self._delay, self._sync)
            self._delay = min(self._delay * 2, self.max_retry_interval)

        d = self.store.list()
        d.addCallbacks(listed, failed)
        d.addErrback(lambda f: log.failure("route table sync failed", f))

    def _lost(self, generation: int, reason: Exception) -> None:
        if generation != self._generation or not self.running:
            return
        log.info("route watch lost ({reason}); listing again", reason=str(reason))
        if self.metrics is not None:
            self.metrics.watch_reconnects.inc()
        self._watch = None
        self._sync()

    def _replace(self, listing: Listing, generation: int, then: Callable[[], None]) -> None:
        """Rebuild every route from ``listing``, ``CHUNK`` functions per reactor turn (a
        table of 10,000 took ~0.4 s in one turn, a stall for every request when a lost
        watch made it list again); lookups see the old table until the new one is
        whole, then ``then()``. A route whose spec, status and keys are unchanged is
        kept (with its cache)."""
        specs = {name: r.spec for name, r in listing.records.items()}
        statuses = {name: r.status for name, r in listing.records.items()}
        keys = dict(listing.keys)
        names = sorted(set(self._routes) | set(specs))
        routes: dict[str, Route] = {}
        changed: list[tuple[str, Route | None]] = []

        def step(start: int) -> None:
            if generation != self._generation or not self.running:
                return
            for name in names[start:start + CHUNK]:
                current = self._routes.get(name)
                route = self._build(name, specs.get(name), statuses.get(name),
                                    keys.get(name, _NO_KEYS), current)
                if route is not None:
                    routes[name] = route
                if route is not current:
                    changed.append((name, route))
            if start + CHUNK < len(names):
                self.clock.callLater(0, step, start + CHUNK)
                return
            self._specs, self._statuses, self._keys = specs, statuses, keys
            self._routes = routes
            for name, route in changed:
                self._notify(name, route)
            self.synced = True
            self._advance(listing.revision)
            log.info("route table synced: {count} functions, {active} active",
                     count=len(routes), active=sum(1 for r in routes.values() if r.active))
            then()
        step(0)

    def _changed(self, generation: int, changes: Sequence[Change]) -> None:
        if generation != self._generation:
            return
        touched: set[str] = set()
        for change in changes:
            value = change.value   # of the type its kind says (a deletion: None)
            if change.kind == "keys":
                if value is None:
                    self._keys.pop(change.name, None)
                elif isinstance(value, KeySet):
                    self._keys[change.name] = value
            elif change.kind == "spec":
                if value is None:
                    self._specs.pop(change.name, None)
                elif isinstance(value, FunctionSpec):
                    self._specs[change.name] = value
            else:
                if value is None:
                    self._statuses.pop(change.name, None)
                elif isinstance(value, FunctionStatus):
                    self._statuses[change.name] = value
            touched.add(change.name)
        for name in touched:
            self._rebuild(name)
        if changes:
            self._advance(max(change.revision for change in changes))

    def _rebuild(self, name: str) -> None:
        current = self._routes.get(name)
        route = self._build(name, self._specs.get(name), self._statuses.get(name),
                            self._keys.get(name, _NO_KEYS), current)
        if route is current:
            return
        if route is None:
            del self._routes[name]
        else:
            self._routes[name] = route
        self._notify(name, route)

    @staticmethod
    def _build(name: str, spec: FunctionSpec | None, status: FunctionStatus | None,
               keys: KeySet, current: Route | None) -> Route | None:
        """The route of ``name`` now: ``current`` when nothing changed, None when the
        function is gone (or its spec cannot be compiled)."""
        if spec is None or status is None:
            return None
        if (current is not None and current.spec == spec and current.status == status
                and current.keys == keys):
            return current
        try:
            return Route(spec, status, keys)
        except Exception:  # a spec the store accepted but we cannot compile
            log.failure("cannot build the route of {function}", function=name)
            return None

    def _notify(self, name: str, route: Route | None) -> None:
        for listener in self._listeners:
            listener(name, route)
