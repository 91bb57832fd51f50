"""A process function's secrets as files: one folder per function, one file per secret.

Folders are created with a random name under ``{dataDir}/secrets`` (not listable, mode
0311; files 0400). Where bubblewrap works (Debian's ``bwrap``), every function process
runs in a mount namespace in which that whole tree is an empty tmpfs and only its own
folder is bound read-only at OpenFaaS's path ``/var/openfaas/secrets``: no function can
read another's secrets, whatever its user. Without bubblewrap the folder's own path is
given, so secrets are kept from other functions by an unlisted random path only.
Either way ``FAASTWIST_SECRETS_DIR`` names the folder as the function sees it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

SECRETS_DIR_VAR = "FAASTWIST_SECRETS_DIR"
OPENFAAS_SECRETS_PATH = "/var/openfaas/secrets"
ENV = shutil.which("env") or "/usr/bin/env"


def find_bwrap(launch: Sequence[str] = ()) -> str | None:
    """bubblewrap's path if it can make a mount namespace here when started behind
    ``launch`` (the function user's launch prefix); probed once, at start."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return None
    try:
        probe = subprocess.run([*launch, bwrap, "--dev-bind", "/", "/", "--tmpfs", "/mnt",
                                "true"], capture_output=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return bwrap if probe.returncode == 0 else None


class SecretFiles:
    """Writes and removes the secret folders; blocking: call it on a thread."""

    def __init__(self, root: str | os.PathLike[str], identity: Any = None,
                 bwrap: str | None = None) -> None:
        self.root = Path(root)
        self.folders: dict[str, Path] = {}
        self.identity = identity   # the function user: owns the files it reads
        self.bwrap = bwrap

    def sandbox(self, function: str, wants_secrets: bool) -> tuple[list[str], str | None]:
        """The argv prefix a function process starts with, and its secrets folder as it
        sees it (None: no secrets)."""
        folder = self.folders.get(function) if wants_secrets else None
        if self.bwrap is None:
            return [], str(folder) if folder is not None else None
        # --die-with-parent: the sandboxed process dies with the node (a kill -9 included)
        prefix = [self.bwrap, "--die-with-parent", "--dev-bind", "/", "/", "--tmpfs",
                  str(self.root)]
        # bwrap sets PWD; the function's environment stays what the node chose
        tail = ["--", ENV, "-u", "PWD"]
        if folder is None:
            return prefix + tail, None
        return prefix + ["--ro-bind", str(folder), OPENFAAS_SECRETS_PATH] + tail, \
            OPENFAAS_SECRETS_PATH

    def prepare(self) -> None:
        """Create the (unlistable) root, so that the sandbox always has it to hide, and
        OpenFaaS's mount point (an unprivileged bwrap cannot create it); without it the
        sandbox is off."""
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o311)
        if self.bwrap is not None:
            try:
                os.makedirs(OPENFAAS_SECRETS_PATH, mode=0o755, exist_ok=True)
            except OSError:
                self.bwrap = None

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
            self._own(temporary)
            os.replace(temporary, folder / name)
        for stale in folder.iterdir():
            if stale.name not in values:
                stale.unlink()
        os.chmod(folder, 0o500)
        self._own(folder)
        return str(folder)

    def _own(self, path: Path) -> None:
        identity = self.identity
        if identity is not None and getattr(identity, "switch", False):
            os.chown(path, identity.uid, identity.gid)

    def remove(self, function: str) -> None:
        folder = self.folders.pop(function, None)
        if folder is not None and folder.exists():
            os.chmod(folder, 0o700)
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
