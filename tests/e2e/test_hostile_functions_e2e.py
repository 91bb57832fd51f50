"""Functions are hostile tenants: each attack of issue 21, as a function would make it,
on a real node running as root with bubblewrap, fails; the node and the other functions
are unharmed.

Deselected (with the reason in the report header) where the machine cannot sandbox:
not root, or no working bubblewrap (tests/conftest.py, marker ``sandbox``).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml

from tests.support.node import FaasNodeProcess, http
from tests.support.process import PYTHON, function_pids

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.sandbox]

ATTEMPT = """
import json, os, signal, sys
report = {}
def attempt(name, call):
    try:
        report[name] = "succeeded: " + str(call())[:300]
    except Exception as exc:
        report[name] = "refused: " + type(exc).__name__ + " " + str(exc)[:200]
"""

# envProcess: plants json.py where a Python helper could import it, and reports who
# its parent (the classic watchdog) is
PLANT = ATTEMPT + """
marker = os.environ["MARKER"]
payload = "open(" + repr(marker) + ", 'w').write(str(__import__('os').getuid()))\\n"
with open("/proc/%d/cmdline" % os.getppid(), "rb") as f:
    watchdog = f.read().split(b"\\0")
runtime = os.path.dirname(watchdog[2].decode())
attempt("cwd", lambda: open("json.py", "w").write(payload))
attempt("runtime", lambda: open(os.path.join(runtime, "json.py"), "w").write(payload))
for line in open("/proc/%d/status" % os.getppid()):
    if line.startswith("Uid:"):
        report["watchdog_uid"] = int(line.split()[1])
report["argv"] = [part.decode() for part in watchdog if part]
sys.stdout.write(json.dumps(report))
"""

# http: replaces its staged script by a link to a root-only file, then answers
STAGER = ATTEMPT + """
from http.server import BaseHTTPRequestHandler, HTTPServer
me = os.path.abspath(__file__)
victim = os.environ["VICTIM"]
attempt("unlink", lambda: os.unlink(me))
attempt("symlink", lambda: os.symlink(victim, me + ".link"))
attempt("chmod", lambda: os.chmod(os.path.dirname(me), 0o777))
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps(report).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"""

# http, holds a secret and a daemon of its own (double fork, new session)
HOLDER = """
import os, sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv("/bin/sleep", ["sleep", os.environ["DAEMON_MARK"]])
    os._exit(0)
