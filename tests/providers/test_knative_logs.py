"""KnativeLogs against a stub of CoreV1Api and of the kubernetes client's log stream.

The stub checks every call against the real CoreV1Api method signatures, so a call
the real client would refuse fails here too. Streams run on a real ThreadPool with
the real reactor (the reading is blocking, as it is with urllib3); the pod polling
runs on a Clock.
"""

from __future__ import annotations

import inspect
import queue
import threading
import time
from typing import Any

import pytest
import pytest_twisted
from kubernetes.client import CoreV1Api, V1ObjectMeta, V1Pod, V1PodList, V1PodStatus
from kubernetes.client.exceptions import ApiException
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.python.threadpool import ThreadPool

from faastwist.metrics import Metrics
from faastwist.providers.base import LogLine, ProviderError
from faastwist.providers.knative_logs import KnativeLogs, parse_line

NOW = 1_700_000_000.0


def stamp(offset: float) -> str:
    seconds = NOW + offset
    whole = int(seconds)
    nanos = round((seconds - whole) * 1e9)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{nanos:09d}Z"


OPEN_STREAMS: list["FakeStream"] = []


class FakeStream:
    """A urllib3 HTTPResponse as the client returns it with _preload_content=False."""

    def __init__(self, chunked: bool = True) -> None:
        OPEN_STREAMS.append(self)
        self.chunked = chunked
        self._queue: queue.Queue[bytes | None] = queue.Queue()
        self.shut = threading.Event()
        self.released = False
        self.gets = 0

    def push(self, *chunks: bytes) -> None:
        for chunk in chunks:
            self._queue.put(chunk)

    def end(self) -> None:
        self._queue.put(None)

    def stream(self, amt: int | None = None, decode_content: bool | None = None):
        while True:
            self.gets += 1          # the reader has handled everything before this
            chunk = self._queue.get()
            if chunk is None or self.shut.is_set():
                return
            yield chunk

    def read1(self, amt: int | None = None) -> bytes:
        chunk = self._queue.get()
        return b"" if chunk is None or self.shut.is_set() else chunk

    def shutdown(self) -> None:
        self.shut.set()
        self._queue.put(None)

    def close(self) -> None:
        self.shut.set()
        self._queue.put(None)

    def release_conn(self) -> None:
        self.released = True


class FakeBody:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.released = False

    def release_conn(self) -> None:
        self.released = True


class FakeCoreV1Api:
    """Pods of one namespace, their user-container logs, and the calls made."""

    def __init__(self, namespace: str = "fns") -> None:
        self.namespace = namespace
        self.pods: dict[str, tuple[dict[str, str], str]] = {}
        self.logs: dict[str, list[tuple[float, str]]] = {}
        self.errors: dict[str, ApiException] = {}
        self.streams: dict[str, list[FakeStream]] = {}
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.chunked = True
        self._lock = threading.Lock()

    def add_pod(self, name: str, service: str, phase: str = "Running",
                lines: list[tuple[float, str]] = ()) -> None:
        self.pods[name] = ({"serving.knative.dev/service": service}, phase)
        self.logs[name] = list(lines)

    @staticmethod
    def _check(method: str, *args: Any, **kwargs: Any) -> None:
        inspect.signature(getattr(CoreV1Api, method)).bind(None, *args, **kwargs)

    def list_namespaced_pod(self, namespace: str, **kwargs: Any) -> V1PodList:
        self._check("list_namespaced_pod", namespace, **kwargs)
        assert namespace == self.namespace
        self.calls.append(("list", namespace, kwargs))
        key, _, value = kwargs["label_selector"].partition("=")
        items = [V1Pod(metadata=V1ObjectMeta(name=name, labels=labels),
                       status=V1PodStatus(phase=phase))
                 for name, (labels, phase) in sorted(self.pods.items())
                 if labels.get(key) == value]
        return V1PodList(items=items)

    def read_namespaced_pod_log(self, name: str, namespace: str, **kwargs: Any) -> Any:
        self._check("read_namespaced_pod_log", name, namespace, **kwargs)
        assert kwargs["_preload_content"] is False
        self.calls.append(("log", name, kwargs))
        if name in self.errors:
            raise self.errors[name]
        if name not in self.pods:
            raise ApiException(status=404, reason="Not Found")
        lines = self.logs[name]
        if kwargs.get("since_seconds") is not None:
            lines = [(t, x) for t, x in lines if t >= -kwargs["since_seconds"]]  # t: offset from NOW
        if kwargs.get("tail_lines") is not None:
            lines = lines[-kwargs["tail_lines"]:] if kwargs["tail_lines"] else []
        body = b"".join(f"{stamp(t)} {x}\n".encode() for t, x in lines)
        if not kwargs.get("follow"):
            return FakeBody(body)
        stream = FakeStream(self.chunked)
        if body:
            stream.push(body)
        with self._lock:
            self.streams.setdefault(name, []).append(stream)
        return stream


