"""Children of a gate that died without a shutdown (faastwist/providers/orphans.py):
found in /proc by their owner token and their dead gate's pid, and killed by group."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from faastwist.providers.orphans import (
    GATE_PID_VAR,
    OWNER_VAR,
    find_orphans,
    kill_orphans,
    owner_token,
)
from tests.support.logcapture import logged


def test_the_owner_token_names_controller_and_data_folder(tmp_path: Path) -> None:
    token = owner_token("ctl", str(tmp_path))
    expected = hashlib.sha256(f"ctl\0{tmp_path}".encode()).hexdigest()[:16]
    assert token == expected and len(token) == 16
    assert owner_token("ctl", str(tmp_path / "..") + "/" + tmp_path.name) == token
    assert owner_token("other", str(tmp_path)) != token
    assert owner_token("ctl", str(tmp_path / "x")) != token
    assert (OWNER_VAR, GATE_PID_VAR) == ("FAASTWIST_OWNER", "FAASTWIST_GATE_PID")


def process(proc: Path, pid: int, **env: str) -> None:
    folder = proc / str(pid)
    folder.mkdir()
    (folder / "environ").write_bytes(
        b"\0".join(f"{k}={v}".encode() for k, v in {"PATH": "/bin", **env}.items()) + b"\0")


def test_only_processes_with_the_token_and_a_dead_gate_are_orphans(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "77").mkdir()                     # a living gate (its folder is there)
    process(proc, 10, FAASTWIST_OWNER="tok", FAASTWIST_GATE_PID="99")   # gate 99 gone
    process(proc, 11, FAASTWIST_OWNER="tok", FAASTWIST_GATE_PID="77")   # gate alive
    process(proc, 12, FAASTWIST_OWNER="other", FAASTWIST_GATE_PID="99")  # another owner
    process(proc, 13)                                                    # not ours
    process(proc, 14, FAASTWIST_OWNER="tok", FAASTWIST_GATE_PID="")     # no gate: orphan
    process(proc, 15, FAASTWIST_OWNER="tok", FAASTWIST_GATE_PID=str(os.getpid()))  # mine
    process(proc, 9, FAASTWIST_OWNER="tok", FAASTWIST_GATE_PID="x")     # bad pid: orphan
    (proc / "16").mkdir()                                                # no environ
    (proc / "self").mkdir()
    assert find_orphans("tok", proc) == [9, 10, 14]
    assert find_orphans("nobody", proc) == []
    assert find_orphans("tok", tmp_path / "absent") == []


def test_the_sweeping_process_itself_is_never_an_orphan(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    proc.mkdir()
    process(proc, os.getpid(), FAASTWIST_OWNER="tok", FAASTWIST_GATE_PID="99")
    assert find_orphans("tok", proc) == []


def test_a_value_that_is_not_utf8_or_has_no_equals_sign_is_read_safely(
        tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    proc.mkdir()
    folder = proc / "21"
    folder.mkdir()
    (folder / "environ").write_bytes(b"JUNK\0FAASTWIST_OWNER=tok\0FAASTWIST_GATE_PID=9\xff\0"
                                     b"FAASTWIST_OWNER_X=tok\0")
    assert find_orphans("tok", proc) == [21]


def test_a_bare_name_without_a_value_does_not_override_the_real_one(tmp_path: Path) -> None:
    """``FAASTWIST_GATE_PID`` alone (no ``=``) is not a variable: the gate is still 77."""
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "77").mkdir()
    folder = proc / "22"
    folder.mkdir()
    (folder / "environ").write_bytes(b"FAASTWIST_OWNER=tok\0FAASTWIST_GATE_PID=77\0"
                                     b"FAASTWIST_GATE_PID\0")
    assert find_orphans("tok", proc) == []


@pytest.mark.process
def test_a_real_orphan_and_its_group_are_killed_and_logged(tmp_path: Path) -> None:
    """A child in a group of its own with a grandchild, carrying the token and the pid
    of a gate that is gone (a pid of a reaped process): both die, the sweeper lives."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    token = owner_token("ctl", str(tmp_path))
    env = {**os.environ, OWNER_VAR: token, GATE_PID_VAR: str(gone.pid)}
    leader = subprocess.Popen(
        [sys.executable, "-c",
         "import subprocess, sys, time\n"
         "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
         "print(child.pid, flush=True)\ntime.sleep(60)"],
        env=env, stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert leader.stdout is not None
        grandchild = int(leader.stdout.readline())
        found, events = logged(lambda: kill_orphans(token))
        assert found == sorted([leader.pid, grandchild])
        assert leader.wait(timeout=10) == -signal.SIGKILL
        assert _gone_within(grandchild, 10), "the grandchild outlived its group's SIGKILL"
        warnings = [e for e in events if "killed {count} function processes" in
                    str(e.get("log_format", ""))]
        assert len(warnings) == 1 and warnings[0]["count"] == 2
        assert kill_orphans(token) == []
    finally:
        if leader.poll() is None:
            os.killpg(leader.pid, signal.SIGKILL)
            leader.wait(timeout=10)


def _gone_within(pid: int, seconds: float) -> bool:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        if state == "Z":
            return True
        time.sleep(0.02)
    return False


@pytest.mark.process
def test_an_orphan_in_the_sweepers_own_group_is_killed_alone(tmp_path: Path) -> None:
    """Never the group the sweeper itself is in: only that pid."""
    token = owner_token("ctl", str(tmp_path / "own"))
    env = {**os.environ, OWNER_VAR: token, GATE_PID_VAR: "0"}
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env)
    try:
        assert os.getpgid(child.pid) == os.getpgrp()
        assert find_orphans(token) == [child.pid]     # the real /proc by default
        assert kill_orphans(token) == [child.pid]
        assert child.wait(timeout=10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)


@pytest.mark.process
def test_an_orphan_gone_before_the_kill_does_not_stop_the_sweep(tmp_path: Path) -> None:
    """The first orphan found exits before its turn (its pid is reaped): the next one
    is still killed."""
    token = "sweep-on"
    gone = subprocess.Popen(["true"])
    gone.wait()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                             start_new_session=True)
    try:
        assert gone.pid < child.pid   # the order find_orphans gives
        proc = tmp_path / "proc"
        proc.mkdir()
        for pid in (gone.pid, child.pid):
            process(proc, pid, FAASTWIST_OWNER=token, FAASTWIST_GATE_PID="0")
        assert kill_orphans(token, proc) == [gone.pid, child.pid]
        assert child.wait(timeout=10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