os.wait()
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        body = open("/var/openfaas/secrets/holder-key", "rb").read()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"""

# fork: goes after another function's processes, environment and secrets
SNOOP = ATTEMPT + """
pid = int(os.environ["HOLDER_PID"])
report["visible_pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
attempt("environ", lambda: open("/proc/%d/environ" % pid, "rb").read())
attempt("root", lambda: os.listdir("/proc/%d/root/var/openfaas/secrets" % pid))
attempt("kill", lambda: os.kill(pid, signal.SIGKILL))
attempt("secrets", lambda: os.listdir("/var/openfaas/secrets"))
found = []
for top in ("/var/lib/faastwist", os.environ["DATA"]):
    for folder, _, files in os.walk(top):
        for name in files:
            try:
                if ("holder-secret-" + "value").encode() in open(os.path.join(folder, name), "rb").read():
                    found.append(os.path.join(folder, name))
            except OSError:
                pass
report["found"] = found
sys.stdout.write(json.dumps(report))
"""

# fork: 400 processes, then 300 MiB of files
FORKER = ATTEMPT + """
import subprocess
children, error = [], ""
for _ in range(400):
    try:
        children.append(subprocess.Popen(["/bin/sleep", "30"]))
    except OSError as exc:
        error = type(exc).__name__ + " " + str(exc)
        break
report["started"] = len(children)
report["error"] = error
sys.stderr.write("fork failed: %s\\n" % error)
for child in children:
    child.kill()
    child.wait()
def fill(path):
    written = 0
    with open(path, "wb") as f:
        for _ in range(300):
            f.write(b"x" * 2**20)
            f.flush()
            written += 2**20
    return written
attempt("home", lambda: fill(os.path.join(os.environ["HOME"], "big")))
attempt("tmp", lambda: fill("/tmp/big"))
attempt("var_tmp", lambda: fill("/var/tmp/big"))
sys.stdout.write(json.dumps(report))
"""


def _write(folder: Path, name: str, text: str) -> str:
    path = folder / name
    path.write_text(text)
    path.chmod(0o644)            # in the config folder, readable: staged for the function
    return str(path)


def _wait(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            assert value, f"not within {timeout}s: {what}"
            return value
        time.sleep(0.1)


def _invoke(node: FaasNodeProcess, name: str, timeout: float = 30.0) -> tuple[int, bytes]:
    deadline = time.monotonic() + timeout
    while True:
        status, _, body = http("GET", f"{node.gate_url}/function/{name}/")
        if status == 200 or time.monotonic() > deadline:
            return status, body
        time.sleep(0.2)


def _create(node: FaasNodeProcess, spec: dict) -> None:
    status, body = node.json("POST", "", yaml.safe_dump(spec))
    assert status == 201, body


def _with_cmdline(argument: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if argument.encode() in f.read().split(b"\0"):
                        found.append(int(entry))
            except OSError:
                continue
    return found


def _uid(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Uid:"):
                return int(line.split()[1])
    raise AssertionError(f"no Uid line for {pid}")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaasNodeProcess]:
    folder = tmp_path_factory.mktemp("hostile")
    node = FaasNodeProcess(folder, provider="process",
                           extra={"process": {"pidsLimit": 64, "diskLimit": "16Mi"}}).start()
    try:
        yield node
    finally:
        node.stop()


def test_a_planted_module_is_never_imported_by_root(hostile: FaasNodeProcess) -> None:
    node = hostile
    marker = node.workdir / "pwned"
    code = base64.b64encode(PLANT.encode()).decode()   # fprocess is one line of words
    _create(node, {"name": "planter",
                   "envProcess": f"{PYTHON} -c \"import base64; exec(base64.b64decode('{code}'))\"",
                   "env": {"MARKER": str(marker)}})
    status, body = _invoke(node, "planter")
    assert status == 200, body
    first = json.loads(body)
    # the watchdog is the function's own uid, started isolated (-I) from the node's
    # read-only copy; what the function planted in its folder stays in its tmpfs
    assert first["watchdog_uid"] != 0
    assert first["argv"][1] == "-I"
    assert first["runtime"].startswith("refused: OSError [Errno 30] Read-only file system")
    # a new replica (stop, start) after the plant: no root process imports it
    for action in ("stop", "start"):
        status, reply = node.json("PUT", f"/planter/{action}")
        assert status == 200, reply
    status, body = _invoke(node, "planter")
    assert status == 200, body
    assert json.loads(body)["watchdog_uid"] == first["watchdog_uid"]
    assert not marker.exists()
    for pid in function_pids("planter"):
        assert _uid(pid) == first["watchdog_uid"]


def test_staging_never_follows_a_link_the_function_planted(hostile: FaasNodeProcess) -> None:
    node = hostile
    victim = node.workdir / "victim"
    victim.write_text("root only\n")
    victim.chmod(0o600)
    script = _write(node.workdir, "stager.py", STAGER)
    spec = {"name": "stager", "command": [PYTHON, script], "readinessPath": "/",
            "env": {"VICTIM": str(victim)}}
    _create(node, spec)
    status, body = _invoke(node, "stager")
    assert status == 200, body
    attempts = json.loads(body)
    for name in ("unlink", "symlink", "chmod"):
        assert attempts[name].startswith("refused: OSError [Errno 30]"), attempts
    # an update stages again (and a restart would too): the victim is untouched
    spec["env"]["ROUND"] = "2"
    assert node.json("PUT", "/stager/stop")[0] == 200
    status, reply = node.json("PUT", "/stager", yaml.safe_dump(spec))
    assert status == 200, reply    # inactive -> initial: the reconciler deploys it
    _wait(lambda: _invoke(node, "stager")[0] == 200, what="stager serving again")
    info = victim.stat()
    assert (info.st_uid, info.st_mode & 0o777, victim.read_text()) == (0, 0o600, "root only\n")


def test_loader_variables_are_refused_naming_the_key(hostile: FaasNodeProcess) -> None:
    node = hostile
    for key in ("LD_PRELOAD", "PYTHONPATH", "LD_LIBRARY_PATH", "BASH_ENV"):
        status, body = node.json("POST", "", yaml.safe_dump(
            {"name": "loader", "command": [PYTHON, "-c", "pass"], "env": {key: "/tmp/x.so"}}))
        assert status == 400 and body["message"].startswith(f"env.{key}: is refused"), body
    status, headers, raw = http("POST", f"http://127.0.0.1:{node.admin_port}/system/functions",
                                json.dumps({"service": "loader", "image": "x",
                                            "envProcess": "cat",
                                            "envVars": {"LD_PRELOAD": "/tmp/x.so"}}),
                                {"Content-Type": "application/json"})
    assert status == 400 and b"envVars.LD_PRELOAD" in raw, raw


def test_no_function_reaches_another_and_no_daemon_outlives_its_function(
        hostile: FaasNodeProcess) -> None:
    node = hostile
    status, _, raw = http("POST", f"http://127.0.0.1:{node.admin_port}/system/secrets",
                          json.dumps({"name": "holder-key", "value": "holder-secret-value"}),
                          {"Content-Type": "application/json"})
    assert status == 202, raw
    holder = _write(node.workdir, "holder.py", HOLDER)
    _create(node, {"name": "holder", "command": [PYTHON, holder], "readinessPath": "/",
                   "secrets": ["holder-key"], "env": {"DAEMON_MARK": "600.4242"}})
    status, body = _invoke(node, "holder")
    assert (status, body) == (200, b"holder-secret-value")
    holder_pid = max(function_pids("holder"))
    daemons = _wait(lambda: _with_cmdline("600.4242"), what="the holder's daemon")
    snoop = _write(node.workdir, "snoop.py", SNOOP)
    _create(node, {"name": "snoop", "command": [PYTHON, snoop], "mode": "fork",
                   "env": {"HOLDER_PID": str(holder_pid), "DATA": str(node.workdir)}})
    status, body = _invoke(node, "snoop")
    assert status == 200, body
    report = json.loads(body)
    print("snoop's attempts:", report)
    assert report["found"] == []
    assert report["visible_pids"][0] == 1 and len(report["visible_pids"]) <= 4
    for name in ("environ", "root"):
        assert report[name].startswith("refused: FileNotFoundError"), report
    assert report["kill"].startswith("refused: ProcessLookupError"), report
    assert report["secrets"] == "succeeded: []", report
    # the holder serves on; its daemon runs as its uid, snoop has another
    assert _invoke(node, "holder") == (200, b"holder-secret-value")
    assert _uid(daemons[0]) == _uid(holder_pid) != 0
    status, described = node.json("GET", "/snoop")
    snoop_user = described["status"]["extData"]["user"]
    status, described = node.json("GET", "/holder")
    holder_user = described["status"]["extData"]["user"]
    assert snoop_user.split(":")[0] != holder_user.split(":")[0]
    assert holder_user.startswith(f"{_uid(holder_pid)}:")
    # delete: the daemon goes with its function (its PID namespace ends)
    assert node.json("PUT", "/holder/stop")[0] == 200
    assert node.json("DELETE", "/holder")[0] == 200
    _wait(lambda: not _with_cmdline("600.4242"), 10, "the daemon gone after delete")


def test_a_daemon_does_not_outlive_a_node_killed_or_restarted(tmp_path: Path) -> None:
    node = FaasNodeProcess(tmp_path / "node", provider="process").start()
    try:
        script = _write(node.workdir, "holder.py", HOLDER.replace(
            'open("/var/openfaas/secrets/holder-key", "rb").read()', 'b"up"'))
        for name, mark in (("keeper", "600.5151"),):
            _create(node, {"name": name, "command": [PYTHON, script], "readinessPath": "/",
                           "minReplica": 1, "env": {"DAEMON_MARK": mark}})
        assert _invoke(node, "keeper") == (200, b"up")
        _wait(lambda: _with_cmdline("600.5151"), what="the daemon")
        node.stop()                                   # SIGTERM: a clean restart
        _wait(lambda: not _with_cmdline("600.5151"), 10, "the daemon gone with the node")
        node.start()
        assert _invoke(node, "keeper") == (200, b"up")
        _wait(lambda: _with_cmdline("600.5151"), what="the daemon again")
        os.kill(node.process.pid, signal.SIGKILL)     # no shutdown at all
        _wait(lambda: not _with_cmdline("600.5151"), 10, "the daemon gone with a killed node")
    finally:
        node.stop()


def test_processes_and_disk_are_limited(hostile: FaasNodeProcess) -> None:
    node = hostile
    script = _write(node.workdir, "forker.py", FORKER)
    _create(node, {"name": "forker", "command": [PYTHON, script], "mode": "fork",
                   "timeout": "60s"})
    status, body = _invoke(node, "forker", timeout=60)
    assert status == 200, body
    report = json.loads(body)
    print("forker:", {k: v for k, v in report.items()})
    assert report["started"] < 64 and "Resource temporarily unavailable" in report["error"]
    for place in ("home", "tmp"):
        assert report[place].startswith("refused: OSError [Errno 28] No space left"), report
    assert report["var_tmp"].startswith("refused: OSError [Errno 30]"), report
    status, _, raw = http("GET", f"http://127.0.0.1:{node.admin_port}/system/logs"
                                 f"?name=forker&tail=20")
    assert status == 200 and b"fork failed: BlockingIOError" in raw, raw
    status, document = node.json("GET", "/forker")
    ext = document["status"]["extData"]
    print("extData:", ext)
    assert ext["pidsLimit"] == "RLIMIT_NPROC=64" and ext["diskLimit"] == str(16 * 2**20)
    assert ext["sandbox"].startswith("bubblewrap")
    # the node is fine
    assert http("GET", f"http://127.0.0.1:{node.admin_port}/readyz")[0] == 200
