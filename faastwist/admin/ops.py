"""Operational endpoints on the admin port: /metrics, /healthz, /readyz, .../faas/info.

``/healthz`` answers "is the process alive" (the reactor served this request), for
liveness probes and the systemd watchdog's human counterpart. ``/readyz`` runs the
node's named checks (store reachable, watch current, provider reachable), each with
a timeout, concurrently, and names the failing parts in a 503, so a readiness probe
or an operator sees *what* is wrong. ``compose`` puts these in front of the admin
API on one port.
"""

from __future__ import annotations

import json

import time
from typing import Any, Callable, Mapping

from klein import Klein
from prometheus_client.exposition import generate_latest
from twisted.internet.defer import (
    Deferred,
    DeferredList,
    TimeoutError,
    ensureDeferred,
    maybeDeferred,
)
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.resource import IResource, Resource
from twisted.web.iweb import IRequest
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from faastwist.admin.codec import error_body, respond, respond_error
from faastwist.metrics import Metrics
from faastwist.util.failures import error_as

log = Logger()

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

Check = Callable[[], "Deferred[Any] | Any"]

#: the paths OpsAPI serves; everything else on the admin port belongs to the admin API
OPS_PATHS: frozenset[tuple[str, ...]] = frozenset({
    ("metrics",), ("healthz",), ("readyz",),
    ("apis", "v1", "faas", "info"), ("apis", "v2", "faas", "info"),
    ("apis", "v2", "faas", "openapi.json"),
})


#: probes must not be answered from a cache
_NO_STORE = {"Cache-Control": "no-store"}


def _describe(failure: Failure, timeout: float) -> str:
    if failure.check(TimeoutError):
        return f"timed out after {timeout:g}s"
    message = failure.getErrorMessage()
    return message or type(failure.value).__name__


