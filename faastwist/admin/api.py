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

import time
from typing import Any, Callable, Mapping, TypeVar

from klein import Klein
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site
from twisted.web.iweb import IRequest

from faastwist.admin.codec import (
    JSON_TYPE,
    MAX_EXPANDED_BYTES,
    YAML_RESPONSE_TYPE,
    ApiError,
    bounded_request_factory,
    decode_body,
    decode_continue,
    encode,
    encode_continue,
    header_text,
    parse_flag,
    parse_follow,
    parse_limit,
    parse_since,
    parse_tail,
    query_params,
    read_body,
    record_document,
    respond,
    respond_error,
    status_document,
    wants_json,
)
from faastwist.admin.listbody import LineCache, list_pieces, stream
from faastwist.admin.logstream import send_logs
from faastwist.admin.parsing import BodyParser
from faastwist.admin.rollout import rolled
from faastwist.admin.asyncapi import add_async_routes
from faastwist.admin.errors import error_answer
from faastwist.admin.routing import BASE, FUNCTION, controller_route
from faastwist.admin.writes import (Settle, listing_revision,
                                    record_revision, settled)
from faastwist.admin import writes
from faastwist.model.fsm import Event, FunctionStatus, apply_event
from faastwist.store.owned import check_writable
from faastwist.model.keys import new_key
from faastwist.providers.base import LogSource
from faastwist.model.spec import FunctionSpec, SpecError
from faastwist.util.slices import Slicer
from faastwist.store.base import (
    AlreadyExists,
    Conflict,
    Expired,
    FunctionRecord,
    FunctionStore,
    NotFound,
    OutcomeUnknown,
    StoreUnavailable,
)

log = Logger()
T = TypeVar("T")
Handler = TypeVar("Handler", bound=Callable[..., Any])

MAX_KEYS = 10     # per function: enough for rotation, not a user database
DEFAULT_MAX_BODY_SIZE = 1 << 20
DEFAULT_STORE_TIMEOUT = 10.0
DEFAULT_PAGE = 100
#: functions from which a list is streamed in reactor slices (one JSON line each)
STREAM_THRESHOLD = 200
DEFAULT_READ_TIMEOUT = 1.5  # a stale answer, encoding included, within 2 s
STALE_HEADER = "X-FaaS-Stale"
RETRY_WINDOW = 600.0  # how long a create of unknown outcome is recognised when retried


def parse_spec(body: bytes, content_type: str | None, default_name: str | None,
               max_expanded: int) -> FunctionSpec:
    """Decode and validate a spec body (pure: runs on a parser thread)."""
    document = decode_body(body, content_type, max_expanded)
    if default_name is not None and isinstance(document, dict) and "name" not in document:
        document = {"name": default_name, **document}
    try:
        return FunctionSpec.from_dict(document)
    except SpecError:
        raise
    except Exception as exc:
        # the body made the validator trip: the client's problem, but log it as our bug
        log.failure("validating a function spec raised unexpectedly")
        raise ApiError(400, f"the spec could not be read: {exc}") from None


def _marked(document: dict, stale: bool) -> dict:
    return dict(document, stale=True) if stale else document


