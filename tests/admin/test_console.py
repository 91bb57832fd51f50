"""The console's twisted.web resource, through a real Site with no sockets.

The static files, config.json, the /console -> /console/ redirect, and the invoke
relay against an in-memory upstream that echoes what it received (the real gate is
exercised by tests/admin/test_console_browser.py).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from treq.testing import RequestTraversalAgent, StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from faastwist.admin.console import STATIC_DIR, ConsoleResource, gate_url_for


class EchoGate(Resource):
    """Answers with what it got: method, path, headers and body, as JSON."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.hold = False
        self.held: list[Any] = []

    def render(self, request: Any) -> Any:
        if self.hold:
            self.held.append(request)
            return NOT_DONE_YET
        request.setResponseCode(201)
        request.setHeader(b"x-echo", b"yes")
        request.setHeader(b"set-cookie", b"session=gate")
        return json.dumps({
            "method": request.method.decode(),
            "uri": request.uri.decode(),
            "headers": {k.decode().lower(): [v.decode() for v in vs]
                        for k, vs in request.requestHeaders.getAllRawHeaders()},
            "body": request.content.read().decode(),
        }).encode()


class Harness:
    def __init__(self, gate_root: Resource | None = None, **kwargs: Any) -> None:
        self.clock = Clock()
        self.gate = EchoGate()
        self.gate_agent = RequestTraversalAgent(gate_root or self.gate)
        self.console = ConsoleResource(self.clock, "ctl-a", "http://127.0.0.1:10083",
                                       agent=self.gate_agent, **kwargs)
        root = Resource()
        root.putChild(b"console", self.console)
        self.treq = StubTreq(root)

    def call(self, method: str, path: str, **kwargs: Any) -> tuple[Any, bytes]:
        done: list[Any] = []
        d = self.treq.request(method, "http://admin" + path, allow_redirects=False, **kwargs)
        d.addCallback(lambda r: self.treq.content(r).addCallback(lambda b: done.append((r, b))))
        d.addErrback(done.append)
        for _ in range(10):
            self.gate_agent.flush()
            self.treq.flush()
            if done:
                break
        assert done, "no response"
        if not isinstance(done[0], tuple):
            done[0].raiseException()
        return done[0]


CONSOLE = {"X-Faastwist-Console": "1"}


@pytest.mark.parametrize("name, kind", [("", "text/html; charset=utf-8"),
                                        ("index.html", "text/html; charset=utf-8"),
                                        ("app.js", "text/javascript; charset=utf-8"),
                                        ("style.css", "text/css; charset=utf-8")])
def test_static_files_with_their_content_types(name: str, kind: str) -> None:
    response, body = Harness().call("GET", f"/console/{name}")
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type") == [kind]
    assert response.headers.getRawHeaders("x-content-type-options") == ["nosniff"]
    assert body == (STATIC_DIR / (name or "index.html")).read_bytes()


def test_redirect_to_trailing_slash_keeps_the_query() -> None:
    response, _ = Harness().call("GET", "/console?x=1")
    assert response.code == 301
    assert response.headers.getRawHeaders("location") == ["/console/?x=1"]


def test_config_names_the_controller_and_api() -> None:
    response, body = Harness().call("GET", "/console/config.json")
    assert response.code == 200
    assert json.loads(body) == {"controller": "ctl-a", "apiBase": "/apis/v2/faas/ctl-a",
                                "infoPath": "/apis/v2/faas/info",
                                "gate": "http://127.0.0.1:10083"}


@pytest.mark.parametrize("path", ["/console/nope.js", "/console/app.js/x", "/console/../setup.cfg"])
def test_unknown_files_are_404_with_a_message(path: str) -> None:
    response, body = Harness().call("GET", path)
    assert response.code == 404
    assert json.loads(body)["code"] == 404
    assert "no such console file" in json.loads(body)["message"]


def test_static_files_refuse_writes() -> None:
    response, body = Harness().call("POST", "/console/app.js", data=b"x")
    assert response.code == 405
    assert response.headers.getRawHeaders("allow") == ["GET, HEAD"]


