"""Three real nodes on a three-member etcd cluster (loopback): every gate serves, one
fenced reconciler acts at once, readiness tells the truth."""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.cluster import Cluster, wait_for
from tests.support.node import FaasNodeProcess, http

pytestmark = pytest.mark.cluster

PYTHON = shutil.which("python3", path="/usr/bin:/bin") or sys.executable

VERSIONED = textwrap.dedent('''
    import os
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            if self.path.endswith("/big"):   # more than any socket buffer holds
                self.send_response(200)
                self.send_header("Content-Length", str(1 << 30))
                self.end_headers()
                chunk = b"x" * 65536
                while True:
                    self.wfile.write(chunk)
            body = ("version " + os.environ.get("VERSION", "?")).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_GET

        def log_message(self, *args):
            pass

    ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
''')


def script(cluster: Cluster) -> Path:
    path = cluster.shared_dir / "fn.py"
    if not path.exists():
        path.write_text(VERSIONED)
        path.chmod(0o644)
    return path


def spec(cluster: Cluster, name: str, version: str = "v1", **extra: Any) -> str:
    return yaml.safe_dump({"name": name, "command": [PYTHON, str(script(cluster))],
                           "readinessPath": "/", "minReplica": 1,
                           "env": {"VERSION": version}, **extra})


def call(node: FaasNodeProcess, name: str, timeout: float = 5.0) -> tuple[int, bytes]:
    status, _, body = http("GET", f"{node.gate_url}/function/{name}/", timeout=timeout)
    return status, body


def state(node: FaasNodeProcess, name: str) -> str | None:
    code, body = node.json("GET", f"/{name}")
    return body["status"]["state"] if code == 200 else None


def serves(node: FaasNodeProcess, name: str, version: str = "v1") -> bool:
    try:
        return call(node, name, timeout=2) == (200, f"version {version}".encode())
    except OSError:
        return False


def test_every_gate_serves_a_process_function(cluster: Cluster) -> None:
    first = cluster.nodes[0]
    assert first.json("POST", "", spec(cluster, "hello"))[0] == 201
    wait_for(lambda: state(first, "hello") == "active", 20, what="hello active")
    for node in cluster.nodes:
        assert call(node, "hello") == (200, b"version v1"), node.gate_url
    # the status shows every node's verdict
    ext = first.json("GET", "/hello")[1]["status"]["extData"]
    assert ext["nodes"] == "n0=ready n1=ready n2=ready"
    for node in cluster.nodes:
        ready = json.loads(http("GET", f"{node.admin_root}/readyz")[2])
        assert ready.get("status") == "ok", ready


def test_create_via_a_follower_is_active_on_every_gate_within_1s(cluster: Cluster) -> None:
    follower = cluster.followers()[0]
    # warm up: the interpreter's first start is slow on a loaded machine
    assert follower.json("POST", "", spec(cluster, "warm"))[0] == 201
    wait_for(lambda: all(serves(n, "warm") for n in cluster.nodes), 20, what="warm-up")
    # fork mode: ready as soon as deployed, so this measures the control path (admin
    # write on a follower -> every node's watch -> deploy -> reports -> leader -> FSM)
    quick = yaml.safe_dump({"name": "quick", "mode": "fork", "command": ["/bin/echo", "hi"]})
    started = time.monotonic()
    assert follower.json("POST", "", quick)[0] == 201
    wait_for(lambda: state(follower, "quick") == "active", 5, what="quick active")
    active_after = time.monotonic() - started
    wait_for(lambda: all(call(n, "quick", timeout=2) == (200, b"hi\n") for n in cluster.nodes),
             5, what="served")
    served_after = time.monotonic() - started
    print(f"create via follower: active after {active_after:.3f}s, served on all gates "
          f"after {served_after:.3f}s")
    assert active_after < 1.0
    assert served_after < 2.0


TTL = 3.0  # the fixture's etcd.leaseTTL


