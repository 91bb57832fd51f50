"""Gate benchmark on loopback: faastwist's gate against nginx and Twisted's own proxy.

    PYTHONPATH=. .venv/bin/python bench/gate.py              # the table (about 2 minutes)
    PYTHONPATH=. .venv/bin/python bench/gate.py --profile --access-log   # calls per request

One fixed upstream (nginx, one worker, a 17-byte answer over keep-alive) serves the
proxies, which all route on ``X-FaaS-Func-Name`` and send
``Host: demo10.default.example.com``:

- nginx: one worker, ``map $http_x_faas_func_name``, keep-alive upstream pool (the
  reference);
- twisted: ``twisted.web.proxy.ReverseProxyResource`` behind a resource that checks
  the same header (Twisted's own reverse proxy, the baseline);
- gate: faastwist's GateService (lean HTTP/1.1 transport) with every feature on: route
  table from a store, request adaptor, header hygiene, X-Forwarded-*, call ids,
  Prometheus counts, per-function timeout, and the access log on, written to a file
  as under twistd; then the same with the access log off, the same under the other
  interpreter (Debian's CPython when this is not it), and the same with 10,000
  functions in its route table (one of them called);
- gate-web (only with ``--only gate-web``): the gate's twisted.web transport, which
  serves HTTPS and HTTP/2, measured on plain HTTP for comparison.

The interpreters are named with their build (``sysconfig`` CONFIG_ARGS). Each proxy is
one process; wrk (one thread) runs each concurrency level for ``--duration`` seconds
after a short warm-up; the table gives req/s, p50 and p99, and each as a ratio to nginx
and to Twisted's proxy at the same concurrency. Every process the benchmark starts is
stopped by its pid; only 127.0.0.1 is used.
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


# -- the proxies, as child processes ------------------------------------------------------

def serve_gate(port: int, upstream_port: int, access_log: bool, profile: str | None,
               transport: str = "lean", functions: int = 1,
               tls: tuple[str, str] | None = None) -> None:
    """The gate with every feature on, as the benchmark's child process."""
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver, LogLevel
    from twisted.logger import FilteringLogObserver, LogLevelFilterPredicate

    from faastwist.config import HTTPServerConfig, KnativeConfig
    from faastwist.model.fsm import FunctionStatus, State
    from faastwist.gate.accesslog import AccessLog
    from faastwist.gate.service import GateService
    from faastwist.metrics import Metrics
    from faastwist.providers.kourier import KnativeRouting
    from faastwist.gate.routes import RouteTable
    from faastwist.model.spec import FunctionSpec
    from faastwist.store.memory import MemoryStore

    # as under twistd: the log observer and the access log share one file (the
    # gate's log, in the benchmark's work folder)
    log_file = open(os.environ.get("BENCH_GATE_LOG", os.devnull), "a")
    globalLogBeginner.beginLoggingTo([FilteringLogObserver(
        textFileLogObserver(log_file), [LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)])])

    def write(text: str) -> None:
        log_file.write(text)
        log_file.flush()
    store = MemoryStore()
    spec = FunctionSpec.from_dict({
        "name": FUNCTION, "image": "bench/demo10", "timeout": "30s",
        "requestAdaptor": {"header": {"set": {"X-Bench": "1"}, "del": ["X-Unwanted"]},
                           "path": {"addPrefix": "/fn"}}})
    store.create(spec, FunctionStatus(FUNCTION, State.ACTIVE))
    for i in range(functions - 1):  # others in the route table, never called
        other = FunctionSpec.from_dict({"name": f"fn{i:05d}", "image": "bench/other",
                                        "requestAdaptor": {"path": {"addPrefix": "/o"}}})
        store.create(other, FunctionStatus(other.name, State.ACTIVE))
    routes = RouteTable(store, reactor)
    routes.startService()
    provider = KnativeRouting(KnativeConfig(
        network_layer_url=f"http://127.0.0.1:{upstream_port}",
        namespace="default", host_suffix="example.com"))
    if tls is not None:
        server_config = HTTPServerConfig(port=port, address="127.0.0.1", https=True,
                                         cert_file=tls[0], key_file=tls[1])
    else:
        server_config = HTTPServerConfig(port=port, address="127.0.0.1")
    service = GateService(server_config, routes, provider,
                          reactor, Metrics(), access_log=access_log, transport=transport,
                          access=AccessLog(reactor, write, json=False))
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
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
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


