"""limitMemory and limitCPU for local processes (cgroup v2, else cgroup v1, else rlimits)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
import pytest_twisted

from faastwist.model.fsm import Event
from faastwist.providers.limits import (Cgroup, CgroupTree, CgroupV1Tree, Limits, limits_for,
                                        looks_oom)
from tests.providers.test_process import call, observed, wait_for
from tests.support.process import PYTHON, fast_tuning, function_spec


def test_rlimits_where_they_fit():
    http = limits_for(function_spec(limitMemory="64Mi", limitCPU="500m"), cgroups=None)
    assert http == Limits(64 * 2**20, Decimal("0.5"), "rlimit", "none",
                          (("RLIMIT_AS", 64 * 2**20),))
    assert http.describe() == {"memoryLimit": "rlimit RLIMIT_AS=67108864",
                               "cpuLimit": "not enforced (needs a cgroup)"}
    # a fork-mode process: CPU seconds = limitCPU x timeout, rounded up
    fork = limits_for(function_spec(limitCPU="250m", timeout="10s", mode="fork"), cgroups=None)
    assert fork.rlimits == (("RLIMIT_CPU", 3),)
    assert fork.describe() == {"cpuLimit": "rlimit RLIMIT_CPU=3s per process"}
    assert limits_for(function_spec(), cgroups=None) == Limits()
    assert Limits().describe() == {}


def test_cgroup_limits_and_oom_count(tmp_path: Path):
    tree = CgroupTree(tmp_path)
    limits = limits_for(function_spec(limitMemory="100Mi", limitCPU="1500m"), cgroups=tree)
    assert (limits.memory_via, limits.cpu_via, limits.rlimits) == ("cgroup", "cgroup", ())
    assert limits.describe() == {"memoryLimit": "cgroup v2 memory.max=104857600",
                                 "cpuLimit": "cgroup v2 cpu.max=150000 100000"}
    cgroup = tree.create("fn-1", limits)
    folder = tmp_path / "fn-1"
    assert cgroup.procs == str(folder / "cgroup.procs")
    assert (folder / "memory.max").read_text() == "104857600"
    assert (folder / "cpu.max").read_text() == "150000 100000"
    assert cgroup.oom_kills() == 0
    (folder / "memory.events").write_text("low 0\nhigh 0\nmax 4\noom 1\noom_kill 2\n")
    assert cgroup.oom_kills() == 2


def fake_v1(tmp_path: Path, memsw: bool = True) -> tuple[Path, Path, Path]:
    """A v1 layout in a folder: mounts, /proc/self/cgroup, and the node's own cgroups
    (a real kernel makes the control files; here the test does)."""
    memory, cpu = tmp_path / "memory", tmp_path / "cpu,cpuacct"
    (memory / "outer" / "faastwist-tok").mkdir(parents=True)
    (cpu / "faastwist-tok").mkdir(parents=True)
    files = ["memory.limit_in_bytes", "memory.oom_control", "memory.failcnt"]
    files += ["memory.memsw.limit_in_bytes"] if memsw else []
    for name in files:
        (memory / "outer" / "faastwist-tok" / name).write_text("0\n")
    for name in ("cpu.cfs_quota_us", "cpu.cfs_period_us"):
        (cpu / "faastwist-tok" / name).write_text("-1\n")
    mounts = tmp_path / "mounts"
    mounts.write_text(f"cgroup {memory} cgroup rw,nosuid,relatime,memory 0 0\n"
                      f"cgroup {cpu} cgroup rw,relatime,cpu,cpuacct 0 0\n"
                      f"cgroup2 {tmp_path / 'unified'} cgroup2 rw 0 0\n")
    proc = tmp_path / "cgroup"
    proc.write_text("4:memory:/outer\n2:cpu,cpuacct:/\n0::/\n")
    return proc, mounts, memory


def test_cgroup_v1_detection_limits_and_oom_count(tmp_path: Path):
    proc, mounts, memory = fake_v1(tmp_path)
    parent = memory / "outer" / "faastwist-tok"
    (parent / "left-over").mkdir()                    # a previous run's: swept
    (memory / "outer" / "faastwist-dead").mkdir()     # a killed node's empty parent: swept
    busy = memory / "outer" / "faastwist-busy"        # a live node's, with a replica: kept
    (busy / "fn-1").mkdir(parents=True)
    (memory / "outer" / "other").mkdir()              # not ours: never touched
    tree = CgroupV1Tree.detect("tok", str(proc), str(mounts))
    assert not (memory / "outer" / "faastwist-dead").exists()
    assert (busy / "fn-1").is_dir() and (memory / "outer" / "other").is_dir()
    assert tree is not None and tree.kind == "v1+memsw"
    assert tree.memory == parent and tree.cpu == tmp_path / "cpu,cpuacct" / "faastwist-tok"
    assert not (parent / "left-over").exists()
    limits = limits_for(function_spec(limitMemory="64Mi", limitCPU="200m"), cgroups=tree)
    assert limits.describe() == {
        "memoryLimit": "cgroup v1 memory.limit_in_bytes=67108864 "
                       "memory.memsw.limit_in_bytes=67108864",
        "cpuLimit": "cgroup v1 cpu.cfs_quota_us=20000 cpu.cfs_period_us=100000"}
    cgroup = tree.create("fn-1", limits)
    assert cgroup.procs == f"{parent}/fn-1/cgroup.procs:{tree.cpu}/fn-1/cgroup.procs"
    assert (parent / "fn-1" / "memory.limit_in_bytes").read_text() == "67108864"
    assert (parent / "fn-1" / "memory.memsw.limit_in_bytes").read_text() == "67108864"
    assert (tree.cpu / "fn-1" / "cpu.cfs_quota_us").read_text() == "20000"
    assert (tree.cpu / "fn-1" / "cpu.cfs_period_us").read_text() == "100000"
    assert cgroup.oom_kills() == 0
    (parent / "fn-1" / "memory.oom_control").write_text(
        "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")
    assert cgroup.oom_kills() == 3
    (parent / "fn-1" / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\n")
    (parent / "fn-1" / "memory.failcnt").write_text("5\n")   # older kernels
    assert cgroup.oom_kills() == 5
    # its parent swept by another node's start while it had no replica: made again
    import shutil
    shutil.rmtree(tree.memory)
    assert tree.create("fn-2", limits).memory == parent / "fn-2" and (parent / "fn-2").is_dir()
    # without swap accounting: the memory limit alone
    proc, mounts, memory = fake_v1(tmp_path / "noswap", memsw=False)
    tree = CgroupV1Tree.detect("tok", str(proc), str(mounts))
    assert tree is not None and tree.kind == "v1"
    limits = limits_for(function_spec(limitMemory="64Mi"), cgroups=tree)
    assert limits.describe() == {"memoryLimit": "cgroup v1 memory.limit_in_bytes=67108864"}


def test_cgroup_v1_needs_both_hierarchies(tmp_path: Path):
    proc, mounts, _ = fake_v1(tmp_path)
    mounts.write_text(mounts.read_text().replace("cpu,cpuacct 0 0", "cpuacct 0 0"))
    assert CgroupV1Tree.detect("tok", str(proc), str(mounts)) is None
    proc.write_text("2:cpu,cpuacct:/\n0::/\n")            # no memory membership
    assert CgroupV1Tree.detect("tok", str(proc), str(mounts)) is None


def test_a_cgroup_that_still_has_members_stays(tmp_path: Path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "cgroup.procs").write_text("123\n")  # rmdir fails like a busy cgroup
    (tmp_path / "b").mkdir()
    Cgroup(1, (tmp_path / "a", tmp_path / "b")).remove()
    assert (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_cgroup_detection(tmp_path: Path):
    # cgroup v1 (no cgroup.controllers at the root): rlimits
    proc = tmp_path / "cgroup"
    proc.write_text("4:memory:/x\n0::/\n")
    assert CgroupTree.detect(str(tmp_path / "v1"), str(proc)) is None
    # a writable v2 tree with memory and cpu: the node moves into a leaf, functions below
    base = tmp_path / "v2"
    own = base / "svc"
    own.mkdir(parents=True)
    (base / "cgroup.controllers").write_text("cpu memory io\n")
    (own / "cgroup.controllers").write_text("cpu memory\n")
    proc.write_text("0::/svc\n")
    tree = CgroupTree.detect(str(base), str(proc))
    assert tree is not None and tree.root == own / "functions"
    assert (own / "cgroup.subtree_control").read_text() == "+memory +cpu"
    assert (own / "node" / "cgroup.procs").read_text().isdigit()
    # without the cpu controller: rlimits
    (own / "cgroup.controllers").write_text("memory\n")
    assert CgroupTree.detect(str(base), str(proc)) is None


def test_oom_from_an_rlimit_exit():
    limits = Limits(memory=1, memory_via="rlimit")
    assert looks_oom(1, ("Traceback (most recent call last):", "MemoryError"), limits)
    assert not looks_oom(1, ("ValueError: no",), limits)
    assert not looks_oom(0, ("MemoryError",), limits)
    assert not looks_oom(1, ("MemoryError",), Limits())


HOG = "import sys, time\nprint('up', flush=True)\nx = bytearray(300 * 2**20)\ntime.sleep(30)\n"


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_a_function_past_its_memory_limit_is_ended_and_reported(providers):
    provider = providers(tuning=fast_tuning(crash_limit=2))
    # fork mode: the request's process ends, the answer says why, the status counts it
    fork = function_spec(name="hog-fork", command=[PYTHON, "-c", HOG], mode="fork",
                         limitMemory="64Mi")
    provider.check_spec(fork)
    await provider.deploy(fork)
    code, body, _ = await call(provider, fork)
    assert code == 500 and b"ran out of memory (limitMemory 64Mi)" in body, body
    observation = await observed(provider, "hog-fork")
    assert observation.ext_data["oomKills"] == "1"
    assert observation.ext_data["reason"] == "OOM"
    assert observation.ext_data["memoryLimit"] == provider.limits(fork).describe()["memoryLimit"]
    assert "67108864" in observation.ext_data["memoryLimit"]
    # http mode: the replica dies at start, again and again: failed, reason OOM
    http = function_spec(name="hog-http", command=[PYTHON, "-c", HOG], minReplica=1,
                         limitMemory="64Mi")
    await provider.deploy(http)
    await wait_for(lambda: provider.runtimes["hog-http"].error is not None)
    observation = await observed(provider, "hog-http")
    assert observation.event is Event.ERROR
    assert observation.ext_data["reason"] == "OOM"
    assert int(observation.ext_data["oomKills"]) >= 2
    assert "ran out of memory" in observation.message
    # the node is fine: a function within its limit still answers
    small = function_spec(name="small", mode="fork", limitMemory="256Mi",
                          command=[PYTHON, "-c", "print('fine')"])
    await provider.deploy(small)
    assert (await call(provider, small))[:2] == (200, b"fine\n")
