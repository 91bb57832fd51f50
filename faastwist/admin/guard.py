"""The one gate in front of everything on the admin port: Host, Origin, credentials.

Wraps the port's root resource, so every route (the REST API, ops endpoints, the
console, and whatever is mounted later) passes the same checks in the same order:

1. ``Host`` not one of the node's names or an IP literal: 421 (DNS rebinding).
   ``/healthz`` and ``/readyz`` skip this (probes address pods by whatever name).
   Every ``X-Forwarded-Host`` is held to the same rule: the gate relays ``/system/*``
   here with its own Host and the client's in X-Forwarded-Host (it drops any the client
   sent), so a rebinding name is refused through the gate too. A client talking to this
   port directly can only refuse itself with that header, never pass the check.
2. A write (not GET/HEAD/OPTIONS) with a foreign ``Origin``: 403 (cross-site pages).
3. Credentials (``faastwist.auth.authorizer``): 401 with ``WWW-Authenticate``, or 403
   for a read token on a write. Open without credentials: ``/healthz``, ``/readyz``,
   the OpenAPI document, the console's static files (the page asks for the token), the
   function store's catalogue (``/system/store``), and ``/metrics`` when
   ``admin.auth.metricsOpen`` is true.
"""

from __future__ import annotations

from typing import Any, Sequence

from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource

from faastwist.admin.codec import header_text, respond_error
from faastwist.auth.authorizer import Authorizer, Decision
from faastwist.auth.origin import OriginPolicy

READ_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS"})
PROBES: frozenset[tuple[str, ...]] = frozenset({("healthz",), ("readyz",)})
OPEN: frozenset[tuple[str, ...]] = PROBES | frozenset({
    ("apis", "v2", "faas", "openapi.json"),
    ("console",), ("console", ""), ("console", "index.html"), ("console", "app.js"),
    ("console", "style.css"), ("console", "config.json"),
    # the function store's catalogue: faas-cli's `store list --url` sends no credentials
    ("system", "store"),
})
METRICS = ("metrics",)


def is_write(method: bytes) -> bool:
    return method not in READ_METHODS


def _forwarded_hosts(request: IRequest) -> list[tuple[bytes, str]]:
    """Every X-Forwarded-Host value (a relay's client's Host), each to be checked."""
    values = request.requestHeaders.getRawHeaders(b"x-forwarded-host") or ()
    return [(b"X-Forwarded-Host", v.decode("latin-1") if isinstance(v, bytes) else v)
            for v in values]


class _Refusal(Resource):
    """A leaf that answers one refusal as ``{code, message}``."""

    isLeaf = True

    def __init__(self, code: int, message: str,
                 headers: Sequence[tuple[str, str]] = (), as_json: bool | None = None) -> None:
        super().__init__()
        self.code = code
        self.message = message
        self.headers = headers
        self.as_json = as_json

    def render(self, request: IRequest) -> bytes:
        body = respond_error(request, self.code, self.message, {"Cache-Control": "no-store"},
                             as_json=self.as_json)
        for name, value in self.headers:  # addRawHeader: WWW-Authenticate may come twice
            request.responseHeaders.addRawHeader(name.encode(), value.encode())
        return body


class AdminGuard(Resource):
    """Checks every request, then hands it to ``root`` as if ``root`` were the site root."""

    def __init__(self, root: IResource, authorizer: Authorizer, policy: OriginPolicy,
                 metrics_open: bool = False) -> None:
        super().__init__()
        self.root = root
        self.authorizer = authorizer
        self.policy = policy
        self.metrics_open = metrics_open

    def refusal(self, request: IRequest, segments: tuple[str, ...]) -> _Refusal | None:
        """The answer that stops this request, or None to let it through."""
        if segments in PROBES:
            return None
        # OpenFaaS's clients read only JSON errors (faas-cli sends no Accept)
        as_json = True if segments[:1] == ("system",) else None
        host = header_text(request, b"host")
        for name, value in ((b"Host", host), *_forwarded_hosts(request)):
            if not self.policy.host_allowed(value):
                return _Refusal(421, f"{name.decode()} {value!r} is not one of this node's "
                                     f"names; a browser sent here by another site's DNS name "
                                     f"is refused (add the name to admin.allowedHosts if it "
                                     f"is yours)", as_json=as_json)
        write = is_write(request.method)
        origin = header_text(request, b"origin")
        if write and origin is not None and not self.policy.origin_allowed(origin, host):
            return _Refusal(403, f"Origin {origin!r} may not change anything here: "
                                 f"cross-site writes are refused (add the origin to "
                                 f"admin.allowedOrigins if it is yours)", as_json=as_json)
        if segments in OPEN or (segments == METRICS and self.metrics_open):
            return None
        decision: Decision = self.authorizer.check(header_text(request, b"authorization"), write)
        if decision.allowed:
            return None
        return _Refusal(decision.code, decision.message, decision.headers, as_json)

    def _segments(self, request: IRequest) -> tuple[str, ...]:
        raw = [*request.prepath, *request.postpath]
        if len(raw) > 1 and raw[-1] == b"" and raw[0] != b"console":
            raw.pop()  # /healthz/ is /healthz (the routes ignore a trailing slash too)
        return tuple(s.decode("utf-8", "replace") for s in raw)

    def getChildWithDefault(self, path: bytes, request: IRequest) -> IResource:
        refusal = self.refusal(request, self._segments(request))
        if refusal is not None:
            return refusal
        # undo the traversal step Site just took: ``root`` routes as if it were the root
        request.postpath.insert(0, request.prepath.pop())
        return self.root

    def render(self, request: IRequest) -> Any:
        refusal = self.refusal(request, self._segments(request))
        if refusal is not None:
            return refusal.render(request)
        return self.root.render(request)
