"""Observability end to end, against real ``twistd -n faasgate`` processes.

- /metrics after real invocations through the gate, parsed with prometheus_client's
  parser: counts, codes, histogram buckets and bytes match what was sent; every
  documented metric family is in the scrape.
- ``--log-format json``: every line the node writes is one JSON object; the access
  log has one line per gate request with its fields, and ``httpServer.accessLog:
  false`` switches it off.
- /readyz turns 503 naming the store when etcd stops, 200 when it is back.
- A fake NOTIFY_SOCKET (a unix datagram socket bound here) gets READY=1 only once
  the gate and admin ports accept connections, WATCHDOG=1 at WATCHDOG_USEC/2, and
  STOPPING=1 on SIGTERM; child processes do not inherit NOTIFY_SOCKET.

The node runs the faastwist tree this test process imports (PYTHONPATH = its parent).
Tests skip, with the reason, only while a module the node needs is not in the tree.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

import faastwist
from tests.support.cli import echo_spec
from tests.support.etcd import EtcdProcess
from tests.support.node import FaasNodeProcess, http

pytestmark = pytest.mark.slow

NODE_ROOT = Path(faastwist.__file__).resolve().parent.parent
ACCEPT_JSON = {"Accept": "application/json"}

#: every metric family the README documents (name as prometheus_client's parser reports it)
DOCUMENTED = {
    "gateway_function_invocation": "counter",
    "gateway_functions_seconds": "histogram",
    "gateway_function_invocation_started": "counter",
    "gateway_function_inflight_requests": "gauge",
    "gateway_service_count": "gauge",
    "faastwist_gate_upstream_errors": "counter",
    "faastwist_gate_request_bytes": "counter",
    "faastwist_gate_response_bytes": "counter",
    "faastwist_function_state": "gauge",
    "faastwist_fsm_transitions": "counter",
    "faastwist_reconcile_pass_seconds": "histogram",
    "faastwist_reconcile_errors": "counter",
    "faastwist_reconcile_retried": "counter",
    "faastwist_provider_api_calls": "counter",
    "faastwist_store_operations": "counter",
    "faastwist_store_watch_reconnects": "counter",
    "faastwist_etcd_member_misses": "counter",
    "faastwist_leader": "gauge",
}


class ObsNode(FaasNodeProcess):
    """FaasNodeProcess on NODE_ROOT; ``spawn`` alone skips the wait (the notify test
    watches the start-up itself)."""

    def spawn(self) -> None:
        env = dict(os.environ, **self.env)
        env["PYTHONPATH"] = str(NODE_ROOT)
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(self.command(), cwd=self.workdir, stdout=out,
                                            stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)


def node(workdir: Path, *args: str, **kwargs: Any) -> ObsNode:
    return ObsNode(workdir, args=list(args), **kwargs)


def wait_for(check: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except OSError:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        time.sleep(0.1)


def create_active(n: FaasNodeProcess, spec: Path, name: str) -> None:
    status, body = n.json("POST", "", spec.read_text())
    assert status == 201, body

    def active() -> bool:
        code, record = n.json("GET", f"/{name}")
        return code == 200 and record["status"]["state"] == "active"

    wait_for(active, 40, f"{name} to become active")


def log_lines(n: FaasNodeProcess) -> list[dict]:
    text = n.log_path.read_text(errors="replace")
    lines = []
    for line in text.splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not a JSON log line: {line!r}") from None
    return lines


def scrape(n: FaasNodeProcess) -> tuple[dict[str, Any], dict[tuple, float]]:
    status, headers, body = http("GET", f"{n.admin_root}/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    families: dict[str, Any] = {}
    samples: dict[tuple, float] = {}
    for family in text_string_to_metric_families(body.decode()):
        families.setdefault(family.name, family)
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return families, samples


@pytest.fixture(scope="module")
def json_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObsNode]:
    n = node(tmp_path_factory.mktemp("obs-node"), "--log-format", "json")
    n.start()
    try:
        yield n
    finally:
        n.stop()


def call_id(headers: dict[str, str]) -> str | None:
    return next((v for k, v in headers.items() if k.lower() == "x-call-id"), None)


@pytest.fixture(scope="module")
def traffic(json_node: FaasNodeProcess, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Real invocations through the gate; what was sent and received, per request."""
    spec = echo_spec(tmp_path_factory.mktemp("obs-spec"), "obs")
    create_active(json_node, spec, "obs")
    sent = []
    for index, size in enumerate((0, 10, 100, 1000, 5000)):
        body = b"x" * size
        path = f"/function/obs/item/{index}"
        status, headers, answer = http("POST", json_node.gate_url + path, body)
        sent.append({"path": path, "status": status, "in": size,
                     "out": len(answer), "call_id": call_id(headers), "method": "POST"})
    for _ in range(2):
        status, headers, answer = http("GET", json_node.gate_url + "/status/418",
                                       headers={"X-FaaS-Func-Name": "obs"})
        sent.append({"path": "/status/418", "status": status, "in": 0, "out": len(answer),
                     "call_id": call_id(headers), "method": "GET"})
    assert [r["status"] for r in sent] == [200] * 5 + [418] * 2
    return sent


