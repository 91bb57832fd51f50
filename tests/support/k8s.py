"""A real kube-apiserver for tests (../shared/k8s/envtest).

The apiserver tooling lives beside the project, never in it: it is found through
``FAASTWIST_ENVTEST`` (the path of the shared ``k8s`` folder, set by ``.ci/run``), and
tests skip with the reason when it is absent. One apiserver is started per test session
(about 10 s) and stopped by the pids the envtest script records.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from kubernetes import client as kube_client
from kubernetes import config as kube_config

from faastwist.util.ports import port_is_free

ENV_VAR = "FAASTWIST_ENVTEST"

#: (connect, read) seconds for a test's own apiserver call that names no timeout: the
#: client's default is none, and a call that never returns hangs the whole run
TEST_REQUEST_TIMEOUT = (10.0, 60.0)


class TimedApiClient(kube_client.ApiClient):
    """An ApiClient whose calls without ``_request_timeout`` get TEST_REQUEST_TIMEOUT
    (the product's calls always name theirs, so they are unchanged)."""

    def call_api(self, *args: Any, _request_timeout: Any = None, **kwargs: Any) -> Any:
        return super().call_api(*args, _request_timeout=_request_timeout or
                                TEST_REQUEST_TIMEOUT, **kwargs)


def envtest_unavailable() -> str | None:
    """Why the envtest apiserver cannot be started here, or None when it can."""
    folder = os.environ.get(ENV_VAR)
    if not folder:
        return (f"{ENV_VAR} is not set: point it at the shared k8s folder with the "
                f"envtest script (.ci/run does) to run the kube-apiserver tests")
    script = Path(folder) / "envtest"
    if not os.access(script, os.X_OK):
        return f"{ENV_VAR}={folder} has no executable envtest script"
    for tool in ("etcd", "openssl", "curl", "xz"):
        if shutil.which(tool) is None:
            return f"the envtest apiserver needs {tool} on PATH"
    return None


def free_low_ports(count: int, start: int = 20000, end: int = 32000) -> list[int]:
    """``count`` consecutive free ports below 32768 (outside the ephemeral range, as the
    envtest script wants), probed from a pid-dependent start so parallel runs differ."""
    base = start + (os.getpid() * 7) % (end - start - count)
    for offset in range(0, end - start, count + 1):
        first = start + (base - start + offset) % (end - start - count)
        ports = list(range(first, first + count))
        if all(port_is_free(p) for p in ports):
            return ports
    raise RuntimeError("no free ports below 32768")


def _state(pid: int) -> str:
    """The process state letter from /proc (R, S, D, T, Z, ...), '' when gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
    except (OSError, IndexError):
        return ""


def _all_threads_stopped(pid: int) -> bool:
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    return all(_state(int(task)) in ("T", "t", "") for task in tasks)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _state(pid) not in ("", "Z")  # a zombie is gone for our purposes


class Envtest:
    """One etcd + kube-apiserver with the Knative Service CRD, on loopback."""

    def __init__(self, workdir: Path) -> None:
        reason = envtest_unavailable()
        if reason:
            raise RuntimeError(reason)
        self.script = Path(os.environ[ENV_VAR]) / "envtest"
        self.workdir = Path(workdir)
        self.api_port = 0
        self.etcd_port = 0
        self.kubeconfig = ""
        self.pids: dict[str, int] = {}

    def start(self) -> str:
        # the apiserver, etcd's client port and etcd's peer port (client + 1)
        self.api_port, self.etcd_port, _ = free_low_ports(3)
        done = subprocess.run(
            [str(self.script), "start", str(self.workdir), str(self.api_port),
             str(self.etcd_port)], capture_output=True, text=True, timeout=180)
        self._read_pids()
        if done.returncode != 0:
            self.stop()
            raise RuntimeError(f"envtest start failed ({done.returncode}): {done.stderr.strip()}")
        self.kubeconfig = done.stdout.strip().splitlines()[-1]
        return self.kubeconfig

    def _read_pids(self) -> None:
        for name in ("apiserver", "etcd"):
            pidfile = self.workdir / f"{name}.pid"
            if pidfile.exists():
                self.pids[name] = int(pidfile.read_text().strip())

    def stop(self) -> None:
        """Stop both by pid (the script's stop), and wait until they are gone."""
        self.resume()  # a stopped process would not act on SIGTERM
        subprocess.run([str(self.script), "stop", str(self.workdir)], capture_output=True,
                       timeout=60)
        deadline = time.monotonic() + 15
        for pid in self.pids.values():
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.pids.clear()

    def pause(self) -> None:
        """Freeze the apiserver (SIGSTOP): connections open, no answers, as a hung server.
        Returns once the kernel reports it stopped (a thread busy in the kernel stops only
        when it leaves it)."""
        pid = self.pids["apiserver"]
        os.kill(pid, signal.SIGSTOP)
        deadline = time.monotonic() + 5
        while not _all_threads_stopped(pid):
            assert time.monotonic() < deadline, f"apiserver {pid} did not stop"
            time.sleep(0.005)

    def resume(self) -> None:
        pid = self.pids.get("apiserver")
        if pid is not None and _alive(pid):
            os.kill(pid, signal.SIGCONT)

    def api_client(self) -> kube_client.ApiClient:
        configuration = kube_client.Configuration()
        kube_config.load_kube_config(config_file=self.kubeconfig,
                                     client_configuration=configuration)
        return TimedApiClient(configuration)

