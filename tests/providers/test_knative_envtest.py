"""The Knative provider and the reconciler against a real kube-apiserver (envtest).

What Knative's own controller would do is done by ``FakeKnative``: it writes each
ksvc's ``/status`` when a test says so. Everything else is real: the API server with
the Knative Service CRD (its schema validates what the provider writes), the official
kubernetes client on the provider's thread pool, the reconciler, the in-memory store
(admin operations are done as admin.py does them: fsm.apply_event + a CAS write + kick).
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import attrs
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock, deferLater

from faastwist.config import KnativeConfig
from faastwist.model.fsm import TRANSITIONS, Event, FunctionStatus, State, apply_event
from faastwist.metrics import Metrics
from faastwist.providers import ksvc
from faastwist.providers.base import ProviderConflict, ProviderError, ProviderRejected
from faastwist.providers.knative import KnativeProvider
from faastwist.lifecycle.reconciler import Reconciler
from faastwist.model.spec import FunctionSpec
from faastwist.store.memory import MemoryStore
from tests.support.k8s import Envtest
from faastwist.testing.knative import CallCounter, FakeKnative

pytestmark = [pytest.mark.envtest]

_controllers = itertools.count()

DEMO10 = {
    "name": "demo10", "image": "dev.local/colordeploy:17.0", "port": 8089,
    "autoScaleType": "rps", "autoScaleValue": "111", "minReplica": 1, "maxReplica": 3,
    "limitCPU": "180m", "limitMemory": "100Mi", "requestCPU": "80m", "requestMemory": "20Mi",
    "requestAdaptor": {"header": {"set": {"X-Func1": "func-demo-10"}}},
}
BROKEN = "dev.local/does-not-exist:1"


@attrs.define
class Cluster:
    """One controller's world: store, provider, reconciler, and the fake Knative."""

    controller: str
    store: MemoryStore
    provider: KnativeProvider
    reconciler: Reconciler
    knative: FakeKnative
    metrics: Metrics
    calls: CallCounter
    clock: Clock

    def spec(self, name: str, **fields: Any) -> FunctionSpec:
        return FunctionSpec.from_dict({"name": name, "image": "dev.local/fn:1", "port": 8080,
                                       **fields})

    @inlineCallbacks
    def create(self, spec: FunctionSpec):
        self.provider.check_spec(spec)
        yield self.store.create(spec, FunctionStatus.initial(spec.name, time.time()))

    @inlineCallbacks
    def admin(self, name: str, event: Event, spec: FunctionSpec | None = None):
        """What admin.py does for start/stop/update/delete."""
        record = yield self.store.get(name)
        status = apply_event(record.status, event, time.time())
        if status.state is State.DESTROYED:
            yield self.store.delete(record)
        else:
            yield self.store.update(record, spec=spec, status=status)
        return (record.status.state, status.state, event)

    @inlineCallbacks
    def state(self, name: str):
        record = yield self.store.get(name)
        return record.status

    def ksvc(self, name: str) -> dict[str, Any] | None:
        return self.knative.get(name)

    def transitions(self) -> set[tuple[State, Event]]:
        """(from, event) pairs the reconciler applied, from its metrics."""
        out = set()
        for metric in self.metrics.registry.collect():
            if metric.name != "faastwist_fsm_transitions":
                continue
            for sample in metric.samples:
                if sample.name.endswith("_total") and sample.value > 0:
                    out.add((State(sample.labels["from"]), Event(sample.labels["event"])))
        return out

    def api_calls(self, verb: str) -> float:
        total = 0.0
        for metric in self.metrics.registry.collect():
            for sample in metric.samples:
                if (sample.name == "faastwist_provider_api_calls_total"
                        and sample.labels["verb"] == verb):
                    total += sample.value
        return total


def make_cluster(server: Envtest, timeout: float = 5.0) -> Cluster:
    controller = f"ctl{next(_controllers)}"
    metrics = Metrics()
    config = KnativeConfig(network_layer_url="http://127.0.0.1:8081",
                           host_suffix="example.com", namespace="default",
                           timeout=timeout, kubeconfig=server.kubeconfig)
    provider = KnativeProvider(config, controller, reactor, metrics)
    calls = CallCounter(provider.api_client)
    store = MemoryStore(controller)
    clock = Clock()
    reconciler = Reconciler(store, provider, clock, 10.0, metrics, wall_clock=time.time,
                            start_grace=0.0)  # the FSM walk wants inactive + pending at once
    knative = FakeKnative(server.api_client())
    provider.startService()
    return Cluster(controller, store, provider, reconciler, knative, metrics, calls, clock)