def test_metrics_after_real_invocations(json_node, traffic) -> None:
    families, samples = scrape(json_node)
    fn = (("function_name", "obs"),)

    def value(name: str, *labels: tuple[str, str]) -> float:
        return samples[(name, tuple(sorted(fn + labels)))]

    assert value("gateway_function_invocation_total", ("code", "200")) == 5
    assert value("gateway_function_invocation_total", ("code", "418")) == 2
    assert value("gateway_function_invocation_started_total") == 7
    assert samples[("gateway_function_invocation_started", fn)] == 7     # OpenFaaS's bare name
    assert value("gateway_function_inflight_requests") == 0
    assert value("faastwist_gate_request_bytes_total") == sum(r["in"] for r in traffic)
    assert value("faastwist_gate_response_bytes_total") == sum(r["out"] for r in traffic)
    assert value("gateway_service_count") >= 1

    histogram = families["gateway_functions_seconds"]
    assert histogram.type == "histogram"
    for code, count in (("200", 5), ("418", 2)):
        buckets = [(float(s.labels["le"]), s.value) for s in histogram.samples
                   if s.name.endswith("_bucket") and s.labels["function_name"] == "obs"
                   and s.labels["code"] == code]
        buckets.sort()
        assert buckets[-1] == (float("inf"), count)
        assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:]))   # cumulative
        assert value("gateway_functions_seconds_count", ("code", code)) == count
        assert 0 < value("gateway_functions_seconds_sum", ("code", code)) < 30

    assert value("faastwist_function_state", ("state", "active")) == 1
    for other in ("initial", "inactive", "failed"):
        assert value("faastwist_function_state", ("state", other)) == 0
    assert samples[("faastwist_fsm_transitions_total",
                    (("event", "ready"), ("from", "initial"), ("to", "active")))] >= 1
    assert samples[("faastwist_reconcile_pass_seconds_count", ())] >= 1
    assert samples[("faastwist_leader", ())] == 1
    assert samples[("faastwist_store_operations_total", (("op", "create"), ("result", "ok")))] >= 1
    assert sum(v for (name, _), v in samples.items()
               if name == "faastwist_store_operations_total") > 3

    for name, kind in DOCUMENTED.items():
        assert name in families, f"{name} missing from the scrape"
        assert families[name].type == kind or (name, families[name].type) == (
            "gateway_function_invocation_started", "unknown"), name


