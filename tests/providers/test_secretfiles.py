"""A process function's secrets as files (faastwist/providers/secretfiles.py): one
unlisted folder per function, one 0400 file per secret, written so that nothing a
function plants is ever followed."""

from __future__ import annotations

import os
import subprocess
import stat
from pathlib import Path

import pytest

from faastwist.providers.secretfiles import SecretFiles
from faastwist.util.users import Identity


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_the_root_is_made_unlistable(tmp_path: Path) -> None:
    files = SecretFiles(tmp_path / "functions" / ".secrets")
    files.prepare()
    assert mode(files.root) == 0o311
    files.prepare()   # again: harmless
    assert mode(files.root) == 0o311


def test_a_function_gets_a_random_folder_holding_exactly_its_secrets(tmp_path: Path) -> None:
    files = SecretFiles(tmp_path / ".secrets")
    path = Path(files.write("echo", {"db": b"one", "api": b"\x00two"}))
    assert path.parent == files.root and path.name.startswith("echo-")
    assert len(path.name) > len("echo-") + 4      # a random part nobody can guess
    assert mode(files.root) == 0o311 and mode(path) == 0o755
    assert {p.name: p.read_bytes() for p in path.iterdir()} == {"db": b"one",
                                                               "api": b"\x00two"}
    assert {mode(p) for p in path.iterdir()} == {0o400}
    assert files.path("echo") == str(path) and files.path("other") is None


def test_a_second_write_replaces_values_and_drops_stale_secrets_in_place(
        tmp_path: Path) -> None:
    files = SecretFiles(tmp_path / ".secrets")
    first = files.write("echo", {"db": b"one", "old": b"x"})
    second = files.write("echo", {"db": b"two"})
    assert first == second
    assert {p.name: p.read_bytes() for p in Path(second).iterdir()} == {"db": b"two"}
    assert files.write("echo", {}) == first and list(Path(first).iterdir()) == []


def test_two_functions_get_different_folders(tmp_path: Path) -> None:
    files = SecretFiles(tmp_path / ".secrets")
    one, two = files.write("a", {"s": b"1"}), files.write("b", {"s": b"2"})
    assert one != two
    assert (Path(one) / "s").read_bytes() == b"1" and (Path(two) / "s").read_bytes() == b"2"


def test_a_folder_removed_behind_its_back_is_made_again(tmp_path: Path) -> None:
    files = SecretFiles(tmp_path / ".secrets")
    first = Path(files.write("echo", {"s": b"1"}))
    (first / "s").unlink()
    first.rmdir()
    again = Path(files.write("echo", {"s": b"2"}))
    assert again.is_dir() and (again / "s").read_bytes() == b"2"


def test_secret_files_never_follow_a_planted_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    files = SecretFiles(tmp_path / "secrets")
    folder = Path(files.write("f", {"key": b"one"}))
    (folder / ".key.new").symlink_to(victim)
    files.write("f", {"key": b"two"})
    assert (folder / "key").read_bytes() == b"two" and victim.read_text() == "precious"
    assert mode(folder) == 0o755 and mode(folder / "key") == 0o400


def test_a_write_after_the_root_was_removed_makes_it_again_unlistable(tmp_path: Path) -> None:
    files = SecretFiles(tmp_path / ".secrets")
    files.write("a", {"s": b"1"})
    files.clear()
    assert not files.root.exists() and files.path("a") is None
    path = Path(files.write("a", {"s": b"2"}))
    assert mode(files.root) == 0o311 and (path / "s").read_bytes() == b"2"


def test_remove_and_clear_delete_every_copy(tmp_path: Path) -> None:
    files = SecretFiles(tmp_path / ".secrets")
    a, b = Path(files.write("a", {"s": b"1"})), Path(files.write("b", {"s": b"2"}))
    files.remove("a")
    assert not a.exists() and b.exists() and files.path("a") is None
    files.remove("a")       # twice, or never written: harmless
    files.remove("never")
    files.clear()
    assert not b.exists() and not files.root.exists() and files.folders == {}
    files.clear()           # nothing left: harmless


def test_without_a_switch_the_files_stay_the_nodes(tmp_path: Path) -> None:
    me = Identity("node", os.getuid(), "node", os.getgid(), switch=False)
    files = SecretFiles(tmp_path / ".secrets", owner=lambda function: me)
    path = Path(files.write("f", {"s": b"1"}))
    assert (path / "s").stat().st_uid == os.getuid()