def run_wrk(port: int, connections: int, duration: float, scheme: str = "http",
            close: bool = False) -> dict[str, float]:
    extra = ["-H", "Connection: close"] if close else []
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency", "-H",
         f"X-FaaS-Func-Name: {FUNCTION}", *extra, f"{scheme}://127.0.0.1:{port}/bench"],
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
    lines = [f"{'proxy':<22}{'c':>5}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}   "
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
            lines.append(f"{name:<22}{c:>5}{r['rps']:>10.0f}{r['p50_ms']:>9.2f}"
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


def interpreter_info(python: str) -> dict[str, Any]:
    """Version, path and whether the build is optimized, as ``python`` reports it."""
    code = ("import json, os, sys, sysconfig; a = sysconfig.get_config_var('CONFIG_ARGS') or ''; "
            "print(json.dumps({'version': sys.version.split()[0], 'executable': sys.executable, "
            "'pgo': '--enable-optimizations' in a, 'lto': '--with-lto' in a, "
            "'debian': sys.executable.startswith('/usr/bin/') and os.path.exists("
            "'/etc/debian_version')}))")
    info = json.loads(subprocess.run([python, "-c", code], capture_output=True, text=True,
                                     check=True).stdout)
    if info["pgo"] or info["lto"]:
        info["build"] = "optimized (CONFIG_ARGS: " + ", ".join(
            f for f, on in (("--enable-optimizations", info["pgo"]), ("--with-lto", info["lto"]))
            if on) + ")"
    elif info["debian"]:
        info["build"] = ("Debian's package: CONFIG_ARGS has neither --enable-optimizations "
                         "nor --with-lto; Debian builds it with PGO and LTO from debian/rules")
    else:
        info["build"] = "not optimized (CONFIG_ARGS has neither --enable-optimizations nor --with-lto)"
    return info


def other_interpreter() -> str | None:
    """Debian's CPython of the same minor version, when it is not the one running and it
    can load this venv's packages (the gate then runs under it too)."""
    candidate = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    if not os.path.exists(candidate) or os.path.realpath(candidate) == os.path.realpath(
            sys.executable):
        return None
    check = subprocess.run([candidate, "-c", "import httptools, twisted, prometheus_client"],
                           env=dict(os.environ, PYTHONPATH=child_path()), capture_output=True)
    return candidate if check.returncode == 0 else None


def child_path() -> str:
    """PYTHONPATH for the proxies: the tree, then this interpreter's packages (so another
    interpreter of the same version runs the gate with the same dependencies)."""
    import sysconfig

    paths = [str(ROOT), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    paths += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join(dict.fromkeys(paths))


def two_write(args: argparse.Namespace, processes: Processes, workdir: Path,
              env: dict[str, str], start_proxy: Any) -> None:
    """A function that writes its head and body in two sends (Python's unbuffered
    ``http.server``, Nagle on) against one that writes once, through the gate and
    through nginx: with delayed ACKs on the proxy's side the two-write function costs
    ~40 ms per request; the gate ACKs at once (TCP_QUICKACK) and must stay within 1 ms
    of the one-write function at p50."""
    print(f"interpreter: Python {sys.version.split()[0]} ({sys.executable}); machine: "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the start",
          flush=True)
    results: dict[str, dict[int, dict[str, float]]] = {}
    for kind in ("one", "two"):
        server = processes.start([sys.executable, str(ROOT / "tests/support/twowrite.py"),
                                  kind], stdout=subprocess.PIPE)
        assert server.stdout is not None
        function_port = int(server.stdout.readline())
        for proxy in ("nginx", "gate"):
            process, port = start_proxy(proxy, extra=["--access-log"] if proxy == "gate"
                                        else None, upstream=function_port)
            run_wrk(port, 1, 1.0)
            label = f"{proxy}, {kind}-write"
            results[label] = {}
            for connections in args.concurrency or (1, 16):
                results[label][connections] = run_wrk(port, connections, args.duration)
            processes.stop(process)
        processes.stop(server)
    print(f"two-write function (head and body in two sends) vs one-write, through each "
          f"proxy; wrk -t1, {args.duration:g}s per run; the function is http.server "
          f"(threads), so req/s is the function's; load average at the end "
          f"{os.getloadavg()[0]:.2f}")
    print(table(results))
    for proxy in ("nginx", "gate"):
        for c in results[f"{proxy}, one-write"]:
            one = results[f"{proxy}, one-write"][c]["p50_ms"]
            two = results[f"{proxy}, two-write"][c]["p50_ms"]
            verdict = "ok" if two - one <= 1.0 else "OVER 1 ms"
            print(f"{proxy} c{c}: p50 two-write - one-write = {two - one:+.2f} ms ({verdict})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


NGINX_TLS_PROXY = """
    upstream functions {{ server 127.0.0.1:{upstream}; keepalive 128; }}
    map $http_x_faas_func_name $function_host {{ {function} {host}; default ""; }}
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        access_log {dir}/nginx-tls.access.log;
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


def make_certificate(workdir: Path) -> tuple[str, str]:
    """One self-signed ECDSA P-256 certificate for 127.0.0.1, for every TLS proxy."""
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return str(cert), str(key)


def check_tls(port: int) -> None:
    import ssl

    context = ssl._create_unverified_context()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw) as s:
            s.sendall(f"GET /check HTTP/1.1\r\nHost: bench\r\nX-FaaS-Func-Name: {FUNCTION}"
                      f"\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while True:
                piece = s.recv(65536)
                if not piece:
                    break
                data += piece
    if not data.startswith(b"HTTP/1.1 200") or not data.endswith(BODY.encode()):
        raise RuntimeError(f"TLS proxy on {port} answered {data[:200]!r}")


def https(args: argparse.Namespace, processes: Processes, workdir: Path,
          env: dict[str, str], start_proxy: Any, upstream_port: int) -> None:
    """HTTPS: the gate (httpServer.https, access log on) against nginx with TLS (same
    certificate, keep-alive, access log on), at c16 over kept-alive connections, and
    the handshake rate (``Connection: close``: one TLS handshake per request); the
    twisted.web transport with TLS and the gate in cleartext alongside, for scale."""
    python = args.python or sys.executable   # the gates' interpreter (--python)
    info = interpreter_info(python)
    print(f"interpreter of the gates: Python {info['version']} ({info['executable']}): "
          f"{info['build']}; machine: {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.2f} at the start", flush=True)
    cert, key = make_certificate(workdir)
    results: dict[str, dict[int, dict[str, float]]] = {}
    ports: dict[str, int] = {}
    # all three listen at once and their runs alternate, so load from elsewhere on a
    # shared machine falls on each alike; "gate-web" is twisted.web with pyOpenSSL (what
    # httpServer.https ran on before the lean transport took TLS)
    for proxy in ("nginx", "gate", "gate-web", "gate-cleartext"):
        port = ports[proxy] = free_port()
        if proxy == "nginx":
            nginx(processes, workdir, "tls", NGINX_TLS_PROXY.format(
                upstream=upstream_port, port=port, function=FUNCTION, host=HOST, cert=cert,
                key=key, dir=workdir), port)
            continue
        log = open(workdir / f"{proxy}-tls.log", "wb")
        tls = [] if proxy == "gate-cleartext" else ["--tls", cert, key]
        process = processes.start(
            [python, __file__, "serve-gate", str(port), str(upstream_port),
             "--access-log", *tls],
            env=dict(env, BENCH_GATE_TRANSPORT="web" if proxy == "gate-web" else "lean"),
            stdout=log, stderr=subprocess.STDOUT)
        wait_listening(port, process, timeout=60)
    for proxy, port in ports.items():
        scheme = "http" if proxy == "gate-cleartext" else "https"
        check(port) if scheme == "http" else check_tls(port)
        run_wrk(port, 16, 1.0, scheme=scheme)
    for _ in range(max(1, args.repeat)):
        for proxy, port in ports.items():
            scheme = "http" if proxy == "gate-cleartext" else "https"
            for label, close in ((f"{proxy}-tls", False), (f"{proxy}-tls handshakes", True)):
                if scheme == "http":
                    label = label.replace("-tls", "")
                    if close:
                        continue   # (a new TCP connection per request: not this table's)
                for connections in args.concurrency or (16,):
                    run = run_wrk(port, connections, args.duration, scheme=scheme, close=close)
                    best = results.setdefault(label, {}).get(connections)
                    if best is None or run["rps"] > best["rps"]:
                        results[label][connections] = run
    print(f"HTTPS, TLS 1.3 (wrk's OpenSSL), one ECDSA P-256 certificate, access logs on, "
          f"wrk -t1, {args.duration:g}s per run, best of {max(1, args.repeat)}; "
          f"'handshakes': Connection: close (a new TLS connection per request); load "
          f"average at the end {os.getloadavg()[0]:.2f}")
    for label, by_c in sorted(results.items(), key=lambda item: "handshakes" in item[0]):
        base = results["nginx-tls handshakes" if "handshakes" in label else "nginx-tls"]
        for c, r in by_c.items():
            print(f"{label:<26}c{c:<4}{r['rps']:>9.0f} req/s  p50 {r['p50_ms']:6.2f} ms  "
                  f"p99 {r['p99_ms']:7.2f} ms   {r['rps'] / base[c]['rps']:5.2f} of nginx")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


#: (row, proxy, concurrency levels); "gate" rows have the access log on
ROWS = [
    ("nginx", "nginx", (1, 16, 256, 1024)),
    ("twisted", "twisted", (16, 256)),
    ("gate", "gate", (1, 16, 256, 1024)),
    ("gate, log off", "gate", (16,)),
    ("gate, other python", "gate", (16,)),
    ("gate, 10k functions", "gate", (16,)),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per cell, keeping the best by req/s (on a shared machine "
                             "other load only ever makes a run slower)")
    parser.add_argument("--profile", action="store_true",
                        help="run the gate under cProfile at c16 and print where time goes")
    parser.add_argument("--access-log", action="store_true",
                        help="with --profile: the access log on")
    parser.add_argument("--only", nargs="*", default=None,
                        help="rows to measure (default: all): " + ", ".join(r[0] for r in ROWS)
                             + ", gate-web (the twisted.web transport on plain HTTP), "
                             "two-write (a function writing head and body apart, alone), "
                             "https (HTTPS and handshakes against nginx with TLS, alone)")
    parser.add_argument("--functions", type=int, default=10000,
                        help="functions in the route table of the '10k functions' row")
    parser.add_argument("--python", help="the other interpreter (default: Debian's "
                                         "/usr/bin/python3.X when it is not this one)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--concurrency", type=int, nargs="*", default=None,
                        help="wrk connection counts (default: per row)")
    if len(sys.argv) > 1 and sys.argv[1] in ("serve-gate", "serve-gate-web", "serve-twisted"):
        mode, port, upstream = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
        if mode.startswith("serve-gate"):
            profile = sys.argv[sys.argv.index("--profile") + 1] if "--profile" in sys.argv else None
            functions = (int(sys.argv[sys.argv.index("--functions") + 1])
                         if "--functions" in sys.argv else 1)
            tls = None
            if "--tls" in sys.argv:
                at = sys.argv.index("--tls")
                tls = (sys.argv[at + 1], sys.argv[at + 2])
            transport = "web" if mode == "serve-gate-web" else "lean"
            if tls is not None:
                transport = os.environ.get("BENCH_GATE_TRANSPORT", "auto")
            serve_gate(port, upstream, "--access-log" in sys.argv, profile, transport,
                       functions, tls)
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
        env = dict(os.environ, PYTHONPATH=child_path(), BENCH_GATE_LOG=str(workdir / "gate-log"))

        def start_proxy(name: str, python: str = sys.executable,
                        extra: list[str] | None = None,
                        upstream: int | None = None) -> tuple[subprocess.Popen, int]:
            port = free_port()
            target = upstream or upstream_port
            if name == "nginx":
                process = nginx(processes, workdir, f"proxy-{port}", NGINX_PROXY.format(
                    upstream=target, port=port, function=FUNCTION, host=HOST), port)
            else:
                log = open(workdir / f"{name}.log", "wb")
                process = processes.start([python, __file__, f"serve-{name}", str(port),
                                           str(target), *(extra or [])], env=env,
                                          stdout=log, stderr=subprocess.STDOUT)
                wait_listening(port, process, timeout=60)
            check(port)
            return process, port

        if args.profile:
            prof = str(workdir / "gate.prof")
            process, port = start_proxy("gate", extra=["--profile", prof] + (
                ["--access-log"] if args.access_log else []))
            measured = run_wrk(port, 16, args.duration)
            processes.stop(process)
            requests = int(measured["rps"] * args.duration) + 1
            print(f"gate under cProfile at c16: {measured['rps']:.0f} req/s (profiling slows it)")
            print(profile_calls(prof, requests))
            if os.environ.get("BENCH_KEEP_PROFILE"):
                shutil.copy(prof, os.environ["BENCH_KEEP_PROFILE"])
            return

        if args.only and "https" in args.only:
            https(args, processes, workdir, env, start_proxy, upstream_port)
            return
        if args.only and "two-write" in args.only:
            two_write(args, processes, workdir, env, start_proxy)
            return

        here = interpreter_info(sys.executable)
        other = args.python or other_interpreter()
        print(f"interpreter: Python {here['version']} ({here['executable']}): {here['build']}")
        if other:
            there = interpreter_info(other)
            print(f"other interpreter: Python {there['version']} ({there['executable']}): "
                  f"{there['build']}")
        print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} "
              f"{os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} at the start", flush=True)
        rows = [r for r in ROWS if args.only is None or r[0] in args.only]
        if args.only and "gate-web" in args.only:
            rows.append(("gate-web", "gate-web", (16,)))
        for label, proxy, levels in rows:
            python, extra = sys.executable, []
            if proxy.startswith("gate") and label != "gate, log off":
                extra.append("--access-log")
            if label == "gate, other python":
                if not other:
                    print("(no other interpreter: the 'gate, other python' row is skipped)")
                    continue
                python = other
                label = f"gate, python {interpreter_info(other)['version']}"
            if label == "gate, 10k functions":
                extra += ["--functions", str(args.functions)]
            process, port = start_proxy(proxy, python, extra)
            run_wrk(port, 16, 1.0)  # warm-up: connections, caches, allocators
            results[label] = {}
            for connections in args.concurrency or levels:
                runs = [run_wrk(port, connections, args.duration)
                        for _ in range(max(1, args.repeat))]
                results[label][connections] = max(runs, key=lambda r: r["rps"])
                print(f"{label} c{connections}: {results[label][connections]['rps']:.0f} req/s",
                      file=sys.stderr, flush=True)
            processes.stop(process)
        print(f"loopback, one process per proxy (nginx: worker_processes 1), wrk -t1, "
              f"{args.duration:g}s per run, best of {max(1, args.repeat)}; gate rows with the "
              f"access log on (to a file) unless 'log off'; load average at the end "
              f"{os.getloadavg()[0]:.2f}")
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
