"""Gate benchmark on loopback: faastwist's gate against nginx and Twisted's own proxy.

    PYTHONPATH=. .venv/bin/python bench/gate.py              # the table (about a minute)
    PYTHONPATH=. .venv/bin/python bench/gate.py --profile    # cProfile of the gate at c16

One fixed upstream (nginx, one worker, a 17-byte answer over keep-alive) serves three
proxies that all route on ``X-FaaS-Func-Name`` and send ``Host: demo10.default.example.com``:

- gate: faastwist's GateService (lean HTTP/1.1 transport) with every feature on: route
  table from a store, request adaptor, header hygiene, X-Forwarded-*, call ids,
  Prometheus metrics, per-function timeout; access log off (``--access-log`` turns
  it on);
- twisted: ``twisted.web.proxy.ReverseProxyResource`` behind a resource that checks
  the same header (Twisted's own reverse proxy, the baseline);
- nginx: one worker, ``map $http_x_faas_func_name``, keep-alive upstream pool;
- gate-web (only with ``--only ... gate-web``): the gate's twisted.web transport, which
  serves HTTPS and HTTP/2, measured on plain HTTP for comparison.

Each proxy is one process on one worker. wrk (one thread) runs at concurrency 1, 16
and 64 for ``--duration`` seconds after a short warm-up; the table gives req/s, p50
and p99, and each figure as a ratio to nginx and to the Twisted baseline. Every process
the benchmark starts is stopped by its pid; only 127.0.0.1 is used.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from faastwist.util.ports import free_port  # noqa: E402

FUNCTION = "demo10"
HOST = "demo10.default.example.com"
BODY = "hello from demo10"
CONCURRENCY = (1, 16, 64)


# -- the proxies, as child processes ------------------------------------------------------

def serve_gate(port: int, upstream_port: int, access_log: bool, profile: str | None,
               transport: str = "lean") -> None:
    """The gate with every feature on, as the benchmark's child process."""
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver, LogLevel
    from twisted.logger import FilteringLogObserver, LogLevelFilterPredicate

    from faastwist.config import HTTPServerConfig, KnativeConfig
    from faastwist.model.fsm import FunctionStatus, State
    from faastwist.gate.service import GateService
    from faastwist.metrics import Metrics
    from faastwist.providers.kourier import KnativeRouting
    from faastwist.gate.routes import RouteTable
    from faastwist.model.spec import FunctionSpec
    from faastwist.store.memory import MemoryStore

    level = LogLevel.info if access_log else LogLevel.warn
    sink = open(os.devnull, "w") if access_log else sys.stderr
    globalLogBeginner.beginLoggingTo([FilteringLogObserver(
        textFileLogObserver(sink), [LogLevelFilterPredicate(defaultLogLevel=level)])])
    store = MemoryStore()
    spec = FunctionSpec.from_dict({
        "name": FUNCTION, "image": "bench/demo10", "timeout": "30s",
        "requestAdaptor": {"header": {"set": {"X-Bench": "1"}, "del": ["X-Unwanted"]},
                           "path": {"addPrefix": "/fn"}}})
    store.create(spec, FunctionStatus(FUNCTION, State.ACTIVE))
    routes = RouteTable(store, reactor)
    routes.startService()
    provider = KnativeRouting(KnativeConfig(
        network_layer_url=f"http://127.0.0.1:{upstream_port}",
        namespace="default", host_suffix="example.com"))
    service = GateService(HTTPServerConfig(port=port, address="127.0.0.1"), routes, provider,
                          reactor, Metrics(), access_log=access_log, transport=transport)
    service.startService()
    profiler = None
    if profile:
        import cProfile
        profiler = cProfile.Profile()
        profiler.enable()

    def dump() -> None:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(profile)

    reactor.addSystemEventTrigger("before", "shutdown", dump)  # SIGTERM stops the reactor
    reactor.run()


def serve_twisted(port: int, upstream_port: int) -> None:
    """twisted.web.proxy.ReverseProxyResource, routed by the same header."""
    from twisted.internet import reactor
    from twisted.web import server
    from twisted.web.proxy import ReverseProxyResource
    from twisted.web.resource import Resource

    class HeaderRouted(Resource):
        isLeaf = True

        def render(self, request: server.Request) -> Any:
            if request.getHeader(b"x-faas-func-name") != FUNCTION.encode():
                request.setResponseCode(404)
                return b"unknown function\n"
            return ReverseProxyResource("127.0.0.1", upstream_port, request.path).render(request)

    site = server.Site(HeaderRouted())
    site.log = lambda request: None  # type: ignore[method-assign]
    reactor.listenTCP(port, site, interface="127.0.0.1", backlog=1024)
    reactor.run()


