"""The Kubernetes calls of the Function watch, on threads this service owns.

Short calls (list, patch, events) run on a small pool with ``kubernetes.timeout``; each
watch stream holds a thread of its own for as long as it is open (the server ends it
after ``WATCH_SECONDS``, and ``close`` shuts its socket down, so a stop never waits for
a quiet stream). Events reach the reactor through ``callFromThread``, in order.
"""

from __future__ import annotations

import json
import threading
from typing import Any, Callable, Mapping

import urllib3
from kubernetes import client as kube_client
from kubernetes.client.rest import ApiException
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from faastwist.kube.objects import Resource

log = Logger()

#: how long the apiserver keeps one watch stream open (it then ends it cleanly)
WATCH_SECONDS = 60
#: longest accepted line of a watch stream (one object); a longer one ends the stream
MAX_LINE = 4 << 20


def load_api_client(kubeconfig: str, key: str = "kubernetes.kubeconfig") -> kube_client.ApiClient:
    """An ApiClient from ``kubeconfig``, else the in-cluster service account; a
    ConfigError naming ``key`` when neither works. One reconnect, no resends."""
    from kubernetes import config as kube_config

    from faastwist.config import ConfigError

    configuration = kube_client.Configuration()
    try:
        if kubeconfig:
            kube_config.load_kube_config(config_file=kubeconfig,
                                         client_configuration=configuration)
        else:
            kube_config.load_incluster_config(client_configuration=configuration)
    except (kube_config.ConfigException, OSError, ValueError, TypeError) as exc:
        where = kubeconfig or "unset, and not running in a cluster"
        raise ConfigError(key, f"cannot load Kubernetes credentials ({where}): {exc}") from None
    configuration.retries = urllib3.util.Retry(total=1, connect=1, read=0, redirect=0,
                                               status=0, other=0)
    return kube_client.ApiClient(configuration)


class KubeError(Exception):
    """A call failed: ``status`` is the HTTP status (0: no answer, a timeout, TLS)."""

    def __init__(self, what: str, status: int, reason: str, message: str) -> None:
        super().__init__(f"{what}: {status or 'no answer'} {reason}: {message}".rstrip(": "))
        self.status = status
        self.reason = reason
        self.message = message


def _as_kube_error(what: str, exc: BaseException) -> KubeError:
    if isinstance(exc, ApiException):
        try:
            body = json.loads(exc.body or "{}")
        except (TypeError, ValueError):
            body = {}
        body = body if isinstance(body, dict) else {}
        return KubeError(what, exc.status or 0, str(body.get("reason") or exc.reason or ""),
                         str(body.get("message") or exc.reason or ""))
    return KubeError(what, 0, type(exc).__name__, str(exc))


