"""The web console's twisted.web resource, mounted on the admin port at ``/console/``.

It serves the page's three static files (read once, at construction, so no request
does file I/O on the reactor), a small ``config.json`` that tells the page which
controller it manages, and ``invoke/{name}/{path}``: a relay to the gate, because the
gate listens on another port (another origin) and sends no CORS headers. The relay
only answers requests that carry ``X-Faastwist-Console: 1``, a header a cross-site page
cannot add without a CORS preflight this resource never approves.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Mapping, cast
from urllib.parse import quote

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request
from twisted.web.iweb import IRequest
from twisted.internet.interfaces import IReactorTime

from faastwist.admin.codec import respond_error
from faastwist.gate.wire import HOP_BY_HOP
from faastwist.util.bodyproducer import BytesProducer

log = Logger()

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_FILES: Mapping[str, str] = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
CONSOLE_HEADER = b"x-faastwist-console"
#: the function's own Authorization, sent apart from the admin token the relay checks
FORWARD_AUTHORIZATION = b"x-faastwist-forward-authorization"
# not forwarded to the gate: hop-by-hop, framing, and what the browser adds for the admin origin
_DROP_REQUEST = HOP_BY_HOP | {
    b"host", b"content-length", b"cookie", b"origin", b"referer", CONSOLE_HEADER,
    FORWARD_AUTHORIZATION,
    b"authorization",  # the admin token never reaches a function
}
_DROP_RESPONSE = HOP_BY_HOP | {b"content-length", b"set-cookie"}

#: Every console answer: the page runs only its own files (no inline script or style,
#: nothing from elsewhere), talks only to its own origin, and is never framed (another
#: site cannot overlay it and trick clicks: X-Frame-Options for browsers that predate
#: frame-ancestors).
CONSOLE_CSP = (b"default-src 'none'; script-src 'self'; style-src 'self'; "
               b"connect-src 'self'; img-src 'self' data:; form-action 'self'; "
               b"base-uri 'none'; frame-ancestors 'none'")
#: What a function answers through the relay is data for the page, never a document of
#: the admin origin: no script, no plugin, not framed, sandboxed if ever opened.
RELAY_CSP = b"default-src 'none'; sandbox; frame-ancestors 'none'"
_FRAMING = ((b"x-frame-options", b"DENY"), (b"x-content-type-options", b"nosniff"))


def gate_url_for(address: str, port: int, https: bool = False) -> str:
    """The URL this node's gate answers on, from httpServer.address/port/https."""
    host = address
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if https else 'http'}://{host}:{port}"



