"""A real node (twistd, process provider) with ``kubernetes.functions: watch`` against
the real kube-apiserver: an applied object serves through the gate, ``kubectl get fn``'s
columns fill in, the REST API refuses writes to it, deleting the object removes it;
``faastwist export --crd`` prints what the apiserver takes back unchanged."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest
import yaml
from kubernetes import client as kube_client
from kubernetes.client.rest import ApiException

from faastwist.store.owned import MANAGED_BY
from tests.kube.envtest_world import install_shipped_manifests
from tests.support.cli import echo_app, run_cli
from tests.support.docs import code_block_after
from tests.support.node import ROOT, FaasNodeProcess, http
from tests.support.process import PYTHON as FUNCTION_PYTHON

pytestmark = [pytest.mark.envtest, pytest.mark.e2e, pytest.mark.process, pytest.mark.slow]


KUBECTL_BLOCK = ("kubernetes", "Functions as Kubernetes objects")


def readme_manifest() -> dict:
    """The Function object of docs/kubernetes.rst's ``kubectl apply -f -`` example."""
    block = code_block_after(*KUBECTL_BLOCK)
    start = block.index("kubectl apply -f - <<'EOF'\n") + len("kubectl apply -f - <<'EOF'\n")
    return yaml.safe_load(block[start:block.index("\nEOF\n", start)])


def wait_until(check, timeout: float = 30.0, what: str = ""):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_kubectl_apply_serves_through_the_gate_and_delete_removes_it(envtest, tmp_path):
    install_shipped_manifests(envtest)
    api_client = envtest.api_client()
    core = kube_client.CoreV1Api(api_client)
    objects = kube_client.CustomObjectsApi(api_client)
    namespace = "fn-e2e"
    core.create_namespace({"metadata": {"name": namespace}})
    # the documented command is relative to the node's folder, as with `make run`
    shutil.copytree(ROOT / "conf" / "functions", tmp_path / "node" / "conf" / "functions")
    node = FaasNodeProcess(tmp_path / "node", provider="process", controller="kubectl",
                           extra={"kubernetes": {"functions": "watch", "namespace": namespace,
                                                 "kubeconfig": envtest.kubeconfig}})
    node.start()
    try:
        manifest = readme_manifest()
        assert manifest["metadata"]["name"] == "echo"
        manifest["metadata"]["namespace"] = namespace
        # the function's user must be able to run the interpreter (tests/support/process)
        assert manifest["spec"]["command"][0] == "python3"
        manifest["spec"]["command"][0] = FUNCTION_PYTHON
        objects.create_namespaced_custom_object("faastwist.io", "v1", namespace,
                                                "functions", manifest)

        def served():
            status, _, body = http("POST", f"{node.gate_url}/", b"hello",
                                   {"X-FaaS-Func-Name": "echo"}, timeout=5)
            return status == 200 and body
        assert b"hello" in wait_until(served, 60, "the gate to serve echo")

        def status():
            obj = objects.get_namespaced_custom_object("faastwist.io", "v1", namespace,
                                                       "functions", "echo")
            return obj.get("status") or {}
        wait_until(lambda: status().get("state") == "active" and
                   status().get("replicas") == "1/1", 30, "status active 1/1")
        assert status()["observedGeneration"] == 1

        code, answer = node.json("GET", "/echo")
        assert code == 200
        assert answer["spec"]["annotations"][MANAGED_BY] == f"Function {namespace}/echo"
        code, answer = node.json("PUT", "/echo/stop")
        assert code == 409 and f"managed by Function {namespace}/echo" in answer["message"]

        objects.delete_namespaced_custom_object("faastwist.io", "v1", namespace,
                                                "functions", "echo")

        def object_gone():
            try:
                objects.get_namespaced_custom_object("faastwist.io", "v1", namespace,
                                                     "functions", "echo")
            except ApiException as exc:
                return exc.status == 404
            return False
        wait_until(object_gone, 30, "the object to go")
        assert node.json("GET", "/echo")[0] == 404   # removed before the object went
        wait_until(lambda: http("POST", f"{node.gate_url}/", b"x",
                                {"X-FaaS-Func-Name": "echo"}, timeout=5)[0] == 404,
                   10, "the gate to forget echo")

        # an API-made function exported as an object: the apiserver takes it unchanged
        code, _ = node.json("POST", "", yaml.safe_dump(
            {"name": "apimade", "command": [FUNCTION_PYTHON, str(echo_app())],
             "env": {"GREETING": "hi"}, "timeout": "5s"}))
        assert code == 201
        done = run_cli(node, "export", "--crd", "apimade", "-n", namespace)
        assert done.returncode == 0, done.stderr
        (exported,) = list(yaml.safe_load_all(done.stdout))
        assert exported["apiVersion"] == "faastwist.io/v1" and exported["kind"] == "Function"
        assert exported["metadata"] == {"name": "apimade", "namespace": namespace}
        kept = objects.create_namespaced_custom_object(
            "faastwist.io", "v1", namespace, "functions", exported, dry_run="All")
        assert kept["spec"] == exported["spec"]
        assert run_cli(node, "export", "--crd", "nosuch").returncode == 1
    finally:
        node.stop()


