"""OpenFaaS's gateway API (``/system/*``), served on the gate's port and the admin port.

faas-cli, OpenFaaS's UI and their integrations speak this API; it writes the same store
records as the Easegress-style API, so a function created through one is listed,
updated, scaled and deleted through the other. The verbs map onto the FSM without a
stop dance: deploy creates the function in ``initial`` (the reconciler deploys it),
update is a rolling update (rollout.py), delete removes the records (the reconciler
stops what runs), and scale sets minReplica without restarting anything. Codes are the
ones faas-netes answers (202 for writes), because clients check them exactly; bodies
are JSON with or without a Content-Type. Authentication, Host and Origin checks are the
admin port's (``admin/guard.py`` wraps this app with the rest of the port, and the gate
relays ``/system/*`` there), so OpenFaaS clients use the node's tokens or HTTP Basic.
"""

from __future__ import annotations

import json
import platform
import time
from typing import Any, Callable, Iterator, Mapping, TypeVar

import attrs
from klein import Klein
from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from faastwist import __version__
from faastwist.admin.codec import (
    FORM_TYPES,
    ApiError,
    media_type,
    parse_follow,
    parse_since,
    parse_tail,
    query_params,
    read_body,
)
from faastwist.admin.alerts import handle_alerts
from faastwist.admin.listbody import STEP, stream
from faastwist.admin.logstream import OneInstance, send_logs
from faastwist.admin.openfaas_model import deployment_to_spec, function_status, read_secret
from faastwist.admin.parsing import BodyParser
from faastwist.admin import writes
from faastwist.admin.rollout import rolled
from faastwist.admin.errors import SecretInUse, error_answer
from faastwist.admin.writes import Settle, listing_revision, record_revision, settled
from faastwist.metrics import Metrics
from faastwist.model.fsm import Event, FunctionStatus, State, apply_event
from faastwist.model.spec import FunctionSpec
from faastwist.providers.base import LogLine, LogSource, Observation, ProviderError
from faastwist.store.base import FunctionRecord, FunctionStore, NotFound, StoreUnavailable
from faastwist.util.slices import Slicer

log = Logger()

#: Functions from which /system/functions is streamed in reactor slices.
STREAM_THRESHOLD = 200
T = TypeVar("T")

STORE_TIMEOUT = 10.0
OBSERVE_TIMEOUT = 3.0
#: how long the list waits for the store before it answers from the watch cache
#: (with encoding, within the 2 s the control plane promises without a quorum)
READ_TIMEOUT = 1.5
STALE_HEADER = b"X-FaaS-Stale"


@attrs.frozen
class Versions:
    """What /system/info reports."""

    orchestration: str
    sha: str
    release: str = __version__


def _header(request: Any, name: bytes) -> str | None:
    value = request.getHeader(name)
    return value.decode("latin-1") if isinstance(value, bytes) else value


def _parse_json(body: bytes) -> Any:
    """A JSON body, or 400 (pure: runs on a parser thread)."""
    try:
        return json.loads(body)
    except RecursionError:
        raise ApiError(400, "body is not valid JSON: nested too deeply") from None
    except ValueError as exc:
        raise ApiError(400, f"body is not valid JSON: {exc}") from None


