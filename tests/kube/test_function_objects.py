"""Function objects on the real kube-apiserver (envtest): the CRD as shipped, the watch
that makes the store match, status and conditions, the finalizer, a 410, a leader
change, and OpenFaaS's Function shape."""

from __future__ import annotations

import json
import time

import attrs
import pytest
import pytest_twisted
from twisted.internet.defer import succeed
from kubernetes import client as kube_client
from kubernetes.client.rest import ApiException

from faastwist.kube.objects import FAASTWIST, OPENFAAS
from faastwist.kube.schema import FINALIZER
from faastwist.store.owned import MANAGED_BY
from faastwist.model.fsm import Event, FunctionStatus, State, apply_event
from faastwist.model.spec import FunctionSpec
from faastwist.providers.base import Observation
from faastwist.store.memory import MemoryStore
from tests.kube.envtest_world import World, install_shipped_manifests, wait_for
from tests.kube.test_schema import FULL

pytestmark = [pytest.mark.envtest]

HELLO = {"image": "dev.local/hello:1", "port": 8080}


def test_shipped_manifests_apply_and_the_crd_keeps_a_full_spec_whole(envtest):
    install_shipped_manifests(envtest)
    api_client = envtest.api_client()
    rbac = kube_client.RbacAuthorizationV1Api(api_client)
    role = rbac.read_cluster_role("faastwist-node")
    assert any("functions/status" in (rule.resources or ()) for rule in role.rules)
    objects = kube_client.CustomObjectsApi(api_client)
    spec = {k: v for k, v in FULL.items() if k != "name"}
    body = {"apiVersion": "faastwist.io/v1", "kind": "Function",
            "metadata": {"name": "full-spec"}, "spec": spec}
    created = objects.create_namespaced_custom_object("faastwist.io", "v1", "default",
                                                      "functions", body)
    try:
        # a structural schema prunes what it does not name: nothing was pruned
        assert created["spec"] == spec
        assert FunctionSpec.from_dict({"name": "full-spec", **created["spec"]}) == \
            FunctionSpec.from_dict(FULL | {"name": "full-spec"})
        # the schema types refuse what the spec could never read
        bad = dict(body, metadata={"name": "bad-port"}, spec={"port": "eighty"})
        with pytest.raises(ApiException) as refused:
            objects.create_namespaced_custom_object("faastwist.io", "v1", "default",
                                                    "functions", bad)
        assert refused.value.status == 422 and "spec.port" in refused.value.body
        # kubectl get fn: the printer columns and the short name
        response = objects.list_namespaced_custom_object(
            "faastwist.io", "v1", "default", "functions", _preload_content=False,
            _headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"})
        table = json.loads(response.data)
        assert [c["name"] for c in table["columnDefinitions"]] == [
            "Name", "State", "Replicas", "Age"]
        resources = kube_client.CustomObjectsApi(api_client).get_api_resources(
            "faastwist.io", "v1")
        resources = {"resources": [{"name": r.name, "shortNames": r.short_names,
                                    "namespaced": r.namespaced} for r in resources.resources]}
        functions = [r for r in resources["resources"] if r["name"] == "functions"][0]
        assert functions["shortNames"] == ["fn"] and functions["namespaced"] is True
    finally:
        objects.delete_namespaced_custom_object("faastwist.io", "v1", "default", "functions",
                                                "full-spec")


def as_service_account(envtest, account: str):
    """An API client acting as ``system:serviceaccount:faastwist:ACCOUNT`` (the
    apiserver runs with RBAC; the admin token may impersonate)."""
    api_client = envtest.api_client()
    api_client.set_default_header("Impersonate-User",
                                  f"system:serviceaccount:faastwist:{account}")
    return api_client


@pytest_twisted.inlineCallbacks
def test_the_shipped_rbac_is_all_the_watch_needs(world, envtest):
    install_shipped_manifests(envtest)
    stranger = kube_client.CustomObjectsApi(as_service_account(envtest, "nobody"))
    with pytest.raises(ApiException) as refused:   # impersonation is in force
        stranger.list_cluster_custom_object("faastwist.io", "v1", "functions")
    assert refused.value.status == 403
    w = world(node_client=as_service_account(envtest, "faastwist"))
    w.start()
    w.apply("rbac", HELLO)                       # list, watch, finalizer patch, create
    yield wait_for(lambda: w.status("rbac").get("state") == "initial", what="status")
    w.apply("rbac-bad", {"image": "x", "limitCPU": "lots"})
    yield wait_for(lambda: w.events("rbac-bad"), what="an Event")   # events: create
    w.delete("rbac")                             # finalizer removal
    yield wait_for(lambda: w.get("rbac") is None, what="released")
    assert w.function("rbac") is None


@pytest_twisted.inlineCallbacks
def test_the_shipped_rbac_is_all_the_knative_provider_needs(envtest):
    from twisted.internet import reactor

    from faastwist.config import KnativeConfig
    from faastwist.providers.knative import KnativeProvider

    install_shipped_manifests(envtest)
    config = KnativeConfig(namespace="default", timeout=5.0, kubeconfig=envtest.kubeconfig)
    provider = KnativeProvider(config, "rbacctl", reactor,
                               api_client=as_service_account(envtest, "faastwist"))
    provider.startService()
    try:
        yield provider.check()
        spec = FunctionSpec.from_dict({"name": "rbac-ksvc", "image": "dev.local/x:1"})
        yield provider.deploy(spec)
        observed = yield provider.observe()
        assert "rbac-ksvc" in observed
        yield provider.stop(spec)
        yield provider.delete("rbac-ksvc")
        assert "rbac-ksvc" not in (yield provider.observe())
        assert (yield provider.read_logs("rbac-ksvc")) == []   # pods and logs: readable
    finally:
        provider.stopService()


def _activate(world: World, name: str) -> None:
    """What the reconciler does once the provider says ready."""
    record = world.function(name)
    world.store.update(record, status=apply_event(record.status, Event.READY, time.time()))


@pytest_twisted.inlineCallbacks
def test_apply_update_delete_a_function_with_status_written_back(world):
    w = world()
    w.start()
    w.apply("hello", HELLO)
    record = yield wait_for(lambda: w.function("hello"), what="the function")
    assert record.spec.image == "dev.local/hello:1" and record.spec.port == 8080
    assert record.spec.annotations == {MANAGED_BY: f"Function {w.namespace}/hello"}
    assert "hello" in w.kicks
    yield wait_for(lambda: w.status("hello").get("state") == "initial", what="initial")
    obj = w.get("hello")
    assert FINALIZER in obj["metadata"]["finalizers"]
    assert obj["status"]["observedGeneration"] == 1
    assert obj["status"]["conditions"][0]["status"] == "Unknown"

    _activate(w, "hello")
    yield wait_for(lambda: w.status("hello").get("state") == "active", what="active")
    status = w.status("hello")
    assert status["replicas"] == "1/1" and status["lastEvent"] == "ready"
    assert status["conditions"][0]["type"] == "Ready"
    assert status["conditions"][0]["status"] == "True"

    # at most once per change: handling it again writes nothing
    yield w.watch.sync.settled()
    writes, version = w.watch.sync.writes, w.get("hello")["metadata"]["resourceVersion"]
    w.watch._resync()
    yield w.watch.sync.settled()
    assert w.watch.sync.writes == writes
    assert w.get("hello")["metadata"]["resourceVersion"] == version

    # a new spec rolls out: the function stays active while it does
    w.patch_spec("hello", {"image": "dev.local/hello:2"})
    yield wait_for(lambda: w.function("hello").spec.image == "dev.local/hello:2", what="roll")
    record = w.function("hello")
    assert record.status.state is State.ACTIVE and record.status.ext_data.get("rollout")
    yield wait_for(lambda: w.status("hello").get("observedGeneration") == 2, what="gen 2")

    # deleting the object removes the function before the object goes
    w.delete("hello")
    yield wait_for(lambda: w.get("hello") is None, what="object gone")
    assert w.function("hello") is None


@pytest_twisted.inlineCallbacks
def test_replica_counts_come_from_the_provider_one_observation_per_resync(world):
    calls: list = []

    def observe(names):
        calls.append(names)
        return succeed({name: Observation(name, ext_data={"replicas": "2", "desired": "3"})
                        for name in (names or ("one", "two"))})
    w = world(observe=observe)
    w.start()
    for name in ("one", "two"):
        w.apply(name, HELLO)
    yield wait_for(lambda: w.function("one") and w.function("two"), what="both")
    for name in ("one", "two"):
        _activate(w, name)
    yield wait_for(lambda: all(w.status(n).get("replicas") == "2/3" for n in ("one", "two")),
                   what="the provider's counts")
    assert w.status("one")["readyReplicas"] == 2 and w.status("one")["desiredReplicas"] == 3
    assert ["one"] in calls and ["two"] in calls   # a state change asks about its function
    yield w.watch.sync.settled()
    calls.clear()
    writes = w.watch.sync.writes
    w.watch._resync()
    yield w.watch.sync.settled()
    assert calls == [None]          # the pass: one observation of every function
    assert w.watch.sync.writes == writes


class RacingStore(MemoryStore):
    """Before the next spec write, a status-only write lands first (the reconciler
    recording a provider event), so the watch's compare-and-swap loses once."""

    race = 0

    def update(self, expected, spec=None, status=None, fence=()):
        if spec is not None and self.race:
            self.race -= 1
            current = self._records[expected.name]
            super().update(current, status=attrs.evolve(current.status,
                                                        updated=current.status.updated + 1))
        return super().update(expected, spec=spec, status=status, fence=fence)


@pytest_twisted.inlineCallbacks
def test_a_rollout_that_loses_to_the_reconciler_is_retried_at_once(world):
    store = RacingStore("faascontroller")
    w = world(store=store)
    w.start()
    w.apply("racy", HELLO)
    yield wait_for(lambda: w.status("racy").get("state") == "initial", what="applied")
    store.race = 2
    w.patch_spec("racy", {"image": "dev.local/hello:2"})
    # no resync runs (an hour away): the winning write's own change runs it again
    yield wait_for(lambda: w.function("racy").spec.image == "dev.local/hello:2",
                   what="the rollout after two lost races")
    assert store.race == 0


@pytest_twisted.inlineCallbacks
def test_invalid_objects_get_a_condition_and_an_event_never_a_function(world):
    w = world()
    w.start()
    w.apply("quantity", {"image": "dev.local/x:1", "limitCPU": "lots"})
    w.apply("noimage", {"port": 8080})   # valid spec, refused by the provider's rules
    yield wait_for(lambda: w.status("quantity").get("state") == "invalid", what="invalid")
    condition = w.status("quantity")["conditions"][0]
    assert condition["status"] == "False" and condition["reason"] == "InvalidSpec"
    assert condition["message"].startswith("invalid: spec.limitCPU:")
    yield wait_for(lambda: w.status("noimage").get("state") == "invalid", what="noimage")
    assert "spec.image" in w.status("noimage")["message"]
    events = yield wait_for(lambda: w.events("quantity"), what="an Event")
    assert events[0].reason == "InvalidSpec" and "spec.limitCPU" in events[0].message
    assert events[0].type == "Warning"
    assert w.function("quantity") is None and w.function("noimage") is None
    # fixed: applied
    w.patch_spec("quantity", {"limitCPU": "500m"})
    yield wait_for(lambda: w.function("quantity"), what="fixed function")
    yield wait_for(lambda: w.status("quantity").get("state") == "initial", what="fixed")
    assert len(w.events("quantity")) == 1   # once per generation and message


@pytest_twisted.inlineCallbacks
def test_a_function_made_through_the_api_is_never_touched(world):
    w = world()
    spec = FunctionSpec.from_dict({"name": "mine", "image": "dev.local/mine:1"})
    yield w.store.create(spec, FunctionStatus.initial("mine", time.time()))
    w.start()
    w.apply("mine", HELLO)
    yield wait_for(lambda: w.status("mine").get("state") == "invalid", what="name taken")
    condition = w.status("mine")["conditions"][0]
    assert condition["reason"] == "NameTaken"
    assert "managed by the REST API" in condition["message"]
    assert w.function("mine").spec == spec
    w.delete("mine")
    yield wait_for(lambda: w.get("mine") is None, what="object gone")
    assert w.function("mine").spec == spec


@pytest_twisted.inlineCallbacks
def test_finalizer_gives_up_after_its_timeout_when_the_store_is_down(world):
    w = world(finalizer_timeout=30.0)
    w.start()
    w.apply("stuck", HELLO)
    yield wait_for(lambda: w.status("stuck").get("state") == "initial", what="applied")
    w.store.available = False
    w.delete("stuck")
    obj = yield wait_for(lambda: (w.get("stuck") or {}).get("metadata", {}).get(
        "deletionTimestamp") and w.get("stuck"), what="deletion asked")
    yield w.watch.sync.settled()
    assert w.get("stuck") is not None      # held while within the timeout
    w.watch.sync.wall_clock = lambda: time.time() + 31.0
    w.watch._resync()
    yield wait_for(lambda: w.get("stuck") is None, what="released after the timeout")
    assert obj["metadata"]["finalizers"] == [FINALIZER]
    # the store is back: the next listing collects the function left behind
    w.store.available = True
    w.watch._list(FAASTWIST)
    yield wait_for(lambda: w.function("stuck") is None, what="collected")


@pytest_twisted.inlineCallbacks
def test_a_watch_broken_by_410_lists_again_and_goes_on(world):
    w = world()
    w.start()
    w.apply("before", HELLO)
    yield wait_for(lambda: w.function("before"), what="first")
    yield wait_for(lambda: FAASTWIST in w.watch.streams, what="watching")
    lists = w.watch.lists
    # resume from a resourceVersion the apiserver no longer has: 410 Gone
    w.watch.streams.pop(FAASTWIST).close()
    w.watch.versions[FAASTWIST] = "1"
    w.watch._watch(FAASTWIST)
    yield wait_for(lambda: w.watch.lists > lists, what="a new list")
    w.apply("after", HELLO)
    yield wait_for(lambda: w.function("after"), what="applied after the 410")


@pytest_twisted.inlineCallbacks
def test_a_new_leader_does_no_duplicate_work_and_a_follower_writes_nothing(world):
    first = world()
    first.start()
    first.apply("shared", HELLO)
    yield wait_for(lambda: first.status("shared").get("state") == "initial", what="applied")
    _activate(first, "shared")
    yield wait_for(lambda: first.status("shared").get("state") == "active", what="active")
    yield first.watch.sync.settled()
    first.leader.set(False)          # its lease is gone: streams closed at once
    assert not first.watch.streams and not first.watch.sync.objects
    second = world(store=first.store, namespace=first.namespace)
    second.leader.leading = False
    second.start()
    first.apply("later", HELLO)      # nobody leads: nobody applies it
    store_writes = first.store.writes
    version = first.get("shared")["metadata"]["resourceVersion"]
    second.leader.set(True)
    yield wait_for(lambda: second.function("later"), what="the new leader applies it")
    yield wait_for(lambda: second.status("later").get("state") == "initial", what="status")
    yield second.watch.sync.settled()
    assert first.get("shared")["metadata"]["resourceVersion"] == version
    assert first.store.writes == store_writes + 1      # only the create of "later"
    assert first.function("later").spec.annotations[MANAGED_BY].endswith("/later")


OPENFAAS_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "functions.openfaas.com"},
    "spec": {"group": "openfaas.com", "scope": "Namespaced",
             "names": {"kind": "Function", "plural": "functions", "singular": "function"},
             "versions": [{"name": "v1", "served": True, "storage": True,
                           "subresources": {"status": {}},
                           "schema": {"openAPIV3Schema": {
                               "type": "object",
                               "x-kubernetes-preserve-unknown-fields": True}}}]}}