@pytest.fixture
def cluster(envtest: Envtest) -> Iterator[Cluster]:
    world = make_cluster(envtest)
    yield world
    if world.reconciler.running:
        pytest_twisted.blockon(world.reconciler.stopService())
    world.provider.stopService()
    envtest.resume()
    world.knative.delete_all(world.controller)


@inlineCallbacks
def wait_for(predicate: Callable[[], bool], timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        yield deferLater(reactor, 0.01, lambda: None)


def template_annotations(obj: dict[str, Any]) -> dict[str, str]:
    return obj["spec"]["template"]["metadata"]["annotations"]


# -- the life of a function -------------------------------------------------------------

@pytest_twisted.inlineCallbacks
def test_demo10_becomes_active_within_two_sync_intervals(cluster: Cluster):
    spec = FunctionSpec.from_dict(DEMO10)
    cluster.reconciler.startService()             # the first pass runs at once
    yield wait_for(lambda: cluster.reconciler.passes == 1)
    yield cluster.create(spec)
    cluster.reconciler.kick("demo10")             # what admin.py does after the write
    cluster.clock.advance(0)
    yield wait_for(lambda: cluster.reconciler.passes == 2)

    obj = cluster.ksvc("demo10")                  # read back: the CRD schema accepted it
    assert obj is not None
    assert obj["metadata"]["labels"] == {"faastwist.io/controller": cluster.controller}
    assert obj["metadata"]["annotations"] == {"faastwist.io/spec-digest": spec.digest()}
    assert template_annotations(obj) == {
        "autoscaling.knative.dev/class": "kpa.autoscaling.knative.dev",
        "autoscaling.knative.dev/metric": "rps",
        "autoscaling.knative.dev/target": "111",
        "autoscaling.knative.dev/min-scale": "1",
        "autoscaling.knative.dev/max-scale": "3",
    }
    [container] = obj["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "dev.local/colordeploy:17.0"
    assert container["ports"][0]["containerPort"] == 8089
    assert container["resources"] == {"limits": {"cpu": "180m", "memory": "100Mi"},
                                      "requests": {"cpu": "80m", "memory": "20Mi"}}
    status = yield cluster.state("demo10")
    assert status.state is State.INITIAL

    cluster.knative.reconcile(cluster.controller)  # Knative: the revision is ready
    for interval in range(2):
        cluster.clock.advance(cluster.reconciler.interval)
        yield wait_for(lambda interval=interval: cluster.reconciler.passes == 3 + interval)
        status = yield cluster.state("demo10")
        if status.state is State.ACTIVE:
            break
    assert status.state is State.ACTIVE
    assert status.ext_data["Ready.status"] == "True"
    assert status.ext_data["url"] == "http://demo10.default.example.com"
    lease = cluster.provider.acquire(spec)
    assert (lease.upstream.origin, lease.upstream.host_header) == (
        b"http://127.0.0.1:8081", "demo10.default.example.com")


@pytest_twisted.inlineCallbacks
def test_image_failure_then_fixed_by_update(cluster: Cluster):
    cluster.knative.broken_images.add(BROKEN)
    yield cluster.create(cluster.spec("img", image=BROKEN))
    yield cluster.reconciler.run_pass()
    cluster.knative.reconcile(cluster.controller)
    yield cluster.reconciler.run_pass()
    status = yield cluster.state("img")
    assert status.state is State.FAILED
    assert status.ext_data["Ready.status"] == "False"
    assert status.ext_data["Ready.reason"] == "RevisionFailed"
    assert f'Unable to fetch image "{BROKEN}"' in status.ext_data["Ready.message"]
    assert status.message.startswith("Ready is False: RevisionFailed: Revision")

    fixed = cluster.spec("img", image="dev.local/fn:2")
    yield cluster.admin("img", Event.UPDATE, fixed)
    cluster.reconciler.kick("img")
    cluster.clock.advance(0)
    yield wait_for(lambda: cluster.ksvc("img")["metadata"]["generation"] == 2)
    obj = cluster.ksvc("img")
    assert obj["spec"]["template"]["spec"]["containers"][0]["image"] == "dev.local/fn:2"
    assert obj["metadata"]["annotations"][ksvc.DIGEST_ANNOTATION] == fixed.digest()
    yield cluster.reconciler.run_pass()           # Knative has not looked: no verdict yet
    status = yield cluster.state("img")
    assert status.state is State.INITIAL
    cluster.knative.reconcile(cluster.controller)
    yield cluster.reconciler.run_pass()
    status = yield cluster.state("img")
    assert status.state is State.ACTIVE


@pytest_twisted.inlineCallbacks
def test_stop_really_stops_and_start_restores(cluster: Cluster):
    yield cluster.create(cluster.spec("ss", minReplica=2, maxReplica=5))
    yield cluster.reconciler.run_pass()
    cluster.knative.reconcile(cluster.controller)
    yield cluster.reconciler.run_pass()
    yield cluster.admin("ss", Event.STOP)
    yield cluster.reconciler.run_pass()
    obj = cluster.ksvc("ss")
    assert template_annotations(obj)["autoscaling.knative.dev/min-scale"] == "0"
    assert obj["metadata"]["annotations"][ksvc.STOPPED_ANNOTATION] == "true"
    assert obj["metadata"]["generation"] == 2     # a new revision template
    cluster.knative.reconcile(cluster.controller)
    cluster.calls.take()
    yield cluster.reconciler.run_pass()           # stopped as wanted: one LIST, nothing else
    assert cluster.calls.take() == [("GET", "services")]
    assert (yield cluster.state("ss")).state is State.INACTIVE

    yield cluster.admin("ss", Event.START)
    yield cluster.reconciler.run_pass()
    obj = cluster.ksvc("ss")
    assert template_annotations(obj)["autoscaling.knative.dev/min-scale"] == "2"
    assert ksvc.STOPPED_ANNOTATION not in obj["metadata"]["annotations"]
    status = yield cluster.state("ss")
    assert (status.state, status.start_pending) == (State.INACTIVE, True)
    cluster.knative.reconcile(cluster.controller)
    yield cluster.reconciler.run_pass()
    status = yield cluster.state("ss")
    assert (status.state, status.start_pending) == (State.ACTIVE, False)


@pytest_twisted.inlineCallbacks
def test_delete_removes_the_ksvc_and_gone_is_fine(cluster: Cluster):
    yield cluster.create(cluster.spec("del"))
    yield cluster.reconciler.run_pass()
    assert cluster.ksvc("del") is not None
    yield cluster.admin("del", Event.DELETE)      # initial -> destroyed, record removed
    cluster.reconciler.kick("del")
    cluster.clock.advance(0)
    # gone from the apiserver, and the reconciler's delete has returned (until it has,
    # the provider still holds the object it saw, and a delete would not GET first)
    yield wait_for(lambda: cluster.ksvc("del") is None and "del" not in cluster.provider._seen)
    yield cluster.provider.delete("del")          # already gone: success
    assert cluster.metrics.registry.get_sample_value(
        "faastwist_provider_api_calls_total", {"verb": "get", "code": "404"}) == 1

    yield cluster.provider.deploy(cluster.spec("del"))
    yield cluster.provider.observe()
    cluster.knative.delete("del")                 # gone behind our back, since observed
    yield cluster.provider.delete("del")          # DELETE answers 404: success too
    assert cluster.metrics.registry.get_sample_value(
        "faastwist_provider_api_calls_total", {"verb": "delete", "code": "404"}) == 1


@pytest_twisted.inlineCallbacks
def test_delete_never_touches_a_ksvc_that_is_not_ours(cluster: Cluster):
    name = f"{cluster.controller}-mine-or-not"
    yield cluster.provider.deploy(cluster.spec(name))
    yield cluster.provider.observe()
    cluster.knative.delete(name)                  # replaced by someone else's, same name
    cluster.knative.create_raw(ksvc.build_ksvc(cluster.spec(name), "someone-else", "default"))
    try:
        with pytest.raises(ProviderConflict):     # the uid we saw is not there any more
            yield cluster.provider.delete(name)
        assert cluster.ksvc(name) is not None
        yield cluster.provider.delete(name)       # not observed: read first, not ours
        assert cluster.ksvc(name) is not None
        yield cluster.store.create(cluster.spec(name), FunctionStatus.initial(name, 0.0))
        yield cluster.admin(name, Event.DELETE)   # the kicked pass deletes what is ours only
        yield cluster.reconciler.run_pass([name])
        assert cluster.ksvc(name) is not None
        assert cluster.reconciler.last_error is None
    finally:
        cluster.knative.delete(name)


@pytest_twisted.inlineCallbacks
def test_ksvc_deleted_behind_our_back_is_recreated(cluster: Cluster):
    yield cluster.create(cluster.spec("lost"))
    yield cluster.reconciler.run_pass()
    cluster.knative.reconcile(cluster.controller)
    yield cluster.reconciler.run_pass()
    first_uid = cluster.ksvc("lost")["metadata"]["uid"]
    cluster.knative.delete("lost")
    yield cluster.reconciler.run_pass()
    obj = cluster.ksvc("lost")
    assert obj is not None and obj["metadata"]["uid"] != first_uid
    status = yield cluster.state("lost")
    assert status.state is State.ACTIVE
    assert status.message == "recreated: the provider had lost the function"


@pytest_twisted.inlineCallbacks
def test_orphans_with_our_label_are_deleted_others_left_alone(cluster: Cluster):
    orphan = ksvc.build_ksvc(cluster.spec(f"{cluster.controller}-orphan"),
                             cluster.controller, "default")
    foreign = ksvc.build_ksvc(cluster.spec(f"{cluster.controller}-foreign"),
                              "someone-else", "default")
    cluster.knative.create_raw(orphan)
    cluster.knative.create_raw(foreign)
    try:
        yield cluster.reconciler.run_pass()
        assert cluster.ksvc(f"{cluster.controller}-orphan") is None
        assert cluster.ksvc(f"{cluster.controller}-foreign") is not None
    finally:
        cluster.knative.delete(f"{cluster.controller}-foreign")


@pytest_twisted.inlineCallbacks
def test_name_taken_by_a_foreign_ksvc_fails_with_the_reason(cluster: Cluster):
    name = f"{cluster.controller}-taken"
    cluster.knative.create_raw(ksvc.build_ksvc(cluster.spec(name), "someone-else", "default"))
    try:
        yield cluster.create(cluster.spec(name))
        cluster.reconciler.kick(name)             # a kicked pass GETs by name
        cluster.clock.advance(0)
        yield wait_for(lambda: cluster.reconciler.passes >= 1)
        status = yield cluster.state(name)
        assert status.state is State.FAILED
        assert "already exists" in status.message and "someone-else" in status.message
        with pytest.raises(ProviderRejected):
            yield cluster.provider.deploy(cluster.spec(name))
    finally:
        cluster.knative.delete(name)


@pytest_twisted.inlineCallbacks
def test_stale_resource_version_is_a_conflict_retried_next_pass(cluster: Cluster):
    spec = cluster.spec("race")
    yield cluster.provider.deploy(spec)
    yield cluster.provider.observe()              # the provider now holds resourceVersion N
    cluster.knative.touch("race", {"team": "blue"})   # someone else writes: N+1
    with pytest.raises(ProviderConflict):
        yield cluster.provider.stop(spec)
    assert cluster.metrics.registry.get_sample_value(
        "faastwist_provider_api_calls_total", {"verb": "stop", "code": "409"}) == 1
    yield cluster.provider.observe()
    yield cluster.provider.stop(spec)
    obj = cluster.ksvc("race")
    assert ksvc.is_stopped(obj)
    assert obj["metadata"]["labels"]["team"] == "blue"     # the other writer's change kept


@pytest_twisted.inlineCallbacks
def test_lists_come_from_the_watch_cache_but_never_older_than_our_writes(cluster: Cluster):
    spec = cluster.spec("fresh")
    yield cluster.provider.observe()              # nothing seen yet: a quorum read
    yield cluster.provider.deploy(spec)
    written = cluster.ksvc("fresh")["metadata"]["resourceVersion"]
    observed = yield cluster.provider.observe()   # must see the create at once
    assert "fresh" in observed
    first, second = [u for u in cluster.calls.urls if "labelSelector" in u][-2:]
    assert "resourceVersion" not in first
    assert f"resourceVersion={written}&" in second + "&"
    assert "resourceVersionMatch=NotOlderThan" in second


@pytest_twisted.inlineCallbacks
def test_changes_to_other_resources_do_not_stall_the_list(cluster: Cluster):
    from kubernetes import client as kube_client

    cluster.knative.create_raw(ksvc.build_ksvc(cluster.spec("calm"), cluster.controller,
                                               "default"))
    core = kube_client.CoreV1Api(cluster.knative.api.api_client)
    name = f"{cluster.controller}-other"
    # etcd's revision moves on, the ksvc watch cache does not (nothing of it changed):
    # the first LIST (a quorum read) answers with etcd's revision, which the cache never
    # reaches; a LIST "not older than" that one would wait 3 s and fail with 504
    core.create_namespaced_config_map("default", {"metadata": {"name": name}})
    try:
        for _ in range(3):
            observed = yield cluster.provider.observe()
            assert "calm" in observed
        assert cluster.provider.metrics.registry.get_sample_value(
            "faastwist_provider_api_calls_total", {"verb": "list", "code": "200"}) == 3
        assert "resourceVersionMatch=NotOlderThan" in cluster.calls.urls[-1]
    finally:
        core.delete_namespaced_config_map(name, "default")


@pytest_twisted.inlineCallbacks
def test_a_resource_version_from_another_etcd_falls_back_to_a_quorum_read(cluster: Cluster):
    yield cluster.provider.deploy(cluster.spec("moved"))
    current = int(cluster.provider._fresh_as_of or 0)
    assert current > 0
    cluster.provider._fresh_as_of = str(current + 10_000_000)   # as if etcd was replaced
    with pytest.raises(ProviderError, match="504"):
        yield cluster.provider.observe()
    yield cluster.provider.observe()
    assert "resourceVersion" not in cluster.calls.urls[-1]


@pytest_twisted.inlineCallbacks
def test_api_server_stopped_for_two_passes_marks_nothing_failed(envtest: Envtest):
    cluster = make_cluster(envtest, timeout=0.5)
    try:
        yield cluster.create(cluster.spec("up"))
        yield cluster.reconciler.run_pass()
        cluster.knative.reconcile(cluster.controller)
        yield cluster.reconciler.run_pass()
        assert (yield cluster.state("up")).state is State.ACTIVE
        yield cluster.create(cluster.spec("late"))   # written while the API is down

        envtest.pause()
        try:
            for _ in range(2):
                yield cluster.reconciler.run_pass()
                assert "no answer from the Kubernetes API within 0.5s" in (
                    cluster.reconciler.last_error or "")
        finally:
            envtest.resume()
        assert cluster.metrics.registry.get_sample_value(
            "faastwist_reconcile_errors_total", {"kind": "provider"}) == 2
        assert cluster.api_calls("list") >= 4
        assert (yield cluster.state("up")).state is State.ACTIVE
        assert (yield cluster.state("late")).state is State.INITIAL

        for _ in range(40):                       # the apiserver needs a moment after SIGCONT
            yield cluster.reconciler.run_pass()
            if cluster.reconciler.last_error is None:
                break
            yield deferLater(reactor, 0.25, lambda: None)
        assert cluster.reconciler.last_error is None
        assert cluster.ksvc("late") is not None
        cluster.knative.reconcile(cluster.controller)
        yield cluster.reconciler.run_pass()
        assert (yield cluster.state("late")).state is State.ACTIVE
        assert (yield cluster.state("up")).state is State.ACTIVE
    finally:
        cluster.provider.stopService()
        cluster.knative.delete_all(cluster.controller)


@pytest_twisted.inlineCallbacks
def test_two_hundred_functions_one_list_per_pass(cluster: Cluster):
    for i in range(200):
        yield cluster.create(cluster.spec(f"{cluster.controller}-n{i}"))
    cluster.calls.take()
    yield cluster.reconciler.run_pass()
    requests = cluster.calls.take()
    assert requests.count(("GET", "services")) == 1
    assert sum(1 for verb, _ in requests if verb == "POST") == 200
    assert len(requests) == 201
    assert cluster.knative.reconcile(cluster.controller) == 200
    yield cluster.reconciler.run_pass()           # 200 status writes to the store, 1 LIST
    assert cluster.calls.take() == [("GET", "services")]
    listing = yield cluster.store.list()
    assert {r.status.state for r in listing.records.values()} == {State.ACTIVE}
    writes = cluster.store.writes
    yield cluster.reconciler.run_pass()           # steady: one LIST, no write anywhere
    assert cluster.calls.take() == [("GET", "services")]
    assert cluster.store.writes == writes


@pytest_twisted.inlineCallbacks
def test_every_fsm_transition_is_reachable_through_admin_and_knative(cluster: Cluster):
    seen: set[tuple[State, Event]] = set()
    ctl = cluster.controller
    knative = cluster.knative

    @inlineCallbacks
    def admin(name: str, event: Event, spec: FunctionSpec | None = None):
        before, _, _ = yield cluster.admin(name, event, spec)
        seen.add((before, event))
        yield cluster.reconciler.run_pass()

    @inlineCallbacks
    def verdict(name: str, kind: str, expect: State):
        knative.mark(name, kind)
        yield cluster.reconciler.run_pass()
        state = (yield cluster.state(name)).state
        assert state is expect, (name, kind, state)

    a, b, c = f"{ctl}-a", f"{ctl}-b", f"{ctl}-c"
    for name in (a, b, c):
        yield cluster.create(cluster.spec(name))
    yield cluster.reconciler.run_pass()
    yield verdict(a, "unknown", State.INITIAL)        # initial + pending
    yield verdict(a, "failed", State.FAILED)          # initial + error
    yield verdict(a, "failed", State.FAILED)          # failed + error
    yield verdict(a, "unknown", State.FAILED)         # failed + pending
    yield verdict(a, "ready", State.ACTIVE)           # failed + ready -> initial + ready
    yield verdict(a, "ready", State.ACTIVE)           # active + ready
    yield verdict(a, "failed", State.FAILED)          # active + error
    yield admin(a, Event.UPDATE, cluster.spec(a, image="dev.local/fn:2"))   # failed + update
    yield admin(a, Event.UPDATE, cluster.spec(a, image="dev.local/fn:3"))   # initial + update
    assert cluster.ksvc(a)["metadata"]["generation"] == 3
    yield verdict(a, "ready", State.ACTIVE)
    yield verdict(a, "unknown", State.FAILED)         # active + pending
    yield verdict(a, "ready", State.ACTIVE)
    yield admin(a, Event.STOP)                        # active + stop
    yield admin(a, Event.START)                       # inactive + start
    yield verdict(a, "ready", State.ACTIVE)           # inactive + ready
    for kind in ("failed", "unknown"):                # inactive + error, inactive + pending
        yield admin(a, Event.STOP)
        yield admin(a, Event.START)
        yield verdict(a, kind, State.FAILED)
        yield verdict(a, "ready", State.ACTIVE)
    yield admin(a, Event.STOP)
    yield admin(a, Event.UPDATE, cluster.spec(a, image="dev.local/fn:4"))   # inactive + update
    assert not ksvc.is_stopped(cluster.ksvc(a))
    yield admin(a, Event.DELETE)                      # initial + delete
    yield verdict(b, "failed", State.FAILED)
    yield admin(b, Event.DELETE)                      # failed + delete
    yield verdict(c, "ready", State.ACTIVE)
    yield admin(c, Event.STOP)
    yield admin(c, Event.DELETE)                      # inactive + delete
    assert [cluster.ksvc(n) for n in (a, b, c)] == [None, None, None]

    reached = seen | cluster.transitions()
    assert set(TRANSITIONS) - reached == set()


@pytest_twisted.inlineCallbacks
def test_check_and_a_provider_that_is_not_running(envtest: Envtest):
    cluster = make_cluster(envtest)
    yield cluster.provider.check()
    cluster.provider.stopService()
    with pytest.raises(ProviderError, match="not running"):
        yield cluster.provider.observe()


@pytest_twisted.inlineCallbacks
def test_logs_go_to_the_function_pods(cluster: Cluster):
    from kubernetes import client as kube_client

    core = kube_client.CoreV1Api(cluster.knative.api.api_client)
    name = f"{cluster.controller}-logs"
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": f"{name}-00001-deployment-x",
                        "labels": {"serving.knative.dev/service": name}},
           "spec": {"containers": [{"name": "user-container", "image": "dev.local/fn:1"}]}}
    core.create_namespaced_pod("default", pod)
    try:
        cluster.calls.take()
        lines = yield cluster.provider.read_logs(name, tail=10)
        assert lines == []                        # no kubelet here: the pod never runs
        assert cluster.calls.urls[-1].split("?")[0].endswith("/api/v1/namespaces/default/pods")
        assert "labelSelector=serving.knative.dev/service%3D" + name in cluster.calls.urls[-1]
        unsubscribe = cluster.provider.follow_logs(name, lambda line: None)
        unsubscribe()
    finally:
        core.delete_namespaced_pod(pod["metadata"]["name"], "default", grace_period_seconds=0)


