"""The source revision (git commit) a package runs from, read from files, not git.

OpenFaaS's /system/info reports a commit sha; a checkout (or a worktree, whose ``.git``
is a file naming the real git folder) has it in ``HEAD``, a ref file or packed-refs.
An install without git metadata reports ``unknown``, never an empty sha.
"""

from __future__ import annotations

from pathlib import Path

UNKNOWN = "unknown"


def _git_dir(start: Path) -> Path | None:
    for folder in (start, *start.parents):
        dot_git = folder / ".git"
        if dot_git.is_dir():
            return dot_git
        if dot_git.is_file():
            text = dot_git.read_text(errors="replace").strip()
            if text.startswith("gitdir:"):
                target = Path(text[len("gitdir:"):].strip())
                return target if target.is_absolute() else (folder / target).resolve()
    return None


def source_revision(start: str | Path) -> str:
    """The commit checked out where ``start`` lies, or ``unknown``."""
    try:
        git = _git_dir(Path(start).resolve())
        if git is None:
            return UNKNOWN
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head or UNKNOWN
        ref = head[len("ref:"):].strip()
        common = git
        commondir = git / "commondir"
        if commondir.is_file():  # a worktree keeps its refs in the main git folder
            common = (git / commondir.read_text().strip()).resolve()
        for folder in (git, common):
            ref_file = folder / ref
            if ref_file.is_file():
                return ref_file.read_text().strip() or UNKNOWN
        packed = common / "packed-refs"
        if packed.is_file():
            for line in packed.read_text().splitlines():
                sha, _, name = line.partition(" ")
                if name == ref:
                    return sha
    except OSError:
        pass
    return UNKNOWN
