"""Gate worker processes on loopback: N gate workers against nginx with N workers.

    PYTHONPATH=. .venv/bin/python bench/workers.py          # the table (about a minute)

The same fixed upstream and routing as bench/gate.py (nginx answering 17 bytes over
keep-alive; ``X-FaaS-Func-Name: demo10`` routed to ``Host: demo10.default.example.com``
with the request adaptor on). Rows, at c16 unless ``--concurrency`` says otherwise:

- nginx, N workers: ``worker_processes N`` and ``listen ... reuseport`` (the same
  kernel mechanism as the gate's workers);
- gate, one process: what ``httpServer.workers: 1`` runs (the gate in the node's
  process), with the route table from a real (embedded) etcd;
- gate, N workers: the node's real ``WorkerPool``: N ``faastwist.workers.child``
  processes on one SO_REUSEPORT port, each with its route table from the same etcd,
  logs and access-log lines relayed through the main process to one file, counts
  reported every second. The provider is Knative's routing (the upstream is derived in
  the worker: no lease round trip to the main process);
- gate, N workers, leases via main (N > 1): the same, but each request's upstream is
  acquired from and released to the main process over the control channel, as with the
  process provider (the main answers from Knative's routing, so the figure is the cost of
  the round trip, not of a replica). Its "main CPU s" is what the main process spends on
  the workers' leases.

Every gate row has the access log on (written to a file). N is 1, 2 and the number of
cores (os.cpu_count(); duplicates dropped). The gate runs under Debian's CPython when it
is there (the interpreter and its build are printed first), like bench/gate.py's
"other python" row.

How to read it on a small machine: wrk, the upstream nginx, the main process and the
workers all need CPU. On 2 cores, two gate workers share them with wrk and the upstream,
so the raw req/s of "2 workers" cannot show what two free cores would give. The table
therefore also gives the gate's CPU time during the run (main process and workers,
from /proc, over every run of the cell) and requests per gate CPU-second: when that efficiency holds as N grows, N
workers serve N times one worker's rate wherever each worker has a core. The line
"two workers vs one" states both the measured ratio and that projection. ``--pin``
puts wrk and the upstream on CPU 0 with taskset (the gate processes then get the rest).
Every process the benchmark starts is stopped by its pid; only 127.0.0.1 is used.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for path in (str(ROOT), str(ROOT / "bench")):
    if path not in sys.path:
        sys.path.insert(0, path)

import gate as gatebench  # noqa: E402  (bench/gate.py: nginx, wrk and the checks)
from faastwist.util.ports import free_port  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def label(kind: str, n: int) -> str:
    return f"{kind}, {n} worker" + ("s" if n > 1 else "")


# -- the gate under test, as a child process ----------------------------------------------

def serve(port: int, upstream: int, count: int, workdir: Path, relay: bool = False) -> None:
    """The gate with the embedded etcd: in this process (count 0) or with ``count``
    worker processes (the node's WorkerPool). ``relay``: the workers ask this process
    for every request's upstream, as with the process provider (here the main answers
    from Knative's routing, so only the round trip is measured, not a replica's)."""
    from twisted.internet import reactor
    from twisted.internet.defer import ensureDeferred
    from twisted.internet.task import deferLater
    from twisted.logger import (FilteringLogObserver, LogLevel, LogLevelFilterPredicate,
                                globalLogBeginner, textFileLogObserver)

    from faastwist.config import ControllerConfig
    from faastwist.gate.accesslog import AccessLog
    from faastwist.gate.routes import RouteTable
    from faastwist.gate.service import GateService
    from faastwist.metrics import Metrics
    from faastwist.model.fsm import FunctionStatus, State
    from faastwist.model.spec import FunctionSpec
    from faastwist.providers.kourier import KnativeRouting
    from faastwist.store.embedded import EmbeddedEtcd
    from faastwist.store.etcd import EtcdStore
    from faastwist.workers.supervisor import WorkerPool, worker_setup

    log_file = open(workdir / f"gate-{count}.log", "a")
    globalLogBeginner.beginLoggingTo([FilteringLogObserver(
        textFileLogObserver(log_file), [LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)])])

    def write(text: str) -> None:
        log_file.write(text)
        log_file.flush()

    config = ControllerConfig.from_dict({
        "provider": "knative",
        "knative": {"networkLayerURL": f"http://127.0.0.1:{upstream}"},
        "httpServer": {"port": port, "address": "127.0.0.1", "workers": max(count, 1)},
    }, workdir)
    from faastwist.store.etcdtls import ensure_tls

    etcd_tls = ensure_tls(str(workdir / f"etcd-{count}"))  # as the node runs it
    etcd = EmbeddedEtcd(reactor, str(workdir / f"etcd-{count}"), tls=etcd_tls)
    metrics = Metrics()
    stops: list[Any] = []

    async def start() -> None:
        etcd.startService()
        stops.append(etcd.stopService)
        url = await etcd.ready()
        store = EtcdStore(reactor, [url], config.etcd.prefix, config.name, 5.0, metrics,
                          tls=etcd_tls.policy())
        await store.connect()
        spec = FunctionSpec.from_dict({
            "name": gatebench.FUNCTION, "image": "bench/demo10", "timeout": "30s",
            "requestAdaptor": {"header": {"set": {"X-Bench": "1"}, "del": ["X-Unwanted"]},
                               "path": {"addPrefix": "/fn"}}})
        from faastwist.store.base import AlreadyExists
        try:
            await store.create(spec, FunctionStatus(gatebench.FUNCTION, State.ACTIVE))
        except AlreadyExists:
            pass  # there from an earlier run in this folder
        async def synced(routes: Any) -> None:  # as the node: routes before the port
            routes.startService()
            while not routes.synced:
                await deferLater(reactor, 0.05, lambda: None)

        if count == 0:
            routes = RouteTable(store, reactor, metrics)
            await synced(routes)
            gate = GateService(config.http_server, routes, KnativeRouting(config.knative),
                               reactor, metrics, access_log=True,
                               access=AccessLog(reactor, write, json=False))
            gate.startService()
            stops.append(gate.stopService)
            return
        setup = worker_setup(config, [url], ("127.0.0.1", 1), "default", None, False,
                             etcd_tls)
        routes = provider = None
        if relay:
            setup["provider"] = "process"
            routes = RouteTable(store, reactor, metrics)
            await synced(routes)
            provider = KnativeRouting(config.knative)
        pool = WorkerPool(count, setup, reactor, routes, provider, metrics, lambda: None,
                          write, 5.0)
        stops.append(pool.stopService)
        await pool.start()

    async def stop() -> None:
        for stopping in reversed(stops):
            await stopping()

    def failed(failure: Any) -> None:
        sys.stderr.write(f"bench gate did not start: {failure.getErrorMessage()}\n")
        reactor.stop()

    ensureDeferred(start()).addErrback(failed)
    reactor.addSystemEventTrigger("before", "shutdown", lambda: ensureDeferred(stop()))
    reactor.run()


# -- measuring -------------------------------------------------------------------------------

def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _cpu(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def gate_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of the gate's Python processes (the main and its workers, not etcd)."""
    pids = [pid] + [c for c in _children(pid)
                    if b"faastwist.workers.child" in Path(f"/proc/{c}/cmdline").read_bytes()]
    return {p: _cpu(p) for p in pids}


