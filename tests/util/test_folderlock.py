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
