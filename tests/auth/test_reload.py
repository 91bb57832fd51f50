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


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o604, 0o400, 0o711, 0o755])
def test_a_file_only_its_owner_may_write_is_loaded(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "admin-tokens"
    AuthFiles(Authorizer(), Clock(), str(path)).load()
    token = read_admin_token(path)
    path.chmod(mode)
    auth = Authorizer()
    AuthFiles(auth, Clock(), str(path)).load()
    assert auth.check(bearer(token), True).allowed


@pytest.fixture
def logged():
    from twisted.logger import globalLogPublisher

    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def reloads(events: list[dict]) -> list[str]:
    return [e["why"] for e in events if e.get("log_format", "").startswith("admin auth reloaded")]


def test_a_poll_reloads_only_what_changed_since_the_last_read(tmp_path: Path, logged) -> None:
    """After load and after each reload the files' stamps are the baseline: an unchanged
    file is not read again; a changed one is, once."""
    clock = Clock()
    path = tmp_path / "admin-tokens"
    files = AuthFiles(Authorizer(), clock, str(path), poll_interval=1.0)
    files.load()
    files.startService()
    try:
        clock.advance(1.0)
        clock.advance(1.0)
        assert reloads(logged) == []
        add_token(path, Role.READ)
        clock.advance(1.0)
        assert reloads(logged) == ["file changed"]
        clock.advance(1.0)
        assert files.reload() is True                 # SIGHUP: read again, a new baseline
        clock.advance(1.0)
        clock.advance(1.0)
        assert reloads(logged) == ["file changed", "SIGHUP"]
    finally:
        files.stopService()
    files.stopService()                              # stopping twice is harmless
    assert not clock.getDelayedCalls()


def test_stopping_a_service_never_started_is_harmless(tmp_path: Path) -> None:
    files = AuthFiles(Authorizer(), Clock(), str(tmp_path / "admin-tokens"))
    files.stopService()


def test_without_basic_auth_files_only_bearer_is_offered(tmp_path: Path) -> None:
    auth = Authorizer()
    AuthFiles(auth, Clock(), str(tmp_path / "admin-tokens")).load()
    refused = auth.check(None, False)
    assert refused.code == 401
    assert [v for k, v in refused.headers if k == "WWW-Authenticate"] == [
        'Bearer realm="faastwist"']


def test_secret_files_lose_only_their_line_end(tmp_path: Path) -> None:
    import base64

    user, password = tmp_path / "user", tmp_path / "password"
    user.write_text("Xadmin\r\n")
    password.write_text(" Xpass X\n")                # spaces and X are the password's
    auth = Authorizer()
    AuthFiles(auth, Clock(), str(tmp_path / "tokens"), str(user), str(password)).load()
    header = "Basic " + base64.b64encode(b"Xadmin: Xpass X").decode()
    assert auth.check(header, True).allowed


@pytest.mark.parametrize("missing, key", [
    ("user", "admin.auth.basicAuth.userFile"),
    ("password", "admin.auth.basicAuth.passwordFile"),
])
def test_an_unreadable_secret_file_is_named_with_its_key(tmp_path: Path, missing: str,
                                                          key: str) -> None:
    files = {"user": tmp_path / "user", "password": tmp_path / "password"}
    for name, path in files.items():
        if name != missing:
            path.write_text("x\n")
    with pytest.raises(TokenFileError) as caught:
        AuthFiles(Authorizer(), Clock(), str(tmp_path / "tokens"), str(files["user"]),
                  str(files["password"])).load()
    assert str(caught.value) == f"{key}: cannot read {files[missing]}: No such file or directory"


def test_an_empty_secret_file_is_named_with_its_key(tmp_path: Path) -> None:
    user, password = tmp_path / "user", tmp_path / "password"
    user.write_text("admin\n")
    password.write_text("\n")
    with pytest.raises(TokenFileError) as caught:
        AuthFiles(Authorizer(), Clock(), str(tmp_path / "tokens"), str(user),
                  str(password)).load()
    assert str(caught.value) == f"admin.auth.basicAuth.passwordFile: {password} is empty"


def test_the_refusal_of_a_shared_file_says_how_to_fix_it(tmp_path: Path) -> None:
    path = tmp_path / "admin-tokens"
    AuthFiles(Authorizer(), Clock(), str(path)).load()
    path.chmod(0o664)
    with pytest.raises(TokenFileError) as caught:
        AuthFiles(Authorizer(), Clock(), str(path)).load()
    assert str(caught.value).endswith(f"(mode 0664): anyone who can write it can add a "
                                      f"token; chmod 600 {path}")
