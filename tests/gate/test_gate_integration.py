"""The gate over real sockets, against a real upstream HTTP server process
(tests/support/upstream.py), with curl and raw TCP clients. Every behaviour test runs
over both transports: the lean HTTP/1.1 one and the twisted.web one.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import time
from typing import Any, Callable

import httptools
import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, DeferredQueue
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.internet.task import LoopingCall, deferLater
from twisted.internet.utils import getProcessOutputAndValue

from faastwist.config import KnativeConfig
from faastwist.model.fsm import FunctionStatus, State
from faastwist.gate.service import GateService
from faastwist.metrics import Metrics
from faastwist.providers.base import StaticLease, Upstream
from faastwist.providers.kourier import KnativeRouting
from faastwist.gate.routes import RouteTable
from faastwist.model.spec import FunctionSpec
from faastwist.providers.registry import check_spec_for
from faastwist.store.etcd import EtcdStore
from faastwist.store.memory import MemoryStore
from faastwist.util.ports import free_port

from tests.support.etcd import unique_prefix
from tests.support.gate import UpstreamProcess, gate_config, rss_bytes
from tests.support.tls import self_signed

pytestmark = pytest.mark.slow
MB = 2**20


@pytest.fixture(scope="module")
def upstream() -> Any:
    process = UpstreamProcess()
    yield process
    process.stop()


class Routing(KnativeRouting):
    """Knative routing to the upstream process, except ``refused``: a closed port."""

    def __init__(self, url: str, free_port: int) -> None:
        super().__init__(KnativeConfig(network_layer_url=url))
        self.closed = StaticLease(Upstream("http", "127.0.0.1", free_port, "refused"))

    def acquire(self, spec: FunctionSpec) -> Any:
        if spec.name == "refused":
            return self.closed
        return super().acquire(spec)


class GateUnderTest:
    def __init__(self, service: GateService, store: Any, routes: RouteTable) -> None:
        self.service = service
        self.store = store
        self.routes = routes
        self.port = service.address()[1]
        self.url = f"http://127.0.0.1:{self.port}"


FUNCTIONS = ((FunctionSpec(name="demo10", image="x"), State.ACTIVE),
             (FunctionSpec(name="off", image="x"), State.INACTIVE),
             (FunctionSpec(name="slow", image="x", timeout=1.0), State.ACTIVE),
             (FunctionSpec(name="refused", image="x"), State.ACTIVE))


@pytest.fixture(params=["lean", "web"])
def make_gate(request: Any, upstream: UpstreamProcess) -> Any:
    made: list[GateService] = []

    def make(store: Any = None, **config: Any) -> GateUnderTest:
        """A gate on ``store`` (already holding FUNCTIONS), or on a fresh MemoryStore;
        with a real store, await ``routes_loaded(gate)`` before the first request."""
        if store is None:
            store = MemoryStore()
            for spec, state in FUNCTIONS:
                store.create(spec, FunctionStatus(spec.name, state))
        routes = RouteTable(store, reactor)
        routes.startService()
        service = GateService(gate_config(**config), routes, Routing(upstream.url, free_port()),
                              reactor, Metrics(), access_log=False, transport=request.param)
        service.startService()
        made.append(service)
        return GateUnderTest(service, store, routes)

    make.kind = request.param  # type: ignore[attr-defined]
    yield make
    for service in made:
        if service.running:
            pytest_twisted.blockon(service.stopService())


async def curl(*args: str) -> tuple[bytes, bytes, int]:
    return await getProcessOutputAndValue("curl", ["-sS", "--max-time", "20", *args],
                                          env=os.environ)


async def curl_json(*args: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Status, JSON body and headers (lower-case names) of one curl call."""
    out, err, code = await curl("-i", *args)
    assert code == 0, err
    head, _, body = out.partition(b"\r\n\r\n")
    while head.startswith(b"HTTP/1.1 100"):
        head, _, body = body.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, json.loads(body), headers


async def upstream_stats(upstream: UpstreamProcess) -> dict[str, int]:
    response = await treq.get(upstream.url + "/stats", persistent=False)
    return await response.json()


