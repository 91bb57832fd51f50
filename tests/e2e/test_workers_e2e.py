"""End to end: ``httpServer.workers: 2`` on a real ``twistd -n faasgate`` with the process
provider: two worker processes share the gate port, the main process keeps the
leases and the one metrics view, a killed worker is replaced, SIGTERM drains every
worker, and no worker outlives the node.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from tests.support.statehub import StateHub
from tests.support.node import FaasNodeProcess, http
from tests.support.procs import alive, established_on, worker_pids

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.process]

ROOT = Path(__file__).resolve().parents[2]
PYTHON = shutil.which("python3", path="/usr/bin:/bin") or sys.executable


def wait_for(predicate, timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def start_node(tmp_path: Path, **http_server: Any) -> FaasNodeProcess:
    node = FaasNodeProcess(tmp_path / "node", provider="process", extra={
        "httpServer": {"workers": 2, "shutdownTimeout": "20s", **http_server}}).start()
    try:
        wait_for(lambda: http("GET", f"{node.admin_root}/readyz")[0] == 200, what="readyz")
        wait_for(lambda: len(worker_pids(node.process.pid)) == 2, what="two workers")
    except BaseException:
        node.stop()
        raise
    return node


@pytest.fixture
def state_root(tmp_path: Path) -> Iterator[Path]:
    """Where the function's reports land (it writes no host file: it reports to the
    state hub, which writes here; ``state_root.hub`` is its URL)."""
    root = tmp_path / "state"
    root.mkdir()
    hub = StateHub(root)
    HUBS[root] = hub.url
    yield root
    hub.close()


HUBS: dict[Path, str] = {}


def deploy(node: FaasNodeProcess, state_root: Path, name: str, **extra: Any) -> Path:
    """The tests' asyncfn as a process function (from zero unless told otherwise)."""
    state = state_root / name
    state.mkdir(exist_ok=True)
    script = node.workdir / "fn" / "asyncfn.py"
    if not script.exists():
        script.parent.mkdir(exist_ok=True)
        shutil.copy(ROOT / "tests" / "support" / "asyncfn.py", script)
        script.chmod(0o644)
    spec = yaml.safe_dump({"name": name, "command": [PYTHON, str(script)],
                           "env": {"STATE_URL": f"{HUBS[state_root]}/OP/{name}"},
                           "readinessPath": "/healthz",
                           **extra})
    assert node.json("POST", "", spec)[0] == 201
    wait_for(lambda: node.json("GET", f"/{name}")[1]["status"]["state"] == "active",
             what=f"{name} active")
    return state


def metric(node: FaasNodeProcess, pattern: str) -> float:
    status, _, body = http("GET", f"{node.admin_root}/metrics")
    assert status == 200
    found = re.search(rf"^{pattern} ([0-9.e+]+)$", body.decode(), re.M)
    return float(found.group(1)) if found else 0.0


INVOKED = r'gateway_function_invocation_total\{code="200",function_name="fn"\}'
STARTED = r'gateway_function_invocation_started_total\{function_name="fn"\}'


def call(node: FaasNodeProcess, path: str = "/function/fn/ok", body: bytes = b"x",
         timeout: float = 30.0) -> tuple[int, dict, bytes]:
    return http("POST", f"{node.gate_url}{path}", body, timeout=timeout)