def nginx_proxy(processes: Any, workdir: Path, upstream: int, workers: int) -> int:
    port = free_port()
    body = gatebench.NGINX_PROXY.format(upstream=upstream, port=port,
                                        function=gatebench.FUNCTION, host=gatebench.HOST)
    body = body.replace(f"listen 127.0.0.1:{port};", f"listen 127.0.0.1:{port} reuseport;")
    name = f"proxy{workers}"
    config = workdir / f"{name}.conf"
    config.write_text(gatebench.NGINX_MAIN.format(dir=workdir, name=name, body=body).replace(
        "worker_processes 1;", f"worker_processes {workers};"))
    process = processes.start(["nginx", "-c", str(config), "-p", str(workdir), "-e",
                               str(workdir / f"{name}.startup.log")], stderr=subprocess.DEVNULL)
    gatebench.wait_listening(port, process)
    gatebench.check(port)
    return port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--repeat", type=int, default=1, help="runs per cell, best kept")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--pin", action="store_true",
                        help="wrk and the upstream nginx on CPU 0 (taskset)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--python", help="the gate's interpreter (default: Debian's "
                                         "/usr/bin/python3.X when it can load this venv's "
                                         "packages, else this one)")
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        serve(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5]),
              "relay" in sys.argv[6:])
        return
    args = parser.parse_args()
    for tool in ("nginx", "wrk", "etcd") + (("taskset",) if args.pin else ()):
        if shutil.which(tool) is None and not (tool == "etcd" and _etcd()):
            sys.exit(f"bench/workers.py needs {tool}")
    cores = os.cpu_count() or 1
    counts = sorted({1, 2, cores})
    processes = gatebench.Processes()
    workdir = Path(tempfile.mkdtemp(prefix="faastwist-bench-workers-"))
    os.chmod(workdir, 0o755)
    pin = ["taskset", "-c", "0"] if args.pin else []
    results: dict[str, dict[str, Any]] = {}
    c = args.concurrency

    def wrk(port: int) -> dict[str, Any]:
        runs = []
        for _ in range(max(1, args.repeat)):
            if pin:
                out = subprocess.run(pin + ["wrk", "-t1", f"-c{c}", f"-d{round(args.duration)}s",
                                            "--latency", "-H",
                                            f"X-FaaS-Func-Name: {gatebench.FUNCTION}",
                                            f"http://127.0.0.1:{port}/bench"],
                                     capture_output=True, text=True, check=True,
                                     timeout=args.duration + 30).stdout
                runs.append(parse_wrk(out))
            else:
                runs.append(gatebench.run_wrk(port, c, args.duration))
        best = dict(max(runs, key=lambda r: r["rps"]))
        best["requests"] = sum(r["rps"] for r in runs) * round(args.duration)  # every run
        return best

    try:
        python = args.python or gatebench.other_interpreter() or sys.executable
        here = gatebench.interpreter_info(python)
        print(f"gate interpreter: Python {here['version']} ({here['executable']}): "
              f"{here['build']}")
        print(f"machine: {cores} cores, load average {os.getloadavg()[0]:.2f} at the start; "
              f"wrk -t1 -c{c}, {args.duration:g}s per run, best of {max(1, args.repeat)}"
              + ("; wrk and the upstream pinned to CPU 0" if pin else "; nothing pinned"),
              flush=True)
        upstream = free_port()
        up = processes.start(pin + ["nginx", "-c", str(_upstream_conf(workdir, upstream)), "-p",
                                    str(workdir), "-e", str(workdir / "upstream.startup.log")],
                             stderr=subprocess.DEVNULL)
        gatebench.wait_listening(upstream, up)
        for n in counts:
            port = nginx_proxy(processes, workdir, upstream, n)
            wrk(port)  # warm-up
            results[label("nginx", n)] = wrk(port)
            processes.stop(processes.children[-1])
        env = dict(os.environ, PYTHONPATH=gatebench.child_path())
        runs = [(n, False) for n in [0] + counts] + [(n, True) for n in counts if n > 1]
        for n, relay in runs:
            port = free_port()
            log = open(workdir / f"serve-{n}{'-relay' if relay else ''}.out", "wb")
            process = processes.start([python, __file__, "serve", str(port),
                                       str(upstream), str(n), str(workdir)]
                                      + (["relay"] if relay else []), env=env,
                                      stdout=log, stderr=subprocess.STDOUT)
            gatebench.wait_listening(port, process, timeout=90)
            gatebench.check(port)
            wrk(port)  # warm-up
            before = gate_cpu(process.pid)
            row = wrk(port)
            after = gate_cpu(process.pid)
            row["cpu_s"] = sum(after.get(p, 0.0) - before.get(p, 0.0) for p in after)
            row["main_cpu_s"] = after[process.pid] - before[process.pid]
            row["rps_per_cpu"] = row["requests"] / max(row["cpu_s"], 1e-9)
            name = "gate, one process" if n == 0 else label("gate", n)
            results[name + (", leases via main" if relay else "")] = row
            processes.stop(process)
        report(results, counts, c, args.duration)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
    finally:
        processes.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)