class RawClient(Protocol):
    """A keep-alive HTTP/1.1 client over one TCP connection, parsing with httptools."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.responses: DeferredQueue = DeferredQueue()
        self.lost: Deferred = Deferred()
        self.first_body_at: float | None = None
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode().lower()] = value.decode()

    def on_body(self, body: bytes) -> None:
        if self.first_body_at is None:
            self.first_body_at = time.monotonic()
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.responses.put((self.parser.get_status_code(), self._headers, b"".join(self._body)))
        self._headers, self._body = {}, []

    def request(self, path: str, name: str = "demo10", extra: str = "") -> Deferred:
        self.transport.write(f"GET {path} HTTP/1.1\r\nHost: gate\r\nX-FaaS-Func-Name: {name}\r\n"
                             f"{extra}\r\n".encode())
        return self.next_response()

    def next_response(self) -> Deferred:
        return self.responses.get().addTimeout(15, reactor)

    def closed(self) -> Deferred:
        """Fires when the gate has closed the connection (fails after 15 s)."""
        waiter: Deferred = Deferred()
        self.lost.addBoth(lambda r: (None if waiter.called else waiter.callback(r), r)[1])
        return waiter.addTimeout(15, reactor)


async def raw_client(gate: GateUnderTest) -> RawClient:
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", gate.port)
    return await connectProtocol(endpoint, RawClient())


async def eventually(check: Callable[[], Any], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await deferLater(reactor, 0.05, lambda: None)


class PeakRSS:
    """Samples this process's RSS (the gate runs in it) while something runs."""

    def __init__(self) -> None:
        self.base = rss_bytes()
        self.peak = self.base
        self.loop = LoopingCall(self.sample)
        self.loop.start(0.02)

    def sample(self) -> None:
        self.peak = max(self.peak, rss_bytes())

    def stop(self) -> int:
        self.loop.stop()
        return self.peak - self.base


# -- the seed's call, and every answer -------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_seed_invocation_reaches_the_function_with_the_knative_host(make_gate: Any) -> None:
    gate = make_gate()
    status, seen, headers = await curl_json("-H", "X-FaaS-Func-Name: demo10", "-X", "POST",
                                            "-d", '{"hello": "world"}', gate.url + "/api?x=1")
    assert status == 200
    assert seen["method"] == "POST" and seen["path"] == "/api?x=1"
    assert seen["host"] == "demo10.default.example.com"
    assert seen["body_length"] == 18 and not seen["chunked"]
    assert headers["x-call-id"] and [["x-call-id", headers["x-call-id"]]] == [
        h for h in seen["headers"] if h[0] == "x-call-id"]
    status, seen, _ = await curl_json(gate.url + "/function/demo10/a/b?c=d")
    assert status == 200 and seen["path"] == "/a/b?c=d"


@pytest_twisted.ensureDeferred
async def test_error_answers_over_sockets(make_gate: Any) -> None:
    gate = make_gate()
    cases = [
        ((gate.url + "/",), 400, "X-FaaS-Func-Name"),
        (("-H", "X-FaaS-Func-Name: nope", gate.url + "/"), 404, "function nope not found"),
        (("-H", "X-FaaS-Func-Name: off", gate.url + "/"), 503, "state: inactive"),
        (("-H", "X-FaaS-Func-Name: refused", gate.url + "/"), 502, "refused"),
        (("-H", "X-FaaS-Func-Name: slow", gate.url + "/sleep/3000"), 504,
         "slow did not answer within 1s"),
    ]
    for args, code, fragment in cases:
        started = time.monotonic()
        status, payload, headers = await curl_json(*args)
        assert status == code and payload["code"] == code, payload
        assert fragment in payload["message"]
        assert headers["x-faas-gate-error"] == "true"
        assert headers["content-type"] == "application/json"
        if code == 503:
            assert headers["retry-after"] == "5"
        if code == 504:
            assert 0.9 < time.monotonic() - started < 4.0


@pytest_twisted.ensureDeferred
async def test_http10_clients(make_gate: Any) -> None:
    gate = make_gate()
    out, err, code = await curl("--http1.0", "-i", "-H", "X-FaaS-Func-Name: demo10",
                                gate.url + "/one")
    assert code == 0 and re.match(rb"HTTP/1\.[01] 200 ", out), (out, err)
    assert json.loads(out.partition(b"\r\n\r\n")[2])["path"] == "/one"
    # a chunked upstream answer reaches an HTTP/1.0 client delimited by the close
    out, err, code = await curl("--http1.0", "-i", "-H", "X-FaaS-Func-Name: demo10",
                                gate.url + "/stream/3/10")
    head, _, body = out.partition(b"\r\n\r\n")
    assert code == 0 and b"chunked" not in head.lower(), head
    assert body == b"chunk 0\nchunk 1\nchunk 2\n"


