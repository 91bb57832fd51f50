"""Three real nodes on a three-member etcd, all with ``kubernetes.functions: watch``
against the real kube-apiserver: only the leader applies objects, and after its
``kill -9`` the new leader takes over without writing anything twice."""

from __future__ import annotations


import pytest
from kubernetes import client as kube_client
from kubernetes.client.rest import ApiException

from faastwist.kube.schema import FINALIZER
from tests.kube.envtest_world import install_shipped_manifests
from tests.support.cluster import Cluster, wait_for
from tests.support.etcd import require_etcd
from tests.support.node import http

pytestmark = [pytest.mark.envtest, pytest.mark.cluster, pytest.mark.slow]

NAMESPACE = "fn-cluster"
#: the classic watchdog runs ``cat`` per request: no files for the function user to read
CAT = {"envProcess": "cat", "minReplica": 1, "maxReplica": 1}


def spec_revision(cluster: Cluster, name: str) -> int:
    """The etcd mod revision of the function's spec key (0: absent)."""
    record = cluster.etcd.range_one(f"/faas/faascontroller/spec/{name}")
    return int(record["mod_revision"]) if record is not None else 0


def echoes(cluster: Cluster, name: str) -> bool:
    for node in cluster.nodes:
        if node.process is None:
            continue
        try:
            status, _, body = http("POST", f"{node.gate_url}/function/{name}/", b"ping",
                                   timeout=3)
        except OSError:
            return False
        if (status, body) != (200, b"ping"):
            return False
    return True


def test_only_the_leader_applies_and_a_new_one_does_no_duplicate_work(envtest, tmp_path):
    require_etcd()
    install_shipped_manifests(envtest)
    api_client = envtest.api_client()
    kube_client.CoreV1Api(api_client).create_namespace({"metadata": {"name": NAMESPACE}})
    objects = kube_client.CustomObjectsApi(api_client)

    def apply(name: str) -> None:
        objects.create_namespaced_custom_object(
            "faastwist.io", "v1", NAMESPACE, "functions",
            {"apiVersion": "faastwist.io/v1", "kind": "Function",
             "metadata": {"name": name}, "spec": CAT})

    def get(name: str) -> dict | None:
        try:
            return objects.get_namespaced_custom_object("faastwist.io", "v1", NAMESPACE,
                                                        "functions", name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    cluster = Cluster(tmp_path, extra={"kubernetes": {
        "functions": "watch", "namespace": NAMESPACE, "kubeconfig": envtest.kubeconfig}})
    try:
        cluster.start()
        leader = cluster.leader()
        apply("alpha")
        wait_for(lambda: ((get("alpha") or {}).get("status") or {}).get("state") == "active",
                 40, what="alpha active")
        wait_for(lambda: echoes(cluster, "alpha"), 20, what="every gate serves alpha")
        alpha = get("alpha")
        assert alpha["metadata"]["finalizers"] == [FINALIZER]
        revision = spec_revision(cluster, "alpha")
        assert revision > 0
        # only the leader wrote: the followers' logs name no applied object
        for node in cluster.nodes:
            applied = "created function alpha" in node.log()
            assert applied == (node is leader), node.workdir

        cluster.kill9(leader)
        new = cluster.leader(exclude=leader.workdir.name, timeout=20)
        assert new is not leader
        apply("beta")   # the new leader applies what comes after
        wait_for(lambda: ((get("beta") or {}).get("status") or {}).get("state") == "active",
                 40, what="beta active under the new leader")
        assert "created function beta" in new.log()
        # alpha: not created again, not rolled, one finalizer, same generation observed
        assert spec_revision(cluster, "alpha") == revision
        assert "created function alpha" not in new.log()
        assert "rolling out" not in new.log()
        alpha_now = get("alpha")
        assert alpha_now["metadata"]["finalizers"] == [FINALIZER]
        assert alpha_now["status"]["observedGeneration"] == 1

        # deletion goes through the new leader's finalizer
        objects.delete_namespaced_custom_object("faastwist.io", "v1", NAMESPACE,
                                                "functions", "alpha")
        wait_for(lambda: get("alpha") is None, 30, what="alpha's object gone")
        assert spec_revision(cluster, "alpha") == 0
    finally:
        cluster.stop()
        for name in ("alpha", "beta"):   # nothing left to hold the namespace's objects
            obj = get(name)
            if obj is not None:
                objects.patch_namespaced_custom_object(
                    "faastwist.io", "v1", NAMESPACE, "functions", name,
                    {"metadata": {"finalizers": None}})
