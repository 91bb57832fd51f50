"""Keeps an Authorizer in step with its files: the tokens file and the basic-auth files.

Loaded at start (a bad file stops the start, naming it), then re-read when a file's
modification time or size changes (polled on the injected clock) and on SIGHUP. A
reload that fails keeps the previous credentials and logs why: a half-edited file must
not lock the operator out or let anyone in.
"""

from __future__ import annotations

import os
from pathlib import Path

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from faastwist.auth.authorizer import Authorizer, BasicCredentials
from faastwist.auth.tokens import (
    ADMIN_TOKEN_SUFFIX,
    TokenEntry,
    TokenFileError,
    ensure_tokens_file,
    read_tokens,
)

log = Logger()
POLL_INTERVAL = 2.0


def _stamp(path: str) -> tuple[float, int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_mtime, info.st_size, info.st_ino)


def _read_secret(path: str, what: str) -> str:
    try:
        value = Path(path).read_text(encoding="utf-8").strip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise TokenFileError(f"{what}: cannot read {path}: {reason}") from None
    if not value:
        raise TokenFileError(f"{what}: {path} is empty")
    return value


def _check_private(path: str) -> None:
    """Refuse a credentials file that others may write: they could add their own token."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # reading it reports the problem
    if mode & 0o022:
        raise TokenFileError(f"{path} is writable by group or others (mode "
                             f"{mode & 0o777:04o}): anyone who can write it can add a token; "
                             f"chmod 600 {path}")


class AuthFiles(Service):
    """Loads the credentials into ``authorizer`` and reloads them on change or SIGHUP."""

    name = "admin auth files"

    def __init__(self, authorizer: Authorizer, clock: IReactorTime, tokens_file: str,
                 basic_user_file: str = "", basic_password_file: str = "",
                 poll_interval: float = POLL_INTERVAL) -> None:
        self.authorizer = authorizer
        self.clock = clock
        self.tokens_file = tokens_file
        self.basic_files = (basic_user_file, basic_password_file)
        self.poll_interval = poll_interval
        self._stamps: tuple[tuple[float, int, int] | None, ...] = ()
        self._poll: LoopingCall | None = None

    def _paths(self) -> tuple[str, ...]:
        return (self.tokens_file, *(p for p in self.basic_files if p))

    def _read(self) -> tuple[tuple[TokenEntry, ...], BasicCredentials | None]:
        for path in self._paths():
            _check_private(path)
        tokens = read_tokens(self.tokens_file)
        user_file, password_file = self.basic_files
        basic = None
        if user_file:
            basic = BasicCredentials(
                _read_secret(user_file, "admin.auth.basicAuth.userFile"),
                _read_secret(password_file, "admin.auth.basicAuth.passwordFile"))
        return tokens, basic

    def load(self) -> None:
        """First load: create the tokens file if missing; raise TokenFileError if bad."""
        created = ensure_tokens_file(self.tokens_file)
        if created is not None:
            log.warn("created the admin tokens file {path} with one admin token; the token "
                     "itself is in {path}{suffix} (mode 0600, readable by this user only)",
                     path=self.tokens_file, suffix=ADMIN_TOKEN_SUFFIX)
        self._stamps = tuple(_stamp(p) for p in self._paths())
        tokens, basic = self._read()
        self.authorizer.replace(tokens, basic)
        log.info("admin auth: {count} token(s) from {path}{basic}", count=len(tokens),
                 path=self.tokens_file, basic=", basic auth on" if basic else "")

    def reload(self, why: str = "SIGHUP") -> bool:
        """Re-read every file; on error keep the previous credentials. True if applied."""
        self._stamps = tuple(_stamp(p) for p in self._paths())
        try:
            tokens, basic = self._read()
        except TokenFileError as exc:
            log.error("admin auth not reloaded ({why}), the previous credentials stay: "
                      "{error}", why=why, error=str(exc))
            return False
        self.authorizer.replace(tokens, basic)
        log.info("admin auth reloaded ({why}): {count} token(s) from {path}", why=why,
                 count=len(tokens), path=self.tokens_file)
        return True

    def poll(self) -> None:
        """Reload when any file's mtime, size or inode moved since the last read."""
        try:
            if tuple(_stamp(p) for p in self._paths()) != self._stamps:
                self.reload("file changed")
        except Exception:  # keep polling whatever happened
            log.failure("checking the admin auth files failed")

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]  # Twisted's Service is unannotated
        self._poll = LoopingCall(self.poll)
        self._poll.clock = self.clock
        self._poll.start(self.poll_interval, now=False)

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]  # Twisted's Service is unannotated
        if self._poll is not None and self._poll.running:
            self._poll.stop()
        self._poll = None
