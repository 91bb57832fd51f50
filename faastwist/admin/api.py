"""The admin REST API (Klein): operators write desired state, the reconciler converges.

It writes specs and FSM records to the store (every write a compare-and-swap, so a
racing writer makes one side lose with 409 instead of both silently winning) and
kicks the reconciler; it never calls the provider except ``check_spec``, so a slow or
unreachable Kubernetes cannot hang an admin request or leave half-done work behind.

Served under ``/apis/v2/faas/{controller}`` and, for Easegress clients, ``/apis/v1/...``;
``/healthz`` at the root. Every answer, errors included, is YAML (``application/yaml``)
unless ``Accept`` prefers ``application/json``; errors are ``{code, message}``.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping, TypeVar

from klein import Klein
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.routing import RequestRedirect

from faastwist.admin.codec import (
    ApiError,
    bounded_request_factory,
    decode_body,
    encode,
    error_body,
    parse_follow,
    parse_since,
    parse_tail,
    query_params,
    read_body,
    wants_json,
)
from faastwist.admin.logstream import send_logs
from faastwist.admin.rollout import rollout
from faastwist.model.fsm import Event, FunctionStatus, InvalidEvent, apply_event
from faastwist.providers.base import LogSource, ProviderError
from faastwist.model.spec import FunctionSpec, SpecError
from faastwist.store.base import (
    AlreadyExists,
    Conflict,
    FunctionStore,
    NotFound,
    StoreUnavailable,
)

log = Logger()
T = TypeVar("T")

BASE = "/apis/<any(v1, v2):version>/faas/<controller>"
FUNCTION = BASE + "/<fn>"
DEFAULT_MAX_BODY_SIZE = 1 << 20
DEFAULT_STORE_TIMEOUT = 10.0


def _header(request: Any, name: bytes) -> str | None:
    value = request.getHeader(name)
    if value is None:
        return None
    return value.decode("latin-1") if isinstance(value, bytes) else value


class AdminAPI:
    """Routes and error mapping of the admin API; ``resource()`` or ``site()`` serves it."""

    app = Klein()

    def __init__(self, store: FunctionStore, controller: str,
                 check_spec: Callable[[FunctionSpec], None], kick: Callable[[str], None],
                 clock: IReactorTime, max_body_size: int = DEFAULT_MAX_BODY_SIZE,
                 log_source: LogSource | None = None,
                 wall_clock: Callable[[], float] = time.time,
                 store_timeout: float = DEFAULT_STORE_TIMEOUT) -> None:
        self.store = store
        self.controller = controller
        self.check_spec = check_spec
        self.kick = kick
        self.clock = clock
        self.max_body_size = max_body_size
        self.log_source = log_source
        self.wall_clock = wall_clock
        self.store_timeout = store_timeout

    def resource(self) -> IResource:
        """The API as a resource tree root (its own paths start at ``/``)."""
        return _Utf8Guard(self.app.resource(), self)

    def site(self) -> Site:
        """A Site that also stops storing request bodies past ``max_body_size``."""
        return Site(self.resource(), requestFactory=bounded_request_factory(self.max_body_size),
                    parsePOSTFormSubmission=False, reactor=self.clock)

    # -- helpers ---------------------------------------------------------------------
    def respond(self, request: Any, code: int, data: Any,
                headers: Mapping[str, str] | None = None) -> bytes:
        body, content_type = encode(data, wants_json(_header(request, b"accept")))
        request.setResponseCode(code)
        request.setHeader(b"content-type", content_type.encode())
        request.setHeader(b"content-length", b"%d" % len(body))
        for name, value in (headers or {}).items():
            request.setHeader(name.encode(), value.encode())
        return body

    def error(self, request: Any, code: int, message: str,
              headers: Mapping[str, str] | None = None) -> bytes:
        return self.respond(request, code, error_body(code, message), headers)

    def _check_controller(self, controller: str) -> None:
        if controller != self.controller:
            raise ApiError(404, f"controller {controller} not found; this server runs "
                                f"controller {self.controller}")

    def _timed(self, d: Deferred[T], what: str, code: int) -> Deferred[T]:
        """Bound a call so a hung store or log source cannot hold a request forever."""
        def on_timeout(result: Any, timeout: float) -> Any:
            if isinstance(result, Failure) and result.check(CancelledError):
                raise ApiError(code, f"{what} did not answer within {timeout:g}s")
            return result
        return d.addTimeout(self.store_timeout, self.clock, onTimeoutCancel=on_timeout)

    def _store(self, d: Deferred[T]) -> Deferred[T]:
        return self._timed(d, "the function store", 503)

    def _kick(self, name: str) -> None:
        try:
            self.kick(name)
        except Exception:
            log.failure("kicking the reconciler for {name} failed; its next pass takes it",
                        name=name)

    def _read_spec(self, request: Any, default_name: str | None = None) -> FunctionSpec:
        body = read_body(request, self.max_body_size)
        document = decode_body(body, _header(request, b"content-type"))
        if default_name is not None and isinstance(document, dict) and "name" not in document:
            document = {"name": default_name, **document}
        try:
            spec = FunctionSpec.from_dict(document)
        except SpecError:
            raise
        except Exception as exc:
            # the body made the validator trip: the client's problem, but log it as our bug
            log.failure("validating a function spec raised unexpectedly")
            raise ApiError(400, f"the spec could not be read: {exc}") from None
        self.check_spec(spec)
        return spec

    def _location(self, version: str, controller: str, name: str) -> str:
        return f"/apis/{version}/faas/{controller}/{name}"

    # -- routes ----------------------------------------------------------------------
    @app.route("/healthz", methods=["GET"], strict_slashes=False)
    async def healthz(self, request: Any) -> bytes:
        try:
            await self._store(self.store.check())
        except Exception as exc:
            message = exc.message if isinstance(exc, ApiError) else str(exc)
            log.warn("health check: function store unavailable: {error}", error=message)
            return self.error(request, 503, f"function store ({type(self.store).__name__}) "
                                            f"unavailable: {message}")
        return self.respond(request, 200, {"status": "ok"})

    @app.route(BASE, methods=["POST"], strict_slashes=False)
    async def create(self, request: Any, version: str, controller: str) -> bytes:
        self._check_controller(controller)
        spec = self._read_spec(request)
        status = FunctionStatus.initial(spec.name, self.wall_clock())
        record = await self._store(self.store.create(spec, status))
        self._kick(spec.name)
        return self.respond(request, 201, record.to_dict(),
                            {"Location": self._location(version, controller, spec.name)})

    @app.route(BASE, methods=["GET"], strict_slashes=False)
    async def list_functions(self, request: Any, version: str, controller: str) -> bytes:
        self._check_controller(controller)
        listing = await self._store(self.store.list())
        records = [listing.records[name].to_dict() for name in sorted(listing.records)]
        return self.respond(request, 200, records)

    @app.route(FUNCTION, methods=["GET"], strict_slashes=False)
    async def get_function(self, request: Any, version: str, controller: str,
                           fn: str) -> bytes:
        self._check_controller(controller)
        record = await self._store(self.store.get(fn))
        return self.respond(request, 200, record.to_dict())

    @app.route(FUNCTION + "/status", methods=["GET"], strict_slashes=False)
    async def get_status(self, request: Any, version: str, controller: str, fn: str) -> bytes:
        self._check_controller(controller)
        record = await self._store(self.store.get(fn))
        return self.respond(request, 200, record.status.to_dict())

    @app.route(FUNCTION, methods=["PUT"], strict_slashes=False)
    async def update(self, request: Any, version: str, controller: str, fn: str) -> bytes:
        self._check_controller(controller)
        spec = self._read_spec(request, default_name=fn)
        record = await self._store(self.store.get(fn))
        if spec.name != fn:
            raise ApiError(409, f"name: the body names function {spec.name} but the URL names "
                                f"{fn}; a function cannot be renamed (create {spec.name} and "
                                f"delete {fn} instead)")
        status = apply_event(record.status, Event.UPDATE, self.wall_clock())
        updated = await self._store(self.store.update(record, spec=spec, status=status))
        self._kick(fn)
        return self.respond(request, 200, updated.to_dict())

    @app.route(FUNCTION + "/rollout", methods=["PUT"], strict_slashes=False)
    async def rollout(self, request: Any, version: str, controller: str, fn: str) -> bytes:
        """A rolling update: an active function keeps serving while the new spec rolls
        out (the FSM's update would need a stop first); otherwise as update."""
        self._check_controller(controller)
        spec = self._read_spec(request, default_name=fn)
        if spec.name != fn:
            raise ApiError(409, f"name: the body names function {spec.name} but the URL names "
                                f"{fn}; a function cannot be renamed")
        record = await self._store(self.store.get(fn))
        updated = await self._store(rollout(self.store, record, spec, self.wall_clock()))
        self._kick(fn)
        return self.respond(request, 200, updated.to_dict())

    async def _operator_event(self, request: Any, controller: str, fn: str,
                              event: Event) -> bytes:
        self._check_controller(controller)
        record = await self._store(self.store.get(fn))
        status = apply_event(record.status, event, self.wall_clock())
        updated = await self._store(self.store.update(record, status=status))
        self._kick(fn)
        return self.respond(request, 200, updated.to_dict())

    @app.route(FUNCTION + "/start", methods=["PUT"], strict_slashes=False)
    def start(self, request: Any, version: str, controller: str, fn: str) -> Any:
        return self._operator_event(request, controller, fn, Event.START)

    @app.route(FUNCTION + "/stop", methods=["PUT"], strict_slashes=False)
    def stop(self, request: Any, version: str, controller: str, fn: str) -> Any:
        return self._operator_event(request, controller, fn, Event.STOP)

    @app.route(FUNCTION, methods=["DELETE"], strict_slashes=False)
    async def delete(self, request: Any, version: str, controller: str, fn: str) -> bytes:
        """Remove the function from the store; the reconciler removes what the provider runs."""
        self._check_controller(controller)
        record = await self._store(self.store.get(fn))
        destroyed = apply_event(record.status, Event.DELETE, self.wall_clock())
        await self._store(self.store.delete(record))
        self._kick(fn)
        return self.respond(request, 200, {"spec": record.spec.to_dict(),
                                           "status": destroyed.to_dict()})

    @app.route(FUNCTION + "/logs", methods=["GET"], strict_slashes=False)
    async def logs(self, request: Any, version: str, controller: str, fn: str) -> Any:
        """NDJSON log lines; with ``follow`` the response stays open and streams new ones."""
        self._check_controller(controller)
        await self._store(self.store.get(fn))
        source = self.log_source
        if source is None:
            raise ApiError(501, "function logs are not available: this controller's provider "
                                "has no log source")
        params = query_params(request.uri, ("tail", "since", "follow"))
        tail = parse_tail(params.get("tail"))
        since = parse_since(params.get("since"), self.wall_clock())
        follow = parse_follow(params.get("follow")) and request.method != b"HEAD"
        return await send_logs(request, source, fn, tail, since, follow,
                               lambda d: self._timed(d, "the log source", 504))

    # -- errors (first matching handler wins, so the catch-all comes last) --------------
    @app.handle_errors(ApiError)
    def _api_error(self, request: Any, failure: Failure) -> bytes:
        exc = failure.value
        return self.error(request, exc.code, exc.message, exc.headers)

    @app.handle_errors(SpecError)
    def _spec_error(self, request: Any, failure: Failure) -> bytes:
        return self.error(request, 400, str(failure.value))

    @app.handle_errors(NotFound)
    def _not_found(self, request: Any, failure: Failure) -> bytes:
        return self.error(request, 404, str(failure.value))

    @app.handle_errors(AlreadyExists, Conflict, InvalidEvent)
    def _conflict(self, request: Any, failure: Failure) -> bytes:
        return self.error(request, 409, str(failure.value))

    @app.handle_errors(StoreUnavailable)
    def _store_unavailable(self, request: Any, failure: Failure) -> bytes:
        return self.error(request, 503, f"function store unavailable: {failure.value}")

    @app.handle_errors(ProviderError)
    def _provider_error(self, request: Any, failure: Failure) -> bytes:
        return self.error(request, 502, f"the provider could not be asked: {failure.value}")

    @app.handle_errors(HTTPException)
    def _routing_error(self, request: Any, failure: Failure) -> bytes:
        exc = failure.value
        method = request.method.decode("latin-1")
        path = request.path.decode("latin-1")
        if isinstance(exc, MethodNotAllowed):
            allowed = ", ".join(sorted(exc.valid_methods or ()))
            return self.error(request, 405, f"method {method} is not allowed on {path}; "
                                            f"allowed: {allowed}", {"Allow": allowed})
        if isinstance(exc, RequestRedirect):
            return self.error(request, exc.code, f"moved to {exc.new_url}",
                              {"Location": exc.new_url})
        if exc.code == 404:
            return self.error(request, 404, f"no such route: {method} {path}")
        return self.error(request, exc.code or 500, exc.description or exc.name)

    @app.handle_errors(Exception)
    def _unexpected(self, request: Any, failure: Failure) -> bytes:
        log.failure("admin request {method} {path} failed", failure,
                    method=request.method.decode("latin-1"),
                    path=request.path.decode("latin-1"))
        return self.error(request, 500, "internal error; the controller log has the details")


class _Utf8Guard(Resource):
    """Answers a path or Host that is not UTF-8 with a ``{code, message}`` body.

    Klein would answer it with plain text before any error handler runs.
    """

    isLeaf = True

    def __init__(self, inner: IResource, api: AdminAPI) -> None:
        super().__init__()
        self._inner = inner
        self._api = api

    def render(self, request: Any) -> Any:
        try:
            b"/".join(request.prepath + request.postpath).decode("utf-8")
            request.getRequestHostname().decode("utf-8")
        except UnicodeDecodeError:
            return self._api.error(request, 400, "the request path and Host must be UTF-8")
        return self._inner.render(request)
