"""Function logs for the Knative provider: the logs of a function's revision pods.

A Knative Service's pods carry the label ``serving.knative.dev/service={name}``;
the function's output is the ``user-container``'s log (``queue-proxy`` is Knative's
sidecar). Every kubernetes-client call runs on a thread pool; a followed pod holds
one pool thread for as long as its stream is open, so give this class a pool of its
own (``max_streams`` keeps a thread free for listings and reads).

Lines are read with ``timestamps=True`` so each carries the kubelet's RFC 3339
timestamp, which becomes ``LogLine.timestamp``. The raw body is decoded here
(``_preload_content=False``): the generated client's ``str`` deserialiser would
mangle a log that happens to be one JSON document.
"""

from __future__ import annotations

import calendar
import math
import re
import threading
import time
from typing import Any, Callable, Generator, Iterable, Iterator

from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import ReadTimeoutError
from twisted.internet.defer import Deferred, DeferredList, fail, inlineCallbacks
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from faastwist.metrics import Metrics
from faastwist.util.reactor import IFullReactor
from faastwist.providers.base import LogLine, ProviderError

log = Logger()

SERVICE_LABEL = "serving.knative.dev/service"
CONTAINER = "user-container"
#: pod phases whose user-container may have a log to read or follow
READABLE_PHASES = frozenset({"Running", "Succeeded", "Failed"})

_STAMP = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d) ?")


def parse_line(raw: str) -> tuple[float | None, str]:
    """Split ``2024-05-01T12:00:00.123456789Z text`` into (epoch seconds, text)."""
    match = _STAMP.match(raw)
    if match is None:
        return None, raw
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    stamp = float(calendar.timegm((int(year), int(month), int(day), int(hour), int(minute),
                                   int(second), 0, 0, 0)))
    if fraction:
        stamp += int(fraction[:9]) / 10 ** len(fraction[:9])
    if zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        stamp -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return stamp, raw[match.end():]


def _split_lines(chunks: Iterable[bytes]) -> Iterator[str]:
    """Whole lines (without the newline) from a stream of byte chunks."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line.decode("utf-8", "replace").rstrip("\r")
    if pending:
        yield pending.decode("utf-8", "replace").rstrip("\r")


def _chunks(response: Any) -> Iterator[bytes]:
    """The body of a streamed urllib3 response as it arrives (chunked or not)."""
    if getattr(response, "chunked", False):
        yield from response.stream(None, decode_content=True)
        return
    while True:
        data = response.read1(65536)
        if not data:
            return
        yield data


def _api_error(name: str, exc: BaseException) -> ProviderError:
    if isinstance(exc, ApiException):
        return ProviderError(f"knative logs of {name}: Kubernetes API answered "
                             f"{exc.status} {exc.reason}")
    return ProviderError(f"knative logs of {name}: Kubernetes API unreachable: {exc}")


class _Stream:
    """One followed pod's open log stream; ``cancel`` unblocks the reading thread."""

    def __init__(self) -> None:
        self.cancelled = False
        self.response: Any = None

    def cancel(self) -> None:
        self.cancelled = True
        response = self.response
        if response is None:
            return  # the thread checks ``cancelled`` once it has the response
        try:
            response.shutdown()   # SHUT_RD: the blocked read returns at once
        except Exception:
            pass
        try:
            response.close()
        except Exception:
            pass


