"""A stopped replica's process group is gone when only zombies are left in it.

A sandboxed replica's children are reparented to init when the replica exits; an init
that reaps late (a container's, measured here: ~1.8 s) kept every stop waiting for
zombies, and with it a start that followed a stop (the gate answered 503 meanwhile).
"""

from __future__ import annotations

from pathlib import Path

from faastwist.providers.replica import group_has_living


def proc(tmp_path: Path, *entries: tuple[int, str, int]) -> str:
    """A /proc of (pid, state, process group) entries, as the kernel words them."""
    root = tmp_path / "proc"
    root.mkdir()
    (root / "self").mkdir()
    for pid, state, pgid in entries:
        folder = root / str(pid)
        folder.mkdir()
        # comm may hold spaces and parentheses: fields are read after the last ")"
        (folder / "stat").write_text(f"{pid} (py (x) 3) {state} 1 {pgid} {pgid} 0 -1 4194560\n")
    (root / "77").mkdir()   # a process that went away between listing and reading
    return str(root)


def test_only_zombies_left_is_gone(tmp_path: Path) -> None:
    assert not group_has_living(500, proc(tmp_path, (501, "Z", 500), (600, "S", 600)))


def test_a_living_member_is_waited_for(tmp_path: Path) -> None:
    assert group_has_living(500, proc(tmp_path, (501, "Z", 500), (502, "S", 500)))
    assert group_has_living(500, str(tmp_path / "nowhere"))   # cannot tell: alive


def test_this_process_group_is_alive_on_the_real_proc() -> None:
    import os

    assert group_has_living(os.getpgrp())


def test_a_group_of_one_zombie_is_gone_at_once() -> None:
    """A real group whose only member is a zombie (a child not reaped yet): the stop
    is done at once, not after the 2 s bound (that is what a stop waited for here)."""
    import subprocess
    import time

    from twisted.internet.task import Clock

    from faastwist.providers.replica import group_gone

    child = subprocess.Popen(["/bin/true"], start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while not _zombie(child.pid):
            assert time.monotonic() < deadline, "the child never exited"
            time.sleep(0.01)
        fired: list[None] = []
        group_gone(Clock(), child.pid).addCallback(fired.append)
        assert fired == [None]
    finally:
        child.wait()


def _zombie(pid: int) -> bool:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