# -- no apiserver needed ----------------------------------------------------------------

@pytest_twisted.inlineCallbacks
def test_unreachable_api_is_a_provider_error(tmp_path: Path):
    from tests.support.k8s import free_low_ports

    [port] = free_low_ports(1)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(f"""apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "https://127.0.0.1:{port}",
                                 insecure-skip-tls-verify: true}}}}]
users: [{{name: u, user: {{token: t}}}}]
contexts: [{{name: c, context: {{cluster: c, user: u}}}}]
current-context: c
""")
    metrics = Metrics()
    provider = KnativeProvider(KnativeConfig(kubeconfig=str(kubeconfig), timeout=1.0), "c",
                               reactor, metrics)
    provider.startService()
    try:
        with pytest.raises(ProviderError, match="Kubernetes API unreachable"):
            yield provider.observe()
        with pytest.raises(ProviderError, match="unreachable"):
            yield provider.check()
    finally:
        provider.stopService()
    assert metrics.registry.get_sample_value(
        "faastwist_provider_api_calls_total", {"verb": "list", "code": "error"}) == 1


def test_missing_kubeconfig_is_a_config_error(tmp_path: Path) -> None:
    from faastwist.config import ConfigError

    with pytest.raises(ConfigError, match="knative.kubeconfig: cannot load"):
        KnativeProvider(KnativeConfig(kubeconfig=str(tmp_path / "nope")), "c", reactor)


