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


def test_roles_read_may_only_read_admin_may_do_both() -> None:
    assert Role.ADMIN.allows(True) and Role.ADMIN.allows(False)
    assert Role.READ.allows(False) and not Role.READ.allows(True)


def test_a_new_token_carries_256_random_bits(tmp_path: Path) -> None:
    import base64

    token, _ = add_token(tmp_path / "admin-tokens", Role.READ)
    assert token.startswith("ftw_")
    assert len(base64.urlsafe_b64decode(token[4:] + "=")) == 32


def test_the_first_admin_token_sits_beside_the_file_as_name_dot_admin(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "admin-tokens"        # folders made, 0700
    token = ensure_tokens_file(path)
    assert (tmp_path / "deep" / "er" / "admin-tokens.admin").read_text() == token + "\n"
    assert stat.S_IMODE((tmp_path / "deep" / "er").stat().st_mode) == 0o700
    assert ensure_tokens_file(path) is None                   # once only
    assert path.read_text() == (
        "# faastwist admin tokens: one 'ROLE SHA256HEX' line per token (ROLE: admin or "
        "read).\n# Manage with 'faastwist token create|list|revoke'; the node reloads this "
        f"file on change and on SIGHUP.\nadmin {hash_token(token)}\n")


@pytest.mark.parametrize("text, message", [
    ("admin\n", "F, line 1: expected 'ROLE SHA256HEX', got 1 fields"),
    (f"\n# c\nroot {DIGEST}\n", "F, line 3: role must be admin or read, got 'root'"),
    ("read xyz\n", "F, line 1: not a SHA-256 hex digest (64 hex digits)"),
])
def test_a_bad_line_is_named_exactly(text: str, message: str) -> None:
    with pytest.raises(TokenFileError) as caught:
        parse_tokens(text, "F")
    assert str(caught.value) == message


def test_the_default_source_is_the_tokens_file() -> None:
    with pytest.raises(TokenFileError, match="^tokens file, line 1: "):
        parse_tokens("admin\n")


def test_unreadable_files_are_named(tmp_path: Path) -> None:
    missing = tmp_path / "none"
    with pytest.raises(TokenFileError) as caught:
        read_tokens(missing)
    assert str(caught.value) == f"cannot read {missing}: No such file or directory"
    binary = tmp_path / "binary"
    binary.write_bytes(b"admin \xff\n")
    with pytest.raises(TokenFileError) as caught:
        read_tokens(binary)
    assert str(caught.value) == f"{binary}: not UTF-8 text"


def test_a_token_is_added_on_a_line_of_its_own(tmp_path: Path) -> None:
    path = tmp_path / "admin-tokens"
    path.write_text(f"admin {DIGEST}")                        # no final newline
    _, entry = add_token(path, Role.READ)
    assert path.read_text() == f"admin {DIGEST}\nread {entry.digest}\n"
    ended = tmp_path / "ended"
    ended.write_text(f"admin {DIGEST}\n")
    _, entry = add_token(ended, Role.READ)
    assert ended.read_text() == f"admin {DIGEST}\nread {entry.digest}\n"   # no blank line
    empty = tmp_path / "empty"
    empty.write_text("")
    _, entry = add_token(empty, Role.ADMIN)
    assert empty.read_text() == f"admin {entry.digest}\n"


def test_revoke_takes_six_digits_and_refuses_an_ambiguous_id(tmp_path: Path) -> None:
    path = tmp_path / "admin-tokens"
    twins = ["abcdef" + "0" * 58, "abcdef" + "1" * 58]
    path.write_text(f"#admin {twins[0]}\nadmin {twins[0]}\nread {twins[1]}\n")
    with pytest.raises(TokenFileError) as caught:
        revoke_token(path, "abcdef")
    assert str(caught.value) == "id abcdef matches 2 tokens; give more digits"
    with pytest.raises(TokenFileError) as caught:
        revoke_token(path, "abcde")
    assert str(caught.value) == ("token id must be at least 6 hex digits (see 'faastwist "
                                 "token list'), got 'abcde'")
    with pytest.raises(TokenFileError) as caught:
        revoke_token(path, "abcdeg")
    assert "at least 6 hex digits" in str(caught.value)
    assert revoke_token(path, "ABCDEF1").digest == twins[1]   # six and more, any case
    assert revoke_token(path, "abcdef0").digest == twins[0]
    assert path.read_text() == f"#admin {twins[0]}\n"         # comments stay
    with pytest.raises(TokenFileError) as caught:
        revoke_token(path, "abcdef")
    assert str(caught.value) == f"no token with id abcdef in {path}"
