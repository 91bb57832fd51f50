"""What a function process may see: its user, its environment, its folders, its files.

Every child of the process provider (HTTP replicas, fork-mode processes, envProcess
replicas) starts through one argv prefix that puts it into its own session (``setsid``),
applies its resource limits (``prlimit``, or a cgroup it joins before anything else runs),
and drops to the function's identity (``setpriv``, which also asks for SIGTERM should the
gate die); sandbox.py adds what follows. Its environment is built from scratch: ``PATH``
(the node's folders the function user may search), ``HOME``, ``PORT``, the spec's ``env``
and faastwist's own variables; never the node's tokens, ``NOTIFY_SOCKET`` or other
settings.

A function's folders (``FunctionFolders``) are the node's: ``{functions}/{name}`` (0711)
holds ``code/`` (the staged copies, read-only to everyone else) and ``home/`` (the
function's HOME: a tmpfs mount point in the sandbox, else a folder of its uid). The data
folder itself is made 0711, so a function can reach its folder without listing or reading
anything else there. When the folders above the data folder are closed to function users
(a clone under root's home), the functions' folders go to ``/var/lib/faastwist/{token}``.

A function's own files often sit where its user cannot read them (a clone under root's
home, mode 0700). Files named in ``command`` that lie inside the config folder and that
their own mode lets anyone read are copied ("staged") into ``code/``, and ``command``
points at the copies; anything else the function user cannot reach makes the spec
invalid (400 naming ``command``). No copy ever follows a link.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
from typing import Mapping, Sequence

import attrs

from faastwist.model.spec import FunctionSpec, SpecError
from faastwist.util.users import Identity

STAGE_MAX_BYTES = 16 * 2**20   # one staged file; bigger ones belong somewhere readable
HOME_MODE = 0o700
SYSTEM_ROOT = "/var/lib/faastwist"


@attrs.frozen
class Tools:
    """The util-linux programs the prefix uses; None where missing (then a Python
    launcher does the same)."""

    setsid: str | None
    setpriv: str | None
    prlimit: str | None

    @classmethod
    def find(cls) -> "Tools":
        return cls(shutil.which("setsid"), shutil.which("setpriv"), shutil.which("prlimit"))


# the fallback launcher: setsid, rlimits, drop privileges, exec (argv: config, program...)
_PY_LAUNCH = (
    "import os, resource, sys\n"
    "cfg = sys.argv[1].split(',')\n"
    "os.setsid()\n"
    "for item in cfg[2:]:\n"
    "    name, value = item.split('=')\n"
    "    resource.setrlimit(getattr(resource, name), (int(value), int(value)))\n"
    "if cfg[0]:\n"
    "    os.setgroups([]); os.setgid(int(cfg[1])); os.setuid(int(cfg[0]))\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)

# join every cgroup.procs file in $0 (":"-separated: v1 has one per controller), then exec
_JOIN_CGROUP = 'IFS=:; for f in $0; do echo $$ > "$f" || exit 125; done; exec "$@"'


def launch_prefix(identity: Identity, rlimits: Mapping[str, int] = {},
                  cgroup_procs: str | None = None, tools: Tools | None = None) -> tuple[str, ...]:
    """The argv before the function's own: join the cgroup (as root, before anything of
    the function runs), new session, rlimits, then the function's user and group."""
    tools = tools or Tools.find()
    prefix: list[str] = []
    if cgroup_procs:
        prefix += ["/bin/sh", "-c", _JOIN_CGROUP, cgroup_procs]
    if tools.setsid and tools.setpriv and (tools.prlimit or not rlimits):
        prefix.append(tools.setsid)
        if rlimits and tools.prlimit:  # (the condition above: prlimit is there)
            prefix.append(tools.prlimit)
            for name, value in sorted(rlimits.items()):
                option = {"RLIMIT_AS": "--as", "RLIMIT_CPU": "--cpu", "RLIMIT_NPROC": "--nproc"}[name]
                prefix.append(f"{option}={value}:{value}")
            prefix.append("--")
        prefix.append(tools.setpriv)
        if identity.switch:
            prefix += ["--reuid", str(identity.uid), "--regid", str(identity.gid),
                       "--clear-groups"]
        prefix += ["--pdeathsig", "TERM", "--"]
        return tuple(prefix)
    config = [str(identity.uid) if identity.switch else "", str(identity.gid)]
    config += [f"{name}={value}" for name, value in sorted(rlimits.items())]
    return (*prefix, sys.executable, "-c", _PY_LAUNCH, ",".join(config))