@pytest_twisted.ensureDeferred
async def test_broken_upstream_answers(make_gate: Any) -> None:
    gate = make_gate()
    status, payload, headers = await curl_json("-H", "X-FaaS-Func-Name: demo10",
                                               gate.url + "/garbage")
    assert status == 502 and "invalid HTTP response" in payload["message"]
    assert headers["x-faas-gate-error"] == "true"
    # a response cut short after its head was sent: the client's connection is cut too
    out, err, code = await curl("-H", "X-FaaS-Func-Name: demo10", gate.url + "/truncate")
    # curl: 18 (closed with outstanding read data) or 56 (reset): never a clean success
    assert code in (18, 56), (code, err)
    status, _, _ = await curl_json("-H", "X-FaaS-Func-Name: demo10", gate.url + "/")
    assert status == 200


@pytest_twisted.ensureDeferred
async def test_body_over_the_limit_is_413_with_or_without_a_length(make_gate: Any,
                                                                  tmp_path: Any) -> None:
    gate = make_gate(max_body_size=MB)
    big = tmp_path / "big"
    with open(big, "wb") as handle:
        handle.truncate(8 * MB)  # sparse: no disk is written
    status, payload, headers = await curl_json("-H", "X-FaaS-Func-Name: demo10",
                                               "--data-binary", f"@{big}", gate.url + "/")
    assert status == 413 and "maxBodySize" in payload["message"]
    assert headers["x-faas-gate-error"] == "true"
    out, err, code = await getProcessOutputAndValue("sh", ["-c",
        f"head -c {8 * MB} /dev/zero | curl -sS -i -H 'X-FaaS-Func-Name: demo10' "
        f"-T - {gate.url}/upload"])
    assert out.startswith(b"HTTP/1.1 413") or b"\r\n\r\nHTTP/1.1 413" in out, (out[:200], err)
    ok, payload, _ = await curl_json("-H", "X-FaaS-Func-Name: demo10", "--data-binary",
                                     "x" * 1000, gate.url + "/")
    assert ok == 200 and payload["body_length"] == 1000


# -- streaming, memory, keep-alive --------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_100mb_bodies_stream_both_ways_with_bounded_gate_memory(make_gate: Any,
                                                                       tmp_path: Any) -> None:
    gate = make_gate(max_body_size=256 * MB)
    size = 100 * MB
    zeros = tmp_path / "zeros"
    with open(zeros, "wb") as handle:
        handle.truncate(size)
    import hashlib
    digest = hashlib.sha256()
    block = bytes(MB)
    for _ in range(100):
        digest.update(block)
    expected_sha = digest.hexdigest()

    rss = PeakRSS()
    status, seen, _ = await curl_json("-H", "X-FaaS-Func-Name: demo10", "--data-binary",
                                      f"@{zeros}", gate.url + "/upload")
    upload_growth = rss.stop()
    assert status == 200 and seen["body_length"] == size and not seen["chunked"]
    assert seen["body_sha256"] == expected_sha
    assert ["content-length", str(size)] in seen["headers"]

    rss = PeakRSS()
    out, err, code = await getProcessOutputAndValue("sh", ["-c",
        f"head -c {size} /dev/zero | curl -sS --max-time 60 -H 'X-FaaS-Func-Name: demo10' "
        f"-T - {gate.url}/upload-chunked"])
    chunked_growth = rss.stop()
    assert code == 0, err
    seen = json.loads(out)
    assert seen["body_length"] == size and seen["chunked"] and seen["body_sha256"] == expected_sha

    rss = PeakRSS()
    out, err, code = await curl("-o", "/dev/null", "-w", "%{http_code} %{size_download}",
                                "-H", "X-FaaS-Func-Name: demo10", f"{gate.url}/bytes/{size}")
    download_growth = rss.stop()
    assert out.decode() == f"200 {size}"
    for growth in (upload_growth, chunked_growth, download_growth):
        assert growth < 32 * MB, (upload_growth, chunked_growth, download_growth)