@pytest.fixture
def pool():
    threads = ThreadPool(minthreads=0, maxthreads=6, name="test-knative-logs")
    threads.start()
    yield threads
    # end every stream first, so a failed test cannot leave a thread blocked in a read
    while OPEN_STREAMS:
        OPEN_STREAMS.pop().shutdown()
    threads.stop()


def make(api: FakeCoreV1Api, pool: ThreadPool, clock: Clock | None = None,
         **kwargs: Any) -> KnativeLogs:
    return KnativeLogs(lambda: api, "fns", reactor, pool, 2.0, clock=clock or Clock(),
                       wall_clock=lambda: NOW, **kwargs)


async def handed_over() -> None:
    """Return once every callFromThread queued before this call has run: the reactor's
    thread-call queue is FIFO, so a reader thread's last hand-over runs before this."""
    d: Deferred = Deferred()
    reactor.callFromThread(d.callback, None)
    await d


async def until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await deferLater(reactor, 0.005)


def test_parse_line() -> None:
    assert parse_line("2023-11-14T22:13:20.123456789Z hello world") == (
        pytest.approx(NOW + 0.123456789), "hello world")
    assert parse_line("2023-11-14T22:13:20Z x") == (NOW, "x")
    assert parse_line("2023-11-15T00:13:20.5+02:00 tz") == (NOW + 0.5, "tz")
    assert parse_line("2023-11-14T22:13:20Z ") == (NOW, "")
    assert parse_line("no stamp here") == (None, "no stamp here")


@pytest_twisted.ensureDeferred
async def test_read_logs_merges_pods_and_applies_tail_and_since(pool) -> None:
    api = FakeCoreV1Api()
    api.add_pod("demo-00001-a", "demo", lines=[(-30, "a1"), (-10, "a2"), (-1, '{"json": true}')])
    api.add_pod("demo-00001-b", "demo", lines=[(-20, "b1"), (-5, "b2")])
    api.add_pod("demo-00002-c", "demo", phase="Pending")
    api.add_pod("other-00001-x", "other", lines=[(-2, "not mine")])
    metrics = Metrics()
    logs = make(api, pool, metrics=metrics)

    lines = await logs.read_logs("demo")
    assert [(l.instance, l.text) for l in lines] == [
        ("demo-00001-a", "a1"), ("demo-00001-b", "b1"), ("demo-00001-a", "a2"),
        ("demo-00001-b", "b2"), ("demo-00001-a", '{"json": true}')]
    assert all(isinstance(l, LogLine) and l.name == "demo" for l in lines)
    assert lines[0].timestamp == pytest.approx(NOW - 30)
    assert lines[0].to_dict()["timestamp"] == "2023-11-14T22:12:50Z"

    listing = [c for c in api.calls if c[0] == "list"][0]
    assert listing[2]["label_selector"] == "serving.knative.dev/service=demo"
    reads = [c for c in api.calls if c[0] == "log"]
    assert {c[1] for c in reads} == {"demo-00001-a", "demo-00001-b"}  # Pending pod not asked
    for _, _, kwargs in reads:
        assert kwargs["container"] == "user-container"
        assert kwargs["timestamps"] is True
        assert kwargs["_request_timeout"] == 2.0

    api.calls.clear()
    tail = await logs.read_logs("demo", tail=2)
    assert [l.text for l in tail] == ["b2", '{"json": true}']   # the last 2 across pods
    assert {c[2]["tail_lines"] for c in api.calls if c[0] == "log"} == {2}

    api.calls.clear()
    since = await logs.read_logs("demo", since=NOW - 12.5)
    assert [l.text for l in since] == ["a2", "b2", '{"json": true}']
    assert {c[2]["since_seconds"] for c in api.calls if c[0] == "log"} == {13}

    assert await logs.read_logs("missing") == []
    assert metrics.provider_calls.labels("pods", "200")._value.get() == 4