def search_path(node_path: str, identity: Identity) -> str:
    """The node's PATH without the folders the function user cannot search."""
    folders = [f for f in node_path.split(os.pathsep)
               if f and os.path.isabs(f) and identity.may(f, os.X_OK)]
    return os.pathsep.join(folders) or os.defpath


def function_env(spec: FunctionSpec, identity: Identity, home: str, path: str,
                 port: int | None, own: Mapping[str, str]) -> dict[str, str]:
    """A function's whole environment, built from nothing (see the module docstring)."""
    env = {"PATH": path, "HOME": home, "USER": identity.user, "LOGNAME": identity.user,
           "PYTHONUNBUFFERED": "1"}   # a Python function's prints reach the log at once
    env.update(spec.env)
    if port is not None:
        env["PORT"] = str(port)
    env.update(own)
    return env


def resolve_program(program: str, path: str, workdir: str,
                    identity: Identity | None = None) -> str | None:
    """The executable ``program`` names (a path, relative to ``workdir``, or a name on
    ``path``), the first one ``identity`` may run; None when there is none."""
    if "/" in program:
        full = os.path.join(workdir, os.path.expanduser(program))
        return full if os.path.isfile(full) and os.access(full, os.X_OK) else None
    for folder in path.split(os.pathsep):
        found = shutil.which(program, path=folder) if folder else None
        if found and (identity is None or identity.may(found, os.R_OK | os.X_OK)
                      or identity.may(found, os.X_OK) and _is_binary(found)):
            return found
    return None


def _is_binary(path: str) -> bool:
    """An ELF file needs only x to run; a script also needs r for its interpreter."""
    try:
        with open(path, "rb") as file:
            return file.read(4) == b"\x7fELF"
    except OSError:
        return False


def _inside(path: str, roots: Sequence[str]) -> str | None:
    for root in roots:
        real_root = os.path.realpath(root)
        if path == real_root or path.startswith(real_root.rstrip("/") + "/"):
            return real_root
    return None


@attrs.frozen
class Staging:
    """The command as the function will run it, and the files to copy for it."""

    argv: tuple[str, ...]
    copies: tuple[tuple[str, str], ...]   # (source, destination)


def plan_command(spec: FunctionSpec, identity: Identity, workdir: str, path: str,
                 code: str, stage_roots: Sequence[str], forbidden: Sequence[str] = ()
                 ) -> Staging:
    """Resolve and, where needed, stage every file ``command`` names; SpecError naming
    ``command`` when the function user could not run it."""
    argv: list[str] = []
    copies: list[tuple[str, str]] = []
    for index, element in enumerate(spec.command):
        want = os.R_OK | (os.X_OK if index == 0 else 0)
        if index == 0 and "/" not in element:
            program = resolve_program(element, path, workdir, identity)
            if program is None:
                exists = resolve_program(element, path, workdir) is not None
                raise SpecError("command", f"{element!r}: no such executable on PATH" +
                                (f" that user {identity.user} may run" if exists else ""))
            argv.append(program)
            continue
        candidate = os.path.join(workdir, os.path.expanduser(element))
        if index > 0 and ("\0" in element or not os.path.isfile(candidate)):
            argv.append(element)   # not a file: an option, a word, code
            continue
        if index == 0 and not os.path.isfile(candidate):
            raise SpecError("command", f"{element!r}: no such executable relative to {workdir}")
        real = os.path.realpath(candidate)
        if index == 0 and not os.access(real, os.X_OK):
            raise SpecError("command", f"{element!r} is not executable")
        if identity.may(real, want) or (index == 0 and identity.may(real, os.X_OK)
                                        and _is_binary(real)):
            argv.append(os.path.abspath(candidate))
            continue
        root = _inside(real, stage_roots)
        mode = os.stat(real).st_mode
        needed = stat.S_IROTH | (stat.S_IXOTH if index == 0 else 0)
        blocked = _inside(real, forbidden)
        if root is None or blocked or mode & needed != needed:
            raise SpecError("command", f"{element!r}: user {identity.user} cannot "
                            f"{'run' if index == 0 else 'read'} it; make it readable by that "
                            f"user, or keep it in the config folder with a mode that lets "
                            f"anyone read it (it is then copied into the function's folder)")
        if os.path.getsize(real) > STAGE_MAX_BYTES:
            raise SpecError("command", f"{element!r} is larger than {STAGE_MAX_BYTES} bytes: "
                                       f"too large to copy; make it readable by user "
                                       f"{identity.user} where it is")
        target = os.path.join(code, os.path.relpath(real, root))
        copies.append((real, target))
        argv.append(target)
    return Staging(tuple(argv), tuple(copies))


