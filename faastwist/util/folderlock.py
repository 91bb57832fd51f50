"""An exclusive lock on a data folder: one node per folder.

Two nodes started on one folder (``make run`` twice) would share an etcd data
directory, function homes and logs. The lock is ``flock`` on a file in the folder,
taken before anything else starts and held for the process's life: the kernel drops it
when the process ends, however it ends (``kill -9`` included), so a stale lock file
never keeps a node from starting. The file says which process holds it, for the
message of the one refused.
"""

from __future__ import annotations

import fcntl
import os
import time

import attrs

LOCK_FILE = ".faasgate.lock"


class FolderInUse(Exception):
    """Another live process holds the folder's lock."""


@attrs.define
class FolderLock:
    """A held lock; ``release()`` (idempotent) gives it back."""

    folder: str
    fd: int | None

    def release(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)  # closing the last descriptor drops the flock


def lock_folder(folder: str, key: str) -> FolderLock:
    """Lock ``folder`` (made when missing) for this process; FolderInUse naming the
    config ``key`` and the holder when another process has it. OSError when the folder
    or its lock file cannot be made."""
    folder = os.path.abspath(folder)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read(fd)
        os.close(fd)
        raise FolderInUse(
            f"{key}: {folder} is in use by another faasgate ({holder or 'holder unknown'}); "
            f"two nodes cannot share a data folder: stop that one, or give this node "
            f"folders of its own") from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} since {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n"
              .encode(), 0)
    return FolderLock(folder, fd)


def _read(fd: int) -> str:
    try:
        return os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        return ""
