"""What every template's build shares: its error, the file copy that follows no link,
and how a build names the developer's files and shows a tool's last lines."""

from __future__ import annotations

import os
import shutil

from faastwist.templates.stack import StackFunction

TAIL = 15


class BuildError(Exception):
    """A build failed; the message says what to fix."""


def copy_file(source: str, target: str, mode: int) -> None:
    """A regular file copied without following a link at either end."""
    fd_in = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd_in, "rb") as reader:
        fd_out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd_out, "wb") as writer:
            shutil.copyfileobj(reader, writer)
            os.fchmod(writer.fileno(), mode)


def shown(function: StackFunction, rel: str) -> str:
    """A handler-folder file as the developer knows it (relative to the current folder
    when it is below it)."""
    path = os.path.join(function.handler, rel)
    here = os.getcwd()
    return os.path.relpath(path, here) if path.startswith(here + os.sep) else path


def tail(output: str) -> str:
    lines = [line for line in output.rstrip().splitlines() if line.strip()]
    return "\n".join("  " + line for line in lines[-TAIL:])