# -- OpenFaaS deployments and rolling updates ------------------------------------------------

@pytest_twisted.inlineCallbacks
def test_openfaas_fields_reach_the_ksvc_and_a_failed_rollout_keeps_the_old_revision(
        cluster: Cluster):
    from faastwist.admin.rollout import rollout

    spec = cluster.spec("wd", envProcess="cat", env={"write_debug": "true"},
                        labels={"team": "a", "com.openfaas.scale.min": "1"},
                        annotations={"topic": "orders"}, readOnlyRootFilesystem=True)
    yield cluster.create(spec)
    yield cluster.reconciler.run_pass()
    obj = cluster.ksvc("wd")
    assert obj["metadata"]["labels"] == {"team": "a", "com.openfaas.scale.min": "1",
                                         "faastwist.io/controller": cluster.controller}
    assert obj["metadata"]["annotations"]["topic"] == "orders"
    template = obj["spec"]["template"]
    assert template["metadata"]["labels"]["team"] == "a"
    assert template_annotations(obj)["topic"] == "orders"
    [container] = template["spec"]["containers"]
    assert {"name": "fprocess", "value": "cat"} in container["env"]
    assert {"name": "write_debug", "value": "true"} in container["env"]
    assert container["securityContext"] == {"readOnlyRootFilesystem": True}
    cluster.knative.reconcile(cluster.controller)
    yield cluster.reconciler.run_pass()
    assert (yield cluster.state("wd")).state is State.ACTIVE
    # a rollout to an image that cannot run: Knative keeps routing to the old revision
    cluster.knative.broken_images.add(BROKEN)
    record = yield cluster.store.get("wd")
    new = attrs.evolve(spec, image=BROKEN)
    yield rollout(cluster.store, record, new, time.time())
    yield cluster.reconciler.run_pass()
    status = yield cluster.state("wd")
    assert status.state is State.ACTIVE and status.ext_data["rollout"] == "in progress"
    cluster.knative.mark("wd", "unknown")                 # the new revision is starting
    yield cluster.reconciler.run_pass()
    status = yield cluster.state("wd")
    assert status.state is State.ACTIVE and status.ext_data["rollout"] == "in progress"
    assert "the previous version serves meanwhile" in status.message
    cluster.knative.mark("wd", "failed")
    yield cluster.reconciler.run_pass()
    status = yield cluster.state("wd")
    assert status.state is State.ACTIVE and status.ext_data["rollout"] == "failed"
    assert "update failed; the previous version keeps serving" in status.message
    obj = cluster.ksvc("wd")
    assert obj["status"]["latestReadyRevisionName"] != obj["status"]["latestCreatedRevisionName"]
    # the next rollout fixes it
    record = yield cluster.store.get("wd")
    yield rollout(cluster.store, record, attrs.evolve(spec, image="dev.local/fn:2"), time.time())
    yield cluster.reconciler.run_pass()
    cluster.knative.reconcile(cluster.controller)
    yield cluster.reconciler.run_pass()
    status = yield cluster.state("wd")
    assert status.state is State.ACTIVE and "rollout" not in status.ext_data


