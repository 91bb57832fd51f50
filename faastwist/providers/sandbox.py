"""Every function process in a sandbox of its own, in every mode (http, fork, envProcess).

A function is a hostile tenant: it controls its code, its output, its timing and whatever
it can write. The argv of one function process is, outermost first:

1. ``/bin/sh -c`` joining the replica's cgroups (root, before any of the function runs);
2. ``setsid`` (a session and process group of its own: a stop signals the whole group);
3. ``prlimit`` (root): ``RLIMIT_NPROC`` (counted per uid, so per function) and the rlimit
   fall-backs of limitMemory/limitCPU;
4. ``setpriv``: the function's own uid and gid, no supplementary groups, SIGTERM should
   the node die;
5. ``bwrap`` (bubblewrap, unprivileged, as that uid): new user, PID, IPC and UTS
   namespaces (and network with ``process.network: none``), no capabilities,
   ``no_new_privs``, no nested user namespaces, a read-only view of ``/``, its own
   ``/proc``, ``/dev`` and ``/tmp``, the node's folders replaced by empty ones, its HOME a
   size-limited tmpfs with its staged code bound read-only inside, its secrets at
   OpenFaaS's ``/var/openfaas/secrets``, and an environment set from nothing;
6. the function's program.

Steps 1 to 4 run as root with an environment the node chose (``PATH`` and the owner
markers of ``orphans.py``): the spec's ``env`` reaches only step 6 (bwrap's
``--setenv``), so no loader variable of a function ever reaches a root process. When
bwrap is missing or cannot make namespaces here, the node says so at start and in each
function's extData, and step 5 is ``env -i`` (the uid switch and limits still apply).
"""

from __future__ import annotations

import enum
import os
import shutil
import subprocess
from typing import Mapping, Sequence

import attrs

#: where OpenFaaS functions find their secrets (one file per secret)
OPENFAAS_SECRETS_PATH = "/var/openfaas/secrets"
ENV = shutil.which("env") or "/usr/bin/env"
#: what a root step of the launch sees of the environment (never the function's)
ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Network(str, enum.Enum):
    """``process.network``: what a function's processes may reach."""

    HOST = "host"   # the node's network (an HTTP replica must be reachable by the gate)
    NONE = "none"   # a network namespace with only its own loopback (fork mode)


@attrs.frozen
class Layout:
    """What one function process sees (host paths; all absolute)."""

    home: str                         # its HOME and working folder (writable)
    code: str | None = None           # staged copies, bound read-only at the same path
    binds: tuple[str, ...] = ()       # the command's folders, read-only at their own path
    node_binds: tuple[str, ...] = ()  # the node's helpers, read-only at their own path
    hidden: tuple[str, ...] = ()      # node folders replaced by empty, read-only ones
    secrets: str | None = None        # bound read-only at OPENFAAS_SECRETS_PATH
    disk: int = 128 * 2**20           # bytes of HOME (and of /tmp)
    network: Network = Network.HOST
    writable: tuple[str, ...] = ()    # bound read-write at their own path (builds only)


@attrs.frozen
class Sandbox:
    """bubblewrap as found at start (``bwrap`` None: unavailable, ``reason`` says why)."""

    bwrap: str | None
    reason: str = ""

    @property
    def available(self) -> bool:
        return self.bwrap is not None

    def describe(self) -> str:
        """extData's ``sandbox`` entry: what isolates this node's functions."""
        if self.bwrap is None:
            return f"none ({self.reason}): uid and limits only"
        return "bubblewrap: user, pid, ipc, uts and mount namespaces; no capabilities"

    def wrap(self, layout: Layout, env: Mapping[str, str],
             argv: Sequence[str]) -> list[str]:
        """The steps after the uid switch (5 and 6 of the module docstring)."""
        if self.bwrap is None:
            return [ENV, "-i", *(f"{key}={value}" for key, value in sorted(env.items())),
                    *argv]
        return [self.bwrap, *bwrap_options(layout, env), "--", *argv]