def test_leader_kill9_under_load_fails_nothing_and_a_new_leader_acts_within_ttl(
        cluster: Cluster) -> None:
    from tests.support.cluster import Load

    first = cluster.nodes[0]
    assert first.json("POST", "", spec(cluster, "base"))[0] == 201
    wait_for(lambda: all(serves(n, "base") for n in cluster.nodes), 20, what="base served")
    leader = cluster.leader()
    survivors = [n for n in cluster.nodes if n is not leader]
    load = Load([f"{n.gate_url}/function/base/" for n in survivors], threads=4).start()
    time.sleep(0.5)
    killed = time.monotonic()
    cluster.kill9(leader)
    code, body = survivors[0].json("POST", "", spec(cluster, "after"))
    assert code == 201, body
    wait_for(lambda: state(survivors[1], "after") == "active", TTL + 5, what="after active")
    took = time.monotonic() - killed
    new_leader = cluster.leader(among=survivors, timeout=1)
    time.sleep(0.5)
    outcomes = load.stop()
    print(f"leader kill -9: new function active {took:.2f}s after the kill (ttl {TTL}s); "
          f"new leader {cluster.info(new_leader)['node']}; survivor requests {outcomes}")
    assert load.failures == [], load.failures[:5]
    assert outcomes.get(200, 0) > 20
    assert took < TTL + 1
    for node in survivors:
        assert serves(node, "after")


def test_sigstopped_leader_writes_nothing_and_every_gate_serves_the_update(
        cluster: Cluster) -> None:
    import os
    import signal

    first = cluster.nodes[0]
    assert first.json("POST", "", spec(cluster, "code"))[0] == 201
    wait_for(lambda: all(serves(n, "code") for n in cluster.nodes), 20, what="v1 served")
    leader = cluster.leader()
    others = [n for n in cluster.nodes if n is not leader]
    writes = 'faastwist_store_operations_total{op="update"'
    before = cluster.metric(leader, writes)
    os.kill(leader.process.pid, signal.SIGSTOP)
    try:
        cluster.leader(among=others, timeout=TTL + 3)
        # the FSM updates a stopped function (inactive -> initial -> active): stop on one
        # node, update on another
        assert others[0].json("PUT", "/code/stop")[0] == 200
        updated = time.monotonic()
        code, body = others[1].json("PUT", "/code", spec(cluster, "code", version="v2"))
        assert code == 200, body
        took = wait_for(lambda: all(serves(n, "code", "v2") for n in others), 5,
                        what="v2 on the live nodes")
        # a replica start and four etcd round trips (status, reports, status, watch):
        # 1.8-2.5 s at load average 3-4 on 2 cores, on this stop's code and the one
        # before it alike (2 s failed one CI run in three)
        assert took < 3.0, took
        wait_for(lambda: state(others[1], "code") == "active", 5, what="code active again")
    finally:
        os.kill(leader.process.pid, signal.SIGCONT)
    took = wait_for(lambda: serves(leader, "code", "v2"), 5, what="v2 on the ex-leader")
    print(f"SIGSTOP/SIGCONT: update served by the live gates, then by the ex-leader "
          f"{took:.2f}s after SIGCONT ({time.monotonic() - updated:.1f}s after the update)")
    assert took < 2.0
    time.sleep(1.0)
    assert cluster.metric(leader, writes) == before, "the ex-leader wrote to etcd"
    assert cluster.info(leader)["leader"] is False
    assert state(leader, "code") == "active"


def _member_of(node_id: str, count: int = 3) -> int:
    import zlib
    return zlib.crc32(node_id.encode()) % count


