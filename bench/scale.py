"""Control-plane scale: a real ``twistd faasgate`` node with N functions in a real etcd.

    PYTHONPATH=. .venv/bin/python bench/scale.py --functions 10000

An etcd is started in a temporary folder and filled directly (transactions of 32
functions) with N fork-mode process functions (``cat``: one process per request) in
state active plus one HTTP-mode function (``hot``, nginx run by the process provider)
that carries the gate traffic. Nodes (process provider, default config otherwise: the
async queue with its embedded nats-server is on) are started on that etcd and measured:

- the interpreter the node runs on, and whether it is an optimized build;
- a node with ``hot`` alone: req/s through the gate (the one-function reference), and
  its RSS (the baseline for memory per function);
- the first start with N functions: ready (``/readyz`` 200) wall time and the node's CPU
  seconds by then, and how long the first reconcile pass takes (it writes every
  function's status: the provider's verdict);
- restarts (SIGTERM, start; ``--restarts``, 3) with N settled functions: ready wall and
  CPU, the first answer of a fork-mode function, and the median over every start;
  memory per function (RSS against the one-function node); the steady reconcile pass
  (``faastwist_reconcile_pass_seconds``);
- admin list latency: full list (JSON and YAML) and one page (``limit`` + ``continue``);
- the gate (wrk c16 on ``hot``): req/s and p99 idle, and while a client lists all N
  functions in a loop (JSON, then YAML); req/s with N functions against one.

The machine's load average is printed with every figure: on a shared machine wall
times follow it, CPU seconds much less. Every process it starts (etcd, the nodes, wrk)
is stopped by pid; only 127.0.0.1.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from faastwist.model.fsm import FunctionStatus, State  # noqa: E402
from faastwist.model.spec import FunctionSpec  # noqa: E402
from faastwist.store.base import encode_spec, encode_status  # noqa: E402
from tests.support.etcd import EtcdProcess  # noqa: E402
from tests.support.node import FaasNodeProcess, free_port, http  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
import gate as gatebench  # noqa: E402  (bench/gate.py: the interpreter helpers)

PREFIX = "/faas"
#: the function the gate traffic goes to: nginx in one process (fast, so the gate's
#: latency is what is measured), run by the process provider like any HTTP function
HOT_NGINX = """
daemon off; master_process off; worker_processes 1; pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off; client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi; uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
    keepalive_requests 1000000;
    server {{ listen 127.0.0.1:{port}; location / {{ return 200 "hello from hot"; }} }}
}}
"""
CONTROLLER = "faascontroller"


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def fill(etcd: EtcdProcess, specs: list[FunctionSpec], prefix: str = PREFIX) -> None:
    """Write spec and status keys straight into etcd, 32 functions per transaction."""
    now = time.time()
    url = f"{etcd.client_url}/v3/kv/txn"
    for start in range(0, len(specs), 32):
        ops = []
        for spec in specs[start:start + 32]:
            status = FunctionStatus(spec.name, State.ACTIVE, updated=now)
            ops.append({"requestPut": {"key": b64(f"{prefix}/{CONTROLLER}/spec/{spec.name}"),
                                       "value": b64(encode_spec(spec))}})
            ops.append({"requestPut": {"key": b64(f"{prefix}/{CONTROLLER}/status/{spec.name}"),
                                       "value": b64(encode_status(status))}})
        request = urllib.request.Request(url, json.dumps({"success": ops}).encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()


def rss_kib(pid: int) -> int:
    """Resident memory of the node process alone (not etcd, not function processes)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reconcile_passes(node: FaasNodeProcess) -> tuple[float, float]:
    """(passes completed, total seconds) from the node's /metrics."""
    text = http("GET", f"{node.admin_root}/metrics")[2].decode()
    total = re.search(r"^faastwist_reconcile_pass_seconds_sum (\S+)$", text, re.M)
    count = re.search(r"^faastwist_reconcile_pass_seconds_count (\S+)$", text, re.M)
    return (float(count.group(1)) if count else 0.0), (float(total.group(1)) if total else 0.0)


