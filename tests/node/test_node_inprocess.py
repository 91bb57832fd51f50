"""Whole nodes built in the test's process (tests/support/inprocess.py): the node's
behaviour over HTTP without a ``twistd`` per test; what needs a real process (signals,
twistd, the sandbox, gate workers) stays in tests/e2e."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytest_twisted
import yaml
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.web.resource import Resource
from twisted.web.server import Site

from faastwist.model.fsm import Event
from faastwist.testing.knative import FakeKnative
from faastwist.util.ports import free_port
from tests.support.inprocess import InProcessNode, wait_for

ROOT = Path(__file__).resolve().parents[2]


class Hello(Resource):
    """The fake backend's one upstream: answers with the Host the gate sent."""

    isLeaf = True

    def render(self, request):
        return b"hello from " + request.getHeader(b"host")


@pytest.fixture(params=["memory", pytest.param("etcd", marks=pytest.mark.etcd)])
def make_node(request: pytest.FixtureRequest, tmp_path: Path):
    """``await make_node(**extra)``: a started node on a FakeProvider whose upstream is
    ``Hello``, on a MemoryStore (no etcd, no process) or on the test etcd."""
    made: list[InProcessNode] = []
    upstream = reactor.listenTCP(0, Site(Hello()), interface="127.0.0.1")

    async def make(**kwargs) -> InProcessNode:
        if request.param == "memory":
            node = InProcessNode(tmp_path / f"node{len(made)}", store="memory",
                                 provider="fake", **kwargs)
        else:
            server = request.getfixturevalue("etcd_server")
            node = InProcessNode(tmp_path / f"node{len(made)}", provider="fake",
                                 etcd_endpoints=[server.client_url], **kwargs)
        node.fake.upstream = ("127.0.0.1", upstream.getHost().port)
        made.append(node)
        await node.start()
        return node

    make.kind = request.param
    yield make
    for node in made:
        pytest_twisted.blockon(Deferred.fromCoroutine(node.stop()))
        assert node.fatal == []
    pytest_twisted.blockon(upstream.stopListening())


async def invoke(node: InProcessNode, name: str, body: bytes = b"{}") -> tuple[int, bytes]:
    status, _, answer = await node.request("POST", f"{node.gate_url}/x", body,
                                           {"X-FaaS-Func-Name": name})
    return status, answer


async def _is(node: InProcessNode, name: str, state: str) -> bool:
    return await node.state_of(name) == state


@pytest_twisted.ensureDeferred
async def test_create_active_invoke_stop_503_delete(make_node) -> None:
    """The FakeProvider's verdicts reach the API through the reconciler; the gate routes
    to the provider's upstream once the API says active, and refuses at once after the
    stop's 200; a deleted function is gone from the API, the gate and the backend."""
    node = await make_node()
    fake = node.fake
    body = (ROOT / "conf" / "function.yaml").read_text()
    status, created = await node.json("POST", "", body)
    assert status == 201, created
    await wait_for(lambda: "demo10" in fake.running, what="the deploy")
    assert await node.state_of("demo10") == "initial"
    status, answer = await invoke(node, "demo10")
    assert status == 503 and b"not active" in answer, answer
    fake.report("demo10", Event.READY)
    await wait_for(lambda: _is(node, "demo10", "active"), what="active")
    # the gate routed through the provider's lease (its upstream, its Host)
    assert await invoke(node, "demo10") == (200, b"hello from demo10.fake")
    assert ("deploy", "demo10") in fake.calls
    status, stopped = await node.json("PUT", "/demo10/stop")
    assert status == 200 and stopped["status"]["state"] == "inactive", stopped
    status, answer = await invoke(node, "demo10")      # no wait: the 200 implies it
    assert status == 503 and b"not active" in answer, answer
    await wait_for(lambda: fake.running["demo10"].stopped, what="the backend stopped")
    assert (await node.json("DELETE", "/demo10"))[0] == 200
    assert (await node.json("GET", "/demo10"))[0] == 404
    assert (await invoke(node, "demo10"))[0] == 404
    await wait_for(lambda: "demo10" not in fake.running, what="the backend's delete")


@pytest_twisted.ensureDeferred
async def test_info_names_this_node_as_the_leader_and_the_only_node(make_node) -> None:
    node = await make_node()
    node_id = node.config.node_id
    # etcd's election and session watch are asynchronous; memory's hold at start
    await wait_for(lambda: node.node.leader.is_leader(), what="leading")
    await wait_for(lambda: node.node.session.live() == [node_id], what="this node live")
    status, _, data = await node.request("GET", f"{node.admin_root}/apis/v2/faas/info",
                                         headers={"Accept": "application/json"})
    assert status == 200, data
    info = json.loads(data)
    assert info["leaderNode"]["id"] == node_id, info
    assert [n["id"] for n in info["nodes"]] == [node_id], info


