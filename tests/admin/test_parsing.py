"""Spec and OpenFaaS bodies are parsed on the admin API's own threads, not the reactor's.

A stand-in reactor whose ``callFromThread`` queues to the test's thread (as the real one
queues to the reactor thread) shows where the parse ran and that its answer, or its
error, comes back on the test's thread.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable

import pytest
from treq.testing import StubTreq
from twisted.internet.task import Clock

from faastwist.admin import api as api_module, openfaas as openfaas_module
from faastwist.admin.api import AdminAPI
from faastwist.admin.codec import ApiError
from faastwist.admin.parsing import BodyParser
from tests.admin.test_api import fired

SPEC = b"name: demo\nimage: i\n"


class ThreadedClock(Clock):
    """A Clock with ``callFromThread``: calls from pool threads wait in a queue until
    ``drain`` runs them on the test's thread."""

    def __init__(self) -> None:
        super().__init__()
        self.from_threads: queue.Queue[tuple[Callable[..., Any], tuple, dict]] = queue.Queue()

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kw: Any) -> None:
        self.from_threads.put((f, args, kw))

    def drain(self, timeout: float = 10.0) -> None:
        f, args, kw = self.from_threads.get(timeout=timeout)
        f(*args, **kw)


@pytest.fixture
def parser() -> Any:
    reactor = ThreadedClock()
    parser = BodyParser(reactor)
    yield parser
    parser.close()


def test_the_parse_runs_on_a_pool_thread_and_answers_on_the_callers(parser: Any) -> None:
    d = parser.run(lambda x: (threading.get_ident(), x * 2), 21)
    assert not d.called           # nothing has run on this thread
    parser.reactor.drain()
    ident, value = fired(d)
    assert value == 42 and ident != threading.get_ident()


def test_an_error_in_the_parse_comes_back_as_the_same_error(parser: Any) -> None:
    def refuse() -> None:
        raise ApiError(400, "body expands to more than 1048576 bytes")

    d = parser.run(refuse)
    parser.reactor.drain()
    failures: list[Any] = []
    d.addErrback(failures.append)
    assert failures[0].check(ApiError) and failures[0].value.code == 400


def test_close_stops_the_threads(parser: Any) -> None:
    d = parser.run(lambda: threading.current_thread())
    parser.reactor.drain()
    worker = fired(d)
    parser.close()
    worker.join(5)
    assert not worker.is_alive()
    assert parser._pool is None
    parser.close()                # twice is harmless (the node's shutdown, a test's)


def test_a_test_clock_runs_the_parse_inline() -> None:
    d = BodyParser(Clock()).run(threading.get_ident)
    assert fired(d) == threading.get_ident()


def test_the_admin_api_parses_specs_on_its_parser_threads(
        parser: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from faastwist.store.memory import MemoryStore

    where: list[int] = []
    real = api_module.parse_spec

    def spy(*args: Any) -> Any:
        where.append(threading.get_ident())
        return real(*args)

    monkeypatch.setattr(api_module, "parse_spec", spy)
    store = MemoryStore("ctl")
    admin = AdminAPI(store, "ctl", lambda spec: None, lambda name: None, parser.reactor,
                     parser=parser)
    http = StubTreq(admin.resource())
    d = http.request("POST", "http://127.0.0.1/apis/v2/faas/ctl", data=SPEC,
                     headers={"Content-Type": "application/yaml"})
    http.flush()
    answered: list[Any] = []
    d.addBoth(lambda r: answered.append(r) or r)
    assert answered == []         # waiting for the parse
    parser.reactor.drain()
    http.flush()
    assert fired(d).code == 201
    assert where and where[0] != threading.get_ident()
    assert sorted(fired(store.list()).records) == ["demo"]


def test_the_openfaas_api_parses_json_on_the_parser_threads(
        parser: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    where: list[int] = []
    real = openfaas_module._parse_json

    def spy(body: bytes) -> Any:
        where.append(threading.get_ident())
        return real(body)

    monkeypatch.setattr(openfaas_module, "_parse_json", spy)
    from faastwist.admin.openfaas import OpenFaaSAPI, Versions
    from faastwist.metrics import Metrics
    from faastwist.store.memory import MemoryStore
    from faastwist.testing.provider import FakeProvider

    api = OpenFaaSAPI(MemoryStore("ctl"), FakeProvider(), lambda name: None, Metrics(),
                      parser.reactor, Versions("process", "abc"), "openfaas-fn",
                      parser=parser)
    http = StubTreq(api.resource())
    d = http.request("POST", "http://127.0.0.1/system/functions", data=b"{not json",
                     headers={"Content-Type": "application/json"})
    http.flush()
    answered: list[Any] = []
    d.addBoth(lambda r: answered.append(r) or r)
    assert answered == []         # waiting for the parse
    parser.reactor.drain()
    http.flush()
    response = fired(d)
    assert response.code == 400
    assert "not valid JSON" in fired(http.content(response)).decode()
    assert where and where[0] != threading.get_ident()
