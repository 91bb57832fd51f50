"""The Knative provider: functions are Knative Services in one namespace.

Every call to the Kubernetes API goes through the official client on a thread pool
that this service owns (so the reactor never blocks) and carries ``knative.timeout``.
``observe()`` is one LIST with the controller's label selector whatever the number of
functions (from the apiserver's watch cache, no older than any ksvc this provider has
seen or written); the objects it returns are kept, so that a following update, stop
or start rewrites a ksvc at the resourceVersion just read without another GET (a
concurrent writer then makes it fail with 409, which is retried next pass, not a
failure).
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any, Callable, Generator, Mapping, Sequence

import urllib3
from kubernetes import client as kube_client
from kubernetes import config as kube_config
from kubernetes.client.rest import ApiException
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, inlineCallbacks
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from faastwist.config import ConfigError, KnativeConfig
from faastwist.metrics import Metrics
from faastwist.providers import ksvc
from faastwist.providers.base import (
    LogLine,
    Observation,
    ProviderConflict,
    ProviderError,
    ProviderRejected,
    StaticLease,
)
from faastwist.providers.knative_logs import KnativeLogs
from faastwist.providers.kourier import KnativeRouting
from faastwist.providers.registry import KNATIVE, ProviderContext, ProviderParts
from faastwist.model.spec import FunctionSpec
from faastwist.util.reactor import IFullReactor

log = Logger()

_SUCCESS_CODE = {"create": "201"}  # the client returns data only for 201 (create) and 200


def make_api_client(config: KnativeConfig) -> kube_client.ApiClient:
    """An ApiClient from ``knative.kubeconfig``, else in-cluster config, else ~/.kube/config.

    Retries are limited to one reconnect: a request that timed out is not sent again
    (the reconciler retries the whole pass, and the timeout must mean what it says).
    """
    configuration = kube_client.Configuration()
    try:
        if config.kubeconfig:
            kube_config.load_kube_config(config_file=config.kubeconfig,
                                         client_configuration=configuration)
        else:
            try:
                kube_config.load_incluster_config(client_configuration=configuration)
            except kube_config.ConfigException:
                kube_config.load_kube_config(config_file=os.path.expanduser("~/.kube/config"),
                                             client_configuration=configuration)
    except (kube_config.ConfigException, OSError, ValueError, TypeError) as exc:
        where = config.kubeconfig or "unset (not in a cluster, and ~/.kube/config)"
        raise ConfigError("knative.kubeconfig", f"cannot load Kubernetes credentials from "
                                                f"{where}: {exc}") from None
    configuration.retries = urllib3.util.Retry(total=1, connect=1, read=0, redirect=0,
                                               status=0, other=0)
    return kube_client.ApiClient(configuration)


def _status_body(exc: ApiException) -> tuple[str, str]:
    """(reason, message) of the Kubernetes Status an ApiException carries."""
    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        body = {}
    if not isinstance(body, dict):
        body = {}
    reason = str(body.get("reason") or exc.reason or "")
    message = str(body.get("message") or exc.reason or "")
    return reason, message


def _is_timeout(exc: BaseException) -> bool:
    if isinstance(exc, urllib3.exceptions.MaxRetryError):
        exc = exc.reason or exc
    if isinstance(exc, urllib3.exceptions.NewConnectionError):
        return False  # urllib3 derives it from ConnectTimeoutError, but it is a refusal
    return isinstance(exc, (urllib3.exceptions.TimeoutError, TimeoutError))


def _transport_message(exc: BaseException) -> str:
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        exc = exc.reason
    return f"{type(exc).__name__}: {exc}"


class _ApiFailure(Exception):
    """An API call that failed, before the verb decides what it means."""

    def __init__(self, verb: str, target: str, status: int, reason: str, message: str) -> None:
        super().__init__(f"knative {verb} {target}: {status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


def _put_secret(core: Any, namespace: str, name: str, body: dict[str, Any],
                timeout: float) -> None:
    """Create the Secret, or replace it when it exists (blocking: on the pool)."""
    try:
        core.create_namespaced_secret(namespace, body, _request_timeout=timeout)
    except ApiException as exc:
        if exc.status != 409:
            raise
        core.replace_namespaced_secret(name, namespace, body, _request_timeout=timeout)


class KnativeProvider(Service):
    """Runs a controller's functions as Knative Services (serving.knative.dev/v1)."""

    kind = "knative"
    name = "provider"

    def __init__(self, config: KnativeConfig, controller: str, reactor: IFullReactor,
                 metrics: Metrics | None = None,
                 api_client: kube_client.ApiClient | None = None,
                 max_threads: int = 4, max_log_streams: int = 8) -> None:
        self.config = config
        self.controller = controller
        self.reactor = reactor
        self.metrics = metrics or Metrics()
        self._own_client = api_client is None
        self.api_client = api_client if api_client is not None else make_api_client(config)
        self.api = kube_client.CustomObjectsApi(self.api_client)
        self.pool = ThreadPool(minthreads=0, maxthreads=max_threads,
                               name=f"knative-{controller}")
        #: the last object read or written per ksvc name; the source of resourceVersions
        self._seen: dict[str, dict[str, Any]] = {}
        #: the newest ksvc resourceVersion seen; the next LIST must not be older than it
        self._fresh_as_of: str | None = None
        self.routing = KnativeRouting(config)
        #: the encrypted secret store the Kubernetes Secrets are written from (the node
        #: sets it); None: a function naming a secret is rejected
        self.secrets: Any = None
        # followed log streams hold a thread each: a pool of their own, so that they
        # can never starve the reconciler's calls
        self.log_pool = ThreadPool(minthreads=0, maxthreads=max_log_streams + 2,
                                   name=f"knative-logs-{controller}")
        self.logs = KnativeLogs(lambda: kube_client.CoreV1Api(self.api_client),
                                config.namespace, reactor, self.log_pool, config.timeout,
                                metrics=self.metrics, max_streams=max_log_streams)

    # -- service ---------------------------------------------------------------------
    def startService(self) -> None:
        super().startService()
        self.pool.start()
        self.log_pool.start()

    def stopService(self) -> None:
        super().stopService()
        self.logs.close()  # ends followed streams so their threads return
        # calls in flight end within knative.timeout, so these joins are bounded
        self.log_pool.stop()
        self.pool.stop()
        if self._own_client:
            self.api_client.close()

    # -- the Kubernetes calls ----------------------------------------------------------
    def _call(self, verb: str, target: str, method: Callable[..., Any], *args: Any,
              **kwargs: Any) -> Deferred[Any]:
        """Run one client call on the pool; failures become _ApiFailure or ProviderError."""
        if not self.pool.started:
            return fail(ProviderError(f"knative provider is not running ({verb} {target})"))
        kwargs["_request_timeout"] = self.config.timeout
        d = deferToThreadPool(self.reactor, self.pool, method, ksvc.GROUP, ksvc.VERSION,
                              self.config.namespace, ksvc.PLURAL, *args, **kwargs)

        def succeeded(result: Any) -> Any:
            self.metrics.provider_calls.labels(verb, _SUCCESS_CODE.get(verb, "200")).inc()
            return result

        def failed(failure: Any) -> Any:
            exc = failure.value
            if isinstance(exc, ApiException) and exc.status:
                self.metrics.provider_calls.labels(verb, str(exc.status)).inc()
                reason, message = _status_body(exc)
                raise _ApiFailure(verb, target, exc.status, reason, message)
            if isinstance(exc, ApiException):  # status 0: TLS or request preparation
                self.metrics.provider_calls.labels(verb, "error").inc()
                raise ProviderError(f"knative {verb} {target}: {exc.reason}")
            if _is_timeout(exc):
                self.metrics.provider_calls.labels(verb, "timeout").inc()
                raise ProviderError(f"knative {verb} {target}: no answer from the Kubernetes "
                                    f"API within {self.config.timeout:g}s")
            if isinstance(exc, (urllib3.exceptions.HTTPError, OSError)):
                self.metrics.provider_calls.labels(verb, "error").inc()
                raise ProviderError(f"knative {verb} {target}: Kubernetes API unreachable: "
                                    f"{_transport_message(exc)}")
            return failure

        return d.addCallbacks(succeeded, failed)

    @staticmethod
    def _as_error(failure_exc: _ApiFailure) -> ProviderError:
        if failure_exc.status in (401, 403):
            return ProviderError(f"{failure_exc} (check the credentials and RBAC of "
                                 f"knative.kubeconfig)")
        if failure_exc.status == 404:
            return ProviderError(f"{failure_exc} (is Knative Serving installed, and does the "
                                 f"namespace exist?)")
        return ProviderError(str(failure_exc))

    def _remember(self, obj: Mapping[str, Any] | None) -> None:
        if isinstance(obj, dict) and obj.get("metadata", {}).get("name"):
            self._seen[obj["metadata"]["name"]] = obj
            self._advance(obj["metadata"].get("resourceVersion"))

    def _advance(self, version: str | None) -> None:
        """Raise the floor of the next LIST to ``version``, the resourceVersion of a ksvc
        read or written. Only versions of ksvcs qualify: the watch cache of ksvcs reaches
        them for sure, while a LIST's own version is etcd's global revision, which that
        cache never reaches while nothing but other resources change (then a LIST "not
        older than" it waits 3 s and fails with 504)."""
        if not version:
            return
        if self._fresh_as_of is None:
            self._fresh_as_of = version
            return
        try:
            if int(version) > int(self._fresh_as_of):
                self._fresh_as_of = version
        except ValueError:  # not etcd's integers: the later answer is the newer one
            self._fresh_as_of = version

    def _usable(self, obj: Mapping[str, Any]) -> bool:
        """Ours, and not on its way out (a terminating ksvc counts as gone)."""
        return ksvc.is_ours(obj, self.controller) and not obj.get("metadata", {}).get(
            "deletionTimestamp")

    @inlineCallbacks
    def _get(self, name: str) -> Generator[Deferred[Any], Any, dict[str, Any] | None]:
        """The ksvc ``name`` if it exists and is ours, else None."""
        try:
            obj = yield self._call("get", name, self.api.get_namespaced_custom_object, name)
        except _ApiFailure as exc:
            if exc.status == 404:
                self._seen.pop(name, None)
                return None
            raise self._as_error(exc) from None
        if not self._usable(obj):
            self._seen.pop(name, None)
            return None
        self._remember(obj)
        return obj

    # -- Provider ----------------------------------------------------------------------
    def check_spec(self, spec: FunctionSpec) -> None:
        KNATIVE.check_spec(spec)

    def refresh_secrets(self) -> None:
        """A replaced secret reaches the Kubernetes Secret at the function's next deploy
        or update (a running revision keeps what it mounted)."""
        return None

    def observe(self, names: Sequence[str] | None = None) -> Deferred[dict[str, Observation]]:
        if names is None:
            return self._observe_all()
        return self._observe_some(list(names))

    @inlineCallbacks
    def _observe_all(self) -> Generator[Deferred[Any], Any, dict[str, Observation]]:
        selector = ksvc.label_selector(self.controller)
        kwargs: dict[str, Any] = {"label_selector": selector}
        if self._fresh_as_of:
            # served from the apiserver's watch cache (3-5x cheaper than a quorum read of
            # etcd at N=1000), yet never older than any ksvc this provider saw or wrote
            kwargs.update(resource_version=self._fresh_as_of,
                          resource_version_match="NotOlderThan")
        try:
            listing = yield self._call("list", selector,
                                       self.api.list_namespaced_custom_object, **kwargs)
        except (_ApiFailure, ProviderError) as exc:
            self._fresh_as_of = None  # e.g. 504 "Too large resource version": a new etcd
            if isinstance(exc, _ApiFailure):
                raise self._as_error(exc) from None
            raise
        seen: dict[str, dict[str, Any]] = {}
        for item in listing.get("items") or ():
            self._advance(item.get("metadata", {}).get("resourceVersion"))
            if self._usable(item):
                seen[item["metadata"]["name"]] = item
        self._seen = seen
        return {name: ksvc.observe_ksvc(obj) for name, obj in seen.items()}

    @inlineCallbacks
    def _observe_some(self, names: list[str]) -> Generator[Deferred[Any], Any, dict[str, Observation]]:
        out: dict[str, Observation] = {}
        for name in names:
            obj = yield self._get(name)
            if obj is not None:
                out[name] = ksvc.observe_ksvc(obj)
        return out

    @inlineCallbacks
    def _sync_secrets(self, spec: FunctionSpec) -> Generator[Deferred[Any], Any, None]:
        """Write the Kubernetes Secrets ``spec`` mounts (one key each, named after the
        secret, labelled with the controller) from the encrypted store, before the
        revision that mounts them; a missing secret is a ProviderRejected."""
        if not spec.secrets:
            return
        from faastwist.store.base import StoreError
        from faastwist.store.secrets import reveal_deferred

        try:
            values = yield reveal_deferred(self.secrets, spec.secrets)
        except StoreError as exc:
            raise ProviderRejected(f"secrets: {exc}") from None
        core = kube_client.CoreV1Api(self.api_client)
        namespace, timeout = self.config.namespace, self.config.timeout
        for name, value in values.items():
            body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                    "metadata": {"name": name,
                                 "labels": {ksvc.CONTROLLER_LABEL: self.controller}},
                    "data": {name: base64.b64encode(value).decode()}}
            try:
                yield deferToThreadPool(self.reactor, self.pool, _put_secret, core, namespace,
                                        name, body, timeout)
            except ApiException as exc:
                reason, message = _status_body(exc)
                if exc.status in (400, 403, 422):
                    raise ProviderRejected(f"Kubernetes refused Secret {name}: {reason}: "
                                           f"{message}") from None
                raise ProviderError(f"knative secret {name}: {exc.status} {reason}: "
                                    f"{message}") from None
            except Exception as exc:
                raise ProviderError(f"knative secret {name}: "
                                    f"{_transport_message(exc)}") from None

    @inlineCallbacks
    def deploy(self, spec: FunctionSpec) -> Generator[Deferred[Any], Any, None]:
        yield self._sync_secrets(spec)
        body = ksvc.build_ksvc(spec, self.controller, self.config.namespace)
        try:
            created = yield self._call("create", spec.name,
                                       self.api.create_namespaced_custom_object, body)
        except _ApiFailure as exc:
            if exc.status == 409:
                yield self._already_exists(spec.name, exc)
            if exc.status in (400, 422):
                raise ProviderRejected(f"Kubernetes refused the Knative Service: "
                                       f"{exc.reason}: {exc.message}") from None
            raise self._as_error(exc) from None
        self._remember(created)

    @inlineCallbacks
    def _already_exists(self, name: str, exc: _ApiFailure) -> Generator[Deferred[Any], Any, None]:
        """A create found the name taken: by us (a race: next pass sees it) or not."""
        try:
            obj = yield self._call("get", name, self.api.get_namespaced_custom_object, name)
        except _ApiFailure as again:
            raise ProviderConflict(f"knative Service {name} exists but cannot be read "
                                   f"({again.reason}); next pass retries") from None
        if ksvc.is_ours(obj, self.controller):
            raise ProviderConflict(f"knative Service {name} appeared meanwhile "
                                   f"({exc.message}); next pass takes it") from None
        owner = (obj.get("metadata", {}).get("labels") or {}).get(ksvc.CONTROLLER_LABEL)
        by = f"controller {owner}" if owner else "something other than faastwist"
        raise ProviderRejected(f"a Knative Service named {name} already exists in namespace "
                               f"{self.config.namespace} and is managed by {by}") from None

    @inlineCallbacks
    def _rewrite(self, verb: str, spec: FunctionSpec,
                 stopped: bool | None) -> Generator[Deferred[Any], Any, None]:
        """PUT the ksvc with the spec's template at the resourceVersion last seen;
        ``stopped`` None keeps the ksvc's current stopped state."""
        current = self._seen.get(spec.name)
        if current is None:
            current = yield self._get(spec.name)
        if current is None:
            raise ProviderConflict(f"knative Service {spec.name} is gone; next pass "
                                   f"creates it")
        keep = ksvc.is_stopped(current) if stopped is None else stopped
        if not keep:
            yield self._sync_secrets(spec)
        body = ksvc.rewrite_ksvc(current, spec, self.controller, keep)
        try:
            written = yield self._call(verb, spec.name,
                                       self.api.replace_namespaced_custom_object,
                                       spec.name, body)
        except _ApiFailure as exc:
            self._seen.pop(spec.name, None)
            if exc.status in (404, 409):
                raise ProviderConflict(f"knative Service {spec.name} changed meanwhile "
                                       f"({exc.reason}); next pass retries") from None
            if exc.status in (400, 422):
                raise ProviderRejected(f"Kubernetes refused the Knative Service: "
                                       f"{exc.reason}: {exc.message}") from None
            raise self._as_error(exc) from None
        self._remember(written)

    def update(self, spec: FunctionSpec) -> Deferred[None]:
        return self._rewrite("update", spec, None)

    def stop(self, spec: FunctionSpec) -> Deferred[None]:
        return self._rewrite("stop", spec, True)

    def start(self, spec: FunctionSpec) -> Deferred[None]:
        return self._rewrite("start", spec, False)

    @inlineCallbacks
    def delete(self, name: str) -> Generator[Deferred[Any], Any, None]:
        """Delete the ksvc ``name`` if it is ours. The reconciler may ask for a name it has
        not observed (a kicked function the store no longer has): a ksvc of that name that
        another controller or a person manages is left alone. The delete carries the uid
        seen, so an object recreated meanwhile is never deleted by mistake."""
        self.routing.forget(name)
        current = self._seen.get(name)
        if current is None:
            current = yield self._get(name)
        if current is None:
            log.info("knative Service {name}: nothing of ours to delete", name=name)
            return
        uid = current.get("metadata", {}).get("uid")
        options = {"preconditions": {"uid": uid}} if uid else None
        try:
            yield self._call("delete", name, self.api.delete_namespaced_custom_object, name,
                             body=options)
        except _ApiFailure as exc:
            if exc.status == 409:   # the uid differs: not the object we saw any more
                self._seen.pop(name, None)
                raise ProviderConflict(f"knative Service {name} was replaced meanwhile; "
                                       f"next pass decides") from None
            if exc.status != 404:
                raise self._as_error(exc) from None
            log.info("knative Service {name} was already gone", name=name)
        self._seen.pop(name, None)

    def acquire(self, spec: FunctionSpec) -> StaticLease:
        """kourier routes by Host, ``{name}.{namespace}.{hostSuffix}``; it balances and
        holds requests during a cold start itself, so the lease needs no accounting."""
        return self.routing.acquire(spec)

    # -- LogSource: the user-container logs of the function's revision pods -------------
    def read_logs(self, name: str, tail: int | None = None,
                  since: float | None = None) -> Deferred[list[LogLine]]:
        return self.logs.read_logs(name, tail, since)

    def follow_logs(self, name: str, on_line: Callable[[LogLine], None]) -> Callable[[], None]:
        return self.logs.follow_logs(name, on_line)

    @inlineCallbacks
    def check(self) -> Generator[Deferred[Any], Any, None]:
        """The API answers, the credentials work and the ksvc resource exists."""
        try:
            yield self._call("check", "services", self.api.list_namespaced_custom_object,
                             limit=1)
        except _ApiFailure as exc:
            raise self._as_error(exc) from None


def build(context: ProviderContext) -> ProviderParts:
    """The registry's factory (registry.KNATIVE)."""
    config = context.config
    provider = KnativeProvider(config.knative, config.name, context.reactor, context.metrics)
    return ProviderParts(provider, logs=provider, secrets=provider)
