"""A process function's secrets as files: one folder per function, one file per secret.

Folders are created with a random name under ``{functions}/.secrets`` (not listable, mode
0311; files 0400, owned by the function's uid). In the sandbox (sandbox.py) that whole
tree is hidden and only the function's own folder is bound read-only at OpenFaaS's path
``/var/openfaas/secrets``; ``FAASTWIST_SECRETS_DIR`` names the folder as the function
sees it. Without a sandbox the folder's own path is given: the uid of its own and the
unlisted random path keep it from other functions.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Mapping

from faastwist.util.users import Identity


class SecretFiles:
    """Writes and removes the secret folders; blocking: call it on a thread."""

    def __init__(self, root: str | os.PathLike[str],
                 owner: Callable[[str], Identity] | None = None) -> None:
        self.root = Path(root)
        self.folders: dict[str, Path] = {}
        #: the function's identity (its files are its own, 0400), or None: the node's
        self.owner = owner

    def prepare(self) -> None:
        """Create the (unlistable) root."""
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o311)

    def write(self, function: str, values: Mapping[str, bytes]) -> str:
        """Make ``function``'s folder hold exactly ``values``; returns its path."""
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o311)
        folder = self.folders.get(function)
        if folder is None or not folder.is_dir():
            folder = Path(tempfile.mkdtemp(prefix=f"{function}-", dir=self.root))
            self.folders[function] = folder
        # the folder stays the node's (0755): the function reads its files (0400, its
        # own) but can plant nothing here, so no write below ever follows its link
        os.chmod(folder, 0o755)
        for name, value in values.items():
            temporary = folder / f".{name}.new"
            try:
                temporary.unlink()
            except FileNotFoundError:
                pass
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                         0o400)
            with os.fdopen(fd, "wb") as handle:
                handle.write(value)
            self._own(temporary, function)
            os.replace(temporary, folder / name)
        for stale in folder.iterdir():
            if stale.name not in values:
                stale.unlink()
        return str(folder)

    def _own(self, path: Path, function: str) -> None:
        identity = self.owner(function) if self.owner is not None else None
        if identity is not None and identity.switch:
            os.chown(path, identity.uid, identity.gid, follow_symlinks=False)

    def remove(self, function: str) -> None:
        folder = self.folders.pop(function, None)
        if folder is not None and folder.exists():
            shutil.rmtree(folder, ignore_errors=True)

    def clear(self) -> None:
        """Remove every folder and the root (the provider stops; a start writes them
        again before any replica starts)."""
        for function in list(self.folders):
            self.remove(function)
        if self.root.is_dir():
            os.chmod(self.root, 0o700)
            shutil.rmtree(self.root, ignore_errors=True)

    def path(self, function: str) -> str | None:
        folder = self.folders.get(function)
        return str(folder) if folder is not None else None