@pytest_twisted.ensureDeferred
async def test_openfaas_deploy_scale_invoke_and_delete(make_node) -> None:
    node = await make_node()
    fake = node.fake
    fake.ready_at_once = True
    system = f"{node.admin_root}/system"
    deployment = json.dumps({"service": "of1", "image": "registry.local/of1:1",
                             "labels": {"com.openfaas.scale.min": "1"}})
    status, _, data = await node.request("POST", f"{system}/functions", deployment)
    assert status == 202, data
    await wait_for(lambda: _is(node, "of1", "active"), what="of1 active")
    assert await invoke(node, "of1") == (200, b"hello from of1.fake")
    status, _, data = await node.request("GET", f"{node.gate_url}/function/of1")
    assert (status, data) == (200, b"hello from of1.fake")

    async def described() -> dict:
        status, _, data = await node.request("GET", f"{system}/function/of1")
        assert status == 200, data
        return json.loads(data)
    assert (await described())["image"] == "registry.local/of1:1"
    for replicas in (3, 2):
        scale = json.dumps({"serviceName": "of1", "replicas": replicas})
        status, _, data = await node.request("POST", f"{system}/scale-function/of1", scale)
        assert status == 202, data
        assert (await described())["replicas"] == replicas
    assert ("update", "of1") in fake.calls
    status, _, data = await node.request("GET", f"{system}/functions")
    assert status == 200 and [f["name"] for f in json.loads(data)] == ["of1"], data
    status, _, data = await node.request("DELETE", f"{system}/functions",
                                         json.dumps({"functionName": "of1"}))
    assert status == 202, data
    status, _, _ = await node.request("GET", f"{system}/function/of1")
    assert status == 404
    await wait_for(lambda: "of1" not in fake.running, what="the backend's delete")


@pytest_twisted.ensureDeferred
async def test_secrets_through_system_secrets(make_node) -> None:
    """Written, listed by name only, refused when they exist or are missing, checked at
    deploy, kept while a function names them."""
    node = await make_node()
    secrets = f"{node.admin_root}/system/secrets"

    async def call(method: str, body: dict | None = None, url: str = secrets
                   ) -> tuple[int, object]:
        status, _, data = await node.request(method, url,
                                             json.dumps(body) if body is not None else None)
        return status, (json.loads(data) if data.strip() else None)
    assert (await call("POST", {"name": "db", "value": "hunter2"}))[0] == 202
    status, listed = await call("GET")
    assert status == 200 and listed == [{"name": "db", "namespace": node.node.namespace}]
    status, refused = await call("POST", {"name": "db", "value": "again"})
    assert status == 409 and "already exists" in refused["message"], refused
    status, refused = await call("PUT", {"name": "nope", "value": "x"})
    assert status == 404 and "secret nope not found" in refused["message"], refused
    assert (await call("PUT", {"name": "db", "value": "s3cret"}))[0] == 202
    assert await node.node.secrets.reveal(["db"]) == {"db": b"s3cret"}
    functions = f"{node.admin_root}/system/functions"
    status, refused = await call("POST", {"service": "withsecret", "image": "r/x:1",
                                          "secrets": ["db", "nope"]}, functions)
    assert status == 400 and "secrets[1]: secret nope not found" in refused["message"]
    assert (await call("POST", {"service": "withsecret", "image": "r/x:1",
                                "secrets": ["db"]}, functions))[0] == 202
    status, refused = await call("DELETE", {"name": "db"})
    assert status == 409 and "withsecret" in refused["message"], refused
    assert (await call("DELETE", {"functionName": "withsecret"}, functions))[0] == 202
    assert (await call("DELETE", {"name": "db"}))[0] == 202
    assert await call("GET") == (200, [])
    if make_node.kind == "memory":   # sealed on the store: ciphertext only
        assert node.store.secrets == {}


@pytest_twisted.ensureDeferred
async def test_the_gate_never_contradicts_the_api(make_node) -> None:
    """Read-your-writes: the moment the API says active the gate serves, and the moment
    a stop answers 200 the gate refuses (no poll of the gate in between)."""
    node = await make_node()
    fake = node.fake
    fake.ready_at_once = True
    body = (ROOT / "conf" / "function.yaml").read_text()
    assert (await node.json("POST", "", body))[0] == 201
    for round in range(10):
        await wait_for(lambda: _is(node, "demo10", "active"), what=f"active, round {round}")
        assert await invoke(node, "demo10") == (200, b"hello from demo10.fake"), round
        assert (await node.json("PUT", "/demo10/stop"))[0] == 200
        assert (await invoke(node, "demo10"))[0] == 503, round
        assert (await node.json("PUT", "/demo10/start"))[0] == 200