def test_json_log_lines_and_access_log(json_node, traffic) -> None:
    def access_lines() -> list[dict]:
        lines = [line for line in log_lines(json_node) if line["namespace"] == "faastwist.access"
                 and line.get("function") == "obs"]
        return lines if len(lines) >= len(traffic) else []

    access = wait_for(access_lines, 10, "the access log lines")
    lines = log_lines(json_node)
    for line in lines:
        assert {"time", "level", "namespace", "message"} <= set(line), line
    ready = [line for line in lines if line["namespace"] == "faastwist.node"
             and " ready: " in line["message"]]
    assert ready and ready[0]["controller"] == "faascontroller"
    assert ready[0]["provider"] == "process"

    assert len(access) == len(traffic)
    for line, request in zip(access, traffic):
        assert line["method"] == request["method"]
        assert line["path"] == request["path"]
        assert line["status"] == request["status"]
        assert line["bytes"] == request["out"]
        assert line["call_id"] == request["call_id"] and line["call_id"]
        assert 0 < line["duration"] < 30
        assert line["message"].startswith(f"{request['method']} {request['path']} obs "
                                          f"{request['status']} ")


def test_info_healthz_readyz(json_node) -> None:
    status, _, body = http("GET", f"{json_node.admin_root}/apis/v2/faas/info", headers=ACCEPT_JSON)
    info = json.loads(body)
    assert status == 200
    assert info["version"] == faastwist.__version__
    assert info["provider"] == "process" and info["controller"] == "faascontroller"
    assert info["leader"] is True and info["uptimeSeconds"] > 0
    status, _, body = http("GET", f"{json_node.admin_root}/apis/v1/faas/info")
    assert status == 200 and yaml.safe_load(body)["name"] == "faastwist"
    status, _, body = http("GET", f"{json_node.admin_root}/healthz")
    assert status == 200 and json.loads(body) == {"status": "ok"}
    status, _, body = http("GET", f"{json_node.admin_root}/readyz")
    assert status == 200, body
    ready = json.loads(body)
    assert ready["status"] == "ok" and set(ready["checks"]) >= {"etcd", "provider"}


def test_access_log_switched_off(tmp_path) -> None:
    n = node(tmp_path / "node", "--log-format", "json",
             extra={"httpServer": {"accessLog": False}})
    n.start()
    try:
        spec = echo_spec(tmp_path, "quiet")
        create_active(n, spec, "quiet")
        for _ in range(3):
            assert http("GET", n.gate_url + "/function/quiet/x")[0] == 200
        assert http("GET", n.gate_url + "/function/nosuch/x")[0] == 404
        time.sleep(0.3)
        lines = log_lines(n)
        assert not [line for line in lines if line["namespace"] == "faastwist.access"]
        assert any("quiet" in line["message"] for line in lines)  # the node did log
    finally:
        n.stop()


def test_access_log_lines_are_all_written_at_sigterm(tmp_path) -> None:
    """The access log is written in batches (every 0.5 s): a SIGTERM right after the
    requests still leaves one line per request, in twistd's text format."""
    n = node(tmp_path / "node")          # --log-format text (the default)
    n.start()
    try:
        spec = echo_spec(tmp_path, "burst")
        create_active(n, spec, "burst")
        for i in range(40):
            assert http("GET", n.gate_url + f"/function/burst/r{i}")[0] == 200
    finally:
        code = n.stop()                  # SIGTERM at once, within the flush interval
    assert code in (0, -signal.SIGTERM), n.log()   # twistd ends with the signal it got
    text = n.log_path.read_text(errors="replace")
    lines = [line for line in text.splitlines() if "[faastwist.access#info]" in line]
    paths = [line.split("] ", 1)[1].split()[1] for line in lines]
    assert paths == [f"/function/burst/r{i}" for i in range(40)], text[-3000:]
    assert all(" burst 200 " in line for line in lines)