class KnativeLogs:
    """LogSource over CoreV1Api for a namespace's Knative revision pods."""

    def __init__(self, core_api_factory: Callable[[], Any], namespace: str, reactor: IFullReactor,
                 threadpool: ThreadPool, timeout: float, *, clock: IReactorTime | None = None,
                 wall_clock: Callable[[], float] = time.time, poll_interval: float = 5.0,
                 read_timeout: float = 300.0, max_streams: int | None = None,
                 metrics: Metrics | None = None, container: str = CONTAINER,
                 service_name: Callable[[str], str] = lambda name: name) -> None:
        self._factory = core_api_factory
        self._api_instance: Any = None
        self._api_lock = threading.Lock()
        self.namespace = namespace
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.pool = threadpool
        self.timeout = timeout
        self.wall_clock = wall_clock
        self.poll_interval = poll_interval
        # a followed stream idle this long is reopened (from where it was): catches
        # connections that died without a FIN
        self.read_timeout = read_timeout
        self.max_streams = max_streams if max_streams is not None else max(1, threadpool.max - 2)
        self.metrics = metrics
        self.container = container
        self.service_name = service_name
        self._sessions: set[_Follow] = set()

    # -- kubernetes calls (pool threads) -------------------------------------------------
    def _api(self) -> Any:
        with self._api_lock:
            if self._api_instance is None:
                self._api_instance = self._factory()
            return self._api_instance

    def _count(self, verb: str, code: str) -> None:
        if self.metrics is not None:
            self.metrics.provider_calls.labels(verb, code).inc()

    def _call(self, verb: str, function: Callable[..., Any], *args: Any) -> Deferred[Any]:
        if not self.pool.started:
            return fail(ProviderError("knative logs: the thread pool is not running"))
        def succeeded(result: Any) -> Any:
            self._count(verb, "200")
            return result

        def failed(failure: Any) -> Any:
            exc = failure.value
            self._count(verb, str(exc.status) if isinstance(exc, ApiException) and exc.status
                        else "error")
            return failure

        return deferToThreadPool(self.reactor, self.pool, function, *args).addCallbacks(
            succeeded, failed)

    def _list_pods(self, name: str) -> list[tuple[str, str]]:
        """(pod name, phase) of the function's revision pods."""
        pods = self._api().list_namespaced_pod(
            self.namespace, label_selector=f"{SERVICE_LABEL}={self.service_name(name)}",
            _request_timeout=self.timeout)
        return [(pod.metadata.name, (pod.status.phase if pod.status else None) or "Unknown")
                for pod in pods.items or ()]

    def _read_pod(self, pod: str, tail: int | None, since_seconds: int | None) -> str:
        response = self._api().read_namespaced_pod_log(
            pod, self.namespace, container=self.container, timestamps=True,
            tail_lines=tail, since_seconds=since_seconds, _preload_content=False,
            _request_timeout=self.timeout)
        try:
            return response.data.decode("utf-8", "replace")
        finally:
            response.release_conn()

    # -- LogSource -----------------------------------------------------------------------
    @inlineCallbacks
    def read_logs(self, name: str, tail: int | None = None,
                  since: float | None = None) -> Generator[Deferred[Any], Any, list[LogLine]]:
        """Recent lines of every pod of ``name``, oldest first (ProviderError when the
        Kubernetes API cannot be asked)."""
        try:
            pods = yield self._call("pods", self._list_pods, name)
        except Exception as exc:
            raise _api_error(name, exc) from None
        since_seconds = None
        if since is not None:
            since_seconds = max(1, math.ceil(self.wall_clock() - since))
        readable = [pod for pod, phase in pods if phase in READABLE_PHASES]
        results = yield DeferredList(
            [self._call("logs", self._read_pod, pod, tail, since_seconds) for pod in readable],
            consumeErrors=True)
        lines: list[LogLine] = []
        for pod, (ok, value) in zip(readable, results):
            if not ok:
                error = value.value
                if isinstance(error, ApiException) and error.status in (400, 404):
                    # waiting to start, or gone since the listing: nothing to read
                    log.debug("no log for pod {pod}: {status}", pod=pod, status=error.status)
                    continue
                raise _api_error(name, error)
            lines.extend(self._lines(name, pod, value.splitlines()))
        lines.sort(key=lambda line: line.timestamp)
        if since is not None:
            lines = [line for line in lines if line.timestamp >= since]
        if tail is not None:
            lines = lines[-tail:] if tail > 0 else []
        return lines

    def _lines(self, name: str, pod: str, raw: Iterable[str]) -> Iterator[LogLine]:
        last = None
        for text in raw:
            stamp, message = parse_line(text)
            if stamp is None:
                stamp = last if last is not None else self.wall_clock()
            last = stamp
            yield LogLine(name, pod, stamp, message)

    def follow_logs(self, name: str, on_line: Callable[[LogLine], None]) -> Callable[[], None]:
        """Stream new lines of every pod of ``name`` (pods that appear later included)
        until the returned function is called; no call to ``on_line`` after that."""
        session = _Follow(self, name, on_line)
        self._sessions.add(session)
        session.start()

        def unsubscribe() -> None:
            session.cancel()
            self._sessions.discard(session)

        return unsubscribe

    @property
    def open_streams(self) -> int:
        return sum(len(session.streams) for session in self._sessions)

    def close(self) -> None:
        """Cancel every follower so the pool's threads return (call before pool.stop)."""
        for session in list(self._sessions):
            session.cancel()
        self._sessions.clear()