@pytest.mark.root
def test_a_switched_function_owns_its_files_and_not_its_folder(tmp_path: Path) -> None:
    """Its files are its own (it reads them, 0400); the folder stays root's, so it can
    plant nothing that a later write would follow."""
    them = Identity("fn", 54321, "fn", 54321, switch=True)
    asked: list[str] = []

    def owner(function: str) -> Identity:
        asked.append(function)
        return them
    files = SecretFiles(tmp_path / ".secrets", owner=owner)
    path = Path(files.write("f", {"s": b"1", "t": b"2"}))
    assert {(p.stat().st_uid, p.stat().st_gid) for p in path.iterdir()} == {(54321, 54321)}
    assert path.stat().st_uid == 0 and mode(path) == 0o755
    assert asked == ["f", "f"]


def test_a_write_makes_missing_parents(tmp_path: Path) -> None:
    files = SecretFiles(tmp_path / "data" / "functions" / ".secrets")
    path = Path(files.write("f", {"s": b"1"}))
    assert (path / "s").read_bytes() == b"1"


def test_a_secret_named_like_another_secrets_temporary_file_is_kept(tmp_path: Path) -> None:
    """Temporary names start with a dot, which no secret name may: writing ``a`` can
    never clobber a secret called ``XX.a.newXX`` or ``a.new``."""
    files = SecretFiles(tmp_path / ".secrets")
    values = {"XX.a.newXX": b"kept", "a.new": b"also", "a": b"written"}
    path = Path(files.write("f", values))
    assert {p.name: p.read_bytes() for p in path.iterdir()} == values


def test_a_link_planted_between_unlink_and_open_is_refused_not_followed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The race the open's O_EXCL|O_NOFOLLOW closes: a link that appears at the
    temporary path right after it was cleared makes the write fail, never write
    through the link."""
    victim = tmp_path / "victim"
    victim.write_text("precious")
    files = SecretFiles(tmp_path / ".secrets")
    folder = Path(files.write("f", {"key": b"one"}))
    real_unlink = Path.unlink

    def unlink_then_plant(self: Path, missing_ok: bool = False) -> None:
        real_unlink(self, missing_ok=missing_ok)
        if self.name == ".key.new":
            self.symlink_to(victim)
    monkeypatch.setattr(Path, "unlink", unlink_then_plant)
    (folder / ".key.new").write_bytes(b"")
    with pytest.raises(FileExistsError):
        files.write("f", {"key": b"two"})
    assert victim.read_text() == "precious"
    assert (folder / "key").read_bytes() == b"one"


@pytest.mark.root
def test_the_chown_never_follows_a_link_raced_in_place_of_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the temporary file became a link to a node file before its chown, the link
    itself is chowned: the node's file keeps its owner."""
    victim = tmp_path / "victim"
    victim.write_text("precious")
    them = Identity("fn", 54321, "fn", 54321, switch=True)
    files = SecretFiles(tmp_path / ".secrets", owner=lambda function: them)
    real_own = SecretFiles._own

    def swap_then_own(self: SecretFiles, path: Path, function: str) -> None:
        path.unlink()
        path.symlink_to(victim)
        real_own(self, path, function)
    monkeypatch.setattr(SecretFiles, "_own", swap_then_own)
    path = Path(files.write("f", {"key": b"one"}))
    assert victim.stat().st_uid == 0 and victim.read_text() == "precious"
    assert (path / "key").lstat().st_uid == 54321      # the link, not its target


@pytest.mark.root
def test_a_folder_that_cannot_be_removed_is_forgotten_without_an_error(
        tmp_path: Path) -> None:
    """A stop must go on when a secret file cannot be deleted (here: immutable)."""
    files = SecretFiles(tmp_path / ".secrets")
    path = Path(files.write("f", {"s": b"1"}))
    files.write("g", {"s": b"2"})
    subprocess.run(["chattr", "+i", str(path / "s")], check=True, timeout=10)
    try:
        files.remove("f")
        assert files.path("f") is None and (path / "s").exists()
        files.clear()
        assert files.folders == {} and (path / "s").exists()
    finally:
        subprocess.run(["chattr", "-i", str(path / "s")], check=True, timeout=10)
