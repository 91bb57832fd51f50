"""The data folder lock (util/folderlock.py): one holder, released however it ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from faastwist.util.folderlock import LOCK_FILE, FolderInUse, lock_folder


def test_a_second_holder_is_refused_naming_the_key_and_the_first_holder(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    first = lock_folder(str(folder), "process.dataDir")   # the folder is made
    with pytest.raises(FolderInUse) as caught:
        lock_folder(str(folder), "process.dataDir")
    message = str(caught.value)
    assert message.startswith(f"process.dataDir: {folder} is in use by another faasgate "
                              f"(pid {os.getpid()} since ")
    assert "two nodes cannot share a data folder" in message
    first.release()
    first.release()  # idempotent
    again = lock_folder(str(folder), "process.dataDir")
    again.release()


@pytest.mark.process
def test_the_lock_goes_with_its_process_even_on_kill_9(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from faastwist.util.folderlock import lock_folder\n"
         f"lock_folder({str(tmp_path)!r}, 'etcd.dataDir'); print('held', flush=True)\n"
         "sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2])))
    try:
        assert holder.stdout.readline() == b"held\n"
        with pytest.raises(FolderInUse, match=f"pid {holder.pid} since"):
            lock_folder(str(tmp_path), "etcd.dataDir")
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    lock_folder(str(tmp_path), "etcd.dataDir").release()  # the lock file stays; no matter


def test_a_symlink_planted_as_the_lock_file_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_text("keep me")
    (tmp_path / LOCK_FILE).symlink_to(target)
    with pytest.raises(OSError):
        lock_folder(str(tmp_path), "process.dataDir")
    assert target.read_text() == "keep me"


def test_the_lock_file_says_who_holds_it_and_since_when(tmp_path: Path) -> None:
    import re
    import stat

    lock = lock_folder(str(tmp_path), "store.dataDir")
    try:
        path = tmp_path / ".faasgate.lock"
        assert LOCK_FILE == ".faasgate.lock" and path.exists()
        assert stat.S_IMODE(path.stat().st_mode) == 0o644 & ~current_umask()
        text = path.read_text()
        assert re.fullmatch(rf"pid {os.getpid()} since \d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\dZ\n",
                            text), text
    finally:
        lock.release()


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_stale_longer_holder_line_is_replaced_whole(tmp_path: Path) -> None:
    (tmp_path / LOCK_FILE).write_text("x" * 300 + "\n")    # left by an older, dead holder
    lock = lock_folder(str(tmp_path), "store.dataDir")
    try:
        assert (tmp_path / LOCK_FILE).read_text().startswith(f"pid {os.getpid()} since ")
        assert "x" not in (tmp_path / LOCK_FILE).read_text()
    finally:
        lock.release()


def test_the_refusal_quotes_the_holder_line_or_says_it_is_unknown(tmp_path: Path) -> None:
    import fcntl

    path = tmp_path / LOCK_FILE
    path.write_text("")
    holder = os.open(path, os.O_RDWR)                        # another holder, silent
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        with pytest.raises(FolderInUse) as caught:
            lock_folder(str(tmp_path), "store.dataDir")
        assert str(caught.value) == (
            f"store.dataDir: {tmp_path} is in use by another faasgate (holder unknown); "
            f"two nodes cannot share a data folder: stop that one, or give this node "
            f"folders of its own")
        os.pwrite(holder, ("h" * 150 + "\xe9" + "h" * 100).encode("latin-1"), 0)
        with pytest.raises(FolderInUse) as caught:         # long, and not UTF-8
            lock_folder(str(tmp_path), "store.dataDir")
        quoted = "h" * 150 + "\ufffd" + "h" * 49            # its first 200 bytes
        assert f"({quoted}); " in str(caught.value)
    finally:
        os.close(holder)
