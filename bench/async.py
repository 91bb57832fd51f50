"""Asynchronous invocations: how fast calls are queued, and how fast they run.

    PYTHONPATH=. .venv/bin/python bench/async.py [--duration 10] [--connections 16]

Starts a real ``twistd -n faasgate`` node (process provider, embedded etcd, embedded
nats-server, access log off) with ``conf/functions/echo.py`` as function ``echo``
(one replica kept, ``asyncConcurrency: 32``), then, in one run:

1. sync: wrk at c16 POSTing through the gate (X-FaaS-Func-Name), requests/s, p50/p99;
2. enqueue: the same with ``X-FaaS-Async: true`` (each 202 is answered only after
   JetStream acknowledged the message), requests/s, p50/p99;
3. end to end: the function is stopped during (2), so its calls stay queued and (2)
   measures accepting alone; then it is started and the workers drain the queue:
   completed calls per second from the node's ``faastwist_async_completed_total``.

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


#: the node's admin token (read from the file the node writes on its first start)
TOKEN: list[str] = []


def http(method: str, url: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    sent = dict(headers or {})
    if TOKEN:
        sent["Authorization"] = f"Bearer {TOKEN[0]}"
    request = urllib.request.Request(url, body, sent, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def start_node(workdir: Path) -> tuple[subprocess.Popen, int, int]:
    gate, admin = free_port(), free_port()
    config = {
        "name": "bench", "provider": "process", "syncInterval": "1s",
        "httpServer": {"port": gate, "address": "127.0.0.1", "accessLog": False},
        "admin": {"port": admin, "address": "127.0.0.1",
                  "auth": {"tokensFile": str(workdir / "admin-tokens")}},
        "etcd": {"dataDir": str(workdir / "etcd")},
        "process": {"dataDir": str(workdir / "data")},
        "queue": {"dataDir": str(workdir / "nats")},
    }
    (workdir / "controller.yaml").write_text(json.dumps(config))
    log = open(workdir / "node.log", "ab")
    node = subprocess.Popen([str(TWISTD), "-n", "--pidfile=", "faasgate", "--config",
                             str(workdir / "controller.yaml")], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if http("GET", f"http://127.0.0.1:{admin}/readyz")[0] == 200:
                TOKEN.append((workdir / "admin-tokens.admin").read_text().strip())
                return node, gate, admin
        except OSError:
            pass
        if node.poll() is not None:
            break
        time.sleep(0.2)
    stop(node)
    raise SystemExit(f"the node did not start; see {workdir / 'node.log'}")


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
            "readinessPath": "/healthz", "minReplica": 1, "asyncConcurrency": 32}
    status, body = http("POST", base_url(admin), json.dumps(spec).encode(),
                        {"Content-Type": "application/json"})
    assert status == 201, body
    wait_state(admin, "active")


def base_url(admin: int) -> str:
    return f"http://127.0.0.1:{admin}/apis/v2/faas/bench"


def wait_state(admin: int, state: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        _, body = http("GET", f"{base_url(admin)}/echo", headers={"Accept": "application/json"})
        if json.loads(body)["status"]["state"] == state:
            return
        time.sleep(0.2)
    raise SystemExit(f"echo did not become {state}")


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("async: wrk is required (apt-get install wrk)")
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
    print(f"interpreter: {platform.python_implementation()} {platform.python_version()} "
          f"({sys.executable}); {os.cpu_count()} cores; wrk -c{args.connections} "
          f"-d{args.duration}s")
    print(f"{'':<22}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    for label, row in (("sync (200)", sync), ("enqueue (202)", enqueue)):
        print(f"{label:<22}{row['rps']:>10.0f}{row['p50']:>10.2f}{row['p99']:>10.2f}")
    print(f"end to end: {enqueue['requests']} queued calls ran at {rate:.0f} calls/s "
          f"(drained in {seconds:.1f}s)")


if __name__ == "__main__":
    main()
