"""The route decorator every Easegress handler uses (faastwist/admin/routing.py): the
controller in the path is checked before any handler runs, through a real Klein app and
Site (treq's StubTreq, no sockets)."""

from __future__ import annotations

import json
from typing import Any

import pytest_twisted
from klein import Klein
from treq.testing import StubTreq
from twisted.web.iweb import IRequest

from faastwist.admin.codec import ApiError
from faastwist.admin.routing import BASE, FUNCTION, controller_route


class Handlers:
    """A two-route app shaped like the admin API: what each handler saw is recorded."""

    app = Klein()

    def __init__(self, controller: str) -> None:
        self.controller = controller
        self.calls: list[tuple[str, dict[str, str]]] = []

    @controller_route(app, BASE, "GET")
    def listing(self, request: IRequest, **kwargs: str) -> bytes:
        self.calls.append(("list", kwargs))
        return b"listed"

    @controller_route(app, FUNCTION + "/start", "PUT")
    def start(self, request: IRequest, **kwargs: str) -> bytes:
        self.calls.append(("start", kwargs))
        return b"started"

    @app.handle_errors(ApiError)
    def refused(self, request: IRequest, failure: Any) -> bytes:
        request.setResponseCode(failure.value.code)
        return json.dumps({"code": failure.value.code,
                           "message": failure.value.message}).encode()


def client(handlers: Handlers) -> StubTreq:
    return StubTreq(handlers.app.resource())  # the app bound to this instance


async def call(http: StubTreq, method: str, path: str) -> tuple[int, bytes]:
    response = await http.request(method, "http://127.0.0.1" + path)
    return response.code, await response.content()


@pytest_twisted.ensureDeferred
async def test_the_handler_runs_with_the_path_values_for_its_controller() -> None:
    handlers = Handlers("faascontroller")
    http = client(handlers)
    assert await call(http, "GET", "/apis/v2/faas/faascontroller") == (200, b"listed")
    assert await call(http, "PUT", "/apis/v1/faas/faascontroller/echo/start") == (
        200, b"started")
    assert handlers.calls == [
        ("list", {"version": "v2", "controller": "faascontroller"}),
        ("start", {"version": "v1", "controller": "faascontroller", "fn": "echo"})]


@pytest_twisted.ensureDeferred
async def test_another_controller_is_a_404_naming_both_and_no_handler_runs() -> None:
    handlers = Handlers("faascontroller")
    http = client(handlers)
    for method, path in (("GET", "/apis/v2/faas/other"),
                         ("PUT", "/apis/v2/faas/other/echo/start")):
        code, body = await call(http, method, path)
        assert code == 404
        assert json.loads(body) == {
            "code": 404, "message": "controller other not found; this server runs "
                                    "controller faascontroller"}
    assert handlers.calls == []


@pytest_twisted.ensureDeferred
async def test_a_trailing_slash_reaches_the_same_handler() -> None:
    """strict_slashes off: clients that add a slash are not redirected (a redirect
    would turn a PUT into a GET in some clients)."""
    handlers = Handlers("faascontroller")
    http = client(handlers)
    assert await call(http, "GET", "/apis/v2/faas/faascontroller/") == (200, b"listed")
    assert await call(http, "PUT", "/apis/v2/faas/faascontroller/echo/start/") == (
        200, b"started")


@pytest_twisted.ensureDeferred
async def test_only_the_declared_method_is_routed() -> None:
    handlers = Handlers("faascontroller")
    http = client(handlers)
    code, _ = await call(http, "POST", "/apis/v2/faas/faascontroller/echo/start")
    assert code == 405
    code, _ = await call(http, "GET", "/apis/v3/faas/faascontroller")
    assert code == 404
    assert handlers.calls == []


def test_the_paths_are_easegress_paths() -> None:
    assert BASE == "/apis/<any(v1, v2):version>/faas/<controller>"
    assert FUNCTION == BASE + "/<fn>"