class AdminAPI:
    """Routes and error mapping of the admin API; ``resource()`` or ``site()`` serves it."""

    app = Klein()
    #: the node's queue service when async invocations are on (admin/asyncapi.py adds
    #: the routes: import it to serve them)
    async_calls: Any = None

    def __init__(self, store: FunctionStore, controller: str,
                 check_spec: Callable[[FunctionSpec], None], kick: Callable[[str], None],
                 clock: IReactorTime, max_body_size: int = DEFAULT_MAX_BODY_SIZE,
                 log_source: LogSource | None = None,
                 wall_clock: Callable[[], float] = time.time,
                 store_timeout: float = DEFAULT_STORE_TIMEOUT,
                 cache: Callable[[], Mapping[str, FunctionRecord]] | None = None,
                 read_timeout: float = DEFAULT_READ_TIMEOUT, node_id: str = "this node",
                 slicer: Slicer | None = None, parser: BodyParser | None = None,
                 settle: Settle | None = None) -> None:
        self.store = store
        #: parses spec bodies off the reactor (shared with the OpenFaaS API)
        self.parser = parser if parser is not None else BodyParser(clock)
        self.controller = controller
        self.check_spec = check_spec
        self.kick = kick
        self.clock = clock
        self.max_body_size = max_body_size
        self.log_source = log_source
        self.wall_clock = wall_clock
        self.store_timeout = store_timeout
        #: runs the encoding of large lists (shared with the OpenFaaS list: one budget)
        self.slicer = slicer if slicer is not None else Slicer(clock)
        self._lines = LineCache()
        self.cache = cache
        self._unknown: dict[str, tuple[FunctionSpec, float]] = {}  # creates of unknown outcome
        self.read_timeout = read_timeout
        self.node_id = node_id
        #: waits until this node's gate reflects a revision (read-your-writes)
        self.settle = settle

    def resource(self) -> IResource:
        """The API as a resource tree root (its own paths start at ``/``)."""
        return _Utf8Guard(self.app.resource())

    def site(self) -> Site:
        """A Site that also stops storing request bodies past ``max_body_size``."""
        return Site(self.resource(), requestFactory=bounded_request_factory(self.max_body_size),
                    parsePOSTFormSubmission=False, reactor=self.clock)

    # -- helpers ---------------------------------------------------------------------
    async def respond_list(self, request: IRequest, records: Mapping[str, FunctionRecord],
                           stale: bool = False, metadata: dict[str, Any] | None = None) -> bytes:
        """``records`` in name order (as ``{items, metadata}`` when ``metadata`` is
        given). Fewer than ``STREAM_THRESHOLD``: as ``respond`` writes any answer.
        More: one function per line, encoded and written in reactor slices
        (admin/listbody.py); a list of 10,000 functions costs seconds of CPU, and in
        one go it would stall every gate request meanwhile."""
        as_json = wants_json(header_text(request, b"accept"))
        names = sorted(records)
        request.setResponseCode(200)
        if len(names) < STREAM_THRESHOLD:
            items = [_marked(record_document(records[name]), stale) for name in names]
            body, content_type = encode(items if metadata is None
                                        else {"items": items, "metadata": metadata}, as_json)
            request.setHeader(b"content-type", content_type.encode())
            request.setHeader(b"content-length", b"%d" % len(body))
            return body
        request.setHeader(b"content-type", (JSON_TYPE if as_json else YAML_RESPONSE_TYPE).encode())
        pieces = list_pieces(records, names, self._lines, stale, metadata)
        return await stream(request, self.slicer, pieces)

    def close(self) -> None:
        """Stop writing lists and parsing bodies (the node does this at shutdown)."""
        self.slicer.stop()
        self.parser.close()

    def _timed(self, d: Deferred[T], what: str, code: int) -> Deferred[T]:
        """Bound a call so a hung store or log source cannot hold a request forever."""
        def on_timeout(result: Any, timeout: float) -> Any:
            if isinstance(result, Failure) and result.check(CancelledError):
                raise ApiError(code, f"{what} did not answer within {timeout:g}s")
            return result
        return d.addTimeout(self.store_timeout, self.clock, onTimeoutCancel=on_timeout)

    def _store(self, d: Deferred[T]) -> Deferred[T]:
        return self._timed(d, "the function store", 503)

    async def _read(self, read: Callable[[], Deferred[T]]) -> tuple[T, bool] | tuple[None, bool]:
        """``(result, False)`` from the store; ``(None, True)`` when the store did not
        answer within ``read_timeout`` and a watch-fed cache can answer instead."""
        if self.cache is None:
            return await self._store(read()), False
        d = read()
        try:
            return await d.addTimeout(self.read_timeout, self.clock), False
        except (StoreUnavailable, CancelledError, TimeoutError) as exc:
            log.warn("admin read answered from the watch cache: the store did not answer "
                     "({error})", error=str(exc) or type(exc).__name__)
            return None, True

    async def _retried_create(self, spec: FunctionSpec) -> FunctionRecord:
        """A create this node answered ``outcome unknown`` for, sent again with the same
        spec, finds its own function: that is the create succeeding, not a 409."""
        remembered = self._unknown.get(spec.name)
        if remembered is None or remembered[0] != spec or (
                self.clock.seconds() - remembered[1] > RETRY_WINDOW):
            raise AlreadyExists(spec.name)
        record = await self._store(self.store.get(spec.name))
        if record.spec != spec:
            raise AlreadyExists(spec.name)
        del self._unknown[spec.name]
        return record

    def _settled(self, record: FunctionRecord) -> Deferred[FunctionRecord]:
        """``record`` once this node's gate routes as it says."""
        return ensureDeferred(settled(self.settle, record_revision(record), record))

    def _stale_record(self, name: str) -> FunctionRecord:
        record = self.cache().get(name) if self.cache is not None else None
        if record is None:
            raise NotFound(name)
        return record

    def _stale(self, request: Any, data: Any) -> bytes:
        return respond(request, 200, data, {STALE_HEADER: "true"})

    def _kick(self, name: str) -> None:
        try:
            self.kick(name)
        except Exception:
            log.failure("kicking the reconciler for {name} failed; its next pass takes it",
                        name=name)

    async def _read_spec(self, request: IRequest,
                         default_name: str | None = None) -> FunctionSpec:
        """The body as a checked spec; parsed and validated on the parser's threads."""
        body = read_body(request, self.max_body_size)
        spec = await self.parser.run(parse_spec, body, header_text(request, b"content-type"),
                                     default_name, max(MAX_EXPANDED_BYTES, self.max_body_size))
        self.check_spec(spec)
        return spec

    def _location(self, version: str, controller: str, name: str) -> str:
        return f"/apis/{version}/faas/{controller}/{name}"

    # -- routes ----------------------------------------------------------------------
    @controller_route(app, BASE, "POST")
    async def create(self, request: IRequest, version: str, controller: str) -> bytes:
        spec = await self._read_spec(request)
        status = FunctionStatus.initial(spec.name, self.wall_clock())
        try:
            record = await self._store(self.store.create(spec, status))
        except OutcomeUnknown:
            now = self.clock.seconds()
            self._unknown = {n: v for n, v in self._unknown.items()
                             if now - v[1] <= RETRY_WINDOW}
            self._unknown[spec.name] = (spec, now)
            raise
        except AlreadyExists:
            record = await self._retried_create(spec)
        self._kick(spec.name)
        record = await self._settled(record)
        return respond(request, 201, record_document(record),
                            {"Location": self._location(version, controller, spec.name)})

    @controller_route(app, BASE, "GET")
    async def list_functions(self, request: IRequest, version: str, controller: str) -> bytes:
        """Every function (a list), or with ``limit``/``continue`` one page of them
        (``{items, metadata: {continue, remainingItemCount, resourceVersion}}``, as
        Kubernetes lists do); ``prefix`` keeps the names that start with it."""
        params = query_params(request.uri, ("limit", "continue", "prefix"))
        prefix = params.get("prefix", "")
        if len(prefix) > 63:
            raise ApiError(400, "prefix: a function name is at most 63 characters")
        if "limit" not in params and "continue" not in params:
            if prefix:
                page = await self._store(self.store.list_page("", 1 << 30, 0, prefix))
                records = page.records
            else:
                # whether the store answers at all is a quick read (no quorum: the
                # watch-fed cache answers, marked stale); the list itself then has the
                # store's timeout: 10,000 functions can take longer than read_timeout
                # on a busy node, and the cache was then encoded, in block YAML, on
                # the reactor (measured: 19-27 s, every gate request stalled meanwhile)
                _, stale = await self._read(self.store.check)
                if stale and self.cache is not None:  # only a cache makes a read stale
                    request.setHeader(STALE_HEADER.encode(), b"true")
                    return await self.respond_list(request, self.cache(), stale=True)
                listing = await self._store(self.store.list())
                records = listing.records
                await settled(self.settle, listing_revision(listing.records), None)
            return await self.respond_list(request, records)
        limit = parse_limit(params.get("limit"), DEFAULT_PAGE)
        after, revision = "", 0
        if params.get("continue"):
            after, revision, token_prefix = decode_continue(params["continue"])
            if "prefix" in params and prefix != token_prefix:
                raise ApiError(400, "prefix: must be the one the continue token was made "
                                    f"with ({token_prefix!r}), or left out")
            prefix = token_prefix
        try:
            page = await self._store(self.store.list_page(after, limit, revision, prefix))
        except Expired:
            raise ApiError(410, "continue: the listing this token continues has expired "
                                "(the store compacted its revision); list again from the "
                                "first page") from None
        token = encode_continue(page.last, page.revision, prefix) if page.remaining else ""
        return await self.respond_list(request, page.records, metadata={
            "continue": token, "remainingItemCount": page.remaining,
            "resourceVersion": str(page.revision)})

    @controller_route(app, FUNCTION, "GET")
    async def get_function(self, request: IRequest, version: str, controller: str,
                           fn: str) -> bytes:
        record, stale = await self._read(lambda: self.store.get(fn))
        if record is None:  # stale
            return self._stale(request, dict(record_document(self._stale_record(fn)),
                                             stale=True))
        return respond(request, 200, record_document(await self._settled(record)))

    @controller_route(app, FUNCTION + "/status", "GET")
    async def get_status(self, request: IRequest, version: str, controller: str, fn: str) -> bytes:
        record, stale = await self._read(lambda: self.store.get(fn))
        if record is None:  # stale
            return self._stale(request, dict(status_document(self._stale_record(fn).status),
                                             stale=True))
        return respond(request, 200, status_document((await self._settled(record)).status))

    @controller_route(app, FUNCTION, "PUT")
    async def update(self, request: IRequest, version: str, controller: str, fn: str) -> bytes:
        spec = await self._read_spec(request, default_name=fn)
        record = await self._store(self.store.get(fn))
        if spec.name != fn:
            raise ApiError(409, f"name: the body names function {spec.name} but the URL names "
                                f"{fn}; a function cannot be renamed (create {spec.name} and "
                                f"delete {fn} instead)")
        check_writable(record)
        now = self.wall_clock()
        updated = await writes.write(
            self.store, record, lambda r: (spec, apply_event(r.status, Event.UPDATE, now)),
            self._store)
        self._kick(fn)
        return respond(request, 200, record_document(await self._settled(updated)))

    @controller_route(app, FUNCTION + "/rollout", "PUT")
    async def rollout(self, request: IRequest, version: str, controller: str, fn: str) -> bytes:
        """A rolling update: an active function keeps serving while the new spec rolls
        out (the FSM's update would need a stop first); otherwise as update."""
        spec = await self._read_spec(request, default_name=fn)
        if spec.name != fn:
            raise ApiError(409, f"name: the body names function {spec.name} but the URL names "
                                f"{fn}; a function cannot be renamed")
        record = await self._store(self.store.get(fn))
        check_writable(record)
        now = self.wall_clock()
        updated = await writes.write(self.store, record, lambda r: rolled(r, spec, now),
                                     self._store)
        self._kick(fn)
        return respond(request, 200, record_document(await self._settled(updated)))

    async def _operator_event(self, request: IRequest, fn: str, event: Event) -> bytes:
        """Start or stop (admin/writes.py: re-applied after a status-only race)."""
        record = await self._store(self.store.get(fn))
        check_writable(record)
        now = self.wall_clock()
        updated = await writes.write(
            self.store, record, lambda r: (None, apply_event(r.status, event, now)),
            self._store)
        self._kick(fn)
        return respond(request, 200, record_document(await self._settled(updated)))

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
        check_writable(record)
        now = self.wall_clock()
        # the FSM's check (409 while active) on whatever record is deleted
        record = await writes.delete(self.store, record,
                                     lambda r: apply_event(r.status, Event.DELETE, now),
                                     self._store)
        self._kick(fn)
        destroyed = apply_event(record.status, Event.DELETE, now)
        return respond(request, 200, {"spec": record.spec.to_dict(),
                                      "status": status_document(destroyed)})

    # -- invocation keys: shown once, stored as SHA-256 only -------------------------
    @controller_route(app, FUNCTION + "/keys", "POST")
    async def create_key(self, request: IRequest, version: str, controller: str,
                         fn: str) -> bytes:
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.wall_clock()))
        key, entry = new_key(created)
        for _ in range(5):   # another writer may win the compare-and-swap: read again
            keys, revision = await self._store(self.store.get_keys(fn))
            if len(keys.entries) >= MAX_KEYS:
                raise ApiError(409, f"function {fn} has {MAX_KEYS} keys already: revoke one "
                                    f"first")
            try:
                await self._store(self.store.put_keys(fn, keys.add(entry), revision))
                break
            except Conflict:
                continue
        else:
            raise ApiError(409, f"the keys of {fn} kept changing concurrently; retry")
        return respond(request, 201, {
            **entry.public(), "key": key,
            "message": "this key is shown only now: store it (callers send it as "
                       "'Authorization: Bearer KEY' or 'X-API-Key: KEY')"},
            {"Location": f"{self._location(version, controller, fn)}/keys/{entry.id}"})

    @controller_route(app, FUNCTION + "/keys", "GET")
    async def list_keys(self, request: IRequest, version: str, controller: str,
                        fn: str) -> bytes:
        keys, _ = await self._store(self.store.get_keys(fn))
        return respond(request, 200, [entry.public() for entry in keys.entries])

    @controller_route(app, FUNCTION + "/keys/<key_id>", "DELETE")
    async def revoke_key(self, request: IRequest, version: str, controller: str, fn: str,
                         key_id: str) -> bytes:
        """Revoke one key. Without keys a function is open to anyone, so the last one
        goes only with ``?open=true``: a revoke meant to lock out a leaked key must never
        open the function instead (create the replacement first, then revoke)."""
        opening = parse_flag("open", query_params(request.uri, ("open",)).get("open"))
        for _ in range(5):   # the compare-and-swap makes "the last key" exact under races
            keys, revision = await self._store(self.store.get_keys(fn))
            entry = keys.find(key_id)
            if entry is None:
                raise ApiError(404, f"function {fn} has no key {key_id!r}")
            if len(keys.entries) == 1 and not opening:
                raise ApiError(409, f"key {key_id} is the last key of function {fn}: "
                                    f"revoking it would open {fn} to anyone; create its "
                                    f"replacement first, or revoke with open=true to open "
                                    f"{fn} on purpose")
            try:
                remaining = keys.without(key_id)
                await self._store(self.store.put_keys(fn, remaining, revision))
                return respond(request, 200, {**entry.public(), "revoked": True,
                                              "open": not remaining.entries})
            except Conflict:
                continue
        raise ApiError(409, f"the keys of {fn} kept changing concurrently; retry")

    @controller_route(app, FUNCTION + "/logs", "GET")
    async def logs(self, request: IRequest, version: str, controller: str, fn: str) -> Any:
        """NDJSON log lines; with ``follow`` the response stays open and streams new ones."""
        await self._store(self.store.get(fn))
        source = self.log_source
        if source is None:
            raise ApiError(501, "function logs are not available: this controller's provider "
                                "has no log source")
        runs_here = getattr(source, "runs_here", None)
        if runs_here is not None and not runs_here(fn):
            # the process provider's logs are node-local: never an empty 200
            raise ApiError(404, f"function {fn} has not run on node {self.node_id}, so it "
                                f"has no logs here; ask a node that runs it")
        params = query_params(request.uri, ("tail", "since", "follow"))
        tail = parse_tail(params.get("tail"))
        since = parse_since(params.get("since"), self.wall_clock())
        follow = parse_follow(params.get("follow")) and request.method != b"HEAD"
        return await send_logs(request, source, fn, tail, since, follow,
                               lambda d: self._timed(d, "the log source", 504))

    # -- errors: one table for both APIs (admin/errors.py) ---------------------------------
    @app.handle_errors(Exception)
    def _error(self, request: IRequest, failure: Failure) -> bytes:
        code, message, headers = error_answer(failure, request.method, request.path, "admin")
        return respond_error(request, code, message, headers)

    # the async-call routes, registered here (not by importing their module)
    add_async_routes(app)


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
