"""Asynchronous invocations: how fast queued calls run, and how fast calls are queued.

    PYTHONPATH=. .venv/bin/python bench/async.py [--calls 240] [--concurrency 8]
        [--sleep-ms 300] [--enqueue [--duration 10] [--connections 16]]

Throughput (always): real ``twistd -n faasgate`` nodes (process provider, each its own
embedded etcd; one node with its embedded nats-server, then three nodes sharing one
nats-server) run a function that sleeps ``--sleep-ms`` per call with
``asyncConcurrency: --concurrency``. ``--calls`` calls are queued at once (spread over the
nodes' gates) and the time until every one has completed (the nodes'
``faastwist_async_completed_total``) gives calls/s, printed against the bound
``asyncConcurrency x 1/latency`` (asyncConcurrency is cluster-wide: the same bound for one
node and for three).

Enqueue (``--enqueue``, needs wrk): one node with ``conf/functions/echo.py`` as function
``echo`` (one replica kept, ``asyncConcurrency: 32``), then, in one run:

1. sync: wrk at c16 POSTing through the gate (X-FaaS-Func-Name), requests/s, p50/p99;
2. enqueue: the same with ``X-FaaS-Async: true`` (each 202 is answered only after
   JetStream acknowledged the message), requests/s, p50/p99;
3. end to end: the function is stopped during (2), so its calls stay queued and (2)
   measures accepting alone; then it is started and the workers drain the queue:
   completed calls per second from the node's ``faastwist_async_completed_total``.

``--enqueue --no-throughput`` runs the enqueue part alone; ``BENCH_ASYNC_PROFILE=FILE``
runs the node's reactor thread under cProfile (twistd ``--profile``, stats to FILE).

The node (and with it etcd, nats-server and the function) is stopped by pid at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from faastwist.util.ports import free_port  # noqa: E402

TWISTD = Path(sys.executable).parent / "twistd"
FUNCTION_PYTHON = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable


#: admin tokens by admin port (read from the file a node writes on its first start)
TOKENS: dict[int, str] = {}


def http(method: str, url: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    sent = dict(headers or {})
    port = urllib.request.urlparse(url).port
    if port in TOKENS:
        sent["Authorization"] = f"Bearer {TOKENS[port]}"
    request = urllib.request.Request(url, body, sent, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def start_node(workdir: Path, nats_url: str = "") -> tuple[subprocess.Popen, int, int]:
    workdir.mkdir(parents=True, exist_ok=True)
    gate, admin = free_port(), free_port()
    config = {
        "name": "bench", "provider": "process", "syncInterval": "1s",
        "nodeId": workdir.name,
        "httpServer": {"port": gate, "address": "127.0.0.1", "accessLog": False},
        "admin": {"port": admin, "address": "127.0.0.1",
                  "auth": {"tokensFile": str(workdir / "admin-tokens")}},
        "etcd": {"dataDir": str(workdir / "etcd")},
        "process": {"dataDir": str(workdir / "data")},
        "queue": {"dataDir": str(workdir / "nats"),
                  **({"natsURLs": [nats_url]} if nats_url else {})},
    }
    (workdir / "controller.yaml").write_text(json.dumps(config))
    log = open(workdir / "node.log", "ab")
    profile = os.environ.get("BENCH_ASYNC_PROFILE")   # the reactor thread, cProfile
    flags = [f"--profile={profile}", "--profiler=cprofile", "--savestats"] if profile else []
    node = subprocess.Popen([str(TWISTD), "-n", "--pidfile=", *flags, "faasgate", "--config",
                             str(workdir / "controller.yaml")], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if http("GET", f"http://127.0.0.1:{admin}/readyz")[0] == 200:
                TOKENS[admin] = (workdir / "admin-tokens.admin").read_text().strip()
                return node, gate, admin
        except OSError:
            pass
        if node.poll() is not None:
            break
        time.sleep(0.2)
    stop(node)
    raise SystemExit(f"the node did not start:\n{(workdir / 'node.log').read_text()[-3000:]}")


def stop(node: subprocess.Popen) -> None:
    if node.poll() is None:
        node.send_signal(signal.SIGTERM)
        try:
            node.wait(30)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(node.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def deploy(admin: int, workdir: Path) -> None:
    # in the node's config folder: staged into the function's folder (functions run as
    # an unprivileged user, who may not read this checkout)
    echo = workdir / "fn" / "echo.py"
    echo.parent.mkdir()
    shutil.copy(ROOT / "conf" / "functions" / "echo.py", echo)
    echo.chmod(0o644)
    spec = {"name": "echo", "command": [FUNCTION_PYTHON, str(echo)],
            "readinessPath": "/healthz", "minReplica": 1, "asyncConcurrency": 32,
            # every call wrk queues is stored (the default maxQueued, 1000, would turn
            # the rest into 429s and measure refusing instead of queueing)
            "maxQueued": 10_000_000}
    status, body = http("POST", base_url(admin), json.dumps(spec).encode(),
                        {"Content-Type": "application/json"})
    assert status == 201, body
    wait_state(admin, "active")


def base_url(admin: int) -> str:
    return f"http://127.0.0.1:{admin}/apis/v2/faas/bench"


def wait_state(admin: int, state: str, name: str = "echo") -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        _, body = http("GET", f"{base_url(admin)}/{name}", headers={"Accept": "application/json"})
        if json.loads(body)["status"]["state"] == state:
            return
        time.sleep(0.2)
    raise SystemExit(f"{name} did not become {state}")


def operate(admin: int, action: str, state: str) -> None:
    status, body = http("PUT", f"{base_url(admin)}/echo/{action}")
    assert status == 200, body
    wait_state(admin, state)


def wrk(gate: int, connections: int, duration: int, queued: bool, workdir: Path) -> dict:
    script = workdir / ("async.lua" if queued else "sync.lua")
    script.write_text('wrk.method = "POST"\nwrk.body = "hello"\n'
                      'wrk.headers["X-FaaS-Func-Name"] = "echo"\n'
                      + ('wrk.headers["X-FaaS-Async"] = "true"\n' if queued else ""))
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency",
                          "-s", str(script), f"http://127.0.0.1:{gate}/"],
                         capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out:
        raise SystemExit(f"wrk saw errors:\n{out}")

    def ms(label: str) -> float:
        value, unit = re.search(rf"{label}\s+([\d.]+)(us|ms|s)\b", out).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    total = int(re.search(r"(\d+) requests in", out).group(1))
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50": ms("50%"), "p99": ms("99%"), "requests": total}


def completed(admin: int) -> float:
    _, body = http("GET", f"http://127.0.0.1:{admin}/metrics")
    return sum(float(m.group(1)) for m in re.finditer(
        rb'faastwist_async_completed_total\{function_name="echo",outcome="\w+"\} ([\d.e+]+)',
        body))


def drain_rate(admin: int, queued: int, timeout: float = 300.0) -> tuple[float, float]:
    """(calls/s while draining, seconds to drain) from the completed-calls counter."""
    start_count, start = completed(admin), time.monotonic()
    count = start_count
    while count < queued and time.monotonic() - start < timeout:
        time.sleep(0.5)
        count = completed(admin)
    elapsed = time.monotonic() - start
    return (count - start_count) / elapsed, elapsed


# -- throughput: queued calls of a slow function, one node and three ----------------------

SLOW_FUNCTION = ROOT / "tests" / "support" / "asyncfn.py"


def start_nats(workdir: Path) -> tuple[subprocess.Popen, str]:
    """A shared nats-server with JetStream for the three-node run."""
    binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
    port = free_port()
    log = open(workdir / "nats.log", "ab")
    server = subprocess.Popen([binary, "-js", "-sd", str(workdir / "js"), "-a", "127.0.0.1",
                               "-p", str(port)], stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return server, f"nats://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    stop(server)
    raise SystemExit(f"nats-server did not start; see {workdir / 'nats.log'}")


def deploy_slow(admin: int, workdir: Path, concurrency: int, calls: int) -> Path:
    """The test suite's async function (``/slow?ms=N`` sleeps N ms) as ``slow``; its
    state folder (most calls seen at once) is returned."""
    script = workdir / "fn" / "asyncfn.py"
    script.parent.mkdir(exist_ok=True)
    shutil.copy(SLOW_FUNCTION, script)
    script.chmod(0o644)
    state = Path(tempfile.mkdtemp(prefix="faastwist-bench-slow-"))
    state.chmod(0o777)  # the function runs as an unprivileged user
    spec = {"name": "slow", "command": [FUNCTION_PYTHON, str(script)],
            "env": {"STATE_DIR": str(state)}, "readinessPath": "/healthz", "minReplica": 1,
            "asyncConcurrency": concurrency, "maxQueued": max(1000, calls)}
    status, body = http("POST", base_url(admin), json.dumps(spec).encode(),
                        {"Content-Type": "application/json"})
    assert status == 201, body
    wait_state(admin, "active", "slow")
    return state


def completed_of(admin: int, function: str) -> float:
    _, body = http("GET", f"http://127.0.0.1:{admin}/metrics")
    return sum(float(m.group(1)) for m in re.finditer(
        rb'faastwist_async_completed_total\{function_name="%s",outcome="\w+"\} ([\d.e+]+)'
        % function.encode(), body))


def throughput(nodes: list[tuple[int, int]], calls: int, sleep_ms: int) -> tuple[float, float]:
    """Queue ``calls`` calls over the nodes' gates at once; (calls/s from the first
    call queued to the last completed, seconds)."""
    from concurrent.futures import ThreadPoolExecutor

    def enqueue(i: int) -> int:
        gate = nodes[i % len(nodes)][0]
        return http("POST", f"http://127.0.0.1:{gate}/async-function/slow/slow?ms={sleep_ms}",
                    b"x")[0]

    before = sum(completed_of(admin, "slow") for _, admin in nodes)
    start = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(enqueue, range(calls)))
    if any(code != 202 for code in codes):
        raise SystemExit(f"not every call was queued: {sorted(set(codes))}")
    deadline = start + 30 + calls * sleep_ms / 1000
    done = 0.0
    while done < calls and time.monotonic() < deadline:
        time.sleep(0.05)
        done = sum(completed_of(admin, "slow") for _, admin in nodes) - before
    elapsed = time.monotonic() - start
    if done < calls:
        raise SystemExit(f"only {done:.0f} of {calls} calls completed in {elapsed:.0f}s")
    return calls / elapsed, elapsed


def run_throughput(args: argparse.Namespace) -> list[tuple[int, float, float, int]]:
    """(nodes, calls/s, seconds, most calls at once on one node) for one and three nodes."""
    rows = []
    for count in (1, 3):
        workdir = Path(tempfile.mkdtemp(prefix=f"faastwist-bench-async{count}-"))
        procs: list[subprocess.Popen] = []
        states: list[Path] = []
        try:
            url = ""
            if count > 1:
                server, url = start_nats(workdir)
                procs.append(server)
            nodes = []
            for i in range(count):
                node, gate, admin = start_node(workdir / f"n{i}", url)
                procs.append(node)
                nodes.append((gate, admin))
            for i, (_, admin) in enumerate(nodes):
                states.append(deploy_slow(admin, workdir / f"n{i}", args.concurrency,
                                          args.calls))
            throughput(nodes, max(args.concurrency * 2, 16), args.sleep_ms)  # warm-up
            rate, seconds = throughput(nodes, args.calls, args.sleep_ms)
            most = max(int((s / "max-concurrent").read_text() or 0) for s in states)
            rows.append((count, rate, seconds, most))
        finally:
            for proc in reversed(procs):
                stop(proc)
            for state in states:
                shutil.rmtree(state, ignore_errors=True)
            shutil.rmtree(workdir, ignore_errors=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=240, help="calls queued per run")
    parser.add_argument("--concurrency", type=int, default=8, help="asyncConcurrency")
    parser.add_argument("--sleep-ms", type=int, default=300, help="each call's latency")
    parser.add_argument("--enqueue", action="store_true",
                        help="also measure enqueueing with wrk (sync vs 202)")
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--no-throughput", action="store_true",
                        help="with --enqueue: skip the throughput runs (enqueue alone)")
    args = parser.parse_args()
    if args.enqueue and shutil.which("wrk") is None:
        raise SystemExit("async: --enqueue needs wrk (apt-get install wrk)")
    if args.enqueue and args.no_throughput:
        print(f"interpreter: {sys.version} ({sys.executable}); {os.cpu_count()} cores; "
              f"load average {os.getloadavg()[0]:.1f}")
        run_enqueue(args)
        return
    rows = run_throughput(args)
    bound = args.concurrency * 1000 / args.sleep_ms
    print(f"interpreter: {platform.python_implementation()} {platform.python_version()} "
          f"({sys.executable}); {os.cpu_count()} cores; load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"throughput: asyncConcurrency {args.concurrency} (cluster-wide), calls of "
          f"{args.sleep_ms} ms, {args.calls} calls queued at once")
    print(f"{'nodes':<7}{'calls/s':>9}{'bound':>9}{'of bound':>10}{'seconds':>9}"
          f"{'most at once':>14}")
    for count, rate, seconds, most in rows:
        print(f"{count:<7}{rate:>9.1f}{bound:>9.1f}{rate / bound:>10.0%}{seconds:>9.1f}"
              f"{most:>14}")
    if args.enqueue:
        run_enqueue(args)


def run_enqueue(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="faastwist-bench-async-"))
    node, gate, admin = start_node(workdir)
    try:
        deploy(admin, workdir)
        sync = wrk(gate, args.connections, args.duration, False, workdir)
        # calls for a stopped function stay queued: (2) measures accepting alone, and
        # (3) the workers alone once it is started again
        operate(admin, "stop", "inactive")
        enqueue = wrk(gate, args.connections, args.duration, True, workdir)
        operate(admin, "start", "active")
        rate, seconds = drain_rate(admin, enqueue["requests"])
    finally:
        stop(node)
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"enqueue: wrk -c{args.connections} -d{args.duration}s")
    print(f"{'':<22}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    for label, row in (("sync (200)", sync), ("enqueue (202)", enqueue)):
        print(f"{label:<22}{row['rps']:>10.0f}{row['p50']:>10.2f}{row['p99']:>10.2f}")
    print(f"end to end: {enqueue['requests']} queued calls ran at {rate:.0f} calls/s "
          f"(drained in {seconds:.1f}s)")


if __name__ == "__main__":
    main()