@pytest_twisted.ensureDeferred
async def test_read_logs_errors(pool) -> None:
    api = FakeCoreV1Api()
    api.add_pod("demo-1", "demo", lines=[(-1, "ok")])
    api.add_pod("demo-2", "demo")
    api.errors["demo-2"] = ApiException(status=400, reason="Bad Request")   # waiting to start
    logs = make(api, pool)
    assert [l.text for l in await logs.read_logs("demo")] == ["ok"]

    api.errors["demo-2"] = ApiException(status=500, reason="Internal Server Error")
    with pytest.raises(ProviderError, match="demo: Kubernetes API answered 500"):
        await logs.read_logs("demo")

    def refused() -> Any:
        raise ConnectionRefusedError("connection refused")

    broken = KnativeLogs(refused, "fns", reactor, pool, 2.0, clock=Clock())
    with pytest.raises(ProviderError, match="Kubernetes API unreachable"):
        await broken.read_logs("demo")

    stopped = ThreadPool(minthreads=0, maxthreads=1)
    with pytest.raises(ProviderError, match="thread pool is not running"):
        await KnativeLogs(lambda: api, "fns", reactor, stopped, 2.0).read_logs("demo")


@pytest.mark.parametrize("chunked", [True, False])
@pytest_twisted.ensureDeferred
async def test_follow_streams_new_lines_and_new_pods(pool, chunked) -> None:
    api = FakeCoreV1Api()
    api.chunked = chunked
    api.add_pod("demo-1", "demo", lines=[(-5, "old line")])
    clock = Clock()
    logs = make(api, pool, clock=clock, poll_interval=5.0)
    got: list[LogLine] = []
    unsubscribe = logs.follow_logs("demo", got.append)

    await until(lambda: "demo-1" in api.streams)
    first = api.calls[-1][2]
    assert first["follow"] is True and first["tail_lines"] == 0          # new lines only
    assert first["container"] == "user-container" and first["timestamps"] is True
    stream = api.streams["demo-1"][0]
    stream.push(f"{stamp(1)} hello\n{stamp(2)} wor".encode(), b"ld\n")
    await until(lambda: len(got) == 2)
    assert [(l.instance, l.text) for l in got] == [("demo-1", "hello"), ("demo-1", "world")]
    assert got[1].timestamp == pytest.approx(NOW + 2)

    # a pod that appears later is followed from its first line, at the next poll
    api.add_pod("demo-2", "demo", lines=[(3, "scaled up")])
    clock.advance(5)
    await until(lambda: len(got) == 3)
    assert got[2].instance == "demo-2" and got[2].text == "scaled up"
    second = [c for c in api.calls if c[0] == "log" and c[1] == "demo-2"][0][2]
    assert "tail_lines" not in second and "since_seconds" not in second
    assert logs.open_streams == 2

    unsubscribe()
    assert all(s.shut.is_set() for streams in api.streams.values() for s in streams)
    stream.push(f"{stamp(9)} after unsubscribe\n".encode())
    await until(lambda: logs.open_streams == 0)
    await until(lambda: all(s.released for ss in api.streams.values() for s in ss))
    await handed_over()                     # the readers are done and their lines queued
    assert len(got) == 3
    clock.advance(30)                       # no more polling once unsubscribed
    assert len([c for c in api.calls if c[0] == "list"]) == 2


@pytest_twisted.ensureDeferred
async def test_follow_reopens_an_ended_stream_from_where_it_was(pool) -> None:
    api = FakeCoreV1Api()
    api.add_pod("demo-1", "demo")
    clock = Clock()
    logs = make(api, pool, clock=clock)
    got: list[LogLine] = []
    unsubscribe = logs.follow_logs("demo", got.append)
    await until(lambda: "demo-1" in api.streams)
    api.logs["demo-1"] = [(1, "one"), (2, "two")]
    api.streams["demo-1"][0].push(f"{stamp(1)} one\n{stamp(2)} two\n".encode())
    await until(lambda: len(got) == 2)
    api.streams["demo-1"][0].end()                 # e.g. the API server closed it
    await until(lambda: logs.open_streams == 0)

    api.logs["demo-1"].append((3, "three"))
    clock.advance(5)
    await until(lambda: len(got) == 3)
    reopened = [c for c in api.calls if c[0] == "log"][-1][2]
    assert reopened["since_seconds"] == 1            # ceil(NOW - (NOW + 2)) + 1, at least 1
    assert [l.text for l in got] == ["one", "two", "three"]   # "two" not delivered twice
    unsubscribe()