@pytest_twisted.ensureDeferred
async def test_slow_chunked_response_is_streamed_as_it_comes(make_gate: Any) -> None:
    gate = make_gate()
    client = await raw_client(gate)
    started = time.monotonic()
    status, headers, body = await client.request("/stream/6/150")
    total = time.monotonic() - started
    assert status == 200 and headers["transfer-encoding"] == "chunked"
    assert body == b"".join(b"chunk %d\n" % i for i in range(6))
    assert total > 0.8  # the upstream took 6 x 150 ms
    assert client.first_body_at - started < total / 2  # the first chunk did not wait
    client.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_upstream_connections_are_kept_alive_and_reused(make_gate: Any,
                                                             upstream: UpstreamProcess) -> None:
    gate = make_gate()
    before = await upstream_stats(upstream)
    for _ in range(10):
        status, _, _ = await curl_json("-H", "X-FaaS-Func-Name: demo10", gate.url + "/")
        assert status == 200
    client = await raw_client(gate)
    for _ in range(10):
        status, _, _ = await client.request("/")
        assert status == 200
    client.transport.loseConnection()
    after = await upstream_stats(upstream)
    assert after["requests"] - before["requests"] == 21  # 20 + this stats call
    assert after["connections"] - before["connections"] == 2  # one gate->upstream, one stats


@pytest_twisted.ensureDeferred
async def test_client_disconnect_aborts_the_upstream_request(make_gate: Any,
                                                            upstream: UpstreamProcess) -> None:
    gate = make_gate()
    before = await upstream_stats(upstream)
    client = await raw_client(gate)
    client.transport.write(b"GET /hold HTTP/1.1\r\nHost: g\r\nX-FaaS-Func-Name: demo10\r\n\r\n")
    await eventually(lambda: client.first_body_at is not None)
    client.transport.abortConnection()

    async def aborted() -> bool:
        stats = await upstream_stats(upstream)
        return stats["aborted"] > before["aborted"]

    await eventually(aborted)
    await eventually(lambda: gate.service.context.inflight == 0)


@pytest_twisted.ensureDeferred
async def test_max_connections_refuses_new_connections_cleanly(make_gate: Any) -> None:
    gate = make_gate(max_connections=2)
    first, second = await raw_client(gate), await raw_client(gate)
    assert (await first.request("/"))[0] == 200
    assert (await second.request("/"))[0] == 200
    third = await raw_client(gate)
    status, headers, body = await third.request("/")
    assert status == 503 and headers["x-faas-gate-error"] == "true"
    assert headers["connection"] == "close"
    assert headers["retry-after"] == "1"
    assert json.loads(body) == {
        "code": 503, "message": "too many connections (maxConnections is 2); retry"}
    await third.closed()
    assert (await first.request("/"))[0] == 200  # the admitted ones are unaffected
    assert (await second.request("/"))[0] == 200
    first.transport.loseConnection()
    await first.closed()
    await eventually(lambda: len(gate.service.limit.open) == 1)
    fourth = await raw_client(gate)
    assert (await fourth.request("/"))[0] == 200
    for client in (second, fourth):
        client.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_keep_alive_off_closes_after_each_response(make_gate: Any) -> None:
    gate = make_gate(keep_alive=False)
    client = await raw_client(gate)
    status, headers, _ = await client.request("/")
    assert status == 200 and headers["connection"] == "close"
    await client.closed()


@pytest_twisted.ensureDeferred
async def test_idle_connections_close_after_keep_alive_timeout(make_gate: Any) -> None:
    gate = make_gate(keep_alive_timeout=0.3)
    client = await raw_client(gate)
    assert (await client.request("/"))[0] == 200
    started = time.monotonic()
    await client.closed()
    assert time.monotonic() - started < 3.0


@pytest_twisted.ensureDeferred
async def test_pipelined_requests_are_answered_in_order(make_gate: Any) -> None:
    gate = make_gate()
    client = await raw_client(gate)
    client.transport.write(b"".join(
        b"GET /sleep/%d HTTP/1.1\r\nHost: g\r\nX-FaaS-Func-Name: demo10\r\n\r\n" % ms
        for ms in (200, 10, 0)))
    answers = [await client.next_response() for _ in range(3)]
    assert [json.loads(body)["slept_ms"] for _, _, body in answers] == [200, 10, 0]
    client.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_graceful_shutdown_finishes_in_flight_requests(make_gate: Any) -> None:
    gate = make_gate()
    client = await raw_client(gate)
    pending = client.request("/sleep/600")
    await deferLater(reactor, 0.2, lambda: None)
    stopped = gate.service.stopService()
    with pytest.raises(ConnectionRefusedError):
        await raw_client(gate)
    status, headers, body = await pending
    assert status == 200 and json.loads(body) == {"slept_ms": 600}
    assert headers["connection"] == "close"
    await stopped
    await client.closed()


