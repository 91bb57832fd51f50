"""Cold start and gate overhead of the process provider.

    PYTHONPATH=. .venv/bin/python bench/coldstart.py [--runs 20] [--duration 5]

A server child process runs the real stack of ``make run`` minus etcd (MemoryStore,
ProcessProvider, reconciler, route table, GateService on the lean transport, access
log off) with three functions: ``echo-cold`` (conf/functions/echo.py, minReplica 0,
idle timeout 0.3s), ``echo-warm`` (the same server, one replica kept) and
``wordcount`` (fork mode). This driver, in its own process, then measures:

1. cold start: time from sending a request for ``echo-cold`` while it has no process
   to the complete response (median of ``--runs``; before each run it waits until the
   idle timeout has ended the previous replica), plus the same function warm;
2. gate overhead: wrk at c1 and c16 against ``echo-warm`` directly on its loopback
   port and through the gate (X-FaaS-Func-Name), requests/s and latency percentiles;
3. fork mode: wrk c1 through the gate on ``wordcount`` (one process per request).

The server and every function process are stopped by pid at the end.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

IDLE = 0.3


def interpreter() -> str:
    """Debian's python3 when there is one: a version-manager shim on PATH (pyenv's is a
    bash script) would add its own start-up time to every cold start measured."""
    return "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable


# -- the server process ------------------------------------------------------------------

def serve(data_dir: str) -> None:
    from twisted.internet import defer, reactor

    from faastwist.config import HTTPServerConfig, ProcessConfig
    from faastwist.model.fsm import FunctionStatus, State
    from faastwist.gate.service import GateService
    from faastwist.metrics import Metrics
    from faastwist.providers.process import ProcessProvider
    from faastwist.lifecycle.reconciler import Reconciler
    from faastwist.gate.routes import RouteTable
    from faastwist.model.spec import FunctionSpec
    from faastwist.store.memory import MemoryStore

    python = interpreter()
    echo = [python, "conf/functions/echo.py"]
    specs = [
        FunctionSpec.from_dict({"name": "echo-cold", "command": echo,
                                "readinessPath": "/healthz", "maxReplica": 1}),
        FunctionSpec.from_dict({"name": "echo-warm", "command": echo, "minReplica": 1,
                                "maxReplica": 1}),
        FunctionSpec.from_dict({"name": "wordcount", "mode": "fork",
                                "command": [python, "conf/functions/wordcount.py"]}),
    ]
    metrics = Metrics()
    store = MemoryStore()
    provider = ProcessProvider(ProcessConfig(idle_timeout=IDLE, cold_start_timeout=30.0,
                                             data_dir=data_dir),
                               "faascontroller", reactor, metrics, workdir=str(ROOT),
                               scale_interval=0.05)
    provider.startService()
    reconciler = Reconciler(store, provider, reactor, 60.0, metrics)
    routes = RouteTable(store, reactor, metrics)
    routes.startService()
    gate = GateService(HTTPServerConfig(port=0, address="127.0.0.1"), routes, provider,
                       reactor, metrics, access_log=False)

    async def start() -> None:
        for spec in specs:
            provider.check_spec(spec)
            await store.create(spec, FunctionStatus.initial(spec.name, 0.0))
        while True:
            await reconciler.run_pass()
            listing = await store.list()
            warm = provider.runtimes.get("echo-warm")
            if (all(r.status.state is State.ACTIVE for r in listing.records.values())
                    and warm is not None and warm.ready):
                break
            await defer.Deferred.fromCoroutine(_sleep(reactor, 0.05))
        gate.startService()
        lease = provider.acquire(specs[1])
        direct = lease.upstream.port
        lease.release()
        print(json.dumps({"gate": gate.address()[1], "direct": direct}), flush=True)

    def shutdown() -> defer.Deferred:
        return defer.DeferredList([gate.stopService(), provider.stopService()])

    reactor.addSystemEventTrigger("before", "shutdown", shutdown)
    reactor.callWhenRunning(lambda: defer.Deferred.fromCoroutine(start()).addErrback(
        lambda f: (f.printTraceback(), reactor.stop())))
    reactor.run()


async def _sleep(reactor, seconds: float) -> None:
    from twisted.internet.task import deferLater
    await deferLater(reactor, seconds, lambda: None)


# -- the driver --------------------------------------------------------------------------

def children_of(pid: int, function: str) -> list[int]:
    """Live child processes of ``pid`` running ``function`` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            if int(stat[1]) != pid or stat[0] == "Z":
                continue
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except (OSError, IndexError):
            continue
        if f"FAASTWIST_FUNCTION={function}".encode() in environ:
            found.append(int(entry))
    return found


