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


@functools.lru_cache(maxsize=None)
def etcd_unavailable() -> str | None:
    """Why the ``etcd`` (and ``cluster``) tests cannot run here (None: they can)."""
    from tests.support.etcd import etcd_binary

    return None if etcd_binary() else "no etcd binary (apt-get install -y etcd-server)"


@functools.lru_cache(maxsize=None)
def nats_unavailable() -> str | None:
    """Why the ``nats`` tests cannot run here (None: they can)."""
    from faastwist.queue.embedded import find_nats_binary

    return (None if find_nats_binary()
            else "no nats-server binary (apt-get install -y nats-server)")


def cgroup_v2_usable() -> bool:
    """The node's cgroup v2 test (CgroupTree.detect), without its side effects (it moves
    the caller): a delegated v2 folder of ours with memory and cpu."""
    from pathlib import Path

    base = Path("/sys/fs/cgroup")
    lines = Path("/proc/self/cgroup").read_text().splitlines()
    own = next((line[3:] for line in lines if line.startswith("0::")), None)
    if own is None or not (base / "cgroup.controllers").exists():
        return False
    folder = base / own.lstrip("/")
    return (os.access(folder, os.W_OK) and {"memory", "cpu"}
            <= set((folder / "cgroup.controllers").read_text().split()))


@functools.lru_cache(maxsize=None)
def cgroups_unavailable() -> str | None:
    """Why the node could make no cgroup here (None: v2 or v1 works): the ``cgroups``
    tests (limits enforced by the kernel) need one; rlimits apply without."""
    if cgroup_v2_usable():
        return None
    from faastwist.providers.limits import CgroupV1Tree

    probe = CgroupV1Tree.detect(f"probe{os.getpid()}")
    if probe is None:
        return "this machine lets the node create no cgroup (neither v2 nor v1)"
    probe.close()
    return None


#: a headless browser for the console tests (Debian's chromium and its driver)
CHROMIUM = ("/usr/bin/chromium", "chromium")
CHROMEDRIVER = ("/usr/bin/chromedriver", "chromedriver")


def find_program(*candidates: str) -> str | None:
    for candidate in candidates:
        found = shutil.which(candidate) if "/" not in candidate else (
            candidate if os.access(candidate, os.X_OK) else None)
        if found:
            return found
    return None


@functools.lru_cache(maxsize=None)
def browser_unavailable() -> str | None:
    """Why the ``browser`` tests cannot run here (None: they can). selenium is one of
    the test dependencies: without it the install is broken, and the tests fail."""
    chromium, driver = find_program(*CHROMIUM), find_program(*CHROMEDRIVER)
    if chromium is None or driver is None:
        return (f"no headless browser (chromium={chromium}, chromedriver={driver}): "
                f"apt-get install -y chromium chromium-driver")
    return None


@functools.lru_cache(maxsize=None)
def installed_unavailable() -> str | None:
    """Why the ``installed`` tests (the console script) cannot run here: faastwist is
    used from the working tree, not installed into this environment (make install)."""
    from importlib.metadata import entry_points

    if "faastwist" not in {ep.name for ep in entry_points(group="console_scripts")}:
        return "faastwist is not installed into this environment (make install)"
    return None


@functools.lru_cache(maxsize=None)
def setpriv_unavailable() -> str | None:
    """Why the ``setpriv`` tests (a parent-death signal) cannot run here."""
    return None if shutil.which("setpriv") else "no setpriv (util-linux)"


def root_unavailable() -> str | None:
    """Why the ``root`` tests (switching users) cannot run here."""
    return None if os.geteuid() == 0 else "not root: switching to a function's user needs root"
