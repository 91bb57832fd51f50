"""AuthFiles: first load creates the file; a change or reload() swaps the credentials."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from faastwist.auth.authorizer import Authorizer
from faastwist.auth.reload import AuthFiles
from faastwist.auth.tokens import Role, TokenFileError, add_token, read_admin_token


def bearer(token: str) -> str:
    return f"Bearer {token}"


def test_first_load_creates_the_file_and_polling_picks_up_changes(tmp_path: Path) -> None:
    clock, auth = Clock(), Authorizer()
    path = tmp_path / "data" / "admin-tokens"
    files = AuthFiles(auth, clock, str(path))
    files.load()
    first = read_admin_token(path)
    assert first and auth.check(bearer(first), True).allowed
    files.startService()
    try:
        token, _ = add_token(path, Role.READ)
        assert not auth.check(bearer(token), False).allowed   # not yet polled
        clock.advance(2.0)
        assert auth.check(bearer(token), False).allowed
        assert auth.check(bearer(token), True).code == 403
    finally:
        files.stopService()
    assert not clock.getDelayedCalls()


def test_a_broken_file_keeps_the_previous_tokens(tmp_path: Path) -> None:
    clock, auth = Clock(), Authorizer()
    path = tmp_path / "admin-tokens"
    files = AuthFiles(auth, clock, str(path))
    files.load()
    token = read_admin_token(path)
    path.write_text("admin not-a-hash\n")
    assert files.reload() is False
    assert auth.check(bearer(token), True).allowed
    path.write_text("")
    assert files.reload() is True
    assert auth.check(bearer(token), True).code == 401


def test_first_load_of_a_broken_file_fails(tmp_path: Path) -> None:
    path = tmp_path / "admin-tokens"
    path.write_text("superuser " + "0" * 64 + "\n")
    with pytest.raises(TokenFileError, match="role must be admin or read"):
        AuthFiles(Authorizer(), Clock(), str(path)).load()


def test_basic_auth_files_are_read_and_reloaded(tmp_path: Path) -> None:
    import base64

    user, password = tmp_path / "user", tmp_path / "password"
    user.write_text("admin\n")
    password.write_text("one\n")
    auth = Authorizer()
    files = AuthFiles(auth, Clock(), str(tmp_path / "tokens"), str(user), str(password))
    files.load()
    header = "Basic " + base64.b64encode(b"admin:one").decode()
    assert auth.check(header, True).allowed
    password.write_text("two\n")
    os.utime(password, (1, 1))
    files.poll()
    assert auth.check(header, True).code == 401


def test_a_file_others_may_write_is_refused(tmp_path: Path) -> None:
    clock, auth = Clock(), Authorizer()
    path = tmp_path / "admin-tokens"
    files = AuthFiles(auth, clock, str(path))
    files.load()
    token = read_admin_token(path)
    path.chmod(0o666)
    assert files.reload() is False                      # the old tokens stay
    assert auth.check(bearer(token), True).allowed
    with pytest.raises(TokenFileError, match="writable by group or others"):
        AuthFiles(Authorizer(), clock, str(path)).load()
    path.chmod(0o644)                                    # readable by others is fine
    assert files.reload() is True


@pytest.mark.parametrize("mode", [0o620, 0o602, 0o660, 0o606])
def test_a_file_the_group_or_others_may_write_is_refused_either_way(
        tmp_path: Path, mode: int) -> None:
    """Group write alone is as bad as world write: a group member could add a token."""
    path = tmp_path / "admin-tokens"
    AuthFiles(Authorizer(), Clock(), str(path)).load()
    path.chmod(mode)
    with pytest.raises(TokenFileError, match=f"mode {mode:04o}"):
        AuthFiles(Authorizer(), Clock(), str(path)).load()


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o604, 0o400])
def test_a_file_only_its_owner_may_write_is_loaded(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "admin-tokens"
    AuthFiles(Authorizer(), Clock(), str(path)).load()
    token = read_admin_token(path)
    path.chmod(mode)
    auth = Authorizer()
    AuthFiles(auth, Clock(), str(path)).load()
    assert auth.check(bearer(token), True).allowed