def timed_request(port: int, function: str, body: bytes) -> tuple[float, int]:
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("POST", "/", body=body, headers={"X-FaaS-Func-Name": function})
    response = connection.getresponse()
    response.read()
    elapsed = time.perf_counter() - started
    connection.close()
    return elapsed, response.status


def wait_until(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out waiting for the function to idle to zero")
        time.sleep(0.02)


_PERCENTILE = re.compile(r"^\s*(50|90|99)%\s+([\d.]+)(us|ms|s)\s*$", re.M)
_RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk(url: str, connections: int, duration: int, header: str | None) -> dict[str, float]:
    args = ["wrk", "-t", str(min(connections, 2)), "-c", str(connections), "-d",
            f"{duration}s", "--latency"]
    if header:
        args += ["-H", header]
    out = subprocess.run(args + [url], capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    result = {"rps": float(_RPS.search(out).group(1))}
    for match in _PERCENTILE.finditer(out):
        result[f"p{match.group(1)}_ms"] = float(match.group(2)) * _UNIT[match.group(3)]
    return result


def drive(runs: int, duration: int) -> dict:
    data_dir = tempfile.mkdtemp(prefix="faastwist-coldstart-")
    server = subprocess.Popen([sys.executable, __file__, "--serve", data_dir],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert server.stdout is not None
        ports = json.loads(server.stdout.readline())
        gate = ports["gate"]
        cold, warm = [], []
        for index in range(runs):
            wait_until(lambda: not children_of(server.pid, "echo-cold"), 10)
            elapsed, status = timed_request(gate, "echo-cold", b"cold %d" % index)
            assert status == 200, status
            cold.append(elapsed)
            elapsed, status = timed_request(gate, "echo-cold", b"warm")
            assert status == 200, status
            warm.append(elapsed)
        results: dict = {
            "cold_start_ms": {"median": statistics.median(cold) * 1e3,
                              "min": min(cold) * 1e3, "max": max(cold) * 1e3, "runs": runs},
            "warm_same_function_ms": {"median": statistics.median(warm) * 1e3},
        }
        header = "X-FaaS-Func-Name: echo-warm"
        for connections in (1, 16):
            results[f"c{connections}"] = {
                "direct": wrk(f"http://127.0.0.1:{ports['direct']}/", connections, duration,
                              None),
                "gate": wrk(f"http://127.0.0.1:{gate}/", connections, duration, header),
            }
        results["fork_c1_gate"] = wrk(f"http://127.0.0.1:{gate}/", 1, duration,
                                      "X-FaaS-Func-Name: wordcount")
        return results
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        shutil.rmtree(data_dir, ignore_errors=True)


def report(results: dict) -> str:
    cold = results["cold_start_ms"]
    lines = [
        f"functions run by {interpreter()}; gate on the lean HTTP/1.1 transport",
        f"cold start (scale from zero, HTTP function, median of {cold['runs']}): "
        f"{cold['median']:.0f} ms (min {cold['min']:.0f}, max {cold['max']:.0f}); "
        f"the same request warm: {results['warm_same_function_ms']['median']:.1f} ms",
        "",
        "gate overhead, echo-warm (one replica of conf/functions/echo.py):",
        f"{'':6}{'':8}{'req/s':>9}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}",
    ]
    for connections in ("c1", "c16"):
        for way in ("direct", "gate"):
            row = results[connections][way]
            lines.append(f"{connections:6}{way:8}{row['rps']:9.0f}{row.get('p50_ms', 0):9.2f}"
                         f"{row.get('p90_ms', 0):9.2f}{row.get('p99_ms', 0):9.2f}")
        direct, gated = results[connections]["direct"], results[connections]["gate"]
        lines.append(f"{'':6}{'added':8}{'':9}{gated['p50_ms'] - direct['p50_ms']:9.2f}"
                     f"  (gate/direct throughput {gated['rps'] / direct['rps']:.2f})")
    fork = results["fork_c1_gate"]
    lines += ["", f"fork mode (wordcount, one process per request) c1 through the gate: "
                  f"{fork['rps']:.0f} req/s, p50 {fork['p50_ms']:.1f} ms"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--json", action="store_true", help="print the raw figures")
    parser.add_argument("--serve", metavar="DATA_DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    if shutil.which("wrk") is None:
        raise SystemExit("coldstart: wrk is required (apt-get install wrk)")
    results = drive(args.runs, args.duration)
    print(json.dumps(results, indent=2) if args.json else report(results))


if __name__ == "__main__":
    main()