@pytest_twisted.ensureDeferred
async def test_graceful_shutdown_is_bounded(make_gate: Any) -> None:
    gate = make_gate(shutdown_timeout=0.3)
    client = await raw_client(gate)
    client.transport.write(b"GET /sleep/5000 HTTP/1.1\r\nHost: g\r\nX-FaaS-Func-Name: demo10"
                           b"\r\n\r\n")
    await deferLater(reactor, 0.1, lambda: None)
    started = time.monotonic()
    await gate.service.stopService()
    assert time.monotonic() - started < 3.0
    await client.closed()


@pytest_twisted.ensureDeferred
async def test_shutdown_answers_a_request_still_arriving_and_closes_idle_ones(
        make_gate: Any) -> None:
    """Nothing in flight when the gate stops: a connection whose request head is half
    read is answered once the rest comes (Connection: close), an idle one is closed."""
    gate = make_gate()
    idle = await raw_client(gate)
    assert (await idle.request("/warm"))[0] == 200
    arriving = await raw_client(gate)
    arriving.transport.write(b"GET /late HTTP/1.1\r\nHost: gate\r\n")
    await eventually(lambda: any(c.busy() for c in gate.service.limit.open))
    stopped = gate.service.stopService()
    await idle.closed()
    arriving.transport.write(b"X-FaaS-Func-Name: demo10\r\n\r\n")
    status, headers, body = await arriving.next_response()
    assert status == 200 and headers["connection"] == "close"
    assert json.loads(body)["path"] == "/late"
    await arriving.closed()
    await stopped


@pytest_twisted.ensureDeferred
async def test_concurrent_requests(make_gate: Any) -> None:
    gate = make_gate()
    results = await DeferredList([
        Deferred.fromCoroutine(curl_json("-H", "X-FaaS-Func-Name: demo10", "-d", f"n={i}",
                                         gate.url + f"/c/{i}"))
        for i in range(12)], consumeErrors=True)
    paths = sorted(result[1]["path"] for ok, result in results if ok and result[0] == 200)
    assert paths == sorted(f"/c/{i}" for i in range(12))


# -- HTTPS (lean or twisted.web) and HTTP/2 (twisted.web, through ALPN) ---------------------------------------------

@pytest.fixture(params=["lean", "web"])
def tls_gate(request: Any, upstream: UpstreamProcess, tmp_path: Any) -> Any:
    cert, key = self_signed(tmp_path)
    store = MemoryStore()
    store.create(FunctionSpec(name="demo10", image="x"), FunctionStatus("demo10", State.ACTIVE))
    routes = RouteTable(store, reactor)
    routes.startService()
    service = GateService(gate_config(https=True, cert_file=cert, key_file=key,
                                      max_body_size=6 * MB), routes,
                          Routing(upstream.url, free_port()), reactor, Metrics(),
                          access_log=False, transport=request.param)
    service.startService()
    assert service.kind == request.param
    yield f"https://127.0.0.1:{service.address()[1]}"
    pytest_twisted.blockon(service.stopService())


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("version, expected", [("--http2", "2"), ("--http1.1", "1.1")])
async def test_https_with_http2_and_http11(tls_gate: str, tmp_path: Any, version: str,
                                           expected: str) -> None:
    out, err, code = await curl("-k", version, "-w", "\n%{http_version} %{http_code}",
                                "-H", "X-FaaS-Func-Name: demo10", tls_gate + "/tls?a=1")
    assert code == 0, err
    body, _, trailer = out.rpartition(b"\n")
    assert trailer.decode() == f"{expected} 200"
    seen = json.loads(body)
    assert seen["path"] == "/tls?a=1" and seen["host"] == "demo10.default.example.com"
    assert ["x-forwarded-proto", "https"] in seen["headers"]

    out, err, code = await curl("-k", version, "-w", "\n%{http_code}", "-H",
                                "X-FaaS-Func-Name: nope", tls_gate + "/")
    body, _, status = out.rpartition(b"\n")
    assert status == b"404" and json.loads(body)["code"] == 404

    payload = tmp_path / "payload"
    with open(payload, "wb") as handle:
        handle.truncate(5 * MB)
    out, err, code = await curl("-k", version, "-H", "X-FaaS-Func-Name: demo10",
                                "--data-binary", f"@{payload}", tls_gate + "/upload")
    assert code == 0, err
    assert json.loads(out)["body_length"] == 5 * MB

    # over the limit, with a length and without one (streamed): 413, read before closing
    with open(payload, "wb") as handle:
        handle.truncate(8 * MB)
    for upload in (f"--data-binary @{payload}", f"-T {payload}", "-T -"):
        out, err, code = await getProcessOutputAndValue("sh", ["-c",
            f"head -c {8 * MB} /dev/zero | curl -sS -k {version} -o /dev/null "
            f"-w '%{{http_code}}' -H 'X-FaaS-Func-Name: demo10' {upload} {tls_gate}/"])
        assert (out, code) == (b"413", 0), (upload, out, err)


