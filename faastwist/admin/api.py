"""The admin REST API (Klein): operators write desired state, the reconciler converges.

It writes specs and FSM records to the store (every write a compare-and-swap, so a
racing writer makes one side lose with 409 instead of both silently winning) and
kicks the reconciler; it never calls the provider except ``check_spec``, so a slow or
unreachable Kubernetes cannot hang an admin request or leave half-done work behind.

Served under ``/apis/v2/faas/{controller}`` and, for Easegress clients, ``/apis/v1/...``
(``/healthz`` and the other probes are ``ops``'s). Every answer, errors included, is YAML (``application/yaml``)
unless ``Accept`` prefers ``application/json``; errors are ``{code, message}``.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable, TypeVar

from klein import Klein
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site
from twisted.web.iweb import IRequest
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.routing import RequestRedirect

from faastwist.admin.codec import (
    ApiError,
    bounded_request_factory,
    decode_body,
    header_text,
    parse_follow,
    parse_since,
    parse_tail,
    query_params,
    read_body,
    record_document,
    respond,
    respond_error,
    status_document,
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
Handler = TypeVar("Handler", bound=Callable[..., Any])

BASE = "/apis/<any(v1, v2):version>/faas/<controller>"
FUNCTION = BASE + "/<fn>"
DEFAULT_MAX_BODY_SIZE = 1 << 20
DEFAULT_STORE_TIMEOUT = 10.0


def controller_route(app: Klein, url: str, method: str) -> Callable[[Handler], Handler]:
    """``app.route`` for a path under ``BASE`` that first checks its ``controller``.

    A name other than this server's controller is a 404 naming both, raised before the
    handler runs, so no handler repeats the check (and none can forget it).
    """
    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        def checked(self: AdminAPI, request: IRequest, *, controller: str, **kwargs: str) -> Any:
            if controller != self.controller:
                raise ApiError(404, f"controller {controller} not found; this server runs "
                                    f"controller {self.controller}")
            return handler(self, request, controller=controller, **kwargs)
        route = app.route(url, methods=[method], strict_slashes=False)
        return route(checked)  # type: ignore[return-value]
    return decorate




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
        return _Utf8Guard(self.app.resource())

    def site(self) -> Site:
        """A Site that also stops storing request bodies past ``max_body_size``."""
        return Site(self.resource(), requestFactory=bounded_request_factory(self.max_body_size),
                    parsePOSTFormSubmission=False, reactor=self.clock)

    # -- helpers ---------------------------------------------------------------------
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

    def _read_spec(self, request: IRequest, default_name: str | None = None) -> FunctionSpec:
        body = read_body(request, self.max_body_size)
        document = decode_body(body, header_text(request, b"content-type"))
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
    @controller_route(app, BASE, "POST")
    async def create(self, request: IRequest, version: str, controller: str) -> bytes:
        spec = self._read_spec(request)
        status = FunctionStatus.initial(spec.name, self.wall_clock())
        record = await self._store(self.store.create(spec, status))
        self._kick(spec.name)
        return respond(request, 201, record_document(record),
                            {"Location": self._location(version, controller, spec.name)})

    @controller_route(app, BASE, "GET")
    async def list_functions(self, request: IRequest, version: str, controller: str) -> bytes:
        listing = await self._store(self.store.list())
        records = [record_document(listing.records[name]) for name in sorted(listing.records)]
        return respond(request, 200, records)

    @controller_route(app, FUNCTION, "GET")
    async def get_function(self, request: IRequest, version: str, controller: str,
                           fn: str) -> bytes:
        record = await self._store(self.store.get(fn))
        return respond(request, 200, record_document(record))

    @controller_route(app, FUNCTION + "/status", "GET")
    async def get_status(self, request: IRequest, version: str, controller: str, fn: str) -> bytes:
        record = await self._store(self.store.get(fn))
        return respond(request, 200, status_document(record.status))

    @controller_route(app, FUNCTION, "PUT")
    async def update(self, request: IRequest, version: str, controller: str, fn: str) -> bytes:
        spec = self._read_spec(request, default_name=fn)
        record = await self._store(self.store.get(fn))
        if spec.name != fn:
            raise ApiError(409, f"name: the body names function {spec.name} but the URL names "
                                f"{fn}; a function cannot be renamed (create {spec.name} and "
                                f"delete {fn} instead)")
        status = apply_event(record.status, Event.UPDATE, self.wall_clock())
        updated = await self._store(self.store.update(record, spec=spec, status=status))
        self._kick(fn)
        return respond(request, 200, record_document(updated))

    @controller_route(app, FUNCTION + "/rollout", "PUT")
    async def rollout(self, request: IRequest, version: str, controller: str, fn: str) -> bytes:
        """A rolling update: an active function keeps serving while the new spec rolls
        out (the FSM's update would need a stop first); otherwise as update."""
        spec = self._read_spec(request, default_name=fn)
        if spec.name != fn:
            raise ApiError(409, f"name: the body names function {spec.name} but the URL names "
                                f"{fn}; a function cannot be renamed")
        record = await self._store(self.store.get(fn))
        updated = await self._store(rollout(self.store, record, spec, self.wall_clock()))
        self._kick(fn)
        return respond(request, 200, record_document(updated))

    async def _operator_event(self, request: IRequest, fn: str, event: Event) -> bytes:
        record = await self._store(self.store.get(fn))
        status = apply_event(record.status, event, self.wall_clock())
        updated = await self._store(self.store.update(record, status=status))
        self._kick(fn)
        return respond(request, 200, record_document(updated))

    @controller_route(app, FUNCTION + "/start", "PUT")
    def start(self, request: IRequest, version: str, controller: str, fn: str) -> Any:
        return self._operator_event(request, fn, Event.START)

    @controller_route(app, FUNCTION + "/stop", "PUT")
    def stop(self, request: IRequest, version: str, controller: str, fn: str) -> Any:
        return self._operator_event(request, fn, Event.STOP)

    @controller_route(app, FUNCTION, "DELETE")
    async def delete(self, request: IRequest, version: str, controller: str, fn: str) -> bytes:
        """Remove the function from the store; the reconciler removes what the provider runs."""
        record = await self._store(self.store.get(fn))
        destroyed = apply_event(record.status, Event.DELETE, self.wall_clock())
        await self._store(self.store.delete(record))
        self._kick(fn)
        return respond(request, 200, {"spec": record.spec.to_dict(),
                                           "status": status_document(destroyed)})

    @controller_route(app, FUNCTION + "/logs", "GET")
    async def logs(self, request: IRequest, version: str, controller: str, fn: str) -> Any:
        """NDJSON log lines; with ``follow`` the response stays open and streams new ones."""
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
    def _api_error(self, request: IRequest, failure: Failure) -> bytes:
        exc = failure.value
        return respond_error(request, exc.code, exc.message, exc.headers)

    @app.handle_errors(SpecError)
    def _spec_error(self, request: IRequest, failure: Failure) -> bytes:
        return respond_error(request, 400, str(failure.value))

    @app.handle_errors(NotFound)
    def _not_found(self, request: IRequest, failure: Failure) -> bytes:
        return respond_error(request, 404, str(failure.value))

    @app.handle_errors(AlreadyExists, Conflict, InvalidEvent)
    def _conflict(self, request: IRequest, failure: Failure) -> bytes:
        return respond_error(request, 409, str(failure.value))

    @app.handle_errors(StoreUnavailable)
    def _store_unavailable(self, request: IRequest, failure: Failure) -> bytes:
        return respond_error(request, 503, f"function store unavailable: {failure.value}")

    @app.handle_errors(ProviderError)
    def _provider_error(self, request: IRequest, failure: Failure) -> bytes:
        return respond_error(request, 502, f"the provider could not be asked: {failure.value}")

    @app.handle_errors(HTTPException)
    def _routing_error(self, request: IRequest, failure: Failure) -> bytes:
        exc = failure.value
        method = request.method.decode("latin-1")
        path = request.path.decode("latin-1")
        if isinstance(exc, MethodNotAllowed):
            allowed = ", ".join(sorted(exc.valid_methods or ()))
            return respond_error(request, 405, f"method {method} is not allowed on {path}; "
                                            f"allowed: {allowed}", {"Allow": allowed})
        if isinstance(exc, RequestRedirect):
            return respond_error(request, exc.code, f"moved to {exc.new_url}",
                              {"Location": exc.new_url})
        if exc.code == 404:
            return respond_error(request, 404, f"no such route: {method} {path}")
        return respond_error(request, exc.code or 500, exc.description or exc.name)

    @app.handle_errors(Exception)
    def _unexpected(self, request: IRequest, failure: Failure) -> bytes:
        log.failure("admin request {method} {path} failed", failure,
                    method=request.method.decode("latin-1"),
                    path=request.path.decode("latin-1"))
        return respond_error(request, 500, "internal error; the controller log has the details")


class _Utf8Guard(Resource):
    """Answers a path or Host that is not UTF-8 with a ``{code, message}`` body.

    Klein would answer it with plain text before any error handler runs.
    """

    isLeaf = True

    def __init__(self, inner: IResource) -> None:
        super().__init__()
        self._inner = inner

    def render(self, request: IRequest) -> Any:
        try:
            b"/".join(request.prepath + request.postpath).decode("utf-8")
            request.getRequestHostname().decode("utf-8")
        except UnicodeDecodeError:
            return respond_error(request, 400, "the request path and Host must be UTF-8")
        return self._inner.render(request)
