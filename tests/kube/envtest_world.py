"""The Function watch against the real kube-apiserver (envtest), over a MemoryStore."""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from kubernetes import client as kube_client
from kubernetes import utils as kube_utils
from kubernetes.client.rest import ApiException
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater

from faastwist.config import KubernetesConfig
from faastwist.kube.objects import FAASTWIST
from faastwist.kube.service import FunctionWatch, build_watch
from faastwist.providers.registry import check_spec_for
from faastwist.store.leader import NotLeader
from faastwist.store.memory import MemoryStore
from tests.support.k8s import Envtest

ROOT = Path(__file__).resolve().parents[2]
_namespaces = itertools.count()
_installed: set[str] = set()


def install_shipped_manifests(server: Envtest) -> None:
    """Apply deploy/kubernetes/*.yaml (a real create) once per apiserver, and wait
    until the CRD is established."""
    if server.kubeconfig in _installed:
        return
    api_client = server.api_client()
    for name in ("crd.yaml", "rbac.yaml"):   # rbac.yaml makes its namespace too
        kube_utils.create_from_yaml(api_client, str(ROOT / "deploy" / "kubernetes" / name))
    extensions = kube_client.ApiextensionsV1Api(api_client)
    deadline = time.monotonic() + 20
    while True:
        crd = extensions.read_custom_resource_definition("functions.faastwist.io")
        conditions = {c.type: c.status for c in (crd.status.conditions or ())}
        if conditions.get("Established") == "True":
            break
        assert time.monotonic() < deadline, f"CRD not established: {conditions}"
        time.sleep(0.05)
    # the resource is served once discovery has it (a list answers 200)
    objects = kube_client.CustomObjectsApi(api_client)
    while True:
        try:
            objects.list_cluster_custom_object("faastwist.io", "v1", "functions")
            break
        except ApiException as exc:
            assert exc.status == 404 and time.monotonic() < deadline
            time.sleep(0.05)
    _installed.add(server.kubeconfig)


class Leader:
    """Whether this world's node leads (the fence a real node gets from etcd)."""

    def __init__(self) -> None:
        self.leading = True
        self.listeners: list[Callable[[bool], None]] = []

    def is_leader(self) -> bool:
        return self.leading

    def fence(self) -> list:
        if not self.leading:
            raise NotLeader("not leading")
        return []

    def set(self, leading: bool) -> None:
        self.leading = leading
        for listener in self.listeners:
            listener(leading)


class World:
    """One namespace, one store, and one or more nodes' watches over them."""

    def __init__(self, server: Envtest, store: MemoryStore | None = None,
                 namespace: str | None = None, check_spec: Callable[[Any], None] | None = None,
                 finalizer_timeout: float = 300.0,
                 observe: Callable[[Any], Any] | None = None,
                 node_client: Any = None) -> None:
        install_shipped_manifests(server)
        self.server = server
        self.api_client = server.api_client()
        self.objects = kube_client.CustomObjectsApi(self.api_client)
        self.core = kube_client.CoreV1Api(self.api_client)
        if namespace is None:
            namespace = f"fn-test-{next(_namespaces)}"
            self.core.create_namespace({"metadata": {"name": namespace}})
        self.namespace = namespace
        self.store = store if store is not None else MemoryStore("faascontroller")
        self.kicks: list[str] = []
        self.leader = Leader()
        self.check_spec = check_spec or (lambda spec: check_spec_for("knative", spec))
        config = KubernetesConfig(functions="watch", namespace=namespace, timeout=5.0,
                                  finalizer_timeout=finalizer_timeout)
        self.watch: FunctionWatch = build_watch(
            config, "", self.store, reactor, check_spec=self.check_spec,
            kick=self.kicks.append, leader=self.leader, observe=observe, resync=3600.0,
            api_client=node_client or server.api_client())
        self.leader.listeners.append(self.watch.leadership_changed)
        self._store_watch = self.store.watch(
            0, lambda changes: [self.watch.function_changed(c.name) for c in changes],
            lambda exc: None)

    def start(self) -> None:
        self.watch.startService()

    def stop(self) -> None:
        self._store_watch.cancel()
        if self.watch.running:
            self.watch.stopService()

    # -- objects ---------------------------------------------------------------------
    def apply(self, name: str, spec: dict[str, Any], resource: Any = FAASTWIST) -> dict:
        body = {"apiVersion": resource.api_version, "kind": resource.kind,
                "metadata": {"name": name}, "spec": spec}
        return self.objects.create_namespaced_custom_object(
            resource.group, resource.version, self.namespace, resource.plural, body)

    def patch_spec(self, name: str, spec: dict[str, Any]) -> dict:
        return self.objects.patch_namespaced_custom_object(
            "faastwist.io", "v1", self.namespace, "functions", name, {"spec": spec})

    def get(self, name: str, resource: Any = FAASTWIST) -> dict | None:
        try:
            return self.objects.get_namespaced_custom_object(
                resource.group, resource.version, self.namespace, resource.plural, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def delete(self, name: str, resource: Any = FAASTWIST) -> None:
        self.objects.delete_namespaced_custom_object(
            resource.group, resource.version, self.namespace, resource.plural, name)

    def status(self, name: str) -> dict:
        return (self.get(name) or {}).get("status") or {}

    def function(self, name: str) -> Any:
        return self.store._records.get(name)

    def events(self, name: str) -> list[Any]:
        return [e for e in self.core.list_namespaced_event(self.namespace).items
                if e.involved_object.name == name]


@inlineCallbacks
def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, what: str = ""):
    """Poll ``predicate`` off the reactor's back (the apiserver calls block)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what or predicate}"
        yield deferLater(reactor, 0.02, lambda: None)


@pytest.fixture
def world(envtest: Envtest):
    made: list[World] = []

    def make(**kwargs: Any) -> World:
        one = World(envtest, **kwargs)
        made.append(one)
        return one
    yield make
    for one in made:
        one.stop()
