"""Function logs on disk: one size-rotated file per function, plus live followers.

Every line a child writes lands in ``{dataDir}/logs/{fn}.log`` as
``{timestamp} {instance} {stream} {text}``: readable with ``tail -f`` and parseable
back into LogLines for the admin API's ``/logs`` (which reads in a thread, never on
the reactor). Appends are small buffered writes flushed shortly after, so a chatty
function costs one write call per burst, not per line.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, TextIO

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from faastwist.providers.base import LogLine

log = Logger()

_STAMP = "%Y-%m-%dT%H:%M:%S.%fZ"
FLUSH_DELAY = 0.2


def format_record(line: LogLine, stream: str) -> str:
    stamp = datetime.fromtimestamp(line.timestamp, tz=timezone.utc).strftime(_STAMP)
    return f"{stamp} {line.instance} {stream} {line.text}\n"


def parse_record(name: str, record: str) -> LogLine | None:
    """The LogLine of one file line, or None for a line that is not ours (torn write)."""
    parts = record.rstrip("\n").split(" ", 3)
    if len(parts) < 3:
        return None
    try:
        stamp = datetime.strptime(parts[0], _STAMP).replace(tzinfo=timezone.utc)
    except ValueError:
        return None
    return LogLine(name=name, instance=parts[1], timestamp=stamp.timestamp(),
                   text=parts[3] if len(parts) == 4 else "")


class RotatingLogFile:
    """Appends to ``path``; past ``max_bytes`` it becomes ``path.1`` (one backup kept),
    so a function never holds more than twice ``max_bytes`` of disk."""

    def __init__(self, path: Path, clock: IReactorTime, max_bytes: int) -> None:
        self.path = path
        self.clock = clock
        self.max_bytes = max_bytes
        self._file: TextIO | None = None
        self._size = 0
        self._flush_call: IDelayedCall | None = None
        self._broken = False

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8", errors="replace")
        self._size = self._file.tell()

    def write(self, text: str) -> None:
        if self._broken:
            return
        try:
            if self._file is None:
                self._open()
            assert self._file is not None
            self._file.write(text)
            self._size += len(text)
            if self._size >= self.max_bytes:
                self._rotate()
            elif self._flush_call is None:
                self._flush_call = self.clock.callLater(FLUSH_DELAY, self.flush)
        except OSError as exc:
            # a full disk must not take the function down: keep serving, say it once
            self._broken = True
            log.error("cannot write function log {path}: {error}", path=str(self.path),
                      error=str(exc))

    def _rotate(self) -> None:
        self.close()
        os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        self._open()

    def flush(self) -> None:
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        if self._file is not None:
            try:
                self._file.flush()
            except OSError as exc:
                log.error("cannot flush function log {path}: {error}", path=str(self.path),
                          error=str(exc))

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
        self._file = None

    def remove(self) -> None:
        """Delete the file and its backup (a deleted function leaves no logs)."""
        self.close()
        for path in (self.path, self.path.with_name(self.path.name + ".1")):
            try:
                path.unlink()
            except FileNotFoundError:
                pass
        self._broken = False


class FunctionLog:
    """The log of one function: file, and the callbacks of ``follow`` requests."""

    def __init__(self, name: str, path: Path, clock: IReactorTime, max_bytes: int,
                 wall_clock: Callable[[], float]) -> None:
        self.name = name
        self.file = RotatingLogFile(path, clock, max_bytes)
        self.wall_clock = wall_clock
        self.followers: list[Callable[[LogLine], None]] = []

    def emit(self, instance: str, stream: str, text: str) -> LogLine:
        # microseconds, as in the file, so a follower and a later read agree on ``since``
        line = LogLine(self.name, instance, round(self.wall_clock(), 6), text)
        self.file.write(format_record(line, stream))
        for follower in list(self.followers):
            try:
                follower(line)
            except Exception:
                log.failure("log follower of {name} failed; dropping it", name=self.name)
                self.unfollow(follower)
        return line

    def follow(self, on_line: Callable[[LogLine], None]) -> Callable[[], None]:
        self.followers.append(on_line)
        return lambda: self.unfollow(on_line)

    def unfollow(self, on_line: Callable[[LogLine], None]) -> None:
        if on_line in self.followers:
            self.followers.remove(on_line)


def _lines_backwards(path: Path, block: int = 65536) -> Iterator[str]:
    """The lines of ``path`` from the last to the first, reading blocks from the end."""
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        return
    with handle:
        handle.seek(0, os.SEEK_END)
        position = handle.tell()
        rest = b""
        while position > 0:
            step = min(block, position)
            position -= step
            handle.seek(position)
            chunk = handle.read(step) + rest
            pieces = chunk.split(b"\n")
            rest = pieces[0]
            for piece in reversed(pieces[1:]):
                if piece:
                    yield piece.decode("utf-8", "replace")
        if rest:
            yield rest.decode("utf-8", "replace")


def read_lines(name: str, path: Path, tail: int | None, since: float | None) -> list[LogLine]:
    """The last ``tail`` lines not older than ``since``, oldest first (blocking: run it
    in a thread). Reads backwards, so a tail of a large file costs only its end."""
    found: list[LogLine] = []
    if tail is not None and tail <= 0:
        return found
    for candidate in (path, path.with_name(path.name + ".1")):
        for record in _lines_backwards(candidate):
            line = parse_record(name, record)
            if line is None:
                continue
            if since is not None and line.timestamp < since - 1e-6:
                found.reverse()
                return found
            found.append(line)
            if tail is not None and len(found) >= tail:
                found.reverse()
                return found
    found.reverse()
    return found
