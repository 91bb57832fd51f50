"""limitMemory and limitCPU for local processes (cgroup v2, else rlimits)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
import pytest_twisted

from faastwist.model.fsm import Event
from faastwist.providers.limits import CgroupTree, Limits, limits_for, looks_oom
from tests.providers.test_process_provider import call, observed, providers, wait_for  # noqa: F401
from tests.support.process import PYTHON, fast_tuning, function_spec


def test_rlimits_where_they_fit():
    http = limits_for(function_spec(limitMemory="64Mi", limitCPU="500m"), cgroups=False)
    assert http == Limits(64 * 2**20, Decimal("0.5"), "rlimit", "none",
                          (("RLIMIT_AS", 64 * 2**20),))
    assert http.describe() == {"memoryLimit": "rlimit RLIMIT_AS=67108864",
                               "cpuLimit": "not enforced (needs cgroup v2)"}
    # a fork-mode process: CPU seconds = limitCPU x timeout, rounded up
    fork = limits_for(function_spec(limitCPU="250m", timeout="10s", mode="fork"), cgroups=False)
    assert fork.rlimits == (("RLIMIT_CPU", 3),)
    assert fork.describe() == {"cpuLimit": "rlimit RLIMIT_CPU=3s per process"}
    assert limits_for(function_spec(), cgroups=False) == Limits()
    assert Limits().describe() == {}


def test_cgroup_limits_and_oom_count(tmp_path: Path):
    limits = limits_for(function_spec(limitMemory="100Mi", limitCPU="1500m"), cgroups=True)
    assert (limits.memory_via, limits.cpu_via, limits.rlimits) == ("cgroup", "cgroup", ())
    assert limits.describe() == {"memoryLimit": "cgroup v2 memory.max=104857600",
                                 "cpuLimit": "cgroup v2 cpu.max=150000 100000"}
    tree = CgroupTree(tmp_path)
    folder = tree.create("fn-1", limits)
    assert (folder / "memory.max").read_text() == "104857600"
    assert (folder / "cpu.max").read_text() == "150000 100000"
    assert CgroupTree.oom_kills(folder) == 0
    (folder / "memory.events").write_text("low 0\nhigh 0\nmax 4\noom 1\noom_kill 2\n")
    assert CgroupTree.oom_kills(folder) == 2


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
    via = "cgroup v2 memory.max" if provider.cgroups is not None else "rlimit RLIMIT_AS"
    assert observation.ext_data["memoryLimit"] == f"{via}=67108864"
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