def test_two_workers_serve_one_port_with_one_view(tmp_path: Path, state_root: Path) -> None:
    node = start_node(tmp_path)
    stopped = False
    try:
        workers = worker_pids(node.process.pid)
        assert node.process.pid not in workers
        ready = http("GET", f"{node.admin_root}/readyz")[2]
        assert json.loads(ready)["checks"]["gate workers"] == "ok"
        state = deploy(node, state_root, "fn")  # minReplica 0: the first call starts a replica
        status, _, body = call(node, body=b"cold")
        assert (status, body) == (200, b"echo:cold")

        # both workers accept: 40 connections held open, then counted per process
        held = [socket.create_connection(("127.0.0.1", node.gate_port), timeout=10)
                for _ in range(40)]
        try:
            per_worker = wait_for(
                lambda: (lambda counts: counts if sum(counts) == 40 else None)(
                    [established_on(pid, node.gate_port) for pid in workers]),
                what="40 connections accepted")
        finally:
            for sock in held:
                sock.close()
        assert all(n > 0 for n in per_worker), per_worker

        # a known number of calls, over fresh connections (spread across the workers):
        # the admin port's /metrics counts each exactly once
        for i in range(60):
            status, _, body = call(node, body=b"%d" % i)
            assert (status, body) == (200, b"echo:%d" % i)
        wait_for(lambda: metric(node, INVOKED) == 61, what="61 invocations counted")
        time.sleep(2.5)  # two more reports from each worker: nothing counted twice
        assert metric(node, INVOKED) == 61 and metric(node, STARTED) == 61

        # OpenFaaS's API and /healthz through the gate port (relayed to admin)
        assert http("GET", f"{node.gate_url}/healthz")[0] == 200
        # an asynchronous call: accepted by a worker, stored and run by the main process
        status, headers, _ = call(node, "/async-function/fn/ok", b"later")
        assert status == 202
        call_id = {k.lower(): v for k, v in headers.items()}["x-call-id"]
        wait_for(lambda: call_id in (state / "calls.log").read_text(), what="queued call run")

        # kill -9 one worker: it is replaced, the node keeps serving, counts stay
        victim = workers[0]
        os.kill(victim, signal.SIGKILL)
        replaced = wait_for(lambda: (lambda pids: pids if len(pids) == 2 and victim not in pids
                                     else None)(worker_pids(node.process.pid)),
                            what="a new worker")
        wait_for(lambda: http("GET", f"{node.admin_root}/readyz")[0] == 200, what="ready")
        for _ in range(20):
            assert call(node, body=b"again")[0] == 200
        wait_for(lambda: metric(node, INVOKED) == 82, what="82 invocations counted")
        assert "exited unexpectedly (signal 9)" in node.log_path.read_text()

        # SIGTERM with a slow call in flight: it completes, then every worker is gone
        result: dict[str, Any] = {}

        def slow() -> None:
            result["answer"] = call(node, "/function/fn/slow?ms=3000", b"slow")

        caller = threading.Thread(target=slow)
        caller.start()
        wait_for(lambda: metric(node, r'gateway_function_inflight_requests\{function_name="fn"\}')
                 == 1, what="the slow call in flight")
        started = time.monotonic()
        code = node.stop()
        stopped = True
        caller.join(30)
        assert result["answer"][0] == 200 and result["answer"][2] == b"echo:slow"
        assert time.monotonic() - started < 20
        assert code in (0, -signal.SIGTERM), node.log()
        assert not any(alive(pid) for pid in replaced)
    finally:
        if not stopped:
            node.stop()


def test_no_worker_outlives_a_killed_node(tmp_path: Path) -> None:
    node = start_node(tmp_path)
    try:
        workers = worker_pids(node.process.pid)
        os.kill(node.process.pid, signal.SIGKILL)
        wait_for(lambda: not any(alive(pid) for pid in workers), timeout=30,
                 what="the workers to exit after the node was killed")
    finally:
        node.stop()


def test_a_port_already_served_stops_the_start_naming_the_key(tmp_path: Path) -> None:
    """Even a listener in a reuseport group (a node left running, say) is refused: the
    workers would silently share its traffic otherwise."""
    node = FaasNodeProcess(tmp_path / "node", provider="process",
                           extra={"httpServer": {"workers": 2}})
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", node.gate_port))
        taken.listen()
        try:
            try:
                node.start()  # the admin port may answer before the gate fails
            except RuntimeError:
                pass
            code = node.process.wait(60)
            log = node.log_path.read_text()
        finally:
            node.stop()
    assert code == 1
    assert f"httpServer.port: cannot listen on 127.0.0.1:{node.gate_port}" in log


