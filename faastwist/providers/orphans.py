"""Children of a gate that died without a shutdown (SIGKILL, power cut of the parent).

Each child carries two environment variables: the owner token (controller + data
folder) and the pid of the gate that started it. At start-up the provider looks in
``/proc`` for processes with its token whose gate is gone and kills their process
groups, so a restarted gate re-deploys into a clean machine (a fixed port is free
again, and no stale replica answers). Where ``/proc`` is absent nothing is swept.
"""

from __future__ import annotations

import hashlib
import os
import signal
from pathlib import Path

from twisted.logger import Logger

log = Logger()

OWNER_VAR = "FAASTWIST_OWNER"
GATE_PID_VAR = "FAASTWIST_GATE_PID"


def owner_token(controller: str, data_dir: str) -> str:
    raw = f"{controller}\0{os.path.abspath(data_dir)}".encode()
    return hashlib.sha256(raw).hexdigest()[:16]


def _environ(pid_dir: Path) -> dict[str, str]:
    try:
        raw = (pid_dir / "environ").read_bytes()
    except OSError:
        return {}
    env: dict[str, str] = {}
    for entry in raw.split(b"\0"):
        key, sep, value = entry.partition(b"=")
        if sep and key in (OWNER_VAR.encode(), GATE_PID_VAR.encode()):
            env[key.decode()] = value.decode("latin-1")
    return env


def find_orphans(token: str, proc: Path = Path("/proc")) -> list[int]:
    """Pids carrying ``token`` whose gate process no longer exists."""
    me = os.getpid()
    found: list[int] = []
    try:
        entries = list(proc.iterdir())
    except OSError:
        return found
    for entry in entries:
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        env = _environ(entry)
        if env.get(OWNER_VAR) != token:
            continue
        gate = env.get(GATE_PID_VAR, "")
        if gate.isdigit() and (int(gate) == me or (proc / gate).exists()):
            continue  # ours, or a gate that is still alive
        found.append(int(entry.name))
    return sorted(found)


def kill_orphans(token: str, proc: Path = Path("/proc")) -> list[int]:
    """SIGKILL the process groups of orphaned children; returns the pids found."""
    orphans = find_orphans(token, proc)
    mine = os.getpgrp()
    for pid in orphans:
        try:
            group = os.getpgid(pid)
            # never group 0 (what a kernel thread reports; killpg(0) is the caller's own
            # group) or 1 (init's), never the sweeper's own group: then the pid alone
            if group > 1 and group != mine:
                os.killpg(group, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            continue
    if orphans:
        log.warn("killed {count} function processes left by a gate that did not shut "
                 "down: {pids}", count=len(orphans), pids=orphans)
    return orphans