@pytest.mark.etcd
def test_readyz_follows_etcd(tmp_path) -> None:
    etcd = EtcdProcess(str(tmp_path / "etcd"))
    etcd.start()
    n = node(tmp_path / "node", etcd_endpoints=[etcd.client_url])
    try:
        n.start()

        def readyz() -> tuple[int, dict]:
            status, _, body = http("GET", f"{n.admin_root}/readyz", timeout=10)
            return status, json.loads(body)

        wait_for(lambda: readyz()[0] == 200, 20, "readyz 200")
        etcd.stop()
        status, body = wait_for(lambda: (lambda r: r if r[0] == 503 else None)(readyz()),
                                30, "readyz 503 once etcd is down")
        assert body["code"] == 503
        assert "etcd" in body["message"] and body["checks"]["etcd"] != "ok"
        assert body["checks"]["provider"] == "ok"
        # liveness is not readiness: the process is still alive
        assert http("GET", f"{n.admin_root}/healthz")[0] == 200

        etcd.start()
        status, body = wait_for(lambda: (lambda r: r if r[0] == 200 else None)(readyz()),
                                40, "readyz 200 once etcd is back")
        assert body["status"] == "ok" and all(v == "ok" for v in body["checks"].values())
    finally:
        n.stop()
        etcd.stop()


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                         text=True).stdout
    return [int(p) for p in out.split()]


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def test_systemd_notify_lifecycle(tmp_path) -> None:
    path = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(path)
    listener.settimeout(0.2)
    n = node(tmp_path / "node", env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"})
    n.spawn()
    events: list[tuple[float, str, bool, bool]] = []   # (time, message, gate up, admin up)

    def receive(until: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not until():
            assert time.monotonic() < deadline, f"notify messages so far: {events}\n{n.log()}"
            assert n.process.poll() is None or until(), n.log()
            try:
                message = listener.recv(4096).decode()
            except socket.timeout:
                continue
            # look at the listeners the moment the message arrives
            events.append((time.monotonic(), message, _accepts(n.gate_port),
                           _accepts(n.admin_port)))

    try:
        receive(lambda: any(m.startswith("READY=1") for _, m, _, _ in events), 60)
        ready_at, ready, gate_up, admin_up = next(e for e in events if e[1].startswith("READY=1"))
        assert gate_up and admin_up, "READY=1 before the listeners were up"
        assert "STATUS=" in ready
        assert http("GET", n.admin_url, headers=ACCEPT_JSON)[0] == 200
        # the watchdog pings at WATCHDOG_USEC / 2 = 0.5 s
        receive(lambda: sum(1 for t, m, _, _ in events
                            if m == "WATCHDOG=1" and t > ready_at) >= 5, 8)
        pings = [t for t, m, _, _ in events if m == "WATCHDOG=1" and t > ready_at]
        gaps = [b - a for a, b in zip(pings, pings[1:])]
        # every ping comes before systemd's 1 s watchdog would fire; one gap alone may be
        # short on a loaded machine (LoopingCall keeps its schedule: a late tick is
        # followed by an early one)
        assert all(gap < 1.0 for gap in gaps), gaps
        # the typical gap is the interval (a ping at READY may come right before a tick)
        assert 0.3 < sorted(gaps)[len(gaps) // 2] < 0.8, gaps
        # children (the embedded etcd) do not get the unit's notify socket
        kids = _children(n.process.pid)
        assert kids
        for kid in kids:
            environ = Path(f"/proc/{kid}/environ").read_bytes().split(b"\0")
            assert not any(v.startswith(b"NOTIFY_SOCKET=") for v in environ)

        before = len(events)
        n.process.send_signal(signal.SIGTERM)
        receive(lambda: any(m.startswith("STOPPING=1") for _, m, _, _ in events[before:]), 20)
        # twistd ends by re-raising SIGTERM after a clean shutdown; systemd counts that as success
        assert n.process.wait(30) in (0, -signal.SIGTERM)
        assert not any(m.startswith("READY=1") for _, m, _, _ in events[before:])
    finally:
        n.stop()
        listener.close()
