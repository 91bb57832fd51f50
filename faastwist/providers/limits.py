"""``limitMemory`` and ``limitCPU`` for local processes: cgroup v2 where the node may
create cgroups, else rlimits where they fit.

With cgroup v2 each HTTP replica gets a cgroup of its own and a fork-mode function one
for all its processes (a container's limit in Kubernetes terms): ``memory.max`` is the
memory limit (the kernel's OOM killer ends the process, ``memory.events`` counts it)
and ``cpu.max`` the CPU limit (quota per 100 ms period). The child joins its cgroup
before any of the function's code runs (the launch prefix's first step, as root).

Without it (cgroup v1, or no write access to the node's own cgroup): ``RLIMIT_AS``
bounds the address space (an allocation past it fails: MemoryError in Python, the
process usually exits; that exit is reported as OOM), and ``RLIMIT_CPU`` bounds the CPU
seconds of a fork-mode process to ``limitCPU`` x ``timeout`` (a long-running HTTP
replica has no rlimit that fits a CPU rate: its CPU limit is then not enforced). The
status's extData says which applied.
"""

from __future__ import annotations

import math
import os
import re
from decimal import Decimal
from pathlib import Path

import attrs
from twisted.logger import Logger

from faastwist.model.spec import FunctionSpec, ProcessMode
from faastwist.util.units import parse_quantity

log = Logger()

CGROUP_ROOT = "/sys/fs/cgroup"
CPU_PERIOD = 100_000   # microseconds
# what an allocation past RLIMIT_AS leaves on stderr, by runtime
OOM_SIGNS = re.compile(r"MemoryError|Cannot allocate memory|out of memory|bad_alloc|"
                       r"memory exhausted|failed to allocate|ENOMEM", re.IGNORECASE)


@attrs.frozen
class Limits:
    """What applies to one process (or one fork-mode function's processes)."""

    memory: int | None = None          # bytes
    cpu: Decimal | None = None         # cores
    memory_via: str = "none"           # cgroup | rlimit | none
    cpu_via: str = "none"
    rlimits: tuple[tuple[str, int], ...] = ()

    def describe(self) -> dict[str, str]:
        """The status's extData entries."""
        out: dict[str, str] = {}
        if self.memory is not None:
            out["memoryLimit"] = {"cgroup": f"cgroup v2 memory.max={self.memory}",
                                  "rlimit": f"rlimit RLIMIT_AS={self.memory}"}.get(
                self.memory_via, "not enforced (no cgroup v2, no rlimit)")
        if self.cpu is not None:
            quota = math.ceil(self.cpu * CPU_PERIOD)
            seconds = dict(self.rlimits).get("RLIMIT_CPU")
            out["cpuLimit"] = {"cgroup": f"cgroup v2 cpu.max={quota} {CPU_PERIOD}",
                               "rlimit": f"rlimit RLIMIT_CPU={seconds}s per process"}.get(
                self.cpu_via, "not enforced (needs cgroup v2)")
        return out


def limits_for(spec: FunctionSpec, cgroups: bool) -> Limits:
    memory = int(parse_quantity(spec.limit_memory)) if spec.limit_memory else None
    cpu = parse_quantity(spec.limit_cpu) if spec.limit_cpu else None
    if cgroups:
        return Limits(memory, cpu, "cgroup" if memory else "none", "cgroup" if cpu else "none")
    rlimits: list[tuple[str, int]] = []
    memory_via = cpu_via = "none"
    if memory:
        rlimits.append(("RLIMIT_AS", memory))
        memory_via = "rlimit"
    if cpu and spec.mode is ProcessMode.FORK:
        rlimits.append(("RLIMIT_CPU", max(1, math.ceil(cpu * Decimal(str(spec.timeout))))))
        cpu_via = "rlimit"
    return Limits(memory, cpu, memory_via, cpu_via, tuple(rlimits))


def looks_oom(code: int | None, stderr: tuple[str, ...] | list[str], limits: Limits) -> bool:
    """Did a process under RLIMIT_AS die of it? (With cgroups, memory.events says.)"""
    return (limits.memory_via == "rlimit" and code not in (0, None)
            and any(OOM_SIGNS.search(line) for line in stderr))


class CgroupTree:
    """A cgroup v2 subtree of the node's own cgroup where it makes one per process."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def detect(cls, base: str = CGROUP_ROOT, proc: str = "/proc/self/cgroup") -> "CgroupTree | None":
        """The node's cgroup v2 folder when it may delegate memory and cpu below it:
        the node moves itself into a leaf (``node``), enables the controllers and
        keeps functions in ``functions/``. None otherwise (then rlimits apply)."""
        try:
            lines = Path(proc).read_text().splitlines()
            own = next(line[3:] for line in lines if line.startswith("0::"))
            folder = Path(base) / own.lstrip("/")
            if not (Path(base) / "cgroup.controllers").exists() or not os.access(folder, os.W_OK):
                return None
            available = (folder / "cgroup.controllers").read_text().split()
            if not {"memory", "cpu"} <= set(available):
                return None
            leaf = folder / "node"
            leaf.mkdir(exist_ok=True)
            (leaf / "cgroup.procs").write_text(str(os.getpid()))
            (folder / "cgroup.subtree_control").write_text("+memory +cpu")
            functions = folder / "functions"
            functions.mkdir(exist_ok=True)
            (functions / "cgroup.subtree_control").write_text("+memory +cpu")
        except (OSError, StopIteration) as exc:
            log.info("cgroup v2 limits unavailable ({why}): rlimits apply", why=str(exc))
            return None
        return cls(functions)

    def create(self, name: str, limits: Limits) -> Path:
        """A fresh cgroup with the limits written; returns its folder."""
        folder = self.root / name
        folder.mkdir(exist_ok=True)
        if limits.memory is not None:
            (folder / "memory.max").write_text(str(limits.memory))
            swap = folder / "memory.swap.max"
            if swap.exists():
                swap.write_text("0")
        if limits.cpu is not None:
            quota = max(1000, math.ceil(limits.cpu * CPU_PERIOD))
            (folder / "cpu.max").write_text(f"{quota} {CPU_PERIOD}")
        return folder

    @staticmethod
    def oom_kills(folder: Path) -> int:
        try:
            for line in (folder / "memory.events").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0

    @staticmethod
    def remove(folder: Path) -> None:
        try:
            folder.rmdir()
        except OSError:
            pass   # still has members (they are being killed); swept at the next start
