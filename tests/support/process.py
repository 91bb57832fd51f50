"""Shared helpers for the process provider's tests.

``FakeReplica`` stands in for a child process in Clock-driven runtime tests (the test
decides when it becomes ready or exits); the real-process tests use ``make_provider``
with small timings, ``function_spec`` and small scripts written to a temporary folder,
and check with ``alive`` that every pid they saw is gone at the end.
"""

from __future__ import annotations

import os
import shutil
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable

from twisted.internet.defer import Deferred

from faastwist.config import ProcessConfig
from faastwist.providers.base import Upstream
from faastwist.providers.process import ProcessProvider
from faastwist.providers.replica import ExitInfo
from faastwist.providers.runtime import Tuning
from faastwist.model.spec import FunctionSpec

REPO = Path(__file__).resolve().parents[2]
# functions run as an unprivileged user (nobody when the tests run as root): their
# interpreter must be one that user may run (a pyenv build under /root is not)
PYTHON = shutil.which("python3", path="/usr/bin:/bin") or sys.executable


def function_spec(**fields: Any) -> FunctionSpec:
    data = {"name": "fn", "command": [PYTHON, "-c", "pass"]}
    data.update(fields)
    return FunctionSpec.from_dict(data)


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def group_members(pgid: int) -> list[int]:
    """Pids whose process group is ``pgid`` (workers a function forked included)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


def write_script(folder: Path, name: str, body: str) -> str:
    path = folder / name
    path.write_text(textwrap.dedent(body))
    return str(path)


def fast_tuning(**overrides: Any) -> Tuning:
    values = dict(idle_timeout=300.0, cold_start_timeout=10.0, stop_grace=2.0,
                  backoff_base=0.05, backoff_max=0.5, crash_window=60.0, crash_limit=3,
                  scale_down_delay=0.0, max_replicas=8)
    values.update(overrides)
    return Tuning(**values)


def make_provider(reactor: Any, data_dir: Path, tuning: Tuning | None = None,
                  **kwargs: Any) -> ProcessProvider:
    provider = ProcessProvider(ProcessConfig(data_dir=str(data_dir)), "faascontroller",
                               reactor, workdir=str(REPO), tuning=tuning or fast_tuning(),
                               **{"stage_roots": [str(Path(data_dir).parent)], **kwargs})
    provider.startService()
    return provider


class FakeReplica:
    """A replica whose life the test drives: ``become_ready`` and ``crash``."""

    counter = 0

    def __init__(self, spec: FunctionSpec, on_ready: Callable, on_exit: Callable) -> None:
        FakeReplica.counter += 1
        self.spec = spec
        self.on_ready = on_ready
        self.on_exit = on_exit
        self.pid = 10000 + FakeReplica.counter
        self.instance = f"{spec.name}-{self.pid}"
        self.upstream = Upstream("http", "127.0.0.1", 20000 + FakeReplica.counter,
                                 f"127.0.0.1:{20000 + FakeReplica.counter}")
        self.ready = False
        self.alive = True
        self.started = False
        self.stopping = False
        self.draining = False
        self.inflight = 0
        self._stopped: list[Deferred[None]] = []

    def start(self) -> None:
        self.started = True

    def become_ready(self) -> None:
        self.ready = True
        self.on_ready(self)

    def crash(self, code: int = 1, stderr: tuple[str, ...] = ("boom",)) -> None:
        self.ready = False
        self.alive = False
        self.on_exit(self, ExitInfo(code, None, stderr, expected=False))

    def stop(self, grace: float) -> Deferred[None]:
        done: Deferred[None] = Deferred()
        if not self.alive:
            done.callback(None)
            return done
        self.stopping = True
        self._stopped.append(done)
        return done

    def exit_after_stop(self) -> None:
        """The child obeys the SIGTERM."""
        self.ready = False
        self.alive = False
        waiters, self._stopped = self._stopped, []
        self.on_exit(self, ExitInfo(None, 15, (), expected=True))
        for waiter in waiters:
            waiter.callback(None)


class FakeFactory:
    """Makes FakeReplicas and remembers them in order."""

    def __init__(self, auto_stop: bool = True) -> None:
        self.made: list[FakeReplica] = []
        self.auto_stop = auto_stop

    def __call__(self, spec: FunctionSpec, on_ready: Callable, on_exit: Callable) -> FakeReplica:
        replica = FakeReplica(spec, on_ready, on_exit)
        if self.auto_stop:
            original = replica.stop

            def stop(grace: float, replica: FakeReplica = replica) -> Deferred[None]:
                done = original(grace)
                if replica.alive:
                    replica.exit_after_stop()
                return done
            replica.stop = stop  # type: ignore[method-assign]
        self.made.append(replica)
        return replica

    def live(self) -> list[FakeReplica]:
        return [r for r in self.made if r.alive]


def function_pids(name: str) -> list[int]:
    """Host pids of every process running with function ``name``'s environment (its
    sandbox has a PID namespace: the pids a function sees of itself are not these)."""
    found = []
    mark = f"FAASTWIST_FUNCTION={name}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as environ:
                if mark in environ.read().split(b"\0") and alive(int(entry)):
                    found.append(int(entry))
        except OSError:
            continue
    return sorted(found)