# -- the admin API on its own port, the gate on another, one store ------------------------------

@pytest.fixture(params=["memory", pytest.param("etcd", marks=pytest.mark.etcd)])
def any_store(request: Any) -> Any:
    """The in-memory store, or an EtcdStore on a real etcd (fresh key prefix)."""
    if request.param == "memory":
        yield None
        return
    server = request.getfixturevalue("etcd_server")
    store = EtcdStore(reactor, [server.client_url], unique_prefix("gate"), "faascontroller",
                      5.0, Metrics())
    pytest_twisted.blockon(store.connect())
    for spec, state in FUNCTIONS:
        pytest_twisted.blockon(store.create(spec, FunctionStatus(spec.name, state)))
    yield store
    pytest_twisted.blockon(store.close())


async def routes_loaded(gate: GateUnderTest, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not gate.routes.synced:
        assert time.monotonic() < deadline, "the route table did not load"
        await deferLater(reactor, 0.01, lambda: None)


def gate_settle(gate: GateUnderTest) -> Any:
    """The read-your-writes barrier the node gives its admin API (FaasNode.settle): an
    answer waits until this gate's route table reached the write's revision. Without it,
    on etcd, the stop's 200 can overtake the watch event that tells the gate."""
    return lambda revision: gate.routes.reached(revision).addTimeout(10, reactor)


@pytest_twisted.ensureDeferred
async def test_a_stop_through_the_admin_api_makes_the_very_next_gate_request_503(
        make_gate: Any, any_store: Any) -> None:
    """The admin API and the gate of one node share the store; with etcd the gate's
    route table follows a watch, and the stop still acts on the very next request."""
    from faastwist.admin.api import AdminAPI

    gate = make_gate(store=any_store)
    await routes_loaded(gate)
    admin = AdminAPI(gate.store, "faascontroller",
                     check_spec=lambda spec: check_spec_for("knative", spec),
                     kick=lambda name: None, clock=reactor, settle=gate_settle(gate))
    port = reactor.listenTCP(0, admin.site(), interface="127.0.0.1")
    try:
        admin_url = f"http://127.0.0.1:{port.getHost().port}/apis/v2/faas/faascontroller"
        status, _, _ = await curl_json("-H", "X-FaaS-Func-Name: demo10", gate.url + "/")
        assert status == 200
        out, err, code = await curl("-X", "PUT", "-o", "/dev/null", "-w", "%{http_code}",
                                    admin_url + "/demo10/stop")
        assert out == b"200", err
        status, payload, headers = await curl_json("-H", "X-FaaS-Func-Name: demo10",
                                                   gate.url + "/")
        assert status == 503 and "state: inactive" in payload["message"]
        assert headers["retry-after"] == "5"
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_stop_acts_on_the_next_request_of_an_already_open_connection(
        make_gate: Any, any_store: Any) -> None:
    """No process start between the stop's 200 and the next request (curl's above):
    the connection is open and the request leaves as soon as the admin API answers."""
    from faastwist.admin.api import AdminAPI

    gate = make_gate(store=any_store)
    await routes_loaded(gate)
    admin = AdminAPI(gate.store, "faascontroller",
                     check_spec=lambda spec: check_spec_for("knative", spec),
                     kick=lambda name: None, clock=reactor, settle=gate_settle(gate))
    port = reactor.listenTCP(0, admin.site(), interface="127.0.0.1")
    try:
        admin_url = f"http://127.0.0.1:{port.getHost().port}/apis/v2/faas/faascontroller"
        client = await raw_client(gate)
        assert (await client.request("/"))[0] == 200
        response = await treq.put(admin_url + "/demo10/stop")
        assert response.code == 200
        status, headers, body = await client.request("/")
        assert status == 503, body
        assert "state: inactive" in json.loads(body)["message"]
        assert headers["retry-after"] == "5"
        client.transport.loseConnection()
    finally:
        await port.stopListening()