def functions_root(data_dir: str, identity: Identity, token: str) -> tuple[str, tuple[str, ...]]:
    """Where the functions' folders go, and the folders above them the function user
    must pass through: ``{data}/functions`` when that user can reach the data folder,
    else ``/var/lib/faastwist/{token}`` (a data folder under root's home is closed)."""
    data_dir = os.path.abspath(data_dir)
    if not identity.switch or identity.may(os.path.dirname(data_dir), os.X_OK):
        return os.path.join(data_dir, "functions"), (data_dir,)
    return os.path.join(SYSTEM_ROOT, token), (SYSTEM_ROOT,)


@attrs.frozen
class FunctionFolders:
    """A function's folders on the host: ``root`` (the node's, mode 0711), ``code``
    inside it (the staged copies: the node's, read-only for everyone else) and
    ``home`` inside it (its HOME and working folder: a tmpfs mount point in the
    sandbox, else a folder of the function's uid)."""

    root: str

    @property
    def code(self) -> str:
        return os.path.join(self.root, "code")

    @property
    def home(self) -> str:
        return os.path.join(self.root, "home")


def _fresh_folder(path: str, mode: int) -> None:
    """``path`` as a real folder of this process's user with ``mode``: whatever else is
    there (a symlink, a file, a folder someone else owns) is removed first, without
    following a link (shutil.rmtree does not follow them on Linux)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        info = None
    if info is not None and (not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid()):
        if stat.S_ISDIR(info.st_mode):
            shutil.rmtree(path)
        else:
            os.unlink(path)
        info = None
    if info is None:
        os.mkdir(path, mode)
    os.chmod(path, mode, follow_symlinks=False)


def prepare_folders(folders: FunctionFolders, identity: Identity,
                    passthrough: Sequence[str], sandboxed: bool) -> None:
    """Create the function's folders. The node owns ``root`` and ``code``, so the
    function can never plant a link or a file where the node later copies, changes
    modes or runs anything; ``home`` is a mount point in the sandbox, else the
    function's own (0700)."""
    functions = os.path.dirname(folders.root)
    os.makedirs(functions, exist_ok=True)
    if identity.switch:
        for folder in (*passthrough, functions):
            mode = stat.S_IMODE(os.stat(folder).st_mode)
            os.chmod(folder, (mode & ~0o066) | 0o011)
    _fresh_folder(folders.root, 0o711)
    _fresh_folder(folders.code, 0o755)
    if sandboxed or not identity.switch:
        _fresh_folder(folders.home, HOME_MODE if not identity.switch else 0o755)
        return
    # no sandbox: the home is on disk and the function's own
    try:
        info = os.lstat(folders.home)
    except FileNotFoundError:
        info = None
    if info is None or not stat.S_ISDIR(info.st_mode) or info.st_uid != identity.uid:
        if info is not None:
            _fresh_folder(folders.home, HOME_MODE)   # someone else's: start clean
        else:
            os.mkdir(folders.home, HOME_MODE)
        os.chown(folders.home, identity.uid, identity.gid, follow_symlinks=False)
    os.chmod(folders.home, HOME_MODE, follow_symlinks=False)


def stage(staging: Staging) -> None:
    """Copy the staged files into the node's code folder (0444, or 0555 for a program):
    never through a link, never into a folder the function could write."""
    for source, target in staging.copies:
        folder = os.path.dirname(target)
        _make_folders(folder)
        temporary = f"{target}.staging"
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        executable = os.stat(source).st_mode & 0o111
        with open(source, "rb") as reader:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                         0o600)
            with os.fdopen(fd, "wb") as writer:
                shutil.copyfileobj(reader, writer)
                os.fchmod(writer.fileno(), 0o555 if executable else 0o444)
        os.replace(temporary, target)


def _make_folders(folder: str) -> None:
    """``os.makedirs`` that refuses to pass through a symlink."""
    missing: list[str] = []
    while not os.path.lexists(folder):
        missing.append(folder)
        folder = os.path.dirname(folder)
    if os.path.islink(folder):
        raise OSError(f"{folder} is a symlink: not staging through it")
    for path in reversed(missing):
        os.mkdir(path, 0o755)
