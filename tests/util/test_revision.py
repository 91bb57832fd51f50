"""The commit a tree runs from, read from git's files (faastwist.util.revision): a
checkout, a worktree, a branch in packed-refs, a detached HEAD, no git at all."""

from __future__ import annotations

from pathlib import Path

from faastwist.util.revision import UNKNOWN, source_revision

SHA = "0123456789abcdef0123456789abcdef01234567"
OTHER = "fedcba9876543210fedcba9876543210fedcba98"


def git_dir(root: Path, head: str) -> Path:
    git = root / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "HEAD").write_text(head + "\n")
    return git


def test_a_branch_ref_file_from_a_subfolder(tmp_path: Path) -> None:
    git = git_dir(tmp_path, "ref: refs/heads/main")
    (git / "refs" / "heads" / "main").write_text(SHA + "\n")
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    assert source_revision(tmp_path / "pkg" / "sub") == SHA


def test_a_detached_head_is_its_sha(tmp_path: Path) -> None:
    git_dir(tmp_path, SHA)
    assert source_revision(tmp_path) == SHA


def test_packed_refs_when_the_ref_file_is_gone(tmp_path: Path) -> None:
    git = git_dir(tmp_path, "ref: refs/heads/main")
    (git / "packed-refs").write_text(
        f"# pack-refs with: peeled fully-peeled sorted\n{OTHER} refs/heads/mainline\n"
        f"{SHA} refs/heads/main\n")
    assert source_revision(tmp_path) == SHA


def test_a_ref_in_no_file_is_unknown(tmp_path: Path) -> None:
    git = git_dir(tmp_path, "ref: refs/heads/main")
    (git / "packed-refs").write_text(f"{OTHER} refs/heads/other\n")
    assert source_revision(tmp_path) == UNKNOWN == "unknown"


def test_empty_files_are_unknown_never_an_empty_sha(tmp_path: Path) -> None:
    git = git_dir(tmp_path, "ref: refs/heads/main")
    (git / "refs" / "heads" / "main").write_text("\n")
    assert source_revision(tmp_path) == UNKNOWN
    (git / "HEAD").write_text("\n")
    assert source_revision(tmp_path) == UNKNOWN


def test_a_worktree_reads_its_head_and_the_main_folders_refs(tmp_path: Path) -> None:
    """A worktree's .git is a file naming its git folder (relative or absolute); its
    HEAD is its own, its branches are in the main folder (commondir)."""
    main = git_dir(tmp_path / "main", "ref: refs/heads/main")
    (main / "refs" / "heads" / "feature").write_text(OTHER + "\n")
    own = main / "worktrees" / "feature"
    own.mkdir(parents=True)
    (own / "HEAD").write_text("ref: refs/heads/feature\n")
    (own / "commondir").write_text("../..\n")
    tree = tmp_path / "feature"
    tree.mkdir()
    (tree / ".git").write_text(f"gitdir: {own}\n")
    assert source_revision(tree) == OTHER
    (tree / ".git").write_text("gitdir: ../main/.git/worktrees/feature\n")
    assert source_revision(tree) == OTHER
    (main / "refs" / "heads" / "feature").unlink()
    (main / "packed-refs").write_text(f"{SHA} refs/heads/feature\n")
    assert source_revision(tree) == SHA


def test_a_dot_git_file_that_names_nothing_is_passed_over(tmp_path: Path) -> None:
    git = git_dir(tmp_path, SHA)
    inner = tmp_path / "inner"
    inner.mkdir()
    (inner / ".git").write_text("not a gitdir line\n")
    assert git.is_dir() and source_revision(inner) == SHA
    (inner / ".git").write_bytes(b"\xff\xfe not text\n")      # not UTF-8 either
    assert source_revision(inner) == SHA


def test_no_git_or_an_unreadable_one_is_unknown(tmp_path: Path) -> None:
    assert source_revision("/") == UNKNOWN
    git = git_dir(tmp_path, "ref: refs/heads/main")
    (git / "HEAD").unlink()
    (git / "HEAD").mkdir()                       # reading it fails: OSError
    assert source_revision(tmp_path) == UNKNOWN