def test_killing_the_etcd_member_a_node_uses_fails_no_admin_write(cluster: Cluster) -> None:
    used = _member_of("n0")
    cluster.etcd.members[used].kill()
    results = []
    for i, node in enumerate(cluster.nodes * 2):
        name = f"w{i}"
        results.append(("create", name, node.json("POST", "", yaml.safe_dump(
            {"name": name, "mode": "fork", "command": ["/bin/echo", name]}))[0]))
    for i in range(6):
        wait_for(lambda i=i: state(cluster.nodes[0], f"w{i}") == "active", 10, what=f"w{i} active")
    for i, node in enumerate(cluster.nodes * 2):
        results.append(("stop", f"w{i}", node.json("PUT", f"/w{(i + 1) % 6}/stop")[0]))
    print(f"etcd member {used} killed: admin writes {[r[2] for r in results]}")
    # the creates answer 201, the stops 200: every write succeeded
    assert all(code in (200, 201) for _, _, code in results), results


def timed(method: str, url: str, body: str | None = None,
          headers: dict[str, str] | None = None) -> tuple[float, int, dict, bytes]:
    """``(seconds, status, headers, body)`` of one call (a client's view)."""
    asked = time.monotonic()
    code, answer_headers, answer = http(method, url, body, headers, timeout=15)
    return (time.monotonic() - asked, code, {k.lower(): v for k, v in answer_headers.items()},
            answer)


def survivor_has_no_leader(url: str) -> bool:
    """etcd's own word, asked without a node: the member knows it has lost its leader."""
    code, _, body = http("POST", url + "/v3/kv/range", '{"key": "YQ=="}',
                         {"Content-Type": "application/json",
                          "Grpc-Metadata-hasleader": "true"}, auth=False)
    return code != 200 and "no leader" in body.decode("utf-8", "replace")


#: the control plane's promise without an etcd quorum (README, Health and operations)
WITHOUT_QUORUM = 2.0