@pytest.mark.kubectl
def test_the_documented_kubectl_commands_verbatim(envtest, tmp_path):
    """docs/kubernetes.rst's commands with the real kubectl: apply the shipped manifests and the
    Function, ``kubectl get fn`` shows it active 1/1 while the gate serves it, ``kubectl
    delete fn echo`` removes it (the finalizer holds the object until it is gone)."""
    kubectl = [shutil.which("kubectl"), "--kubeconfig", envtest.kubeconfig,
               "--request-timeout", "20s"]
    namespace = "fn-kubectl"

    def run(*args: str, stdin: str | None = None) -> str:
        done = subprocess.run([*kubectl, *args], input=stdin, capture_output=True, text=True,
                              timeout=60, cwd=ROOT)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done.stdout
    commands = [line.split("  #")[0].rstrip() for line in
                code_block_after("kubernetes", "Functions as Kubernetes objects").splitlines()
                if line.startswith("kubectl ")]
    assert commands == [
        "kubectl apply -f deploy/kubernetes/crd.yaml -f deploy/kubernetes/rbac.yaml",
        "kubectl apply -f - <<'EOF'", "kubectl get fn", "kubectl delete fn echo"]
    run("apply", "-f", "deploy/kubernetes/crd.yaml", "-f", "deploy/kubernetes/rbac.yaml")
    run("create", "namespace", namespace)
    shutil.copytree(ROOT / "conf" / "functions", tmp_path / "node" / "conf" / "functions")
    node = FaasNodeProcess(tmp_path / "node", provider="process", controller="kubectl2",
                           extra={"kubernetes": {"functions": "watch", "namespace": namespace,
                                                 "kubeconfig": envtest.kubeconfig}})
    node.start()
    try:
        manifest = readme_manifest()
        manifest["spec"]["command"][0] = FUNCTION_PYTHON   # one the function's uid may run
        assert manifest["metadata"].pop("namespace") == "default"   # the test's own instead
        run("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(manifest))

        def listed() -> list[str]:
            rows = run("get", "fn", "-n", namespace).splitlines()
            return rows[1].split() if len(rows) == 2 else []
        header = run("get", "fn", "-n", namespace).splitlines()[0].split()
        assert header == ["NAME", "STATE", "REPLICAS", "AGE"]
        row = wait_until(lambda: (lambda r: r if r[1:3] == ["active", "1/1"] else None)(
            listed() or ["", "", ""]), 60, "kubectl get fn: echo active 1/1")
        assert row[0] == "echo"
        status, _, body = http("POST", f"{node.gate_url}/", b"hello",
                               {"X-FaaS-Func-Name": "echo"}, timeout=5)
        assert status == 200 and b"hello" in body
        run("delete", "fn", "echo", "-n", namespace, "--timeout", "30s")
        assert node.json("GET", "/echo")[0] == 404
        assert run("get", "fn", "-n", namespace, "--ignore-not-found").strip() == ""
    finally:
        node.stop()