class ConsoleResource(Resource):
    """``/console/`` and everything under it (a leaf: it routes its own sub-paths)."""

    isLeaf = True

    def __init__(self, reactor: IReactorTime, controller: str, gate_url: str, *,
                 api_prefix: str = "/apis/v2/faas", invoke_timeout: float = 60.0,
                 max_body_size: int = 2**20, agent: Any = None,
                 static_dir: Path = STATIC_DIR) -> None:
        super().__init__()
        self.reactor = reactor
        self.controller = controller
        self.gate_url = gate_url.rstrip("/")
        self.invoke_timeout = invoke_timeout
        self.max_body_size = max_body_size
        self.files = {name: (static_dir / name).read_bytes() for name in STATIC_FILES}
        self.config = json.dumps({
            "controller": controller,
            "apiBase": f"{api_prefix}/{quote(controller, safe='')}",
            "infoPath": f"{api_prefix}/info",
            "gate": self.gate_url,
        }).encode()
        if agent is None:
            pool = HTTPConnectionPool(reactor, persistent=True)
            pool.maxPersistentPerHost = 8
            agent = Agent(reactor, pool=pool, connectTimeout=min(10.0, invoke_timeout))
        self.agent = agent

    # -- routing -----------------------------------------------------------------------
    def render(self, request: IRequest) -> bytes | int:
        _protect(request, CONSOLE_CSP)
        path = [segment.decode("utf-8", errors="replace") for segment in request.postpath]
        if not path:
            return self._redirect_to_slash(request)
        head = path[0] or "index.html"
        if head == "invoke":
            return self._invoke(request, path[1:])
        if len(path) != 1 or (head not in self.files and head != "config.json"):
            return self._error(request, 404, f"no such console file: /{'/'.join(path)}")
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"allow", b"GET, HEAD")
            return self._error(request, 405, f"{request.method.decode()} is not allowed here")
        request.setHeader(b"cache-control", b"no-cache")
        if head == "config.json":
            request.setHeader(b"content-type", b"application/json")
            return self.config
        request.setHeader(b"content-type", STATIC_FILES[head].encode())
        return self.files[head]

    def _redirect_to_slash(self, request: IRequest) -> bytes:
        target = b"/" + b"/".join(request.prepath) + b"/"
        query = request.uri.partition(b"?")[2]
        if query:
            target += b"?" + query
        request.setResponseCode(301)
        request.setHeader(b"location", target)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"moved to " + target + b"\n"

    @staticmethod
    def _error(request: IRequest, code: int, message: str) -> bytes:
        return respond_error(request, code, message, as_json=True)

    # -- the invoke relay ----------------------------------------------------------------
    def _invoke(self, request: IRequest, rest: list[str]) -> bytes | int:
        if request.getHeader(CONSOLE_HEADER) != b"1":
            return self._error(request, 403, "the invoke relay answers only the console "
                                             "(header X-Faastwist-Console: 1)")
        if not rest or not rest[0]:
            return self._error(request, 404, "invoke: the function name is missing "
                                             "(/console/invoke/{name}/{path})")
        name = rest[0]
        body = request.content.read() if request.content is not None else b""
        if len(body) > self.max_body_size:
            return self._error(request, 413, f"request body is {len(body)} bytes; the console "
                                             f"relays at most {self.max_body_size}")
        raw_path = b"/" + b"/".join(quote(segment, safe="!$&'()*+,;=:@-._~").encode()
                                    for segment in rest[1:])
        query = request.uri.partition(b"?")[2]
        url = self.gate_url.encode() + raw_path + (b"?" + query if query else b"")
        headers = Headers()
        for key, values in request.requestHeaders.getAllRawHeaders():
            if key.lower() not in _DROP_REQUEST and not key.lower().startswith(b"sec-"):
                headers.setRawHeaders(key, values)
        headers.setRawHeaders(b"x-faas-func-name", [name.encode()])
        forwarded = request.getHeader(FORWARD_AUTHORIZATION)
        if forwarded:
            headers.setRawHeaders(b"authorization", [forwarded])
        producer = BytesProducer(body) if body or request.method in (
            b"POST", b"PUT", b"PATCH") else None
        started = time.monotonic()
        calling: Deferred[Any] = self.agent.request(request.method, url, headers, producer)
        gone: list[bool] = []   # the browser went away: nothing more to write
        calling.addCallback(self._read, request, started, gone)
        # one deadline for connect, response and body; the Agent reports a cancel as
        # ResponseNeverReceived, so the timer itself remembers that it fired
        timed_out: list[bool] = []

        def expire() -> None:
            timed_out.append(True)
            calling.cancel()

        timer = self.reactor.callLater(self.invoke_timeout, expire)

        def settle(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        calling.addBoth(settle)
        calling.addErrback(self._failed, request, name, timed_out, gone)

        def disconnected(_: Failure) -> None:
            gone.append(True)
            calling.cancel()

        # twisted.web's Request (IRequest omits notifyFinish)
        cast(Request, request).notifyFinish().addErrback(disconnected)
        return NOT_DONE_YET

    def _read(self, response: IResponse, request: IRequest, started: float,
              gone: list[bool]) -> Deferred[None]:
        reading = readBody(response)

        def relay(body: bytes) -> None:
            if gone:
                return
            request.setResponseCode(response.code, response.phrase)
            for key, values in response.headers.getAllRawHeaders():
                if key.lower() not in _DROP_RESPONSE:
                    request.responseHeaders.setRawHeaders(key, values)
            _protect(request, RELAY_CSP)   # after the function's: ours win
            elapsed_ms = (time.monotonic() - started) * 1000
            request.setHeader(b"x-faastwist-relay-ms", f"{elapsed_ms:.1f}".encode())
            request.setHeader(b"content-length", str(len(body)).encode())
            request.write(body)
            request.finish()

        return reading.addCallback(relay)

    def _failed(self, failure: Failure, request: IRequest, name: str,
                timed_out: list[bool], gone: list[bool]) -> None:
        if gone:
            return
        if timed_out:
            code, message = 504, (f"no answer from the gate at {self.gate_url} for {name} "
                                  f"within {self.invoke_timeout:g}s")
        else:
            log.warn("console relay to {gate} for {name} failed: {error}", gate=self.gate_url,
                     name=name, error=failure.getErrorMessage())
            code, message = 502, (f"cannot reach the gate at {self.gate_url}: "
                                  f"{failure.getErrorMessage()}")
        request.write(self._error(request, code, message))
        request.finish()


def _protect(request: IRequest, policy: bytes) -> None:
    request.setHeader(b"content-security-policy", policy)
    for name, value in _FRAMING:
        request.setHeader(name, value)


class _WithConsole(Resource):
    """``/console`` and below to the console, every other path to ``root`` untouched."""

    def __init__(self, root: IResource, console: IResource) -> None:
        super().__init__()
        self.root = root
        self.console = console

    def getChildWithDefault(self, path: bytes, request: IRequest) -> IResource:
        if path == b"console":
            return self.console
        # undo the traversal step Site just took: ``root`` routes as if it were the root
        request.postpath.insert(0, request.prepath.pop())
        return self.root

    def render(self, request: IRequest) -> Any:
        return self.root.render(request)


def mount_console(root: IResource, console: IResource) -> IResource:
    """A site root serving ``console`` at ``/console/`` in front of ``root`` (the admin
    port's composed resource): ``Site(mount_console(compose(admin, ops), console))``."""
    return _WithConsole(root, console)