def store_updates(node: FaasNodeProcess) -> float:
    """Successful etcd updates the node made (status writes, mostly)."""
    text = http("GET", f"{node.admin_root}/metrics")[2].decode()
    found = re.search(r'^faastwist_store_operations_total\{op="update",result="ok"\} (\S+)$',
                      text, re.M)
    return float(found.group(1)) if found else 0.0


def wait_for(predicate: Any, timeout: float, what: str, pause: float = 0.02) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if predicate():
                return time.monotonic() - started
        except OSError:
            pass
        time.sleep(pause)
    raise RuntimeError(f"{what}: not within {timeout}s")


def wrk(url: str, connections: int, duration: float, function: str = "hot") -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency",
         "-H", f"X-FaaS-Func-Name: {function}", url],
        capture_output=True, text=True, timeout=duration + 30, check=True).stdout
    units = {"us": 1e-3, "ms": 1.0, "s": 1000.0}
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}
    for pct in ("50", "99"):
        match = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        result[f"p{pct}_ms"] = float(match.group(1)) * units[match.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result["non2xx"] = int(errors.group(1)) if errors else 0
    return result


def timed_get(url: str, accept: str) -> tuple[float, int, bytes]:
    started = time.perf_counter()
    status, headers, body = http("GET", url, headers={"Accept": accept}, timeout=120)
    return time.perf_counter() - started, status, body


#: the nodes' interpreter (``--python``): None is this one, through the venv's twistd
NODE_PYTHON: str | None = None
TWISTD_RUN = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"


def start_node(workdir: Path, etcd: EtcdProcess, nodes: list[FaasNodeProcess],
               prefix: str = PREFIX) -> tuple[FaasNodeProcess, float]:
    """Spawn a node and wait for /readyz 200; it is in ``nodes`` (to be stopped) at once."""
    node = FaasNodeProcess(workdir, provider="process", etcd_endpoints=[etcd.client_url],
                           extra={"etcd": {"prefix": prefix}, "syncInterval": "10s",
                                  "httpServer": {"accessLog": False}})
    command = node.command()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if NODE_PYTHON is not None:   # another interpreter, with this venv's packages
        command = [NODE_PYTHON, "-c", TWISTD_RUN, *command[1:]]
        env["PYTHONPATH"] = gatebench.child_path()
    started = time.monotonic()
    log = open(node.log_path, "ab")
    node.process = subprocess.Popen(command, cwd=node.workdir, stdout=log,
                                    stderr=subprocess.STDOUT, env=env, start_new_session=True)
    log.close()
    nodes.append(node)

    def ready() -> bool:
        if node.process.poll() is not None:
            raise RuntimeError(f"faasgate exited:\n{node.log()}")
        return http("GET", f"{node.admin_root}/readyz", timeout=2)[0] == 200
    wait_for(ready, 300, "node ready", pause=0.05)
    return node, time.monotonic() - started


def stop_node(node: FaasNodeProcess, nodes: list[FaasNodeProcess]) -> None:
    node.stop(grace=60)
    nodes.remove(node)


def interpreter() -> str:
    """The interpreter the nodes run on and its build."""
    info = gatebench.interpreter_info(NODE_PYTHON or sys.executable)
    return f"{info['executable']} {info['version']}, {info['build']}"


def hot_spec(workdir: Path) -> FunctionSpec:
    port = free_port()
    folder = workdir / "hot"
    folder.mkdir()
    os.chmod(folder, 0o777)   # the function runs as an unprivileged user
    (workdir / "hot.conf").write_text(HOT_NGINX.format(dir=folder, port=port))
    return FunctionSpec.from_dict({
        "name": "hot", "port": port, "minReplica": 1, "maxReplica": 1,
        "command": ["nginx", "-c", str(workdir / "hot.conf"), "-p", str(folder),
                    "-e", str(folder / "error.log")]})


def load() -> str:
    return f"load average {os.getloadavg()[0]:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--functions", type=int, default=10000)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--page", type=int, default=100, help="page size of the paged list")
    parser.add_argument("--restarts", type=int, default=3,
                        help="restarts (SIGTERM, start) measured after the first start")
    parser.add_argument("--python", help="the nodes' interpreter: a path, or 'debian' for "
                                         "Debian's /usr/bin/python3.X with this venv's "
                                         "packages (default: this one)")
    args = parser.parse_args()
    global NODE_PYTHON
    if args.python == "debian":
        NODE_PYTHON = gatebench.other_interpreter()
        if NODE_PYTHON is None:
            parser.error("--python debian: no Debian CPython of this version can load "
                         "this venv's packages")
    elif args.python:
        NODE_PYTHON = args.python
    workdir = Path(tempfile.mkdtemp(prefix="faastwist-bench-scale-"))
    os.chmod(workdir, 0o755)   # the function user reaches hot's folder through it
    etcd = EtcdProcess(str(workdir / "etcd"))
    nodes: list[FaasNodeProcess] = []
    print(f"interpreter: {interpreter()}; {os.cpu_count()} cores; {load()}", flush=True)
    try:
        etcd.start()
        hot = hot_spec(workdir)
        # the reference: a node with one function (hot) under its own prefix
        fill(etcd, [hot], prefix="/one")
        one, _ = start_node(workdir / "one", etcd, nodes, prefix="/one")
        wait_for(lambda: http("GET", f"{one.gate_url}/function/hot/", timeout=5)[0] == 200,
                 60, "hot ready (one function)")
        time.sleep(2.0)
        base_rss = rss_kib(one.process.pid)
        single = wrk(f"{one.gate_url}/", 16, args.duration)
        print(f"one function: gate to 'hot' at c16 {single['rps']:.0f} req/s p99 "
              f"{single['p99_ms']:.1f} ms; node RSS {base_rss / 1024:.1f} MiB ({load()})",
              flush=True)
        stop_node(one, nodes)

        specs = [hot] + [FunctionSpec.from_dict({"name": f"f{i:05d}", "mode": "fork",
                                                 "command": ["/bin/cat"], "timeout": "10s"})
                         for i in range(args.functions)]
        started = time.monotonic()
        fill(etcd, specs)
        print(f"etcd filled with {len(specs)} functions in {time.monotonic() - started:.1f}s",
              file=sys.stderr, flush=True)
        fork_path = "/function/f%05d/" % (args.functions // 2)

        readies: list[tuple[float, float]] = []

        def started_node(label: str) -> FaasNodeProcess:
            node, ready_s = start_node(workdir / "node", etcd, nodes)
            cpu = cpu_seconds(node.process.pid)
            readies.append((ready_s, cpu))
            fork_url = node.gate_url + fork_path
            first = wait_for(lambda: http("POST", fork_url, b"hello", timeout=5)[0] == 200, 60,
                             "first fork-mode answer")
            print(f"{label}: node ready (/readyz 200) {ready_s:.2f}s after spawn with "
                  f"{len(specs)} functions, {cpu:.2f}s of CPU by then ({load()}); a "
                  f"fork-mode function answered {first:.2f}s later", flush=True)
            return node
        node = started_node("first start")
        # the first pass records every function's provider verdict (a status write
        # each); measure the steady state after it
        waited = wait_for(lambda: store_updates(node) >= len(specs), 1800, "the first pass",
                          pause=2.0)  # a scrape of 10,000 functions is megabytes
        print(f"first reconcile pass ({len(specs)} status writes): done {waited:.1f}s after "
              f"the node was ready ({load()})", flush=True)
        for restart in range(args.restarts):
            stop_node(node, nodes)
            node = started_node(f"restart {restart + 1} (SIGTERM, start)")
        walls, cpus = sorted(r[0] for r in readies), sorted(r[1] for r in readies)
        print(f"ready after spawn, {len(readies)} starts: median {walls[len(walls) // 2]:.2f}s "
              f"({walls[0]:.2f}-{walls[-1]:.2f}s), CPU median {cpus[len(cpus) // 2]:.2f}s "
              f"({cpus[0]:.2f}-{cpus[-1]:.2f}s)", flush=True)
        wait_for(lambda: http("GET", f"{node.gate_url}/function/hot/", timeout=5)[0] == 200, 60,
                 "hot ready")
        wait_for(lambda: reconcile_passes(node)[0] >= 2, 600, "the first passes", pause=2.0)
        time.sleep(1.0)
        rss = rss_kib(node.process.pid)
        print(f"node RSS {rss / 1024:.1f} MiB, one-function node {base_rss / 1024:.1f} MiB: "
              f"{(rss - base_rss) / (len(specs) - 1):.2f} KiB per function", flush=True)
        # no request to the node meanwhile (a /metrics scrape of 10,000 functions is
        # megabytes of text): its CPU is its own steady work
        before = reconcile_passes(node)
        cpu_before, started = cpu_seconds(node.process.pid), time.monotonic()
        time.sleep(30.0)
        cpu = cpu_seconds(node.process.pid) - cpu_before
        window = time.monotonic() - started
        after = reconcile_passes(node)
        print(f"steady reconcile pass with {len(specs)} functions: "
              f"{(after[1] - before[1]) / max(after[0] - before[0], 1) * 1000:.0f} ms (mean of "
              f"{after[0] - before[0]:.0f}, every 10s); idle, the node used {cpu:.2f}s of CPU "
              f"in {window:.0f}s ({cpu / window * 100:.0f}% of a core; {load()})", flush=True)

        listing = f"{node.admin_url}"
        for accept in ("application/json", "application/yaml"):
            runs = [timed_get(listing, accept) for _ in range(3)]
            best = min(r[0] for r in runs)
            status, body = runs[-1][1], runs[-1][2]
            print(f"admin list of {len(specs)} ({accept}): {best * 1000:.0f} ms best of 3, "
                  f"{len(body) / 1e6:.1f} MB, status {status} ({load()})", flush=True)
        pages, token = [], ""
        for _ in range(5):
            query = f"?limit={args.page}" + (f"&continue={token}" if token else "")
            took, status, body = timed_get(listing + query, "application/json")
            pages.append(took)
            token = json.loads(body)["metadata"]["continue"]
        print(f"admin list, pages of {args.page} (JSON, limit + continue): "
              f"{sorted(pages)[len(pages) // 2] * 1000:.0f} ms median of {len(pages)}",
              flush=True)

        alone = wrk(f"{node.gate_url}/", 16, args.duration)
        stop = threading.Event()
        lists: list[float] = []

        def lister() -> None:
            while not stop.is_set():
                for accept in ("application/json", "application/yaml"):
                    lists.append(timed_get(listing, accept)[0])
        thread = threading.Thread(target=lister, daemon=True)
        thread.start()
        busy = wrk(f"{node.gate_url}/", 16, args.duration)
        stop.set()
        thread.join(120)
        print(f"gate to 'hot' at c16 with {len(specs)} functions: idle {alone['rps']:.0f} "
              f"req/s p99 {alone['p99_ms']:.1f} ms; while {len(lists)} full lists ran "
              f"(JSON and YAML in turn, {min(lists):.2f}-{max(lists):.2f}s each) "
              f"{busy['rps']:.0f} req/s p99 {busy['p99_ms']:.1f} ms ({load()})", flush=True)
        print(f"routed req/s, {len(specs)} functions against one: {alone['rps']:.0f} / "
              f"{single['rps']:.0f} = {alone['rps'] / single['rps']:.3f}", flush=True)
    except BaseException:
        for node in nodes:
            print(node.log()[-3000:], file=sys.stderr)
        raise
    finally:
        for node in list(nodes):
            node.stop()
        etcd.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
