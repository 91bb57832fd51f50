"""Whole nodes built in the test's process (tests/support/inprocess.py): the node's
behaviour over HTTP without a ``twistd`` per test; what needs a real process (signals,
twistd, the sandbox, gate workers) stays in tests/e2e."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted
import yaml
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.web.resource import Resource
from twisted.web.server import Site

from faastwist.model.fsm import Event
from faastwist.node import NodeParts
from faastwist.providers.registry import ProviderParts
from faastwist.testing.knative import FakeKnative
from faastwist.testing.provider import FakeProvider
from faastwist.util.ports import free_port
from tests.support.inprocess import InProcessNode, wait_for

pytestmark = [pytest.mark.etcd]

ROOT = Path(__file__).resolve().parents[2]


@pytest_twisted.ensureDeferred
async def test_a_node_on_a_fake_provider_follows_the_backend(tmp_path: Path,
                                                             etcd_server) -> None:
    """The FakeProvider's verdicts reach the API through the reconciler, and the gate
    routes to the provider's upstream once the API says active."""
    class Hello(Resource):
        isLeaf = True

        def render(self, request):
            return b"hello from " + request.getHeader(b"host")

    upstream = reactor.listenTCP(0, Site(Hello()), interface="127.0.0.1")
    fake = FakeProvider()
    fake.upstream = ("127.0.0.1", upstream.getHost().port)
    node = InProcessNode(tmp_path, etcd_endpoints=[etcd_server.client_url], provider="knative",
                         parts=NodeParts(provider=ProviderParts(fake)))
    await node.start()
    try:
        body = (ROOT / "conf" / "function.yaml").read_text()
        status, created = await node.json("POST", "", body)
        assert status == 201, created
        await wait_for(lambda: "demo10" in fake.running, what="the deploy")
        assert await node.state_of("demo10") == "initial"
        status, _, answer = await node.request("POST", f"{node.gate_url}/x", b"{}",
                                               {"X-FaaS-Func-Name": "demo10"})
        assert status == 503 and b"not active" in answer, answer
        fake.report("demo10", Event.READY)
        await wait_for(lambda: _is(node, "demo10", "active"), what="active")
        # the gate routed through the provider's lease (its upstream, its Host)
        status, _, answer = await node.request("POST", f"{node.gate_url}/x", b"{}",
                                               {"X-FaaS-Func-Name": "demo10"})
        assert (status, answer) == (200, b"hello from demo10.fake"), answer
        assert ("deploy", "demo10") in fake.calls
        assert node.fatal == []
    finally:
        await node.stop()
        await upstream.stopListening()


async def _is(node: InProcessNode, name: str, state: str) -> bool:
    return await node.state_of(name) == state


@pytest.mark.envtest
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