class _Follow:
    """One follow_logs subscription: polls the pod list, keeps one stream per pod."""

    def __init__(self, logs: KnativeLogs, name: str, on_line: Callable[[LogLine], None]) -> None:
        self.logs = logs
        self.name = name
        self.on_line = on_line
        self.streams: dict[str, _Stream] = {}
        #: per pod: only lines newer than this are delivered on a reconnect
        self.cutoff: dict[str, float] = {}
        self.initial: set[str] | None = None   # pods already there when following began
        self.cancelled = False
        self._listing = False
        self._loop = LoopingCall(self.poll)
        self._loop.clock = logs.clock

    def start(self) -> None:
        self._loop.start(self.logs.poll_interval, now=True)

    def cancel(self) -> None:
        self.cancelled = True
        if self._loop.running:
            self._loop.stop()
        for stream in self.streams.values():
            stream.cancel()

    def poll(self) -> None:
        if self.cancelled or self._listing:
            return
        self._listing = True
        d = self.logs._call("pods", self.logs._list_pods, self.name)
        d.addCallbacks(self._reconcile, self._list_failed)
        d.addBoth(self._listed)

    def _listed(self, _: Any) -> None:
        self._listing = False

    def _list_failed(self, failure: Any) -> None:
        log.warn("following logs of {name}: {error}; retrying",
                 name=self.name, error=str(_api_error(self.name, failure.value)))

    def _reconcile(self, pods: list[tuple[str, str]]) -> None:
        if self.cancelled:
            return
        running = [pod for pod, phase in pods if phase == "Running"]
        if self.initial is None:
            self.initial = set(running)
        for pod in running:
            if pod in self.streams:
                continue
            if self.logs.open_streams >= self.logs.max_streams:
                log.warn("following logs of {name}: {limit} streams open, pod {pod} waits",
                         name=self.name, limit=self.logs.max_streams, pod=pod)
                return
            self._open(pod)

    def _open(self, pod: str) -> None:
        kwargs: dict[str, Any] = {}
        after: float | None = None
        if pod in self.cutoff:           # reopening: from where we were
            after = self.cutoff[pod]
            kwargs["since_seconds"] = max(1, math.ceil(self.logs.wall_clock() - after) + 1)
        elif pod in (self.initial or ()):  # there before we came: new lines only
            kwargs["tail_lines"] = 0
            self.cutoff[pod] = self.logs.wall_clock()
        # else: a pod that appeared while following: all of its lines are new
        stream = _Stream()
        self.streams[pod] = stream
        d = deferToThreadPool(self.logs.reactor, self.logs.pool, self._read, pod, kwargs,
                              after, stream)
        d.addErrback(self._stream_failed, pod, stream)
        d.addBoth(self._closed, pod, stream)

    def _read(self, pod: str, kwargs: dict[str, Any], after: float | None,
              stream: _Stream) -> None:
        """Pool thread: read the follow stream line by line until it ends or is cancelled."""
        logs = self.logs
        response = logs._api().read_namespaced_pod_log(
            pod, logs.namespace, container=logs.container, follow=True, timestamps=True,
            _preload_content=False, _request_timeout=(logs.timeout, logs.read_timeout),
            **kwargs)
        logs.reactor.callFromThread(logs._count, "logs", "200")
        stream.response = response
        if stream.cancelled:
            stream.cancel()
            return
        last: float | None = None
        try:
            for text in _split_lines(_chunks(response)):
                if stream.cancelled:
                    return
                stamp, message = parse_line(text)
                if stamp is None:
                    stamp = last if last is not None else logs.wall_clock()
                last = stamp
                if after is not None and stamp <= after:
                    continue  # already delivered before the reconnect
                logs.reactor.callFromThread(self._deliver, pod, stream,
                                            LogLine(self.name, pod, stamp, message))
        except Exception:
            if not stream.cancelled:
                raise
        finally:
            try:
                response.release_conn()
            except Exception:
                pass

    def _deliver(self, pod: str, stream: _Stream, line: LogLine) -> None:
        if self.cancelled or stream.cancelled:
            return
        self.cutoff[pod] = line.timestamp
        self.on_line(line)

    def _stream_failed(self, failure: Any, pod: str, stream: _Stream) -> None:
        if stream.cancelled:
            return
        exc = failure.value
        if isinstance(exc, ApiException):
            self.logs._count("logs", str(exc.status or "error"))
            if exc.status in (400, 404):
                return  # not started yet, or gone: the next poll decides
        if isinstance(exc, (ReadTimeoutError, TimeoutError)):
            # idle for read_timeout: reopened from where it was, nothing lost
            log.debug("log stream of {name} pod {pod} idle; reopening", name=self.name, pod=pod)
            return
        log.warn("log stream of {name} pod {pod} ended: {error}; reopening on the next poll",
                 name=self.name, pod=pod, error=str(_api_error(self.name, exc)))

    def _closed(self, _: Any, pod: str, stream: _Stream) -> None:
        if self.streams.get(pod) is stream:
            del self.streams[pod]