@pytest_twisted.inlineCallbacks
def test_openfaas_function_objects_are_mapped_like_a_deployment(world, envtest):
    api_client = envtest.api_client()
    extensions = kube_client.ApiextensionsV1Api(api_client)
    try:
        extensions.create_custom_resource_definition(OPENFAAS_CRD)
    except ApiException as exc:
        if exc.status != 409:
            raise
    objects = kube_client.CustomObjectsApi(api_client)
    deadline = time.monotonic() + 20
    while True:
        try:
            objects.list_cluster_custom_object("openfaas.com", "v1", "functions")
            break
        except ApiException:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    w = world()
    w.start()
    w.apply("nodeinfo", {"name": "nodeinfo", "image": "ghcr.io/openfaas/nodeinfo:latest",
                         "handler": "node main.js", "environment": {"write_debug": "true"},
                         "labels": {"com.openfaas.scale.min": "2"},
                         "limits": {"memory": "128Mi"}}, resource=OPENFAAS)
    record = yield wait_for(lambda: w.function("nodeinfo"), what="the OpenFaaS function")
    assert record.spec.env_process == "node main.js"
    assert record.spec.env == {"write_debug": "true"}
    assert record.spec.min_replica == 2 and record.spec.limit_memory == "128Mi"
    assert record.spec.annotations[MANAGED_BY] == \
        f"Function.openfaas.com {w.namespace}/nodeinfo"
    w.apply("badof", {"name": "badof", "image": "x", "limits": {"memory": "lots"}},
            resource=OPENFAAS)
    yield wait_for(lambda: (w.get("badof", OPENFAAS) or {}).get("status", {}).get("state")
                   == "invalid", what="invalid OpenFaaS object")
    assert "spec.limits.memory" in w.get("badof", OPENFAAS)["status"]["message"]
    w.delete("nodeinfo", OPENFAAS)
    yield wait_for(lambda: w.get("nodeinfo", OPENFAAS) is None, what="gone")
    assert w.function("nodeinfo") is None
