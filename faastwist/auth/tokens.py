"""The admin tokens file: one ``ROLE SHA256HEX`` line per token, ``#`` comments.

Only hashes are stored, so a leaked tokens file (a backup, a world-readable copy) does
not hand out access. A token is shown once, when it is made. The node creates the file
on its first start with one admin token whose plain text goes to a sibling file,
``<tokensFile>.admin`` (mode 0600), so clients on the same machine running as the same
user (the CLI, an operator pasting it into the console) can find it.

Plain functions over paths, shared by the node (which reads the file) and the CLI's
``faastwist token`` commands (which edit it); no Twisted here.
"""

from __future__ import annotations

import enum
import hashlib
import os
import re
import secrets
import tempfile
from pathlib import Path

import attrs

#: the sibling file that holds the first admin token in plain text, for same-machine clients
ADMIN_TOKEN_SUFFIX = ".admin"
TOKEN_BYTES = 32
ID_LENGTH = 12
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class Role(enum.Enum):
    """What a credential may do: ``read`` (GET/HEAD) or ``admin`` (everything)."""

    READ = "read"
    ADMIN = "admin"

    def allows(self, write: bool) -> bool:
        return self is Role.ADMIN or not write


class TokenFileError(ValueError):
    """The tokens file cannot be read or has a bad line; the message names file and line."""


@attrs.frozen
class TokenEntry:
    role: Role
    digest: str   # sha256 hex of the token

    @property
    def id(self) -> str:
        """The short id ``token list`` shows and ``token revoke`` takes: a hash prefix."""
        return self.digest[:ID_LENGTH]


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A fresh token: 256 random bits, URL-safe, with a prefix that says what it is."""
    return "ftw_" + secrets.token_urlsafe(TOKEN_BYTES)


def parse_tokens(text: str, source: str = "tokens file") -> tuple[TokenEntry, ...]:
    """The entries of a tokens file's text; a bad line is an error naming its number."""
    entries = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 2:
            raise TokenFileError(f"{source}, line {number}: expected 'ROLE SHA256HEX', "
                                 f"got {len(fields)} fields")
        role_text, digest = fields[0].lower(), fields[1].lower()
        try:
            role = Role(role_text)
        except ValueError:
            raise TokenFileError(f"{source}, line {number}: role must be admin or read, "
                                 f"got {fields[0]!r}") from None
        if not _HEX64.match(digest):
            raise TokenFileError(f"{source}, line {number}: not a SHA-256 hex digest "
                                 f"(64 hex digits)")
        entries.append(TokenEntry(role, digest))
    return tuple(entries)


def read_tokens(path: str | os.PathLike[str]) -> tuple[TokenEntry, ...]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise TokenFileError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise TokenFileError(f"{path}: not UTF-8 text") from None
    return parse_tokens(text, str(path))


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, mode 0600 from the first byte."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise


HEADER = ("# faastwist admin tokens: one 'ROLE SHA256HEX' line per token (ROLE: admin or "
          "read).\n# Manage with 'faastwist token create|list|revoke'; the node reloads this "
          "file on change and on SIGHUP.\n")


def ensure_tokens_file(path: str | os.PathLike[str]) -> str | None:
    """Create the tokens file with one admin token when it does not exist.

    Returns the new token (also written to ``<path>.admin``, 0600), or None when the
    file was already there.
    """
    file = Path(path)
    if file.exists():
        return None
    token = new_token()
    _write_private(file.with_name(file.name + ADMIN_TOKEN_SUFFIX), token + "\n")
    _write_private(file, HEADER + f"admin {hash_token(token)}\n")
    return token


def add_token(path: str | os.PathLike[str], role: Role) -> tuple[str, TokenEntry]:
    """Append a new token of ``role``; returns the token (shown once) and its entry."""
    file = Path(path)
    text = file.read_text(encoding="utf-8") if file.exists() else HEADER
    parse_tokens(text, str(file))  # never append to a file the node would refuse
    token = new_token()
    entry = TokenEntry(role, hash_token(token))
    if text and not text.endswith("\n"):
        text += "\n"
    _write_private(file, text + f"{role.value} {entry.digest}\n")
    return token, entry


def revoke_token(path: str | os.PathLike[str], token_id: str) -> TokenEntry:
    """Remove the one entry whose digest starts with ``token_id`` (at least 6 hex digits)."""
    file = Path(path)
    prefix = token_id.strip().lower()
    if len(prefix) < 6 or not re.fullmatch(r"[0-9a-f]+", prefix):
        raise TokenFileError(f"token id must be at least 6 hex digits (see 'faastwist token "
                             f"list'), got {token_id!r}")
    entries = read_tokens(file)
    matches = [e for e in entries if e.digest.startswith(prefix)]
    if not matches:
        raise TokenFileError(f"no token with id {token_id} in {file}")
    if len({m.digest for m in matches}) > 1:
        raise TokenFileError(f"id {token_id} matches {len(matches)} tokens; give more digits")
    gone = matches[0]
    kept = []
    for raw in file.read_text(encoding="utf-8").splitlines(keepends=True):
        fields = raw.split()
        if (len(fields) == 2 and not raw.lstrip().startswith("#")
                and fields[1].lower() == gone.digest):
            continue
        kept.append(raw)
    _write_private(file, "".join(kept))
    admin_file = file.with_name(file.name + ADMIN_TOKEN_SUFFIX)
    try:  # the sibling file must not keep handing out a revoked token
        if hash_token(admin_file.read_text(encoding="utf-8").strip()) == gone.digest:
            admin_file.unlink()
    except OSError:
        pass
    return gone


def read_admin_token(tokens_file: str | os.PathLike[str]) -> str | None:
    """The plain admin token the node left beside ``tokens_file``, if this user can read it."""
    sibling = Path(str(tokens_file) + ADMIN_TOKEN_SUFFIX)
    try:
        token = sibling.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return token or None