def test_sighup_reloads_the_certificate_in_every_worker(tmp_path: Path) -> None:
    import ssl

    from tests.support.tls import common_name, self_signed

    cert, key = self_signed(tmp_path / "certs", "first")
    node = start_node(tmp_path, https=True, certFile=cert, keyFile=key)
    context = ssl._create_unverified_context()

    def names(count: int = 24) -> set[str]:
        """The certificates new connections get (spread across the workers)."""
        seen = set()
        for _ in range(count):
            with socket.create_connection(("127.0.0.1", node.gate_port), timeout=10) as raw:
                with context.wrap_socket(raw) as tls:
                    seen.add(common_name(tls.getpeercert(binary_form=True)))
        return seen

    try:
        assert names() == {"first"}
        new_cert, new_key = self_signed(tmp_path / "new", "second")
        shutil.copy(new_cert, cert)
        shutil.copy(new_key, key)
        node.process.send_signal(signal.SIGHUP)
        wait_for(lambda: node.log_path.read_text().count("the gate certificate was reloaded")
                 == 2, what="both workers reloaded")
        assert names() == {"second"}
        assert http("GET", f"{node.gate_url}/", headers={"X-FaaS-Func-Name": "x"})[0] == 404
    finally:
        node.stop()


@pytest.mark.envtest
def test_knative_functions_through_two_workers(tmp_path: Path, envtest) -> None:
    """With Knative each worker derives kourier's address and Host itself: a real
    kube-apiserver holds the ksvc, a local HTTP server stands in for kourier and answers
    with the Host it was sent."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from faastwist.testing.knative import FakeKnative

    class Kourier(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            answer = f"{self.headers['Host']} {self.path} ".encode() + body
            self.send_response(200)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:
            pass

    kourier = ThreadingHTTPServer(("127.0.0.1", 0), Kourier)
    serving = threading.Thread(target=kourier.serve_forever, daemon=True)
    serving.start()
    namespace = "e2e-workers"
    from kubernetes import client as kube_client

    try:
        kube_client.CoreV1Api(envtest.api_client()).create_namespace(
            {"metadata": {"name": namespace}})
    except kube_client.ApiException as exc:
        assert exc.status == 409
    node = FaasNodeProcess(tmp_path / "node", provider="knative", controller="wk", extra={
        "httpServer": {"workers": 2},
        "knative": {"kubeconfig": envtest.kubeconfig, "namespace": namespace,
                    "networkLayerURL": f"http://127.0.0.1:{kourier.server_address[1]}"}})
    node.start()
    try:
        wait_for(lambda: http("GET", f"{node.admin_root}/readyz")[0] == 200, what="readyz")
        assert len(worker_pids(node.process.pid)) == 2
        spec = yaml.safe_dump({"name": "kfn", "image": "example/kfn"})
        assert node.json("POST", "", spec)[0] == 201
        knative = FakeKnative(envtest.api_client(), namespace=namespace)
        wait_for(lambda: knative.get("kfn") is not None, what="the Knative Service")
        knative.mark("kfn", "ready")
        wait_for(lambda: node.json("GET", "/kfn")[1]["status"]["state"] == "active",
                 what="kfn active")
        for i in range(30):
            status, _, body = call(node, f"/function/kfn/p{i}", b"%d" % i)
            assert (status, body) == (200, f"kfn.{namespace}.example.com /p{i} {i}".encode())
        wait_for(lambda: metric(node, r'gateway_function_invocation_total\{code="200",'
                                      r'function_name="kfn"\}') == 30, what="30 counted")
    finally:
        code = node.stop()
        kourier.shutdown()
        kourier.server_close()
    assert code in (0, -signal.SIGTERM), node.log()