NGINX_MAIN = """
worker_processes 1;
daemon off;
pid {dir}/{name}.pid;
error_log {dir}/{name}.error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/{name}-body;
    proxy_temp_path {dir}/{name}-proxy;
    fastcgi_temp_path {dir}/{name}-fastcgi;
    uwsgi_temp_path {dir}/{name}-uwsgi;
    scgi_temp_path {dir}/{name}-scgi;
    keepalive_requests 1000000;
    {body}
}}
"""

NGINX_UPSTREAM = """
    server {{
        listen 127.0.0.1:{port};
        location / {{ default_type text/plain; return 200 "{answer}"; }}
    }}
"""

NGINX_PROXY = """
    upstream functions {{ server 127.0.0.1:{upstream}; keepalive 128; }}
    map $http_x_faas_func_name $function_host {{ {function} {host}; default ""; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            if ($function_host = "") {{ return 404; }}
            proxy_pass http://functions;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $function_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
"""


# -- orchestration ---------------------------------------------------------------------------

def wait_listening(port: int, process: subprocess.Popen, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process {process.args!r} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout}s")


class Processes:
    """Every child the benchmark starts, stopped by pid at the end."""

    def __init__(self) -> None:
        self.children: list[subprocess.Popen] = []

    def start(self, args: list[str], **kwargs: Any) -> subprocess.Popen:
        process = subprocess.Popen(args, **kwargs)
        self.children.append(process)
        return process

    def stop(self, process: subprocess.Popen) -> None:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()

    def stop_all(self) -> None:
        for process in reversed(self.children):
            self.stop(process)


def nginx(processes: Processes, workdir: Path, name: str, body: str, port: int) -> subprocess.Popen:
    config = workdir / f"{name}.conf"
    config.write_text(NGINX_MAIN.format(dir=workdir, name=name, body=body))
    process = processes.start(["nginx", "-c", str(config), "-p", str(workdir),
                               "-e", str(workdir / f"{name}.startup.log")],
                              stderr=subprocess.DEVNULL)
    wait_listening(port, process)
    return process