@pytest_twisted.ensureDeferred
async def test_follow_waits_for_pending_pods_and_respects_the_stream_limit(pool) -> None:
    api = FakeCoreV1Api()
    api.add_pod("demo-1", "demo", phase="Pending")
    api.add_pod("demo-2", "demo")
    api.add_pod("demo-3", "demo")
    clock = Clock()
    logs = make(api, pool, clock=clock, max_streams=1)
    got: list[LogLine] = []
    unsubscribe = logs.follow_logs("demo", got.append)
    # the poll decides synchronously: one stream registered, the others not opened
    await until(lambda: "demo-2" in api.streams)
    assert logs.open_streams == 1
    assert set(api.streams) == {"demo-2"}            # Pending not opened; limit of 1 held
    assert [c[1] for c in api.calls if c[0] == "log"] == ["demo-2"]
    unsubscribe()
    await until(lambda: logs.open_streams == 0)


@pytest_twisted.ensureDeferred
async def test_close_cancels_every_follower(pool) -> None:
    api = FakeCoreV1Api()
    api.add_pod("demo-1", "demo")
    api.add_pod("other-1", "other")
    logs = make(api, pool)
    logs.follow_logs("demo", lambda line: None)
    logs.follow_logs("other", lambda line: None)
    await until(lambda: logs.open_streams == 2)
    logs.close()
    await until(lambda: logs.open_streams == 0)
    # a reading thread that had not yet stored its response when close() ran shuts it
    # as soon as it does (it checks ``cancelled``): wait for that, bounded by until()
    await until(lambda: all(s.shut.is_set() for ss in api.streams.values() for s in ss))


@pytest_twisted.ensureDeferred
async def test_no_line_is_delivered_after_unsubscribe_returns(pool) -> None:
    api = FakeCoreV1Api()
    api.add_pod("demo-1", "demo")
    logs = make(api, pool)
    got: list[LogLine] = []
    unsubscribe = logs.follow_logs("demo", got.append)
    await until(lambda: "demo-1" in api.streams and api.streams["demo-1"][0].gets == 1)
    stream = api.streams["demo-1"][0]
    stream.push(f"{stamp(1)} in flight\n".encode())
    # hold the reactor until the reading thread has handed the line to it
    deadline = time.monotonic() + 5
    while stream.gets < 2:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    unsubscribe()
    await until(lambda: stream.released)
    await handed_over()                  # the queued hand-over has run by now
    assert got == []


# -- against a real kube-apiserver (envtest; no kubelet, so pods have no log to serve) ----

def _pod(name: str, service: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"serving.knative.dev/service": service}},
            "spec": {"containers": [{"name": "user-container", "image": "dev.local/fn:1"},
                                    {"name": "queue-proxy", "image": "dev.local/qp:1"}]}}


@pytest.mark.envtest
@pytest_twisted.ensureDeferred
async def test_real_apiserver_calls(envtest, pool) -> None:
    """The calls are accepted by a real apiserver: list by label, pod log reads (204 with
    no body for a pod without a node), follow streams that end and are reopened, and a
    hung apiserver is a ProviderError within the timeout."""
    client = envtest.api_client()
    core = CoreV1Api(client)
    core.create_namespaced_pod("default", _pod("real-00001-a", "real"))
    core.create_namespaced_pod("default", _pod("other-00001-a", "other"))
    core.create_namespaced_pod("default", _pod("real-00001-b", "real"))
    core.patch_namespaced_pod_status("real-00001-b", "default", {"status": {"phase": "Running"}})
    metrics = Metrics()
    clock = Clock()
    logs = KnativeLogs(lambda: core, "default", reactor, pool, 1.0, clock=clock,
                       metrics=metrics)
    try:
        assert await logs.read_logs("real", tail=10, since=time.time() - 60) == []
        assert metrics.provider_calls.labels("pods", "200")._value.get() == 1
        assert metrics.provider_calls.labels("logs", "200")._value.get() == 1  # b only (Running)

        got: list[LogLine] = []
        unsubscribe = logs.follow_logs("real", got.append)
        await until(lambda: metrics.provider_calls.labels("logs", "200")._value.get() == 2)
        await until(lambda: logs.open_streams == 0)      # 204: the stream ends at once
        clock.advance(5)                                 # the next poll reopens it
        await until(lambda: metrics.provider_calls.labels("logs", "200")._value.get() == 3)
        unsubscribe()
        assert got == []

        envtest.pause()
        try:
            started = time.monotonic()
            with pytest.raises(ProviderError, match="knative logs of real"):
                await logs.read_logs("real")
            assert time.monotonic() - started < 5
        finally:
            envtest.resume()
    finally:
        logs.close()
        for name in ("real-00001-a", "real-00001-b", "other-00001-a"):
            core.delete_namespaced_pod(name, "default", grace_period_seconds=0)
        client.close()
