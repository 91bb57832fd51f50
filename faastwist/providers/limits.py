"""``limitMemory`` and ``limitCPU`` for local processes: a cgroup where the node may
create cgroups (v2 first, then v1), else rlimits where they fit.

Each HTTP replica gets a cgroup of its own and a fork-mode function one for all its
processes (a container's limit in Kubernetes terms). The child joins it before any of
the function's code runs (the launch prefix's first step, as root); the kernel's OOM
killer ends a process over its memory limit and the cgroup counts the kill.

- cgroup v2 (the node's own cgroup delegates memory and cpu): ``memory.max`` (and
  ``memory.swap.max`` 0), ``cpu.max`` (quota per 100 ms period), kills counted in
  ``memory.events``.
- cgroup v1 (no usable v2; the node may write below its own memory and cpu cgroups):
  a parent ``faastwist-{token}`` per node in each, a child per replica;
  ``memory.limit_in_bytes`` (and ``memory.memsw.limit_in_bytes``, the same value, where
  swap accounting exists: no swapping past the limit), ``cpu.cfs_quota_us`` per
  ``cpu.cfs_period_us`` (100 ms), kills counted in ``memory.oom_control``'s
  ``oom_kill`` (``memory.failcnt`` on kernels without it).
- neither: ``RLIMIT_AS`` bounds the address space (an allocation past it fails:
  MemoryError in Python, the process usually exits; that exit is reported as OOM), and
  ``RLIMIT_CPU`` bounds the CPU seconds of a fork-mode process to ``limitCPU`` x
  ``timeout`` (a long-running HTTP replica has no rlimit that fits a CPU rate: its CPU
  limit is then not enforced).

The status's extData says which applied.
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
    cgroup: str = ""                   # which cgroups: v2, v1, v1+memsw ("" when none)

    def describe(self) -> dict[str, str]:
        """The status's extData entries."""
        out: dict[str, str] = {}
        if self.memory is not None:
            m = self.memory
            cgroup = {"v2": f"cgroup v2 memory.max={m}",
                      "v1": f"cgroup v1 memory.limit_in_bytes={m}",
                      "v1+memsw": f"cgroup v1 memory.limit_in_bytes={m} "
                                  f"memory.memsw.limit_in_bytes={m}"}.get(self.cgroup, "")
            out["memoryLimit"] = {"cgroup": cgroup,
                                  "rlimit": f"rlimit RLIMIT_AS={m}"}.get(
                self.memory_via, "not enforced (no cgroup, no rlimit)")
        if self.cpu is not None:
            quota = cpu_quota(self.cpu)
            seconds = dict(self.rlimits).get("RLIMIT_CPU")
            cgroup = (f"cgroup v2 cpu.max={quota} {CPU_PERIOD}" if self.cgroup == "v2" else
                      f"cgroup v1 cpu.cfs_quota_us={quota} cpu.cfs_period_us={CPU_PERIOD}")
            out["cpuLimit"] = {"cgroup": cgroup,
                               "rlimit": f"rlimit RLIMIT_CPU={seconds}s per process"}.get(
                self.cpu_via, "not enforced (needs a cgroup)")
        return out


def cpu_quota(cpu: Decimal) -> int:
    """Microseconds of CPU per period (the kernel's floor is 1 ms)."""
    return max(1000, math.ceil(cpu * CPU_PERIOD))


def limits_for(spec: FunctionSpec, cgroups: "Cgroups | None") -> Limits:
    memory = int(parse_quantity(spec.limit_memory)) if spec.limit_memory else None
    cpu = parse_quantity(spec.limit_cpu) if spec.limit_cpu else None
    if cgroups is not None:
        return Limits(memory, cpu, "cgroup" if memory else "none",
                      "cgroup" if cpu else "none", cgroup=cgroups.kind)
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
    """Did a process under RLIMIT_AS die of it? (With cgroups, the cgroup says.)"""
    return (limits.memory_via == "rlimit" and code not in (0, None)
            and any(OOM_SIGNS.search(line) for line in stderr))


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _counter(text: str, key: str) -> int | None:
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            try:
                return int(value)
            except ValueError:
                return None
    return None


@attrs.frozen
class Cgroup:
    """One replica's cgroup: one folder (v2), or one per controller (v1: memory, cpu)."""

    version: int
    folders: tuple[Path, ...]
    memory: Path | None = None       # the folder holding the memory controller's files

    @property
    def procs(self) -> str:
        """The ``cgroup.procs`` files to join, ``:``-separated (the launch prefix's)."""
        return ":".join(str(folder / "cgroup.procs") for folder in self.folders)

    def oom_kills(self) -> int:
        """How many of its processes the kernel's OOM killer ended."""
        if self.memory is None:
            return 0
        if self.version == 2:
            return _counter(_read(self.memory / "memory.events"), "oom_kill") or 0
        kills = _counter(_read(self.memory / "memory.oom_control"), "oom_kill")
        if kills is None:   # kernels before 4.13: how often the limit was hit
            failcnt = _read(self.memory / "memory.failcnt").strip()
            kills = int(failcnt) if failcnt.isdigit() else 0
        return kills

    def remove(self) -> None:
        for folder in self.folders:
            try:
                folder.rmdir()
            except OSError:
                pass   # still has members (they are being killed); swept at the next start