def test_quorum_loss_gates_serve_reads_are_stale_and_readyz_names_etcd(
        cluster: Cluster) -> None:
    """Figures for the README (printed): every answer of the control plane without a
    quorum, per node, in seconds; each within 2 s."""
    first = cluster.nodes[0]
    assert first.json("POST", "", spec(cluster, "q"))[0] == 201
    wait_for(lambda: all(serves(n, "q") for n in cluster.nodes), 20, what="q served")
    wait_for(lambda: state(first, "q") == "active", 5)
    for member in cluster.etcd.members[1:]:
        member.kill()
    lost = time.monotonic()
    for node in cluster.nodes:
        assert call(node, "q") == (200, b"version v1")
    # right after the loss (the survivor may still think it has a leader, and holds
    # what it accepted): a write and readyz answer within the bound all the same
    figures: dict[str, list[float]] = {}
    took, code, _, body = timed("POST", first.admin_url, spec(cluster, "at-once"),
                                {"Content-Type": "application/yaml"})
    figures["admin create, at once"] = [took]
    assert code == 503 and took < WITHOUT_QUORUM, (took, code, body)
    for node in cluster.nodes:
        took, code, _, body = timed("GET", f"{node.admin_root}/readyz")
        figures.setdefault("readyz, at once", []).append(took)
        assert took < WITHOUT_QUORUM, (took, code, body)

    def not_ready_naming_etcd(node: FaasNodeProcess) -> bool:
        took, code, _, body = timed("GET", f"{node.admin_root}/readyz")
        assert took < WITHOUT_QUORUM, (took, body)
        return code == 503 and "etcd" in json.loads(body)["message"]
    took = wait_for(lambda: all(not_ready_naming_etcd(n) for n in cluster.nodes), 15,
                    what="readyz 503 naming etcd")
    print(f"quorum lost: every /readyz 503 naming etcd after {took:.2f}s")
    survivor = cluster.etcd.members[0].client_url
    wait_for(lambda: survivor_has_no_leader(survivor), 15, what="the survivor without leader")
    # nobody leads once the leader's keep-alive has failed (at most ttl/3 later)
    wait_for(lambda: all(cluster.info(n)["leaderNode"] is None for n in cluster.nodes),
             TTL + 1, what="info: no leader")
    json_accept = {"Accept": "application/json"}
    for index, node in enumerate(cluster.nodes):
        info = cluster.info(node)
        assert info["leader"] is False and "etcd did not answer" in info["leaderError"]

        def check(what: str, want: int, method: str, url: str, body: str | None = None,
                  content_type: str = "application/json") -> tuple[dict, bytes]:
            took, code, headers, answer = timed(method, url, body,
                                                {**json_accept, "Content-Type": content_type})
            figures.setdefault(what, []).append(took)
            assert code == want, (what, code, answer)
            assert took < WITHOUT_QUORUM, (what, took)
            return headers, answer

        check("readyz", 503, "GET", f"{node.admin_root}/readyz")
        headers, body = check("admin get (stale)", 200, "GET", f"{node.admin_url}/q")
        document = json.loads(body)
        assert headers.get("x-faas-stale") == "true"
        assert document["stale"] is True and document["status"]["state"] == "active"
        headers, body = check("admin list (stale)", 200, "GET", node.admin_url)
        assert headers.get("x-faas-stale") == "true"
        assert [f["spec"]["name"] for f in json.loads(body)] == ["q"]
        headers, body = check("GET /system/functions (stale)", 200, "GET",
                              f"{node.admin_root}/system/functions")
        assert headers.get("x-faas-stale") == "true"
        assert [(f["name"], f["stale"]) for f in json.loads(body)] == [("q", True)]
        headers, body = check("GET /system/function/q (stale)", 200, "GET",
                              f"{node.admin_root}/system/function/q")
        assert headers.get("x-faas-stale") == "true" and json.loads(body)["stale"] is True
        check("info", 200, "GET", f"{node.admin_root}/apis/v2/faas/info")
        _, body = check("admin create", 503, "POST", node.admin_url,
                        spec(cluster, f"new{index}"), "application/yaml")
        assert "etcd" in json.loads(body)["message"]
        check("admin stop", 503, "PUT", f"{node.admin_url}/q/stop")
        check("OpenFaaS scale", 503, "POST", f"{node.admin_root}/system/scale-function/q",
              json.dumps({"serviceName": "q", "replicas": 2}))
    print("without quorum, seconds per answer (max over 3 nodes): " + "; ".join(
        f"{what} {max(values):.3f}" for what, values in figures.items()))
    for node in cluster.nodes:
        assert call(node, "q") == (200, b"version v1")
    # quorum back: a leader within ttl + 1 s, every node ready again
    for member in cluster.etcd.members[1:]:
        cluster.etcd.restart(member)
    restarted = time.monotonic()
    cluster.etcd.wait_healthy(30)
    # the bound is ours from the moment etcd serves again (etcd's own recovery, 1-6 s
    # here depending on load, is etcd's, not the nodes')
    back = time.monotonic()
    print(f"etcd healthy {back - restarted:.2f}s after its members restarted")
    leader = cluster.leader(timeout=TTL + 5)
    took = time.monotonic() - back
    print(f"quorum back after {back - lost:.1f}s: leader {cluster.info(leader)['node']} "
          f"{took:.2f}s after etcd was healthy")
    assert took < TTL + 1
    wait_for(lambda: all(http("GET", f"{n.admin_root}/readyz")[0] == 200 for n in cluster.nodes),
             10, what="ready again")
    assert first.json("PUT", "/q/stop")[0] == 200


