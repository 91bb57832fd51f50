"""What this machine offers the tests that need more than Python: checked once per run.

A test that needs a facility carries its marker; where the facility is missing,
tests/conftest.py deselects it and the report header says why (a skip would look like a
test that ran and had nothing to check). Where the facility is present, the test runs and
fails if the product does not use it.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess


@functools.lru_cache(maxsize=None)
def sandbox_unavailable() -> str | None:
    """Why function sandboxes cannot be made here (None: they can): the node must run
    as root (a uid per function) and bubblewrap must make user and PID namespaces."""
    if os.geteuid() != 0:
        return "not root: a uid per function needs the node to run as root"
    bwrap, setpriv = shutil.which("bwrap"), shutil.which("setpriv")
    if bwrap is None or setpriv is None:
        return "bubblewrap (bwrap) or setpriv is not installed"
    probe = subprocess.run([setpriv, "--reuid", "200000", "--regid", "200000",
                            "--clear-groups", bwrap, "--unshare-user", "--unshare-pid",
                            "--ro-bind", "/", "/", "--proc", "/proc", "true"],
                           capture_output=True, timeout=10, cwd="/")
    if probe.returncode != 0:
        return f"bwrap cannot make namespaces here: {probe.stderr.decode(errors='replace')}"
    return None


def systemd_unavailable() -> str | None:
    """Why the shipped unit cannot be checked here (None: it can): ``systemd-analyze
    verify`` reads it (Debian's systemd package; ``make system-deps`` installs it). No
    running systemd is needed: the test starts the node the way the unit says."""
    if shutil.which("systemd-analyze") is None:
        return "systemd-analyze is not installed (Debian's systemd; make system-deps)"
    return None


#: a package index on this machine's disk (pip's configured extra index here)
LOCAL_INDEX = "/opt/pypi/simple"


def nodejs_unavailable() -> str | None:
    """Why the node template cannot be built here (None: it can)."""
    missing = [name for name in ("/usr/bin/node", "/usr/bin/npm") if not os.access(name, os.X_OK)]
    return f"{' and '.join(missing)} missing (Debian's nodejs, npm)" if missing else None


def golang_unavailable() -> str | None:
    """Why the Go templates cannot be built here (None: they can). Where go is
    installed the tests run, and a broken toolchain fails them."""
    if not os.access("/usr/bin/go", os.X_OK):
        return "/usr/bin/go missing (Debian's golang-go)"
    return None


def local_index_unavailable() -> str | None:
    """Why dependency tests cannot install offline here (None: they can): they name the
    local index in requirements.txt and need ``six`` in it, so no test needs the network."""
    if not os.path.isfile(os.path.join(LOCAL_INDEX, "six", "index.html")):
        return f"no local package index with six at {LOCAL_INDEX}"
    return None