def test_relay_forwards_method_path_query_headers_and_body() -> None:
    h = Harness()
    response, body = h.call("PUT", "/console/invoke/echo/a/b%20c?q=1",
                            headers={**CONSOLE, "X-Custom": "v", "Cookie": "admin=secret",
                                     "Content-Type": "text/plain"},
                            data=b"hello")
    assert response.code == 201
    seen = json.loads(body)
    assert seen["method"] == "PUT"
    assert seen["uri"] == "/a/b%20c?q=1"
    assert seen["body"] == "hello"
    assert seen["headers"]["x-faas-func-name"] == ["echo"]
    assert seen["headers"]["x-custom"] == ["v"]
    assert seen["headers"]["content-type"] == ["text/plain"]
    assert seen["headers"]["content-length"] == ["5"]      # framing kept, not chunked
    assert "cookie" not in seen["headers"]                  # the admin origin's cookies stay
    assert "x-faastwist-console" not in seen["headers"]
    assert response.headers.getRawHeaders("x-echo") == ["yes"]
    assert response.headers.getRawHeaders("set-cookie") is None
    assert response.length == len(body)    # Content-Length, not chunked
    assert float(response.headers.getRawHeaders("x-faastwist-relay-ms")[0]) >= 0


def test_relay_never_forwards_the_admin_token_but_forwards_the_functions() -> None:
    h = Harness()
    _, body = h.call("GET", "/console/invoke/echo/", headers={
        **CONSOLE, "Authorization": "Bearer admin-token"})
    assert "authorization" not in json.loads(body)["headers"]
    _, body = h.call("GET", "/console/invoke/echo/", headers={
        **CONSOLE, "Authorization": "Bearer admin-token",
        "X-Faastwist-Forward-Authorization": "Bearer fn-key"})
    headers = json.loads(body)["headers"]
    assert headers["authorization"] == ["Bearer fn-key"]
    assert "x-faastwist-forward-authorization" not in headers


def test_relay_root_path_without_body() -> None:
    response, body = Harness().call("GET", "/console/invoke/echo", headers=CONSOLE)
    seen = json.loads(body)
    assert (seen["method"], seen["uri"], seen["body"]) == ("GET", "/", "")


def test_relay_needs_the_console_header() -> None:
    response, body = Harness().call("POST", "/console/invoke/echo/", data=b"x")
    assert response.code == 403
    assert "X-Faastwist-Console" in json.loads(body)["message"]


def test_relay_needs_a_function_name() -> None:
    response, body = Harness().call("POST", "/console/invoke/", headers=CONSOLE, data=b"x")
    assert response.code == 404
    assert "function name is missing" in json.loads(body)["message"]


def test_relay_refuses_large_bodies() -> None:
    response, body = Harness(max_body_size=4).call("POST", "/console/invoke/echo/",
                                                   headers=CONSOLE, data=b"12345")
    assert response.code == 413
    assert "at most 4" in json.loads(body)["message"]


def test_relay_times_out_with_504() -> None:
    h = Harness(invoke_timeout=5.0)
    h.gate.hold = True
    result: list[Any] = []
    d = h.treq.request("POST", "http://admin/console/invoke/slow/", headers=CONSOLE, data=b"x")
    d.addCallback(lambda r: h.treq.content(r).addCallback(lambda b: result.append((r, b))))
    h.gate_agent.flush()
    h.treq.flush()
    assert h.gate.held and not result
    h.clock.advance(5.0)
    h.gate_agent.flush()
    h.treq.flush()
    response, body = result[0]
    assert response.code == 504
    assert json.loads(body)["message"] == (
        "no answer from the gate at http://127.0.0.1:10083 for slow within 5s")


