"""A process function's secrets as files: one folder per function, one file per secret.

The folder's path reaches the function as ``FAASTWIST_SECRETS_DIR`` (OpenFaaS functions
read ``/var/openfaas/secrets/<name>``; here the folder is wherever the node keeps it).
Folders are created with a random name under ``{dataDir}/secrets``, which is not
listable (mode 0311): a function learns only its own folder's path, and the files are
0400. Functions run as the node's user, so this keeps secrets from other functions by
path, not by user: separate users per function would be stronger.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Mapping

SECRETS_DIR_VAR = "FAASTWIST_SECRETS_DIR"


class SecretFiles:
    """Writes and removes the secret folders; blocking: call it on a thread."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.folders: dict[str, Path] = {}

    def write(self, function: str, values: Mapping[str, bytes]) -> str:
        """Make ``function``'s folder hold exactly ``values``; returns its path."""
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o311)
        folder = self.folders.get(function)
        if folder is None or not folder.is_dir():
            folder = Path(tempfile.mkdtemp(prefix=f"{function}-", dir=self.root))
            self.folders[function] = folder
        os.chmod(folder, 0o700)
        for name, value in values.items():
            temporary = folder / f".{name}.new"
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o400)
            with os.fdopen(fd, "wb") as handle:
                handle.write(value)
            os.replace(temporary, folder / name)
        for stale in folder.iterdir():
            if stale.name not in values:
                stale.unlink()
        os.chmod(folder, 0o500)
        return str(folder)

    def remove(self, function: str) -> None:
        folder = self.folders.pop(function, None)
        if folder is not None and folder.exists():
            os.chmod(folder, 0o700)
            shutil.rmtree(folder, ignore_errors=True)

    def path(self, function: str) -> str | None:
        folder = self.folders.get(function)
        return str(folder) if folder is not None else None
