"""How the CLI shows things: aligned tables, human ages, documents, a progress spinner."""

from __future__ import annotations

import json
import sys
import time
from typing import IO, Any, Iterable, Mapping, Sequence

import click
import yaml

from faastwist.util.times import parse_rfc3339

LIST_COLUMNS = ("NAME", "STATE", "EVENT", "REPLICAS", "IMAGE", "AGE")


def human_age(seconds: float) -> str:
    """kubectl-style: 42s, 5m, 3h, 2d, with a second unit while it still says something."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 10:
        return f"{minutes}m{secs}s" if secs else f"{minutes}m"
    if minutes < 60:
        return f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes}m" if hours < 3 and minutes else f"{hours}h"
    days, hours = divmod(hours, 24)
    if days < 7 and hours:
        return f"{days}d{hours}h"
    return f"{days}d"


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    """Columns padded to their widest cell, two spaces apart; the last one unpadded."""
    all_rows = [list(header), *[[str(cell) for cell in row] for row in rows]]
    widths = [max(len(row[i]) for row in all_rows) for i in range(len(header))]
    lines = []
    for row in all_rows:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])] + [row[-1]]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _shorten(text: str, width: int = 40) -> str:
    """Cut from the middle: the end (a script's name, an image's tag) says the most."""
    if len(text) <= width:
        return text
    head = (width - 3) // 3
    return text[:head] + "..." + text[len(text) - (width - 3 - head):]


def replicas(spec: Mapping[str, Any], status: Mapping[str, Any]) -> str:
    """The spec's min..max range, prefixed with ``running/`` when the provider reports
    a count (one cell without spaces, so ``awk`` still splits the table by column)."""
    ext = status.get("extData") or {}
    running = ext.get("replicas") if isinstance(ext, Mapping) else None
    low = spec.get("minReplica", 0)
    high = spec.get("maxReplica", 0) or "*"
    bounds = f"{low}..{high}"
    return f"{running}/{bounds}" if running not in (None, "") else bounds


def image(spec: Mapping[str, Any]) -> str:
    if spec.get("image"):
        return _shorten(str(spec["image"]))
    command = [str(part) for part in spec.get("command") or []]
    if not command:
        return "-"
    program = command[0].rstrip("/").rsplit("/", 1)[-1] or command[0]
    return _shorten(" ".join([program, *command[1:]]))


def record_time(status: Mapping[str, Any]) -> float | None:
    """When the function was created if the server says, else its last state change:
    RFC 3339 text (what the API answers) or epoch seconds (what older servers sent)."""
    for key in ("created", "createdAt", "creationTimestamp", "updated"):
        value = status.get(key)
        if isinstance(value, str):
            try:
                stamp = parse_rfc3339(value)
            except ValueError:
                stamp = None
            if stamp is not None:
                return stamp
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return float(value)
    return None


def list_rows(records: Iterable[Mapping[str, Any]], now: float) -> list[list[str]]:
    rows = []
    for record in records:
        spec = record.get("spec") or {}
        status = record.get("status") or {}
        stamp = record_time(status)
        state = str(status.get("state", "?"))
        if status.get("startPending"):
            state += "(starting)"
        rows.append([
            str(spec.get("name") or status.get("name", "?")),
            state,
            str(status.get("event") or "-"),
            replicas(spec, status),
            image(spec),
            human_age(now - stamp) if stamp is not None else "-",
        ])
    rows.sort(key=lambda row: row[0])
    return rows


def dump(data: Any, output: str) -> str:
    if output == "json":
        return json.dumps(data, indent=2, sort_keys=False)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True).rstrip("\n")


def records_of(data: Any) -> list[Mapping[str, Any]]:
    """The list endpoint's answer: a JSON list, or a mapping wrapping one."""
    if isinstance(data, list):
        return [item for item in data if isinstance(item, Mapping)]
    if isinstance(data, Mapping):
        for key in ("items", "functions"):
            if isinstance(data.get(key), list):
                return [item for item in data[key] if isinstance(item, Mapping)]
    return []


def status_of(data: Any) -> Mapping[str, Any]:
    """A status document from either ``/{fn}/status`` or ``/{fn}`` (``{spec, status}``)."""
    if isinstance(data, Mapping):
        inner = data.get("status")
        if isinstance(inner, Mapping):
            return inner
        return data
    return {}


def describe_state(status: Mapping[str, Any]) -> str:
    state = str(status.get("state", "?"))
    extra = []
    if status.get("startPending"):
        extra.append("start requested")
    if status.get("event"):
        extra.append(f"last event: {status['event']}")
    if status.get("message"):
        extra.append(str(status["message"]))
    return f"{state} ({'; '.join(extra)})" if extra else state


class Progress:
    """A spinner on a terminal; one plain line per change otherwise (logs, CI)."""

    FRAMES = "|/-\\"

    def __init__(self, stream: IO[str] | None = None, interactive: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self.frame = 0
        self.last = ""
        self.width = 0
        self.started = time.monotonic()

    def update(self, text: str) -> None:
        if self.interactive:
            elapsed = int(time.monotonic() - self.started)
            line = f"{self.FRAMES[self.frame % len(self.FRAMES)]} {text} [{elapsed}s]"
            self.frame += 1
            pad = " " * max(0, self.width - len(line))
            self.stream.write(f"\r{line}{pad}")
            self.width = len(line)
            self.stream.flush()
        elif text != self.last:
            click.echo(text, file=self.stream)
        self.last = text

    def done(self) -> None:
        if self.interactive and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()