def test_relay_unreachable_gate_is_502() -> None:
    class Refusing:
        def request(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
            from twisted.internet.error import ConnectionRefusedError

            d: Deferred[Any] = Deferred()
            d.errback(ConnectionRefusedError("Connection refused"))
            return d

    clock = Clock()
    console = ConsoleResource(clock, "c", "http://127.0.0.1:1", agent=Refusing())
    root = Resource()
    root.putChild(b"console", console)
    stub = StubTreq(root)
    result: list[Any] = []
    d = stub.request("POST", "http://admin/console/invoke/f/", headers=CONSOLE, data=b"x")
    d.addCallback(lambda r: stub.content(r).addCallback(lambda b: result.append((r, b))))
    stub.flush()
    response, body = result[0]
    assert response.code == 502
    assert json.loads(body)["message"].startswith("cannot reach the gate at http://127.0.0.1:1:")


@pytest.mark.parametrize("address, port, https, url", [
    ("0.0.0.0", 10083, False, "http://127.0.0.1:10083"),
    ("127.0.0.1", 8080, True, "https://127.0.0.1:8080"),
    ("::", 80, False, "http://[::1]:80"),
    ("10.1.2.3", 81, False, "http://10.1.2.3:81"),
])
def test_gate_url_for(address: str, port: int, https: bool, url: str) -> None:
    assert gate_url_for(address, port, https) == url


def test_mount_console_in_front_of_another_root() -> None:
    from faastwist.admin.console import mount_console

    class PathEcho(Resource):
        isLeaf = True

        def render(self, request: Any) -> bytes:
            return json.dumps({"prepath": [p.decode() for p in request.prepath],
                               "postpath": [p.decode() for p in request.postpath]}).encode()

    clock = Clock()
    console = ConsoleResource(clock, "c", "http://127.0.0.1:1")
    stub = StubTreq(mount_console(PathEcho(), console))

    def call(path: str) -> tuple[Any, bytes]:
        out: list[Any] = []
        d = stub.request("GET", "http://admin" + path, allow_redirects=False)
        d.addCallback(lambda r: stub.content(r).addCallback(lambda b: out.append((r, b))))
        stub.flush()
        return out[0]

    response, body = call("/apis/v2/faas/c/fn")
    assert json.loads(body) == {"prepath": [], "postpath": ["apis", "v2", "faas", "c", "fn"]}
    response, body = call("/consoles")
    assert json.loads(body) == {"prepath": [], "postpath": ["consoles"]}
    response, body = call("/")
    assert json.loads(body) == {"prepath": [], "postpath": [""]}
    response, _ = call("/console")
    assert (response.code, response.headers.getRawHeaders("location")) == (301, ["/console/"])
    response, body = call("/console/app.js")
    assert body == (STATIC_DIR / "app.js").read_bytes()


CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
       "img-src 'self' data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")


@pytest.mark.parametrize("method, path, code", [
    ("GET", "/console/", 200), ("GET", "/console/index.html", 200),
    ("GET", "/console/app.js", 200), ("GET", "/console/config.json", 200),
    ("GET", "/console", 301), ("GET", "/console/nope", 404), ("POST", "/console/", 405),
    ("GET", "/console/invoke/echo/", 403)])
def test_every_console_answer_forbids_framing_and_foreign_code(method: str, path: str,
                                                              code: int) -> None:
    """Issue 21: the console could be framed (no CSP, no X-Frame-Options)."""
    response, _ = Harness().call(method, path, data=b"x" if method == "POST" else None)
    assert response.code == code
    assert response.headers.getRawHeaders("content-security-policy") == [CSP]
    assert response.headers.getRawHeaders("x-frame-options") == ["DENY"]
    assert response.headers.getRawHeaders("x-content-type-options") == ["nosniff"]


def test_the_page_has_no_inline_script_or_style() -> None:
    """What the policy allows is all the page needs (the browser test runs it)."""
    import re

    page = (STATIC_DIR / "index.html").read_text()
    assert re.findall(r"<script[^>]*>", page) == ['<script src="app.js">']
    assert "<style" not in page and " style=" not in page
    assert not re.search(r"\son[a-z]+=", page)      # no inline event handlers
    script = (STATIC_DIR / "app.js").read_text()
    assert "eval(" not in script and "new Function" not in script
    assert "innerHTML" not in script and "setAttribute(\"style" not in script


class FramingGate(Resource):
    """A function that tries to make its answer a document of the admin origin."""

    isLeaf = True

    def render(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"text/html")
        request.setHeader(b"content-security-policy", b"default-src *")
        request.setHeader(b"x-frame-options", b"ALLOWALL")
        return b"<script>alert(1)</script>"


def test_relayed_answers_carry_a_sandbox_policy_over_the_functions() -> None:
    response, body = Harness(gate_root=FramingGate()).call("GET", "/console/invoke/evil/",
                                                           headers=CONSOLE)
    assert body == b"<script>alert(1)</script>"
    assert response.headers.getRawHeaders("content-security-policy") == [
        "default-src 'none'; sandbox; frame-ancestors 'none'"]
    assert response.headers.getRawHeaders("x-frame-options") == ["DENY"]
