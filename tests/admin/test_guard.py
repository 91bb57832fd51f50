"""The admin port's guard over the real admin API, ops endpoints and console (in memory).

Includes the issue's cross-site reproduction: a form-encoded POST from another site's
page that would create ``command: [sh, -c, "id > pwned.txt"]``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.task import Clock
from treq.testing import StubTreq
from twisted.web.resource import Resource

from faastwist.admin.api import AdminAPI
from faastwist.admin.console import ConsoleResource, mount_console
from faastwist.admin.guard import AdminGuard
from faastwist.admin.ops import OpsAPI, compose
from faastwist.auth.authorizer import Authorizer
from faastwist.auth.origin import OriginPolicy
from faastwist.auth.tokens import Role, TokenEntry, hash_token
from faastwist.metrics import Metrics
from faastwist.model.spec import FunctionSpec
from faastwist.providers.registry import check_spec_for
from faastwist.store.memory import MemoryStore
from tests.admin.test_api import fired

ADMIN, READ = "tok-admin", "tok-read"
ROOT = "http://127.0.0.1:2381"
API = f"{ROOT}/apis/v2/faas/ctl"
PWNED = b"name: pwned\ncommand: [sh, -c, \"id > pwned.txt\"]\n"


def process_check(spec: FunctionSpec) -> None:
    check_spec_for("process", spec)


class Node:
    def __init__(self, anonymous: Role | None = None, metrics_open: bool = False) -> None:
        clock = Clock()
        self.store = MemoryStore("ctl")
        api = AdminAPI(self.store, "ctl", process_check, lambda name: None, clock)
        ops = OpsAPI(Metrics(), {}, lambda: {"controller": "ctl"}, clock)
        console = ConsoleResource(clock, "ctl", "http://127.0.0.1:1", agent=object())
        self.authorizer = Authorizer([TokenEntry(Role.ADMIN, hash_token(ADMIN)),
                                      TokenEntry(Role.READ, hash_token(READ))], anonymous)
        policy = OriginPolicy.build("http", 2381, ["nodehost"])
        root = AdminGuard(mount_console(compose(api.resource(), ops.resource()), console),
                          self.authorizer, policy, metrics_open)
        self.http = StubTreq(root)

    def call(self, method: str, url: str, body: bytes | None = None,
             token: str | None = None, **headers: str) -> tuple[int, Any, bytes]:
        sent = {k.replace("_", "-"): v for k, v in headers.items()}
        sent.setdefault("Accept", "application/json")
        if token:
            sent["Authorization"] = f"Bearer {token}"
        d = self.http.request(method, url, data=body, headers=sent)
        self.http.flush()
        response = fired(d)
        content = self.http.content(response)
        self.http.flush()
        return response.code, response.headers, fired(content)

    def functions(self) -> list[str]:
        return sorted(fired(self.store.list()).records)


@pytest.fixture
def node() -> Node:
    return Node()


def test_cross_site_form_post_creates_nothing_even_for_anonymous_admin() -> None:
    node = Node(anonymous=Role.ADMIN)
    code, _, body = node.call("POST", API, PWNED, Content_Type="application/x-www-form-urlencoded",
                              Origin="http://evil.example")
    assert code == 403 and "Origin" in json.loads(body)["message"]
    # the same form post without an Origin (a non-browser client) is still not a spec
    code, _, body = node.call("POST", API, PWNED, Content_Type="text/plain")
    assert code == 415
    assert node.functions() == []


def test_dns_rebinding_host_is_421_even_for_reads(node: Node) -> None:
    code, _, body = node.call("GET", API, token=ADMIN, Host="evil.example:2381")
    assert code == 421 and "admin.allowedHosts" in json.loads(body)["message"]
    assert node.call("GET", API, token=ADMIN, Host="nodehost:2381")[0] == 200


@pytest.mark.parametrize("method, path, token, code", [
    ("GET", "", None, 401), ("GET", "", READ, 200), ("GET", "", ADMIN, 200),
    ("GET", "/x", "wrong", 401),
    ("POST", "", READ, 403), ("PUT", "/x/stop", READ, 403), ("DELETE", "/x", None, 401),
])
def test_credentials(node: Node, method: str, path: str, token: str | None, code: int) -> None:
    got, headers, body = node.call(method, API + path, b"" if method != "GET" else None,
                                   token=token)
    assert got == code, body
    if code == 401:
        assert headers.getRawHeaders("www-authenticate") == ['Bearer realm="faastwist"']
        assert set(json.loads(body)) == {"code", "message"}


def test_admin_token_creates_and_same_origin_writes_pass(node: Node) -> None:
    code, _, body = node.call("POST", API, PWNED.replace(b"pwned", b"ok"), token=ADMIN,
                              Content_Type="application/yaml", Origin=ROOT)
    assert code == 201, body
    assert node.functions() == ["ok"]


@pytest.mark.parametrize("path, code", [
    ("/healthz", 200), ("/readyz", 200), ("/healthz/", 404),  # open, then not found
    ("/console", 200), ("/console/", 200), ("/console/index.html", 200),
    ("/console/app.js", 200), ("/console/style.css", 200), ("/console/config.json", 200),
    # open, and answered by the API (this node has no OpenAPI document); a trailing slash
    # is dropped before the check, as the routes drop it ...
    ("/apis/v2/faas/openapi.json", 404), ("/apis/v2/faas/openapi.json/", 404),
    # ... except under /console/, where it names another file
    ("/console/app.js/", 401), ("/console/app.js/x", 401),
    ("/%ff", 401),                                   # not UTF-8: still checked, not a 500
    ("/apis/v2/faas/info", 401), ("/metrics", 401), ("/console/invoke/f/", 401),
    ("/healthz/../apis/v2/faas/ctl", 401),
])
def test_open_and_closed_paths(node: Node, path: str, code: int) -> None:
    assert node.call("GET", ROOT + path)[0] == code, path


def test_probes_skip_the_host_check(node: Node) -> None:
    assert node.call("GET", ROOT + "/readyz", Host="10-0-0-7.pod:2381")[0] == 200
    assert node.call("GET", ROOT + "/readyz", Host="evil.example")[0] == 200


def test_metrics_switch() -> None:
    assert Node(metrics_open=True).call("GET", ROOT + "/metrics")[0] == 200
    assert Node().call("GET", ROOT + "/metrics", token=READ)[0] == 200


def test_anonymous_read_may_not_write() -> None:
    node = Node(anonymous=Role.READ)
    assert node.call("GET", API)[0] == 200
    assert node.call("POST", API, PWNED, Content_Type="application/yaml")[0] == 401
    assert node.functions() == []


def test_head_and_options_are_reads(node: Node) -> None:
    """A read token may use them, and a foreign Origin does not matter for them."""
    assert node.call("HEAD", API, token=READ, Origin="http://evil.example")[0] == 200
    code, _, body = node.call("OPTIONS", API, token=READ, Origin="http://evil.example")
    assert code == 405 and "method OPTIONS is not allowed" in json.loads(body)["message"]


@pytest.mark.parametrize("method, host, origin, code, message", [
    ("GET", "evil.example:2381", None, 421,
     "Host 'evil.example:2381' is not one of this node's names; a browser sent here by "
     "another site's DNS name is refused (add the name to admin.allowedHosts if it is yours)"),
    ("POST", "127.0.0.1:2381", "http://evil.example", 403,
     "Origin 'http://evil.example' may not change anything here: cross-site writes are "
     "refused (add the origin to admin.allowedOrigins if it is yours)"),
    ("POST", "127.0.0.1:2381", "http://[::1", 403,
     "Origin 'http://[::1' may not change anything here: cross-site writes are "
     "refused (add the origin to admin.allowedOrigins if it is yours)"),
])
def test_refusals_exactly_and_never_cached(node: Node, method: str, host: str,
                                           origin: str | None, code: int, message: str) -> None:
    headers = {"Host": host} | ({"Origin": origin} if origin else {})
    got, sent, body = node.call(method, API, b"" if method == "POST" else None, token=ADMIN,
                                **headers)
    assert (got, json.loads(body)) == (code, {"code": code, "message": message})
    assert sent.getRawHeaders("cache-control") == ["no-store"]


def test_metrics_are_closed_unless_opened() -> None:
    ops = OpsAPI(Metrics(), {}, lambda: {"controller": "ctl"}, Clock())
    guard = AdminGuard(ops.resource(), Authorizer([]), OriginPolicy.build("http", 2381, []))
    assert fired(StubTreq(guard).get(ROOT + "/metrics")).code == 401


def test_the_guard_checks_a_request_rendered_at_its_own_level() -> None:
    """Site hands the guard a request with no path segment left only in odd cases (it
    then renders the guard itself): the same checks apply."""
    from twisted.web.test.requesthelper import DummyRequest

    opened: list[bytes] = []

    class Root(Resource):
        def render(self, request: Any) -> bytes:
            opened.append(request.method)
            return b"root"

    guard = AdminGuard(Root(), Authorizer([TokenEntry(Role.ADMIN, hash_token(ADMIN))]),
                       OriginPolicy.build("http", 2381, []))
    refused = DummyRequest([])
    refused.requestHeaders.setRawHeaders(b"accept", [b"application/json"])
    body = guard.render(refused)
    assert refused.responseCode == 401 and json.loads(body)["code"] == 401 and opened == []
    allowed = DummyRequest([])
    allowed.requestHeaders.setRawHeaders(b"authorization", [f"Bearer {ADMIN}".encode()])
    assert guard.render(allowed) == b"root" and opened == [b"GET"]


def test_a_relayed_clients_host_is_held_to_the_host_rule(node: Node) -> None:
    """The gate relays /system/* with its own Host and the client's in X-Forwarded-Host:
    a rebinding name is 421 there too; a direct client cannot pass with that header."""
    code, _, body = node.call("GET", API, token=ADMIN, X_Forwarded_Host="evil.example:10083")
    assert (code, json.loads(body)["message"]) == (421, (
        "X-Forwarded-Host 'evil.example:10083' is not one of this node's names; a browser "
        "sent here by another site's DNS name is refused (add the name to "
        "admin.allowedHosts if it is yours)"))
    assert node.call("GET", API, token=ADMIN, X_Forwarded_Host="nodehost:10083")[0] == 200
    assert node.call("GET", API, token=ADMIN, X_Forwarded_Host="10.1.2.3:10083")[0] == 200
    # a good forwarded host never excuses a bad Host
    assert node.call("GET", API, token=ADMIN, Host="evil.example",
                     X_Forwarded_Host="127.0.0.1")[0] == 421
    # the probes skip the check, as for Host
    assert node.call("GET", ROOT + "/healthz", X_Forwarded_Host="evil.example")[0] == 200


def test_every_forwarded_host_value_is_checked(node: Node) -> None:
    headers = {"Authorization": f"Bearer {ADMIN}", "Accept": "application/json",
               "X-Forwarded-Host": ["127.0.0.1", "evil.example"]}
    d = node.http.request("GET", API, headers=headers)
    node.http.flush()
    assert fired(d).code == 421


def test_refusals_on_system_paths_are_json_for_openfaas_clients(node: Node) -> None:
    """faas-cli sends no Accept and reads ``{code, message}`` JSON; the challenge stays."""
    for path, headers, code in (
            ("/system/functions", {}, 401),
            ("/system/functions", {"Authorization": "Bearer "}, 401),   # faas-cli, logged out
            ("/system/functions", {"Host": "evil.example"}, 421)):
        d = node.http.request("GET", ROOT + path, headers=headers)
        node.http.flush()
        response = fired(d)
        body = fired(node.http.content(response))
        assert response.code == code
        assert response.headers.getRawHeaders("content-type") == ["application/json"]
        assert set(json.loads(body)) == {"code", "message"}
        if code == 401:
            assert response.headers.getRawHeaders("www-authenticate") == [
                'Bearer realm="faastwist"']
    # the Easegress API keeps answering YAML to a client that does not ask for JSON
    d = node.http.request("GET", API)
    node.http.flush()
    assert fired(d).headers.getRawHeaders("content-type") == ["application/yaml"]


def test_an_empty_bearer_is_anonymous_on_the_admin_port() -> None:
    node = Node(anonymous=Role.READ)
    assert node.call("GET", API, Authorization="Bearer ")[0] == 200
    code, _, body = node.call("POST", API, b"", Authorization="Bearer ")
    assert code == 401 and "anonymous callers may only read" in json.loads(body)["message"]
