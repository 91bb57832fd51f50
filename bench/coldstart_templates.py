"""Cold start of a template function against a plain HTTP function, on a real node.

    PYTHONPATH=. .venv/bin/python bench/coldstart_templates.py [--runs 10]

Starts a process-provider node (``tests/support/node.py``, as root with bubblewrap: the
functions run in their sandboxes), deploys with ``faastwist up`` a ``python3-http``
function, a ``node`` one (when Debian's nodejs is installed) and the two Go templates
(when Debian's golang-go is), all scaled to zero
(``com.openfaas.scale.zero``), and with the admin API a plain function running
``conf/functions/echo.py`` (a hand-written ``http.server``) also scaled to zero. Per run
it waits until no process of the function is left (idle timeout 0.3 s), then times one request
through ``/function/NAME`` to its complete answer. Prints the median and the range of
each. Every process is stopped by pid at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.cli import cli_env  # noqa: E402
from tests.support.node import FaasNodeProcess, http  # noqa: E402

STACK = """version: 1.0
provider: {name: openfaas, gateway: http://127.0.0.1:8080}
functions:
"""


def running(marker: str) -> bool:
    """Whether a process whose command line names ``marker`` (the function's program,
    as the launch prefix, bwrap and the function itself all do) is alive."""
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as file:
                    if marker.encode() in file.read():
                        return True
            except OSError:
                continue
    return False


def cold_call(node: FaasNodeProcess, name: str) -> float:
    _, record = node.json("GET", f"/{name}")
    marker = record["spec"]["command"][-2 if name.startswith("t-python") else -1]
    deadline = time.monotonic() + 30
    while running(marker):
        if time.monotonic() > deadline:
            raise SystemExit(f"{name}: replicas did not go to zero")
        time.sleep(0.1)
    started = time.monotonic()
    status, _, body = http("GET", f"{node.gate_url}/function/{name}", timeout=60)
    took = time.monotonic() - started
    if status != 200:
        raise SystemExit(f"{name}: {status} {body[:200]!r}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="faastwist-coldstart-", dir="/tmp"))
    os.chmod(work, 0o711)
    (work / "plain").mkdir(mode=0o755)   # not the folder that holds the node's data
    shutil.copy(ROOT / "conf" / "functions" / "echo.py", work / "plain" / "echo.py")
    os.chmod(work / "plain" / "echo.py", 0o644)
    node = FaasNodeProcess(work / "node", extra={"process": {"idleTimeout": "300ms"}})
    node.start()
    try:
        project = work / "project"
        project.mkdir()
        langs = (["python3-http"] + (["node"] if os.access("/usr/bin/node", os.X_OK) else [])
                 + (["golang-middleware", "golang-http"] if os.access("/usr/bin/go", os.X_OK)
                    else []))
        stack = STACK + "".join(
            f"  t-{lang}:\n    lang: {lang}\n    handler: ./t-{lang}\n"
            f"    labels: {{com.openfaas.scale.zero: 'true'}}\n" for lang in langs)
        (project / "stack.yml").write_text(stack)
        for lang in langs:
            subprocess.run([sys.executable, "-m", "faastwist.cli", "new", f"t-{lang}",
                            "--lang", lang, "-f", "other.yml"], cwd=project, check=True,
                           env=cli_env(node, work), capture_output=True)
        subprocess.run([sys.executable, "-m", "faastwist.cli", "up", "--build-dir",
                        str(work / "builds")], cwd=project, check=True,
                       env=cli_env(node, work))
        plain = {"name": "plain", "command": ["/usr/bin/python3", str(work / "plain" / "echo.py")],
                 "minReplica": 0}
        status, _ = node.json("POST", "", json.dumps(plain), "application/json")
        assert status == 201, status
        names = ["plain"] + [f"t-{lang}" for lang in langs]
        deadline = time.monotonic() + 60
        while any(node.json("GET", f"/{name}")[1]["status"]["state"] != "active"
                  for name in names):
            if time.monotonic() > deadline:
                raise SystemExit("the functions did not become active")
            time.sleep(0.2)
        results = {name: [cold_call(node, name) for _ in range(args.runs)] for name in names}
        print(f"cold start through the gate, {args.runs} runs, interpreter "
              f"{sys.version.split()[0]} (driver), /usr/bin/python3 (functions)")
        for name, times in results.items():
            print(f"  {name:20s} median {statistics.median(times) * 1000:7.1f} ms  "
                  f"min {min(times) * 1000:7.1f}  max {max(times) * 1000:7.1f}")
    finally:
        node.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