def check(port: int) -> None:
    """One request through the proxy: it must be the function's answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"GET /check HTTP/1.1\r\nHost: bench\r\nX-FaaS-Func-Name: {FUNCTION}\r\n"
                  f"Connection: close\r\n\r\n".encode())
        data = b""
        while True:
            piece = s.recv(65536)
            if not piece:
                break
            data += piece
    if not data.startswith(b"HTTP/1.1 200") or not data.endswith(BODY.encode()):
        raise RuntimeError(f"proxy on {port} answered {data[:200]!r}")


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def run_wrk(port: int, connections: int, duration: float) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency", "-H",
         f"X-FaaS-Func-Name: {FUNCTION}", f"http://127.0.0.1:{port}/bench"],
        capture_output=True, text=True, timeout=duration + 30, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    latency = {}
    for pct in ("50", "99"):
        match = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        latency[pct] = float(match.group(1)) * _UNITS[match.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {"rps": rps, "p50_ms": latency["50"], "p99_ms": latency["99"],
            "non2xx": int(errors.group(1)) if errors else 0,
            "socket_errors": socket_errors.group(1) if socket_errors else ""}


def table(results: dict[str, dict[int, dict[str, float]]]) -> str:
    lines = [f"{'proxy':<9}{'c':>4}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}   "
             f"{'vs nginx (req/s p50 p99)':<27}{'vs twisted (req/s p50 p99)':<27}"]
    for name, by_c in results.items():
        for c, r in by_c.items():
            ratios = []
            for base in ("nginx", "twisted"):
                b = results.get(base, {}).get(c)
                if b:
                    ratios.append(f"{r['rps'] / b['rps']:6.2f} {r['p50_ms'] / b['p50_ms']:6.2f} "
                                  f"{r['p99_ms'] / b['p99_ms']:6.2f}")
                else:
                    ratios.append("")
            lines.append(f"{name:<9}{c:>4}{r['rps']:>10.0f}{r['p50_ms']:>9.2f}"
                         f"{r['p99_ms']:>9.2f}   {ratios[0]:<27}{ratios[1]:<27}")
    return "\n".join(lines)


def profile_calls(path: str, requests: int) -> str:
    import pstats
    import io

    stats = pstats.Stats(path)
    total_calls = sum(v[1] for v in stats.stats.values())  # type: ignore[attr-defined]
    out = io.StringIO()
    stats.stream = out  # type: ignore[attr-defined]
    stats.sort_stats("tottime").print_stats(25)
    return (f"{total_calls} Python calls for {requests} requests: "
            f"{total_calls / max(requests, 1):.0f} calls per request\n" + out.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--access-log", action="store_true", help="gate access log on")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per cell, keeping the best by req/s (on a shared machine "
                             "other load only ever makes a run slower)")
    parser.add_argument("--profile", action="store_true",
                        help="run the gate under cProfile at c16 and print where time goes")
    parser.add_argument("--only", nargs="*", default=["nginx", "twisted", "gate"],
                        choices=["nginx", "twisted", "gate", "gate-web"],
                        help="proxies to measure (gate-web: the gate's twisted.web "
                             "transport, which serves HTTPS/HTTP2, on plain HTTP)")
    parser.add_argument("--json", help="also write the results to this file")
    if len(sys.argv) > 1 and sys.argv[1] in ("serve-gate", "serve-gate-web", "serve-twisted"):
        mode, port, upstream = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
        if mode.startswith("serve-gate"):
            profile = sys.argv[sys.argv.index("--profile") + 1] if "--profile" in sys.argv else None
            serve_gate(port, upstream, "--access-log" in sys.argv, profile,
                       "web" if mode == "serve-gate-web" else "lean")
        else:
            serve_twisted(port, upstream)
        return
    args = parser.parse_args()
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None:
            sys.exit(f"bench/gate.py needs {tool} (make bench-gate installs it from Debian)")

    processes = Processes()
    workdir = Path(tempfile.mkdtemp(prefix="faastwist-bench-gate-"))
    os.chmod(workdir, 0o755)
    results: dict[str, dict[int, dict[str, float]]] = {}
    try:
        upstream_port = free_port()
        nginx(processes, workdir, "upstream",
              NGINX_UPSTREAM.format(port=upstream_port, answer=BODY), upstream_port)
        python = sys.executable
        env = dict(os.environ, PYTHONPATH=str(ROOT))

        def start_proxy(name: str, extra: list[str] | None = None) -> tuple[subprocess.Popen, int]:
            port = free_port()
            if name == "nginx":
                process = nginx(processes, workdir, "proxy", NGINX_PROXY.format(
                    upstream=upstream_port, port=port, function=FUNCTION, host=HOST), port)
            else:
                log = open(workdir / f"{name}.log", "wb")
                process = processes.start([python, __file__, f"serve-{name}", str(port),
                                           str(upstream_port), *(extra or [])], env=env,
                                          stdout=log, stderr=subprocess.STDOUT)
                wait_listening(port, process)
            check(port)
            return process, port

        if args.profile:
            prof = str(workdir / "gate.prof")
            process, port = start_proxy("gate", ["--profile", prof] + (
                ["--access-log"] if args.access_log else []))
            measured = run_wrk(port, 16, args.duration)
            processes.stop(process)
            requests = int(measured["rps"] * args.duration) + 1
            print(f"gate under cProfile at c16: {measured['rps']:.0f} req/s (profiling slows it)")
            print(profile_calls(prof, requests))
            if os.environ.get("BENCH_KEEP_PROFILE"):
                shutil.copy(prof, os.environ["BENCH_KEEP_PROFILE"])
            return

        order = [n for n in ("nginx", "twisted", "gate", "gate-web") if n in args.only]
        for name in order:
            extra = ["--access-log"] if name.startswith("gate") and args.access_log else []
            process, port = start_proxy(name, extra)
            run_wrk(port, 16, 1.0)  # warm-up: connections, caches, JIT-free but allocators
            results[name] = {}
            for connections in CONCURRENCY:
                runs = [run_wrk(port, connections, args.duration)
                        for _ in range(max(1, args.repeat))]
                results[name][connections] = max(runs, key=lambda r: r["rps"])
                print(f"{name} c{connections}: {results[name][connections]['rps']:.0f} req/s",
                      file=sys.stderr, flush=True)
            processes.stop(process)
        print(f"loopback, {os.cpu_count()} cores, one worker per proxy, wrk -t1, "
              f"{args.duration:g}s per run, best of {max(1, args.repeat)}, gate access log "
              f"{'on' if args.access_log else 'off'}; Python {sys.version.split()[0]}")
        print(table(results))
        failures = [(n, c, r) for n, by_c in results.items() for c, r in by_c.items()
                    if r["non2xx"] or r["socket_errors"]]
        for name, c, r in failures:
            print(f"warning: {name} c{c}: {r['non2xx']} non-2xx, socket errors: "
                  f"{r['socket_errors']}")
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
    finally:
        processes.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