class _Secrets:
    """The encrypted store's reveal, with values the test chose (the store itself is
    tested against etcd; here the Kubernetes side is what is under test)."""

    def __init__(self, values: dict[str, bytes]) -> None:
        self.values = values

    def reveal(self, names: Any) -> Any:
        from twisted.internet.defer import fail, succeed
        from faastwist.store.secrets import SecretNotFound

        missing = [n for n in names if n not in self.values]
        if missing:
            return fail(SecretNotFound(missing[0]))
        return succeed({n: self.values[n] for n in names})


@pytest_twisted.inlineCallbacks
def test_secrets_become_kubernetes_secrets_mounted_at_the_openfaas_path(
        cluster: Cluster, envtest: Envtest):
    import base64
    from kubernetes import client as kube_client

    cluster.provider.secrets = _Secrets({"db-pass": b"s3cret", "api-key": b"k1"})
    spec = cluster.spec("sec", secrets=["db-pass", "api-key"], envProcess="cat")
    yield cluster.create(spec)
    yield cluster.reconciler.run_pass()
    template = cluster.ksvc("sec")["spec"]["template"]["spec"]
    [container] = template["containers"]
    assert container["volumeMounts"] == [{"name": "openfaas-secrets", "readOnly": True,
                                          "mountPath": "/var/openfaas/secrets"}]
    [volume] = template["volumes"]
    assert [s["secret"]["name"] for s in volume["projected"]["sources"]] == ["db-pass",
                                                                           "api-key"]
    core = kube_client.CoreV1Api(envtest.api_client())
    secret = core.read_namespaced_secret("db-pass", "default")
    assert base64.b64decode(secret.data["db-pass"]) == b"s3cret"
    assert secret.metadata.labels == {"faastwist.io/controller": cluster.controller}
    # a new value reaches Kubernetes at the next rollout
    cluster.provider.secrets.values["db-pass"] = b"rotated"
    record = yield cluster.store.get("sec")
    from faastwist.admin.rollout import rollout
    yield rollout(cluster.store, record, attrs.evolve(spec, labels={"rev": "2"}), time.time())
    yield cluster.reconciler.run_pass()
    secret = core.read_namespaced_secret("db-pass", "default")
    assert base64.b64decode(secret.data["db-pass"]) == b"rotated"
    # a function naming a secret that does not exist fails, saying which
    yield cluster.create(cluster.spec("nosec", secrets=["ghost"]))
    yield cluster.reconciler.run_pass()
    status = yield cluster.state("nosec")
    assert status.state is State.FAILED and "secret ghost not found" in status.message
    for name in ("db-pass", "api-key"):
        core.delete_namespaced_secret(name, "default")
