"""Accepting asynchronous calls at the gate, over both transports, with a real
nats-server: 202 only once stored, and every refusal with its code."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue

from faastwist.config import QueueConfig
from faastwist.gate.routes import RouteTable
from faastwist.gate.service import GateService
from faastwist.metrics import Metrics
from faastwist.model.fsm import FunctionStatus, State
from faastwist.model.spec import FunctionSpec
from faastwist.queue.service import QueueService
from faastwist.store.memory import MemoryStore
from faastwist.testing.provider import FakeProvider
from tests.support.gate import gate_config

pytestmark = pytest.mark.nats


async def curl(url: str, *args: str) -> tuple[int, dict[str, str], bytes]:
    out, err, code = await getProcessOutputAndValue(
        "curl", ["-sS", "-i", "--max-time", "20", *args, url], env=os.environ)
    assert code == 0, err
    head, _, body = out.partition(b"\r\n\r\n")
    while head.startswith(b"HTTP/1.1 100"):
        head, _, body = body.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


@pytest.fixture(params=["lean", "web"])
def gate(request: Any, nats_server: Any) -> Any:
    store = MemoryStore()
    for name, state in (("fn", State.ACTIVE), ("off", State.INACTIVE)):
        store.create(FunctionSpec(name=name, image="x"), FunctionStatus(name, state))
    store.create(FunctionSpec(name="few", image="x", max_queued=2),
                 FunctionStatus("few", State.INACTIVE))
    routes = RouteTable(store, reactor)
    routes.startService()
    queue = QueueService(QueueConfig(nats_urls=(nats_server.url,), timeout=1.0,
                                     max_body_size=1000), "ctl", reactor, Metrics(), routes,
                         {2381})
    pytest_twisted.blockon(ensureDeferred(queue.start()))
    service = GateService(gate_config(), routes, FakeProvider(), reactor, Metrics(),
                          access_log=False, transport=request.param)
    service.startService()
    service.context.queue = queue  # accepting only: no workers run these calls
    yield service, queue, nats_server
    pytest_twisted.blockon(service.stopService())
    pytest_twisted.blockon(ensureDeferred(queue.stop()))
    routes.stopService()


@pytest_twisted.ensureDeferred
async def test_accepted_calls_are_stored_first(gate) -> None:
    service, queue, _ = gate
    url = "http://127.0.0.1:%d" % service.address()[1]
    status, headers, body = await curl(f"{url}/async-function/fn/a/b?c=1", "-d", "hi")
    assert status == 202, body
    call_id = headers["x-call-id"]
    record = await queue.status("fn", call_id)
    assert record["state"] == "queued"
    msg = await queue.bridge.call(queue.js.last_message, queue.names.calls,
                                  queue.names.call_subject("fn", call_id))
    assert msg.data == b"hi" and msg.headers["Faas-Target"] == "/a/b?c=1"
    # header routing, a call id of the client's, an inactive function: queued too
    status, headers, _ = await curl(f"{url}/x", "-H", "X-FaaS-Func-Name: off", "-H",
                                    "X-FaaS-Async: true", "-H", "X-Call-Id: mine-1", "-d", "")
    assert (status, headers["x-call-id"]) == (202, "mine-1")
    assert (await queue.status("off", "mine-1"))["state"] == "queued"


@pytest.mark.parametrize("args,code,fragment", [
    (["/async-function/nope", "-d", "x"], 404, b"function nope not found"),
    (["/async-function/fn", "--data-binary", "x" * 1001], 413, b"queue.maxBodySize"),
    (["/async-function/fn", "-H", "Transfer-Encoding: chunked", "--data-binary", "x" * 1001],
     413, b"queue.maxBodySize"),
    (["/async-function/fn", "-H", "X-Call-Id: a.b", "-d", "x"], 400, b"X-Call-Id"),
    (["/async-function/fn", "-H", "X-Callback-Url: http://127.0.0.1:2381/", "-d", "x"], 400,
     b"admin"),
    (["/async-function/fn", "-H", "X-Callback-Url: file:///etc/passwd", "-d", "x"], 400,
     b"http"),
    (["/async-function/Bad_Name", "-d", "x"], 400, b"DNS-1123"),
])
@pytest_twisted.ensureDeferred
async def test_refusals(gate, args, code, fragment) -> None:
    service, queue, _ = gate
    path, *rest = args
    status, headers, body = await curl("http://127.0.0.1:%d%s" % (service.address()[1], path),
                                       *rest)
    assert status == code and fragment in body, body
    assert headers["x-faas-gate-error"] == "true"
    stored = await queue.bridge.call(queue.js.list_messages, queue.names.calls,
                                     queue.names.call_subject("*"), 10)
    assert stored == []


@pytest_twisted.ensureDeferred
async def test_nats_away_is_503_never_202(gate) -> None:
    service, queue, nats = gate
    url = "http://127.0.0.1:%d/async-function/fn" % service.address()[1]
    nats.kill()
    while queue.js.connected:
        await deferLater(reactor, 0.05, lambda: None)
    status, headers, body = await curl(url, "-d", "x")
    assert status == 503 and headers["retry-after"] == "1", body
    nats.start()
    while not queue.js.connected:
        await deferLater(reactor, 0.05, lambda: None)
    assert (await curl(url, "-d", "x"))[0] == 202


@pytest_twisted.ensureDeferred
async def test_a_keyed_function_needs_its_key_to_queue_and_the_key_is_not_stored(gate) -> None:
    from faastwist.model.keys import KeySet, new_key

    service, queue, _ = gate
    key, entry = new_key("2026-01-01T00:00:00Z")
    await service.context.routes.store.put_keys("fn", KeySet((entry,)), 0)
    while not service.context.routes.lookup("fn").key_digests:
        await deferLater(reactor, 0.01, lambda: None)
    url = "http://127.0.0.1:%d/async-function/fn" % service.address()[1]
    status, _, body = await curl(url, "-d", "x")
    assert status == 401, body
    status, headers, _ = await curl(url, "-d", "x", "-H", f"X-API-Key: {key}")
    assert status == 202
    msg = await queue.bridge.call(queue.js.last_message, queue.names.calls,
                                  queue.names.call_subject("fn", headers["x-call-id"]))
    assert key not in msg.headers["Faas-Headers"]


@pytest_twisted.ensureDeferred
async def test_the_workers_replay_is_not_asked_for_the_key_again(gate) -> None:
    from faastwist.gate.asynccall import QueuedCall
    from faastwist.model.keys import KeySet, new_key
    from faastwist.queue.replay import invoke

    service, _, _ = gate
    _, entry = new_key("2026-01-01T00:00:00Z")
    await service.context.routes.store.put_keys("fn", KeySet((entry,)), 0)
    while not service.context.routes.lookup("fn").key_digests:
        await deferLater(reactor, 0.01, lambda: None)
    call = QueuedCall(function="fn", call_id="r1", method="POST", target="/", headers=(),
                      client_ip="127.0.0.1", body=b"x", callback=None, enqueued=0.0)
    answer = await invoke(service.context, call, 1000)
    # the fake provider's upstream (port 80) answers or refuses; the gate's 401 never comes
    assert answer.status not in (400, 401), answer


@pytest_twisted.ensureDeferred
async def test_a_function_at_its_max_queued_is_429_with_retry_after(gate) -> None:
    """The issue's attack (anonymous calls to a stopped function, kept for a day) is
    bounded by the function's maxQueued: the third call of "few" is refused, stored
    nowhere, and the other functions still queue."""
    service, queue, _ = gate
    url = "http://127.0.0.1:%d/async-function/" % service.address()[1]
    for _ in range(2):
        assert (await curl(url + "few", "-d", "x"))[0] == 202
    status, headers, body = await curl(url + "few", "-d", "x")
    assert status == 429 and headers["retry-after"] == "1", body
    assert json.loads(body) == {
        "code": 429, "message": "function few has 2 calls queued, its limit (maxQueued in "
                                "its spec, else queue.maxQueued); try again later"}
    stored = await queue.bridge.call(queue.js.list_messages, queue.names.calls,
                                     queue.names.call_subject("few"), 10)
    assert len(stored) == 2
    assert (await curl(url + "fn", "-d", "x"))[0] == 202
    # a count older than a second is asked again: still full, still nothing stored
    await deferLater(reactor, 1.05, lambda: None)
    assert (await curl(url + "few", "-d", "x"))[0] == 429
    # one call gone from the queue (the server's count drops): admitted again
    await queue.bridge.call(queue.js.delete_message, queue.names.calls, int(stored[0].seq))
    await deferLater(reactor, 1.05, lambda: None)
    assert (await curl(url + "few", "-d", "x"))[0] == 202
    assert (await curl(url + "few", "-d", "x"))[0] == 429


@pytest_twisted.ensureDeferred
async def test_the_same_call_id_on_two_functions_is_two_calls(gate) -> None:
    service, queue, _ = gate
    url = "http://127.0.0.1:%d/async-function/" % service.address()[1]
    for name in ("fn", "off", "fn"):
        status, headers, _ = await curl(url + name, "-H", "X-Call-Id: shared-1", "-d", name)
        assert (status, headers["x-call-id"]) == (202, "shared-1")
    for name in ("fn", "off"):
        msg = await queue.bridge.call(queue.js.last_message, queue.names.calls,
                                      queue.names.call_subject(name, "shared-1"))
        assert msg is not None and msg.data == name.encode()
        assert (await queue.status(name, "shared-1"))["function"] == name
    # the same id again to the same function: still de-duplicated (stored once)
    stored = await queue.bridge.call(queue.js.list_messages, queue.names.calls,
                                     queue.names.call_subject("*"), 10)
    assert sorted(m.subject for m in stored) == ["faas.ctl.call.fn.shared-1",
                                                 "faas.ctl.call.off.shared-1"]
