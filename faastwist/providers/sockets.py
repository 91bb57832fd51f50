"""Who owns a listening socket: readiness must not trust whatever answers on a port.

A replica is ready only when the socket listening on its port belongs to one of its
own processes (its process group: the command and whatever it forked). Linux tells
through ``/proc/net/tcp{,6}`` (listening sockets and their inodes) and
``/proc/PID/fd`` (which process holds which socket inode).
"""

from __future__ import annotations

import os
from pathlib import Path

LISTEN = "0A"


def listening_inodes(port: int, proc: Path = Path("/proc")) -> set[int] | None:
    """Inodes of the TCP sockets listening on ``port`` (any address); None when /proc
    cannot tell."""
    found: set[int] = set()
    seen_table = False
    for table in ("net/tcp", "net/tcp6"):
        try:
            lines = (proc / table).read_text().splitlines()[1:]
        except OSError:
            continue
        seen_table = True
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != LISTEN:
                continue
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                found.add(int(fields[9]))
    return found if seen_table else None


def group_pids(pgid: int, proc: Path = Path("/proc")) -> list[int]:
    """Live processes whose process group is ``pgid``."""
    pids = []
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            fields = (proc / entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            pids.append(int(entry))
    return pids


def owns_listener(pgid: int, port: int, proc: Path = Path("/proc")) -> bool | None:
    """True when a process of group ``pgid`` holds a socket listening on ``port``;
    None when /proc cannot tell (then only the probe counts)."""
    inodes = listening_inodes(port, proc)
    if inodes is None:
        return None
    if not inodes:
        return False
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for pid in group_pids(pgid, proc):
        folder = proc / str(pid) / "fd"
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            try:
                if os.readlink(folder / name) in wanted:
                    return True
            except OSError:
                continue
    return False