class OpsAPI:
    """The operational endpoints as a Klein app.

    ``checks`` maps a part's name to a callable returning a Deferred (or a value)
    that fails when the part is not ready; ``info`` returns the node's info record.
    """

    app = Klein()

    def __init__(self, metrics: Metrics, checks: Mapping[str, Check],
                 info: Callable[[], Mapping[str, Any]], clock: IReactorTime,
                 check_timeout: float = 1.5,  # /readyz answers within 2 s
                 openapi: Mapping[str, Any] | None = None) -> None:
        self.metrics = metrics
        self.openapi = json.dumps(openapi, indent=1).encode() if openapi is not None else None
        self.checks = dict(checks)
        self.info = info
        self.clock = clock
        self.check_timeout = check_timeout
        self.stopping = False
        self._last_failure = ""
        self._pool: ThreadPool | None = None

    def resource(self) -> IResource:
        return self.app.resource()

    def mark_stopping(self) -> None:
        """From now on /readyz answers 503 (shutdown has begun: take us out of rotation)."""
        self.stopping = True

    # -- errors ------------------------------------------------------------------------
    @app.handle_errors(HTTPException)
    def http_error(self, request: IRequest, failure: Failure) -> bytes:
        error = error_as(failure, HTTPException)
        if isinstance(error, MethodNotAllowed) and error.valid_methods:
            allowed = ", ".join(sorted(error.valid_methods))
            request.setHeader(b"Allow", allowed.encode())
            message = (f"method {request.method.decode('ascii', 'replace')} not allowed on "
                       f"{request.path.decode('utf-8', 'replace')}; allowed: {allowed}")
        else:
            message = error.description or error.name
        return respond_error(request, error.code or 500, message, _NO_STORE, as_json=True)

    # -- endpoints ---------------------------------------------------------------------
    @app.route("/metrics", methods=["GET"])
    def scrape(self, request: IRequest) -> bytes | Deferred[bytes]:
        # Always the classic text format, even when Prometheus offers OpenMetrics:
        # OpenFaaS's bare-named gateway_function_invocation_started (see metrics.py)
        # cannot sit beside its counter family in OpenMetrics.
        request.setHeader(b"Content-Type", CONTENT_TYPE)
        if not hasattr(self.clock, "callFromThread"):  # a test clock: inline
            return generate_latest(self.metrics.registry)
        # with 10,000 functions the page is megabytes and seconds of CPU: on its own
        # thread, so a scrape does not stall the gate (the collectors copy what they
        # read from the gate's dicts in one C-level step each)
        if self._pool is None:
            self._pool = ThreadPool(minthreads=0, maxthreads=1, name="metrics-scrape")
            self._pool.start()
        # the node's reactor (a test's Clock returned above): also IReactorFromThreads
        return deferToThreadPool(self.clock, self._pool,  # type: ignore[arg-type]
                                 generate_latest, self.metrics.registry)

    def close(self) -> None:
        """Stop the scrape thread (the node does this at shutdown)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.stop()

    @app.route("/healthz", methods=["GET"])
    def healthz(self, request: IRequest) -> bytes:
        return respond(request, 200, {"status": "ok"}, _NO_STORE, as_json=True)

    @app.route("/readyz", methods=["GET"])
    def readyz(self, request: IRequest) -> Deferred[bytes]:
        return self.readiness().addCallback(
            lambda result: respond(request, 200 if result.get("status") == "ok" else 503,
                                   result, _NO_STORE, as_json=True))

    @app.route("/apis/v2/faas/openapi.json", methods=["GET"])
    def openapi_document(self, request: IRequest) -> bytes:
        if self.openapi is None:
            return respond_error(request, 404, "this node serves no OpenAPI document",
                                 as_json=True)
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Content-Length", b"%d" % len(self.openapi))
        return self.openapi

    @app.route("/apis/v2/faas/info", methods=["GET"])
    @app.route("/apis/v1/faas/info", methods=["GET"], endpoint="info_v1")
    def info_endpoint(self, request: IRequest) -> Deferred[bytes]:
        return maybeDeferred(self.info).addCallback(
            lambda body: respond(request, 200, dict(body)))

    # -- readiness ---------------------------------------------------------------------
    def readiness(self) -> Deferred[dict[str, Any]]:
        """Run every check concurrently; a dict with status ok, or code/message naming
        the parts that failed (and each part's result under ``checks``)."""
        names = sorted(self.checks)
        runs = []
        for name in names:
            run = maybeDeferred(self.checks[name])
            run.addTimeout(self.check_timeout, self.clock)
            runs.append(run)

        def summarise(results: list[tuple[bool, Any]]) -> dict[str, Any]:
            outcome: dict[str, str] = {}
            failed: list[str] = []
            for name, (ok, value) in zip(names, results):
                if ok:
                    outcome[name] = "ok"
                else:
                    outcome[name] = _describe(value, self.check_timeout)
                    failed.append(f"{name}: {outcome[name]}")
            if self.stopping:
                failed.insert(0, "node: stopping")
            summary = "; ".join(failed)
            if summary != self._last_failure:  # log changes, not every probe
                if summary:
                    log.warn("not ready: {failed}", failed=summary)
                else:
                    log.info("ready again: every check passes")
                self._last_failure = summary
            if not failed:
                return {"status": "ok", "checks": outcome}
            return {**error_body(503, "not ready: " + summary), "checks": outcome}

        return DeferredList(runs, consumeErrors=True).addCallback(summarise)


def node_info(version: str, provider: str, controller: str, node: str,
              started_at: float, is_leader: Callable[[], bool],
              cluster: Callable[[], Any] | None = None,
              wall_clock: Callable[[], float] = time.time) -> Callable[[], Any]:
    """The callable OpsAPI's ``info`` wants, built from what the node knows; ``cluster``
    adds which node leads (``leaderNode``: id and admin address) and the live ``nodes``
    (a mapping, or a Deferred or coroutine of one: who leads is read from the store)."""
    def info() -> Any:
        body = {"name": "faastwist", "version": version, "provider": provider,
                "controller": controller, "node": node,
                "uptimeSeconds": round(max(0.0, wall_clock() - started_at), 3),
                "leader": bool(is_leader())}
        if cluster is None:
            return body
        extra = cluster()
        if isinstance(extra, Mapping):
            return {**body, **extra}
        return ensureDeferred(extra).addCallback(lambda more: {**body, **more})
    return info


class _Composed(Resource):
    """Sends the OPS_PATHS to the ops resource and everything else to the admin API,
    leaving the request's path untouched so either side routes it as if it were root."""

    def __init__(self, admin: IResource, ops: IResource, system: IResource | None) -> None:
        super().__init__()
        self.admin = admin
        self.ops = ops
        self.system = system

    def getChildWithDefault(self, path: bytes, request: IRequest) -> IResource:
        segments = tuple(s.decode("utf-8", "replace") for s in (path, *request.postpath))
        # undo the traversal step Site just took, so the chosen resource sees the same
        # prepath/postpath it would see as the Site's root
        request.postpath.insert(0, request.prepath.pop())
        if path == b"system" and self.system is not None:
            return self.system
        return self.ops if segments in OPS_PATHS else self.admin

    def render(self, request: IRequest) -> Any:
        # only reached for an empty path, which HTTP cannot express; admin owns "/"
        return self.admin.render(request)


def compose(admin_resource: IResource, ops_resource: IResource,
            system_resource: IResource | None = None) -> IResource:
    """One root for the admin port: /metrics, /healthz, /readyz and
    /apis/v{1,2}/faas/info go to ops (so ``info`` is never taken for a controller
    name), /system/... to OpenFaaS's API, the rest to the admin API."""
    return _Composed(admin_resource, ops_resource, system_resource)