@pytest.mark.envtest
@pytest.mark.etcd
@pytest_twisted.ensureDeferred
async def test_the_seed_tour_against_a_real_kube_apiserver(tmp_path: Path, envtest,
                                                           etcd_server) -> None:
    """The Easegress tour with provider knative, over HTTP: the ksvc is really created
    (and validated by the CRD schema); demo10 stays initial until the tests' fake
    Knative controller reports it ready, then it is active within two sync intervals.
    (Moved from tests/e2e/test_node_e2e.py: nothing in it needs a node process.)"""
    from kubernetes import client as kube_client

    namespace = "inproc-tour"
    core = kube_client.CoreV1Api(envtest.api_client())
    try:
        core.create_namespace({"metadata": {"name": namespace}})
    except kube_client.ApiException as exc:
        assert exc.status == 409
    custom = kube_client.CustomObjectsApi(envtest.api_client())

    def read_ksvc() -> dict | None:
        try:
            return custom.get_namespaced_custom_object(
                "serving.knative.dev", "v1", namespace, "services", "demo10")
        except kube_client.ApiException as exc:
            assert exc.status == 404
            return None

    def ksvc():   # the client blocks: off the reactor the node runs on
        return deferToThread(read_ksvc)

    async def min_scale(value: str) -> bool:
        found = await ksvc() or {}
        return found.get("spec", {}).get("template", {}).get("metadata", {}).get(
            "annotations", {}).get("autoscaling.knative.dev/min-scale") == value

    node = InProcessNode(tmp_path, etcd_endpoints=[etcd_server.client_url],
                         provider="knative", controller="tour", extra={
                             "knative": {"kubeconfig": envtest.kubeconfig,
                                         "namespace": namespace,
                                         "networkLayerURL": f"http://127.0.0.1:{free_port()}"}})
    await node.start()
    try:
        body = (ROOT / "conf" / "function.yaml").read_bytes()
        yaml_type = {"Content-Type": "text/vnd.yaml"}
        status, headers, _ = await node.request("POST", node.admin_url, body, yaml_type)
        assert status == 201
        assert headers["Location"] == "/apis/v2/faas/tour/demo10"
        status, _, text = await node.request("GET", f"{node.admin_url}/demo10")
        assert status == 200 and yaml.safe_load(text)["status"]["state"] == "initial"
        status, _, text = await node.request("POST", node.admin_url, body, yaml_type)
        assert status == 409 and yaml.safe_load(text) == {
            "code": 409, "message": "function demo10 already exists"}
        status, _, text = await node.request("PUT", f"{node.admin_url}/demo10/stop")
        assert status == 409 and yaml.safe_load(text) == {
            "code": 409, "message": "invalid event: stop, current state: initial"}
        created = await wait_for(ksvc, what="the Knative Service")
        annotations = created["spec"]["template"]["metadata"]["annotations"]
        assert annotations["autoscaling.knative.dev/metric"] == "rps"
        assert annotations["autoscaling.knative.dev/target"] == "111"
        assert created["metadata"]["labels"] == {"faastwist.io/controller": "tour"}

        # Knative (the tests' fake controller) says ready: active within two sync
        # intervals (the node runs with syncInterval 1s)
        knative = FakeKnative(envtest.api_client(), namespace=namespace)
        await deferToThread(knative.mark, "demo10", "ready")
        marked = node.reactor.seconds()
        await wait_for(lambda: _is(node, "demo10", "active"), timeout=10, what="active")
        assert node.reactor.seconds() - marked < 2.0
        status, _, _ = await node.request("POST", f"{node.gate_url}/tomcat/job/api", b"{}",
                                          {"X-FaaS-Func-Name": "demo10"})
        assert status == 502  # routed to networkLayerURL, where nothing listens in this test
        assert (await node.json("PUT", "/demo10/stop"))[0] == 200
        await wait_for(lambda: min_scale("0"), what="min-scale 0")
        assert (await node.json("PUT", "/demo10/start"))[0] == 200
        await wait_for(lambda: min_scale("1"), what="min-scale restored")
        await deferToThread(knative.mark, "demo10", "ready")
        await wait_for(lambda: _is(node, "demo10", "active"), timeout=10, what="restarted")
        assert (await node.json("DELETE", "/demo10"))[1] == {
            "code": 409, "message": "invalid event: delete, current state: active"}
        assert (await node.json("PUT", "/demo10/stop"))[0] == 200
        status, _, _ = await node.request("DELETE", f"{node.admin_url}/demo10")
        assert status == 200
        assert (await node.request("GET", f"{node.admin_url}/demo10"))[0] == 404
        await wait_for(lambda: ksvc().addCallback(lambda found: found is None),
                       what="the Knative Service to go")
        assert node.fatal == []
    finally:
        await node.stop()


@pytest_twisted.ensureDeferred
async def test_a_memory_node_refuses_gate_workers_naming_the_key(tmp_path: Path) -> None:
    """Gate workers are processes that watch etcd: nothing for them to reach here."""
    from faastwist.node import StartupError

    node = InProcessNode(tmp_path, store="memory", provider="fake",
                         extra={"httpServer": {"workers": 2}})
    with pytest.raises(StartupError) as refused:
        await node.start()
    assert str(refused.value) == ("httpServer.workers: 2 gate workers need etcd (they "
                                  "watch it); this node's store is in its own memory")
    assert node.fatal and "httpServer.workers" in node.fatal[0]
    await node.node.stopService()   # what start-up had started
    assert not node.node.running


def test_a_store_of_ones_own_comes_with_its_parts() -> None:
    from faastwist.node import NodeParts
    from faastwist.store.memory import MemoryStore

    with pytest.raises(ValueError, match="comes with the leader, session and secrets"):
        NodeParts(store=MemoryStore())
    assert NodeParts.in_memory().store is not None
