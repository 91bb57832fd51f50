"""CPU seconds used by process groups, for the autoscaler's ``cpu`` type.

Every replica leads its own process group (its launcher calls setsid), so the CPU a
replica used is the sum over the processes of that group: their own time plus what
they reaped of their children (a watchdog's forked ``fprocess`` runs count once
reaped). One pass over ``/proc`` serves every group of every function; it reads
kernel memory only, but runs only when some function scales on cpu.
"""

from __future__ import annotations

import os
from typing import Collection

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def parse_stat(text: str) -> tuple[int, float] | None:
    """(process group, CPU seconds incl. reaped children) from a ``/proc/PID/stat``
    line; None when it is not one. The command name may hold spaces and brackets: the
    fields are counted from the last ``)``."""
    end = text.rfind(")")
    if end == -1:
        return None
    fields = text[end + 2:].split()
    # fields[0] is state (field 3); pgrp is field 5, utime..cstime fields 14-17
    if len(fields) < 15:
        return None
    try:
        group = int(fields[2])
        ticks = sum(int(value) for value in fields[11:15])
    except ValueError:
        return None
    return group, ticks / CLOCK_TICKS


def group_cpu_seconds(groups: Collection[int], proc: str = "/proc") -> dict[int, float]:
    """CPU seconds per process group in ``groups`` (groups without a process: absent)."""
    wanted = set(groups)
    out: dict[int, float] = {}
    if not wanted:
        return out
    try:
        entries = os.listdir(proc)
    except OSError:
        return out
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"{proc}/{entry}/stat", encoding="latin-1") as handle:
                parsed = parse_stat(handle.read())
        except OSError:   # gone meanwhile
            continue
        if parsed is not None and parsed[0] in wanted:
            out[parsed[0]] = out.get(parsed[0], 0.0) + parsed[1]
    return out