class CgroupTree:
    """A cgroup v2 subtree of the node's own cgroup where it makes one per process."""

    kind = "v2"

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def detect(cls, base: str = CGROUP_ROOT, proc: str = "/proc/self/cgroup") -> "CgroupTree | None":
        """The node's cgroup v2 folder when it may delegate memory and cpu below it:
        the node moves itself into a leaf (``node``), enables the controllers and
        keeps functions in ``functions/``. None otherwise (then v1 or rlimits apply)."""
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
            log.info("cgroup v2 limits unavailable ({why})", why=str(exc))
            return None
        return cls(functions)

    def create(self, name: str, limits: Limits) -> Cgroup:
        """A fresh cgroup with the limits written."""
        folder = self.root / name
        folder.mkdir(exist_ok=True)
        if limits.memory is not None:
            (folder / "memory.max").write_text(str(limits.memory))
            swap = folder / "memory.swap.max"
            if swap.exists():
                swap.write_text("0")
        if limits.cpu is not None:
            (folder / "cpu.max").write_text(f"{cpu_quota(limits.cpu)} {CPU_PERIOD}")
        return Cgroup(2, (folder,), folder)

    def close(self) -> None:
        """Remove the functions' cgroups that are empty (the node is stopping)."""
        _remove_children(self.root)


class CgroupV1Tree:
    """A parent cgroup per node under its own v1 memory and cpu cgroups; a child in
    each per replica (v1 has no single tree: a process joins one per controller)."""

    def __init__(self, memory: Path, cpu: Path, memsw: bool) -> None:
        self.memory = memory
        self.cpu = cpu
        self.memsw = memsw
        self.kind = "v1+memsw" if memsw else "v1"

    @classmethod
    def detect(cls, token: str, proc: str = "/proc/self/cgroup",
               mounts: str = "/proc/self/mounts") -> "CgroupV1Tree | None":
        """The node's parents ``faastwist-{token}`` (made, emptied of what a previous
        run left) when the v1 memory and cpu hierarchies are mounted and writable
        below the node's own cgroups; None otherwise (then rlimits apply)."""
        try:
            own = _v1_memberships(Path(proc).read_text())
            points = _v1_mounts(Path(mounts).read_text())
            parents = []
            for controller in ("memory", "cpu"):
                if controller not in own or controller not in points:
                    raise OSError(f"no cgroup v1 {controller} hierarchy")
                parent = points[controller] / own[controller].lstrip("/") / f"faastwist-{token}"
                parent.mkdir(exist_ok=True)
                _remove_children(parent)     # what a previous run left
                # and the empty parents of nodes that were killed (-9): rmdir takes only
                # empty ones, and a live node makes its parent again when it needs it
                _remove_children(parent.parent, prefix="faastwist-", keep=parent)
                parents.append(parent)
            memory, cpu = parents
            if not (memory / "memory.limit_in_bytes").exists():
                raise OSError(f"{memory} has no memory.limit_in_bytes")
            if not (cpu / "cpu.cfs_quota_us").exists():
                raise OSError(f"{cpu} has no cpu.cfs_quota_us")
        except OSError as exc:
            log.info("cgroup v1 limits unavailable ({why})", why=str(exc))
            return None
        return cls(memory, cpu, (memory / "memory.memsw.limit_in_bytes").exists())

    def create(self, name: str, limits: Limits) -> Cgroup:
        """A fresh child in each hierarchy, the limits written (memory before memsw:
        the kernel wants memsw >= memory)."""
        memory, cpu = self.memory / name, self.cpu / name
        memory.mkdir(parents=True, exist_ok=True)
        cpu.mkdir(parents=True, exist_ok=True)
        try:
            if limits.memory is not None:
                (memory / "memory.limit_in_bytes").write_text(str(limits.memory))
                if self.memsw:
                    (memory / "memory.memsw.limit_in_bytes").write_text(str(limits.memory))
            if limits.cpu is not None:
                (cpu / "cpu.cfs_period_us").write_text(str(CPU_PERIOD))
                (cpu / "cpu.cfs_quota_us").write_text(str(cpu_quota(limits.cpu)))
        except OSError:
            Cgroup(1, (memory, cpu)).remove()
            raise
        return Cgroup(1, (memory, cpu), memory)

    def close(self) -> None:
        """Remove the replicas' cgroups and the node's parents (the node is stopping;
        what still has members stays, swept at the next start)."""
        for parent in (self.memory, self.cpu):
            _remove_children(parent)
            Cgroup(1, (parent,)).remove()


def _remove_children(parent: Path, prefix: str = "", keep: Path | None = None) -> None:
    """rmdir the sub-folders (named ``prefix``...) of ``parent``: the empty ones go."""
    try:
        children = [child for child in parent.iterdir() if child.is_dir()
                    and child.name.startswith(prefix) and child != keep]
    except OSError:
        return
    Cgroup(0, tuple(children)).remove()


Cgroups = CgroupTree | CgroupV1Tree


def _v1_memberships(text: str) -> dict[str, str]:
    """controller -> the node's own path, from /proc/self/cgroup's v1 lines."""
    own: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and parts[1]:
            for controller in parts[1].split(","):
                own[controller] = parts[2]
    return own


def _v1_mounts(text: str) -> dict[str, Path]:
    """controller -> where its v1 hierarchy is mounted, from /proc/self/mounts."""
    points: dict[str, Path] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[2] == "cgroup":
            for option in fields[3].split(","):
                points.setdefault(option, Path(fields[1]))
    return points


def detect_cgroups(token: str) -> Cgroups | None:
    """cgroup v2, else cgroup v1, else None (rlimits)."""
    return CgroupTree.detect() or CgroupV1Tree.detect(token)