def test_restarted_node_is_ready_only_when_it_serves(cluster: Cluster) -> None:
    first = cluster.nodes[0]
    assert first.json("POST", "", spec(cluster, "r"))[0] == 201
    wait_for(lambda: all(serves(n, "r") for n in cluster.nodes), 20, what="r served")
    wait_for(lambda: state(first, "r") == "active", 5)
    leader = cluster.leader()
    cluster.kill9(leader)   # the hardest case: its leader key outlives it by the ttl
    import threading

    started = time.monotonic()
    starting = threading.Thread(target=leader.start, daemon=True)
    starting.start()
    seen_not_ready = False
    while True:   # from the very start: refused, then 503, then 200
        try:
            code, _, body = http("GET", f"{leader.admin_root}/readyz", timeout=10)
        except OSError:
            code, body = 0, b"not listening"
        if code == 200:
            break
        seen_not_ready = seen_not_ready or code == 503
        assert time.monotonic() - started < 40, body
        time.sleep(0.02)
    ready_after = time.monotonic() - started
    assert call(leader, "r", timeout=2) == (200, b"version v1")
    starting.join(30)
    print(f"restart: readyz 200 {ready_after:.2f}s after start (503 before: "
          f"{seen_not_ready}), first request served at once")
    info = cluster.info(leader)
    assert info["leaderNode"]["id"] in {"n0", "n1", "n2"}
    assert sorted(n["id"] for n in info["nodes"]) == ["n0", "n1", "n2"]


@pytest.mark.parametrize("mode", ["http", "fork"])
def test_stop_under_load_answers_only_200_and_503(cluster: Cluster, mode: str) -> None:
    from tests.support.cluster import Load

    first = cluster.nodes[0]
    if mode == "http":
        body = spec(cluster, "s")
    else:   # each request a process that takes a while: some are in flight at the stop
        body = yaml.safe_dump({"name": "s", "mode": "fork",
                               "command": ["/bin/sh", "-c", "sleep 0.3; echo done"]})
    assert first.json("POST", "", body)[0] == 201
    wait_for(lambda: all(call(n, "s", timeout=5)[0] == 200 for n in cluster.nodes), 20,
             what="s served")
    load = Load([f"{n.gate_url}/function/s/" for n in cluster.nodes], threads=16).start()
    time.sleep(1.0)
    assert cluster.nodes[1].json("PUT", "/s/stop")[0] == 200
    time.sleep(1.5)
    outcomes = load.stop()
    print(f"stop under c16 load ({mode} mode): {outcomes}")
    assert set(outcomes) <= {200, 503}, outcomes
    assert outcomes.get(200, 0) > 0 and outcomes.get(503, 0) > 0


def test_a_replica_killed_under_back_pressure_ends_the_request_within_1s(
        cluster: Cluster) -> None:
    import os
    import signal
    import socket

    from tests.support.cluster import descendants

    node = cluster.nodes[0]
    assert node.json("POST", "", spec(cluster, "big"))[0] == 201
    wait_for(lambda: serves(node, "big"), 20, what="big served")
    exits = 'faastwist_gate_upstream_errors_total{function_name="big",kind="exit"}'
    client = socket.create_connection(("127.0.0.1", node.gate_port), timeout=5)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    client.sendall(b"GET /function/big/big HTTP/1.1\r\nHost: x\r\n\r\n")
    assert client.recv(4096).startswith(b"HTTP/1.1 200")
    time.sleep(1.0)   # we read no more: the gate pauses the replica's connection
    script_path = str(script(cluster))
    replicas = []
    for pid in descendants(node.process.pid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                if script_path.encode() in cmdline.read():
                    replicas.append(pid)
        except OSError:
            pass
    assert replicas
    killed = time.monotonic()
    for pid in replicas:
        os.kill(pid, signal.SIGKILL)
    took = wait_for(lambda: cluster.metric(node, exits) >= 1, 5, what="the exit noticed")
    # the client's connection is cut: reading ends (EOF or reset), never hangs
    client.settimeout(2)
    ended = False
    try:
        while client.recv(1 << 20):
            pass
        ended = True
    except ConnectionResetError:
        ended = True
    client.close()
    print(f"replica kill -9 under back-pressure: noticed after {took:.3f}s, client cut "
          f"{time.monotonic() - killed:.3f}s after the kill")
    assert ended and took < 1.0
