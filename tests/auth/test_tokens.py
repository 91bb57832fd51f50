"""The tokens file: format, creation (mode 0600), add and revoke."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from faastwist.auth.tokens import (
    ADMIN_TOKEN_SUFFIX,
    Role,
    TokenFileError,
    add_token,
    ensure_tokens_file,
    hash_token,
    parse_tokens,
    read_admin_token,
    read_tokens,
    revoke_token,
)

DIGEST = "a" * 64


def test_parse_lines_comments_and_roles() -> None:
    entries = parse_tokens(f"# comment\n\nadmin {DIGEST}\n  read {'B' * 64}  \n")
    assert [(e.role, e.digest) for e in entries] == [(Role.ADMIN, DIGEST),
                                                      (Role.READ, "b" * 64)]
    assert entries[0].id == "a" * 12


@pytest.mark.parametrize("line, words", [
    (f"root {DIGEST}", "role must be admin or read"),
    ("admin abc", "not a SHA-256"),
    (f"admin {DIGEST} extra", "expected 'ROLE SHA256HEX'"),
    ("admin", "expected 'ROLE SHA256HEX'"),
])
def test_bad_lines_name_the_line(line: str, words: str) -> None:
    with pytest.raises(TokenFileError) as caught:
        parse_tokens(f"# ok\n{line}\n", "f")
    assert "f, line 2" in str(caught.value) and words in str(caught.value)


def test_ensure_creates_private_files_once(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "admin-tokens"
    token = ensure_tokens_file(path)
    assert token and token.startswith("ftw_") and len(token) > 40
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    sibling = Path(str(path) + ADMIN_TOKEN_SUFFIX)
    assert stat.S_IMODE(sibling.stat().st_mode) == 0o600
    assert token not in path.read_text()           # only the hash is in the tokens file
    assert read_tokens(path)[0].digest == hash_token(token)
    assert read_admin_token(path) == token
    assert ensure_tokens_file(path) is None         # an existing file is left alone
    assert read_admin_token(path) == token


def test_add_and_revoke(tmp_path: Path) -> None:
    path = tmp_path / "admin-tokens"
    first = ensure_tokens_file(path)
    token, entry = add_token(path, Role.READ)
    assert token != first
    assert [e.role for e in read_tokens(path)] == [Role.ADMIN, Role.READ]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    gone = revoke_token(path, entry.id)
    assert gone == entry
    assert [e.role for e in read_tokens(path)] == [Role.ADMIN]
    assert path.read_text().startswith("# faastwist admin tokens")  # comments kept
    with pytest.raises(TokenFileError, match="no token with id"):
        revoke_token(path, entry.id)
    with pytest.raises(TokenFileError, match="at least 6 hex"):
        revoke_token(path, "ab")


def test_revoking_the_first_admin_token_removes_its_plain_copy(tmp_path: Path) -> None:
    path = tmp_path / "admin-tokens"
    token = ensure_tokens_file(path)
    revoke_token(path, hash_token(token)[:8])
    assert read_admin_token(path) is None
    assert read_tokens(path) == ()


def test_add_refuses_a_broken_file(tmp_path: Path) -> None:
    path = tmp_path / "admin-tokens"
    path.write_text("admin nothex\n")
    with pytest.raises(TokenFileError, match="line 1"):
        add_token(path, Role.ADMIN)
    assert path.read_text() == "admin nothex\n"


def test_revoking_another_token_keeps_the_plain_admin_copy(tmp_path: Path) -> None:
    """Only the revoked token's own copy goes: revoking a read token must not take the
    same-machine clients' admin token with it."""
    path = tmp_path / "admin-tokens"
    first = ensure_tokens_file(path)
    _, reader = add_token(path, Role.READ)
    _, other_admin = add_token(path, Role.ADMIN)
    revoke_token(path, reader.id)
    revoke_token(path, other_admin.id)
    assert read_admin_token(path) == first
    assert (path.parent / (path.name + ADMIN_TOKEN_SUFFIX)).exists()
    assert [e.digest for e in read_tokens(path)] == [hash_token(first)]