def bwrap_options(layout: Layout, env: Mapping[str, str]) -> list[str]:
    """bubblewrap's options for ``layout``; the order matters (later mounts go on top)."""
    size = str(layout.disk)
    options = ["--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
               "--unshare-cgroup-try", "--disable-userns", "--die-with-parent",
               "--hostname", "function"]
    if layout.network is Network.NONE:
        options.append("--unshare-net")
    options += ["--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev",
                "--size", size, "--tmpfs", "/tmp"]
    # the command's own folders before the hiding: a folder that holds the node's
    # data folder (a config folder does) shows it hidden all the same
    for folder in layout.binds:
        options += ["--ro-bind", folder, folder]
    for folder in layout.hidden:
        options += ["--size", "65536", "--tmpfs", folder]
    options += ["--size", size, "--perms", "0700", "--tmpfs", layout.home]
    if layout.code is not None:
        options += ["--ro-bind", layout.code, layout.code]
    for folder in layout.node_binds:
        options += ["--ro-bind", folder, folder]
    for folder in layout.writable:
        options += ["--bind", folder, folder]
    if layout.secrets is not None:
        options += ["--ro-bind", layout.secrets, OPENFAAS_SECRETS_PATH]
    for folder in layout.hidden:   # last: the mounts made inside them stay as they are
        options += ["--remount-ro", folder]
    options += ["--chdir", layout.home, "--clearenv"]
    for key, value in sorted(env.items()):
        options += ["--setenv", key, value]
    return options


def detect_sandbox(launch: Sequence[str], probe_home: str) -> Sandbox:
    """Whether bubblewrap can build the sandbox here, started behind ``launch`` (a
    function uid's launch prefix); probed once, at start, with a real sandbox."""
    bwrap = shutil.which("bwrap", path=ROOT_PATH)
    if bwrap is None:
        return Sandbox(None, "bubblewrap (bwrap) is not installed")
    layout = Layout(home=probe_home, disk=2**20)
    argv = [*launch, bwrap, *bwrap_options(layout, {"PATH": ROOT_PATH}), "--", "true"]
    try:
        probe = subprocess.run(argv, capture_output=True, timeout=10,
                               env={"PATH": ROOT_PATH}, cwd="/")
    except (OSError, subprocess.SubprocessError) as exc:
        return Sandbox(None, f"bwrap did not run: {exc}")
    if probe.returncode != 0:
        why = probe.stderr.decode("utf-8", "replace").strip().splitlines()
        return Sandbox(None, f"bwrap cannot make namespaces here: "
                             f"{why[-1] if why else f'exit {probe.returncode}'}")
    return Sandbox(bwrap)


def root_env(own: Mapping[str, str]) -> dict[str, str]:
    """The environment of the launch's root steps: a fixed PATH and ``own`` (the owner
    markers), nothing of the function's."""
    return {"PATH": ROOT_PATH, **own}


def in_place_folders(argv: Sequence[str], code: str | None) -> tuple[str, ...]:
    """Folders of the files ``argv`` names outside the staged copies: bound read-only
    at their own path (a fresh ``/tmp`` or a hidden folder may cover them otherwise)."""
    folders: list[str] = []
    for element in argv:
        if not element.startswith("/") or "\0" in element:
            continue
        if code is not None and (element == code or element.startswith(code + "/")):
            continue
        if os.path.isfile(element):
            folder = os.path.dirname(element)
            if folder not in folders and not _system(folder):
                folders.append(folder)
    return tuple(folders)


def _system(folder: str) -> bool:
    """Folders every sandbox sees anyway (read-only /): no bind needed (nor wanted: a
    bind of / itself would undo the hidden folders)."""
    return folder == "/" or folder.split("/")[1] in {"usr", "bin", "sbin", "lib", "lib64",
                                                     "etc", "opt"}