class KubeAPI:
    """Custom-object and Event calls as Deferreds, and watch streams."""

    def __init__(self, api_client: kube_client.ApiClient, reactor: IReactorFromThreads,
                 timeout: float, max_threads: int = 3) -> None:
        self.api_client = api_client
        self.reactor = reactor
        self.timeout = timeout
        self.objects = kube_client.CustomObjectsApi(api_client)
        self.core = kube_client.CoreV1Api(api_client)
        self.pool = ThreadPool(minthreads=0, maxthreads=max_threads, name="kube-functions")
        self._streams: set[WatchStream] = set()

    def start(self) -> None:
        self.pool.start()

    def stop(self) -> None:
        for stream in list(self._streams):
            stream.close()
        self.pool.stop()  # calls in flight end within the timeout
        self.api_client.close()

    def _call(self, what: str, method: Callable[..., Any], *args: Any,
              **kwargs: Any) -> Deferred[Any]:
        if not self.pool.started:
            return fail(KubeError(what, 0, "stopped", "the Function watch is not running"))
        kwargs["_request_timeout"] = self.timeout

        def failed(failure: Any) -> Any:
            if failure.check(ApiException, urllib3.exceptions.HTTPError, OSError):
                raise _as_kube_error(what, failure.value)
            return failure
        return deferToThreadPool(self.reactor, self.pool, method, *args,
                                 **kwargs).addErrback(failed)

    def _scope(self, resource: Resource, namespace: str) -> tuple[Callable[..., Any], tuple]:
        if namespace:
            return (self.objects.list_namespaced_custom_object,
                    (resource.group, resource.version, namespace, resource.plural))
        return (self.objects.list_cluster_custom_object,
                (resource.group, resource.version, resource.plural))

    def list(self, resource: Resource, namespace: str) -> Deferred[dict[str, Any]]:
        method, args = self._scope(resource, namespace)
        return self._call(f"list {resource.plural}.{resource.group}", method, *args)

    def patch(self, resource: Resource, namespace: str, name: str,
              body: Mapping[str, Any]) -> Deferred[dict[str, Any]]:
        """A merge patch of the object (put ``metadata.resourceVersion`` in ``body`` to
        make it conditional: a 409 then says the object changed meanwhile)."""
        return self._call(f"patch {resource.kind} {namespace}/{name}",
                          self.objects.patch_namespaced_custom_object, resource.group,
                          resource.version, namespace, resource.plural, name, body)

    def patch_status(self, resource: Resource, namespace: str, name: str,
                     body: Mapping[str, Any]) -> Deferred[dict[str, Any]]:
        return self._call(f"patch {resource.kind} {namespace}/{name} status",
                          self.objects.patch_namespaced_custom_object_status, resource.group,
                          resource.version, namespace, resource.plural, name, body)

    def create_event(self, namespace: str, body: Mapping[str, Any]) -> Deferred[Any]:
        return self._call(f"create Event in {namespace}", self.core.create_namespaced_event,
                          namespace, body)

    def watch(self, resource: Resource, namespace: str, resource_version: str,
              on_event: Callable[[str, dict[str, Any]], None],
              on_end: Callable[[KubeError | None], None]) -> "WatchStream":
        """Open a watch from ``resource_version`` on a thread of its own."""
        method, args = self._scope(resource, namespace)
        stream = WatchStream(self, method, args, resource_version, on_event, on_end)
        self._streams.add(stream)
        stream.start()
        return stream


class WatchStream:
    """One watch request: lines become ``on_event(type, object)`` calls on the reactor,
    and the end of the stream one ``on_end(error or None)``; ``close`` ends it early
    (and then neither is called again)."""

    def __init__(self, api: KubeAPI, method: Callable[..., Any], args: tuple,
                 resource_version: str, on_event: Callable[[str, dict[str, Any]], None],
                 on_end: Callable[[KubeError | None], None]) -> None:
        self.api = api
        self.method = method
        self.args = args
        self.resource_version = resource_version
        self.on_event = on_event
        self.on_end = on_end
        self.closed = False
        self._response: Any = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="kube-functions-watch",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        with self._lock:
            self.closed = True
            response = self._response
        self.api._streams.discard(self)
        if response is not None:
            try:
                response.shutdown()  # wakes the thread blocked in a read
            except Exception:
                pass

    def _deliver(self, call: Callable[..., None], *args: Any) -> None:
        def run() -> None:
            if not self.closed:
                call(*args)
        self.api.reactor.callFromThread(run)

    def _run(self) -> None:
        error: KubeError | None = None
        try:
            response = self.method(
                *self.args, watch=True, resource_version=self.resource_version,
                allow_watch_bookmarks=True, timeout_seconds=WATCH_SECONDS,
                _preload_content=False,
                _request_timeout=(self.api.timeout, WATCH_SECONDS + self.api.timeout + 5))
            with self._lock:
                if self.closed:
                    response.release_conn()
                    return
                self._response = response
            pending = b""
            for chunk in response.stream(65536, decode_content=True):
                pending += chunk
                if len(pending) > MAX_LINE and b"\n" not in pending:
                    raise KubeError("watch", 0, "too large", f"a line over {MAX_LINE} bytes")
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        event = json.loads(line)
                        self._deliver(self.on_event, str(event.get("type")),
                                      event.get("object") or {})
            response.release_conn()
        except KubeError as exc:
            error = exc
        except Exception as exc:  # the stream broke: the consumer lists again
            error = _as_kube_error("watch", exc)
        self.api._streams.discard(self)
        self._deliver(self.on_end, None if self.closed else error)