def _etcd() -> bool:
    from faastwist.store.embedded import find_etcd_binary

    return find_etcd_binary() is not None


def _upstream_conf(workdir: Path, port: int) -> Path:
    config = workdir / "upstream.conf"
    config.write_text(gatebench.NGINX_MAIN.format(dir=workdir, name="upstream", body=(
        gatebench.NGINX_UPSTREAM.format(port=port, answer=gatebench.BODY))))
    return config


def parse_wrk(out: str) -> dict[str, Any]:
    import re

    units = {"us": 1e-3, "ms": 1.0, "s": 1000.0}
    latency = {}
    for pct in ("50", "99"):
        match = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        latency[pct] = float(match.group(1)) * units[match.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50_ms": latency["50"], "p99_ms": latency["99"],
            "non2xx": int(errors.group(1)) if errors else 0, "socket_errors": ""}


def report(results: dict[str, dict[str, Any]], counts: list[int], c: int,
           duration: float) -> None:
    print(f"{'proxy':<36}{'c':>4}{'req/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'vs nginx N':>11}"
          f"{'gate CPU s':>11}{'main CPU s':>11}{'req/CPU-s':>10}")
    for name, r in results.items():
        ratio = ""
        if name.startswith("gate, ") and "worker" in name:
            base = results.get(name.replace("gate", "nginx").replace(", leases via main", ""))
            ratio = f"{r['rps'] / base['rps']:.2f}" if base else ""
        elif name == "gate, one process":
            ratio = f"{r['rps'] / results[label('nginx', 1)]['rps']:.2f}"
        cpu = (f"{r['cpu_s']:>11.2f}{r['main_cpu_s']:>11.2f}{r['rps_per_cpu']:>10.0f}"
               if "cpu_s" in r else "")
        print(f"{name:<36}{c:>4}{r['rps']:>9.0f}{r['p50_ms']:>8.2f}{r['p99_ms']:>8.2f}"
              f"{ratio:>11}{cpu}")
        if r["non2xx"] or r["socket_errors"]:
            print(f"  warning: {r['non2xx']} non-2xx, socket errors: {r['socket_errors']}")
    one, two = results.get(label("gate", 1)), results.get(label("gate", 2))
    if one and two:
        efficiency = two["rps_per_cpu"] / one["rps_per_cpu"]
        print(f"two workers vs one: {two['rps'] / one['rps']:.2f}x measured req/s on "
              f"{os.cpu_count()} cores shared with wrk and the upstream; req/s per gate "
              f"CPU-second {efficiency:.2f}x of one worker's, so with a core per worker two "
              f"workers would serve {2 * efficiency:.2f}x one worker")


if __name__ == "__main__":
    main()