class OpenFaaSAPI:
    """The ``/system/*`` routes and ``/healthz`` as a Klein app."""

    app = Klein()

    def __init__(self, store: FunctionStore, provider: Any, kick: Callable[[str], None],
                 metrics: Metrics, clock: IReactorTime, versions: Versions,
                 namespace: str,
                 max_body_size: int = 1 << 20, store_timeout: float = STORE_TIMEOUT,
                 wall_clock: Callable[[], float] = time.time, secrets: Any = None,
                 slicer: Slicer | None = None, parser: BodyParser | None = None,
                 settle: Settle | None = None, catalogue: Any = None,
                 cache: Callable[[], Mapping[str, FunctionRecord]] | None = None,
                 read_timeout: float = READ_TIMEOUT, log_source: LogSource | None = None,
                 refresh_secrets: Callable[[], object] | None = None) -> None:
        self.store = store
        self.catalogue = catalogue   # the function store (faastwist.catalogue)
        #: parses bodies off the reactor (the node shares the Easegress API's)
        self.parser = parser if parser is not None else BodyParser(clock)
        #: the watch-fed functions the list answers from when the store has no quorum
        self.cache = cache
        self.read_timeout = read_timeout
        self.secrets = secrets
        self.provider = provider
        #: the provider's optional capabilities (providers/registry.py ProviderParts)
        self.log_source = log_source
        self.refresh_secrets = refresh_secrets
        self.kick = kick
        self.metrics = metrics
        self.clock = clock
        self.versions = versions
        self.namespace = namespace
        self.max_body_size = max_body_size
        self.store_timeout = store_timeout
        self.wall_clock = wall_clock
        self.slicer = slicer if slicer is not None else Slicer(clock)
        #: waits until this node's gate reflects a revision (read-your-writes)
        self.settle = settle

    def resource(self) -> Any:
        return self.app.resource()

    # -- helpers -----------------------------------------------------------------------
    def _timed(self, d: Deferred[T], what: str = "the function store",
               code: int = 503, timeout: float | None = None) -> Deferred[T]:
        limit = self.store_timeout if timeout is None else timeout

        def on_timeout(result: Any, _: float) -> Any:
            if isinstance(result, Failure) and result.check(CancelledError):
                raise ApiError(code, f"{what} did not answer within {limit:g}s")
            return result
        return d.addTimeout(limit, self.clock, onTimeoutCancel=on_timeout)

    def _settled(self, record: FunctionRecord) -> Any:
        """``record`` once this node's gate routes as it says."""
        return settled(self.settle, record_revision(record), record)

    @staticmethod
    def _json(request: Any, code: int, data: Any) -> bytes:
        body = json.dumps(data).encode()
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"content-length", b"%d" % len(body))
        return body

    @staticmethod
    def _accepted(request: Any) -> bytes:
        request.setResponseCode(202)
        request.setHeader(b"content-length", b"0")
        return b""

    async def _document(self, request: Any) -> Any:
        """The JSON body, whatever the Content-Type (``curl -d`` says form-urlencoded);
        but from a browser (it sends ``Origin``) never what an HTML form can send, which a
        cross-site page could make it send with cached credentials. Parsed off the
        reactor."""
        kind, _ = media_type(_header(request, b"content-type"))
        if kind in FORM_TYPES and request.getHeader(b"origin") is not None:
            raise ApiError(415, f"Content-Type {kind} is not accepted: send JSON "
                                f"(application/json, or no Content-Type)")
        body = read_body(request, self.max_body_size)
        if not body.strip():
            raise ApiError(400, "request body is empty; send JSON")
        return await self.parser.run(_parse_json, body)

    def _name_field(self, document: Any, key: str) -> str:
        if not isinstance(document, dict):
            raise ApiError(400, "body must be a JSON object")
        value = document.get(key)
        if not isinstance(value, str) or not value:
            raise ApiError(400, f"{key}: is required (a name)")
        namespace = document.get("namespace")
        if namespace not in (None, "", self.namespace):
            raise ApiError(400, f"namespace: this gate serves namespace {self.namespace} "
                                f"only, got {namespace!r}")
        return value

    def _invocations(self) -> dict[str, int]:
        """Invocations per function, every status code, from the gate's plain counters
        (a whole number: clients decode it as one)."""
        return {name: int(sum(cell[0] for cell in counts.codes.values()))
                for name, counts in list(self.metrics.gate.functions.items())}

    async def _observe(self, names: list[str] | None) -> Mapping[str, Observation]:
        """What the provider reports (ready replicas), or nothing if it cannot say now:
        a listing is never refused because Kubernetes is slow."""
        try:
            return await self._timed(self.provider.observe(names), "the provider", 503,
                                     OBSERVE_TIMEOUT)
        except (ApiError, ProviderError) as exc:
            log.info("function status without the provider's counts: {error}", error=str(exc))
            return {}

    def _status(self, spec: FunctionSpec, status: FunctionStatus,
                observation: Observation | None, invocations: Mapping[str, int]) -> dict:
        available = desired = None
        if observation is not None and not observation.stopped:
            ext = observation.ext_data
            if str(ext.get("replicas", "")).isdigit():
                available = int(ext["replicas"])
            if str(ext.get("desired", "")).isdigit():
                desired = int(ext["desired"])
        elif observation is not None:
            available = desired = 0
        return function_status(spec, status, self.namespace, invocations.get(spec.name, 0),
                               available, desired)

    # -- functions ---------------------------------------------------------------------
    @app.route("/system/functions", methods=["GET"])
    async def list_functions(self, request: Any) -> bytes:
        """Every function; without a store quorum, from this node's watch cache (as the
        admin list does): each item and the answer marked stale, instead of a 503."""
        self._check_namespace_param(request)
        stale = not await self._store_answers()
        records: Mapping[str, FunctionRecord]
        if stale and self.cache is not None:  # only a cache makes the store's answer optional
            records = self.cache()
            request.setHeader(STALE_HEADER, b"true")
        else:
            listing = await self._timed(self.store.list())
            await settled(self.settle, listing_revision(listing.records), None)
            records = listing.records
        observed = await self._observe(None)
        invocations = self._invocations()
        names = sorted(records)
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"application/json")
        pieces = self._list_pieces(records, names, observed, invocations, stale)
        if len(names) < STREAM_THRESHOLD:
            body = b"".join(pieces)
            request.setHeader(b"content-length", b"%d" % len(body))
            return body
        # built, encoded and written in reactor slices: 10,000 functions in one turn
        # stalled the gate that shares the reactor (the same text as one json.dumps)
        return await stream(request, self.slicer, pieces)

    def _list_pieces(self, records: Mapping[str, Any], names: list[str],
                     observed: Mapping[str, Observation],
                     invocations: Mapping[str, int], stale: bool = False) -> Iterator[bytes]:
        """``[{...}, {...}]``, one piece per ``STEP`` functions (destroyed ones left out)."""
        yield b"["
        separator = ""
        for start in range(0, len(names), STEP):
            parts = []
            for name in names[start:start + STEP]:
                r = records[name]
                if r.status.state is not State.DESTROYED:
                    item = self._status(r.spec, r.status, observed.get(name), invocations)
                    if stale:
                        item["stale"] = True
                    parts.append(json.dumps(item))
            if parts:
                yield (separator + ", ".join(parts)).encode()
                separator = ", "
        yield b"]"

    @app.route("/system/function/<name>", methods=["GET"])
    async def get_function(self, request: Any, name: str) -> bytes:
        """One function; without a store quorum, from the watch cache, marked stale."""
        self._check_namespace_param(request)
        stale = False
        if self.cache is None:
            record = await self._timed(self.store.get(name))
        else:
            try:
                record = await self.store.get(name).addTimeout(self.read_timeout, self.clock)
            except (StoreUnavailable, CancelledError, TimeoutError) as exc:
                log.warn("function {name} answered from the watch cache: the store did not "
                         "answer ({error})", name=name, error=str(exc) or type(exc).__name__)
                cached = self.cache().get(name)
                if cached is None:
                    raise NotFound(name) from None
                record = cached
                stale = True
                request.setHeader(STALE_HEADER, b"true")
        if not stale:   # what this answer says, this node's gate does (read-your-writes)
            record = await self._settled(record)
        observed = await self._observe([name])
        document = self._status(record.spec, record.status, observed.get(name),
                                self._invocations())
        if stale:
            document["stale"] = True
        return self._json(request, 200, document)

    async def _store_answers(self) -> bool:
        """Whether a quick quorum read succeeds within ``read_timeout`` (always True
        without a cache to fall back on: the list then waits, and fails, as any read)."""
        if self.cache is None:
            return True
        try:
            await self.store.check().addTimeout(self.read_timeout, self.clock)
        except (StoreUnavailable, CancelledError, TimeoutError) as exc:
            log.warn("function list answered from the watch cache: the store did not "
                     "answer ({error})", error=str(exc) or type(exc).__name__)
            return False
        return True

    def _check_namespace_param(self, request: Any) -> None:
        params = query_params(request.uri, ("namespace",), strict=False)
        namespace = params.get("namespace", "")
        if namespace not in ("", self.namespace):
            raise ApiError(400, f"namespace: this gate serves namespace {self.namespace} "
                                f"only, got {namespace!r}")

    async def _check_secrets(self, spec: FunctionSpec) -> None:
        """A deployment naming a secret that does not exist is refused now (400), not
        left failing at its first start."""
        if not spec.secrets:
            return
        known = set(await self._timed(self._secret_store().names()))
        for index, name in enumerate(spec.secrets):
            if name not in known:
                raise ApiError(400, f"secrets[{index}]: secret {name} not found; create it "
                                    f"with POST /system/secrets first")

    @app.route("/system/functions", methods=["POST"])
    async def deploy(self, request: Any) -> bytes:
        spec = deployment_to_spec(await self._document(request), self.namespace)
        self.provider.check_spec(spec)
        await self._check_secrets(spec)
        status = FunctionStatus.initial(spec.name, self.wall_clock())
        record = await self._timed(self.store.create(spec, status))
        self.kick(spec.name)
        await self._settled(record)
        return self._accepted(request)

    @app.route("/system/functions", methods=["PUT"])
    async def update(self, request: Any) -> bytes:
        document = await self._document(request)
        name = self._name_field(document, "service")
        record = await self._timed(self.store.get(name))
        spec = deployment_to_spec(document, self.namespace, record.spec)
        self.provider.check_spec(spec)
        await self._check_secrets(spec)
        now = self.wall_clock()
        # the spec was merged from the record read above: a spec changed since is a
        # conflict; a status write (a node's report) is not (admin/writes.py)
        updated = await writes.write(self.store, record, lambda r: rolled(r, spec, now),
                                     self._timed)
        self.kick(name)
        await self._settled(updated)
        return self._accepted(request)

    @app.route("/system/functions", methods=["DELETE"])
    async def delete(self, request: Any) -> bytes:
        """Stop and delete in one: the reconciler removes what the provider runs."""
        name = self._name_field(await self._document(request), "functionName")
        record = await self._timed(self.store.get(name))
        await writes.delete(self.store, record, lambda r: None, self._timed)
        self.kick(name)
        return self._accepted(request)

    @app.route("/system/scale-function/<name>", methods=["POST"])
    async def scale(self, request: Any, name: str) -> bytes:
        """minReplica becomes the count; replicas follow without a restart. Zero keeps
        the function deployed: the next invocation scales it from zero."""
        document = await self._document(request)
        if not isinstance(document, dict):
            raise ApiError(400, "body must be a JSON object")
        service = document.get("serviceName")
        if service not in (None, "", name):
            raise ApiError(400, f"serviceName: {service!r} does not match the path's {name!r}")
        replicas = document.get("replicas")
        if isinstance(replicas, bool) or not isinstance(replicas, int) or not 0 <= replicas <= 1000:
            raise ApiError(400, f"replicas: must be a whole number 0-1000, got {replicas!r}")
        record = await self._timed(self.store.get(name))
        now = self.wall_clock()

        def scaled(current: FunctionRecord) -> tuple[FunctionSpec, FunctionStatus] | None:
            spec = current.spec
            maximum = spec.max_replica
            if maximum and replicas > maximum:
                maximum = replicas
            spec = attrs.evolve(spec, min_replica=replicas, max_replica=maximum)
            status = current.status
            if status.state is State.INACTIVE and replicas > 0 and not status.start_pending:
                status = apply_event(status, Event.START, now)
            if spec == current.spec and status == current.status:
                return None
            return spec, status
        updated = await writes.write(self.store, record, scaled, self._timed)
        if updated is not record:
            self.kick(name)
        await self._settled(updated)
        return self._accepted(request)

    # -- secrets (values go in, never out) ----------------------------------------------
    def _secret_store(self) -> Any:
        if self.secrets is None:
            raise ApiError(501, "secrets are not available on this node")
        return self.secrets

    @app.route("/system/secrets", methods=["GET"])
    async def list_secrets(self, request: Any) -> bytes:
        self._check_namespace_param(request)
        names = await self._timed(self._secret_store().names())
        return self._json(request, 200, [{"name": n, "namespace": self.namespace}
                                         for n in names])

    @app.route("/system/secrets", methods=["POST", "PUT"])
    async def write_secret(self, request: Any) -> bytes:
        store = self._secret_store()
        name, value = read_secret(await self._document(request), self.namespace)
        if request.method == b"POST":
            await self._timed(store.create(name, value))
        else:
            await self._timed(store.replace(name, value))
            # running functions that name it get the new file now (other nodes at
            # their next refresh); OpenFaaS on Kubernetes refreshes mounted secrets too
            if self.refresh_secrets is not None:
                self.refresh_secrets()
        return self._accepted(request)

    @app.route("/system/secrets", methods=["DELETE"])
    async def delete_secret(self, request: Any) -> bytes:
        """A secret that functions name is not deleted (409 naming them): their next
        start would fail. (A deploy racing this delete can still name it; that function
        then reports the missing secret as its own error, see cluster/converger.py.)"""
        name = self._name_field(await self._document(request), "name")
        store = self._secret_store()
        listing = await self._timed(self.store.list())
        users = sorted(n for n, r in listing.records.items()
                       if name in r.spec.secrets and r.status.state is not State.DESTROYED)
        if users:
            raise SecretInUse(name, users)
        await self._timed(store.delete(name))
        return self._accepted(request)

    # -- the rest ----------------------------------------------------------------------
    @app.route("/system/store", methods=["GET"])
    async def function_store(self, request: Any) -> bytes:
        """The function store's catalogue, for faas-cli ``store list/deploy --url`` and
        ``faastwist store`` (open: admin/guard.py)."""
        from faastwist.catalogue import CatalogueError

        if self.catalogue is None:
            raise ApiError(404, "this node serves no function store")
        try:
            body = await self.catalogue.body()
        except CatalogueError as exc:
            raise ApiError(502, f"the function store is unavailable: {exc}") from None
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"content-length", b"%d" % len(body))
        return body

    @app.route("/system/alert", methods=["POST"])
    async def alert(self, request: Any) -> bytes:
        """AlertManager's webhook: alert-driven autoscaling (admin/alerts.py)."""
        return self._json(request, 200, await handle_alerts(self, await self._document(request)))

    @app.route("/system/info", methods=["GET"])
    def info(self, request: Any) -> bytes:
        versions = self.versions
        return self._json(request, 200, {
            "provider": {"provider": "faastwist", "orchestration": versions.orchestration,
                         "version": {"sha": versions.sha, "release": versions.release}},
            "version": {"sha": versions.sha, "release": versions.release,
                        "commit_message": ""},
            "arch": platform.machine(),
        })

    @app.route("/system/namespaces", methods=["GET"])
    def namespaces(self, request: Any) -> bytes:
        return self._json(request, 200, [self.namespace])

    @app.route("/system/logs", methods=["GET"])
    async def logs(self, request: Any) -> Any:
        params = query_params(request.uri, ("name", "namespace", "instance", "tail", "since",
                                            "follow"), strict=False)
        name = params.get("name", "")
        if not name:
            raise ApiError(400, "name: is required (the function whose logs to read)")
        if params.get("namespace", "") not in ("", self.namespace):
            raise ApiError(400, f"namespace: this gate serves namespace {self.namespace} only")
        await self._timed(self.store.get(name))
        logs = self.log_source
        if logs is None:
            raise ApiError(501, "function logs are not available from this provider")
        raw_tail = params.get("tail")
        tail = None if raw_tail and raw_tail.startswith("-") else parse_tail(raw_tail)  # -1: all
        since = parse_since(params.get("since"), self.wall_clock())
        follow = parse_follow(params.get("follow"))
        instance = params.get("instance", "")
        namespace = self.namespace

        def shape(line: LogLine) -> dict[str, Any]:
            return {**line.to_dict(), "namespace": namespace}
        source = logs if not instance else OneInstance(logs, instance)
        return await send_logs(request, source, name, tail, since, follow,
                               lambda d: self._timed(d, "the log source", 504), shape)

    # -- errors --------------------------------------------------------------------------
    # -- errors: one table for both APIs (admin/errors.py) ---------------------------------
    @app.handle_errors(Exception)
    def _error(self, request: Any, failure: Failure) -> bytes:
        code, message, headers = error_answer(failure, request.method, request.path,
                                              "OpenFaaS API")
        for key, value in headers.items():
            request.setHeader(key.encode(), value.encode())
        return self._json(request, code, {"code": code, "message": message})
