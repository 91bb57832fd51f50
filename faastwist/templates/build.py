"""``faastwist build``: a function's runner, handler and dependencies in a build folder.

Per function ``{root}/{name}/{digest}/`` (the digest covers the template's runner, the
interpreter and every file of the handler folder): ``index.py``/``index.js`` (the
runner), ``function/`` (the handler folder's files; for node with its ``node_modules``;
for Go with the runner's package and the compiled ``.handler``, golang.py) and, for
Python, ``venv/`` (the dependencies). An existing folder for the same digest is the
build: nothing is redone.
Builds go to a new folder and are renamed into place when complete, so a failed build
never touches the version that serves.

Who does what: this process (root on a node) only copies the developer's regular files
(never a link) and makes folders; everything that runs code of the function's (pip with
its setup scripts, npm with its install scripts, the handler's import check, go build)
runs as an unprivileged uid from ``process.uidRange`` (the same hash of the name the
node uses), inside bubblewrap with the network shared (so the registry is reachable), a
tmpfs HOME, ``/`` read-only and only the dependency folder writable (for Go also the
function's build cache): the same building blocks as a function's launch
(isolation.launch_prefix, sandbox.Layout).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import time
from typing import Callable, Mapping, Sequence

import attrs

from faastwist.providers.isolation import launch_prefix
from faastwist.providers.sandbox import ROOT_PATH, Layout, Sandbox, detect_sandbox
from faastwist.templates import Runtime, Template, golang, template_for
from faastwist.templates.files import BuildError, copy_file, shown, tail
from faastwist.templates.stack import Stack, StackFunction
from faastwist.util.users import Identity, UidRange, account_exists, resolve_identity

FORMAT = "1"
SYSTEM_BUILDS = "/var/lib/faastwist/builds"
DEFAULT_UID_RANGE = "200000-265535"
SKIPPED = {"__pycache__", ".git", "node_modules", ".venv", "venv", "build"}
MAX_FILE = 64 * 2**20
BUILD_DISK = 2 * 2**30
BUILD_NPROC = 1024
BUILD_TIMEOUT = 900.0
PASSED_ENV = re.compile(r"^(PIP_|npm_config_|NPM_CONFIG_)|^(https?_proxy|no_proxy|"
                        r"HTTPS?_PROXY|NO_PROXY|GOPROXY|GONOPROXY|GOPRIVATE|GONOSUMDB|"
                        r"GOSUMDB|GOINSECURE)$")


@attrs.frozen
class BuildResult:
    name: str
    lang: str
    digest: str
    folder: str
    command: tuple[str, ...]
    skipped: bool
    seconds: float = 0.0


def default_root(stack_folder: str) -> str:
    """Root: a system folder every function uid can reach; else faas-cli's ./build."""
    return SYSTEM_BUILDS if os.geteuid() == 0 else os.path.join(stack_folder, "build")


def _files(folder: str) -> list[tuple[str, str]]:
    """(relative, absolute) of every regular file under ``folder``, sorted; a link is
    an error (nothing is copied through a link), and so is a file that others may not
    read (the CLI runs as root: it never publishes what a file's mode keeps private)."""
    out: list[tuple[str, str]] = []
    for current, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED)
        for entry in sorted(names) + [d for d in dirs if os.path.islink(
                os.path.join(current, d))]:
            path = os.path.join(current, entry)
            info = os.lstat(path)
            rel = os.path.relpath(path, folder)
            if stat.S_ISLNK(info.st_mode):
                raise BuildError(f"{path}: is a symbolic link; a build copies regular files "
                                 f"only (copy the file into the handler folder)")
            if not stat.S_ISREG(info.st_mode):
                continue
            if not info.st_mode & stat.S_IROTH:
                # the build folder is readable by every function uid: a file its own
                # mode keeps from others (a key, a root-only file) is not copied there
                raise BuildError(f"{path}: mode {stat.S_IMODE(info.st_mode):04o} keeps "
                                 f"it from other users, and the function's uid must read "
                                 f"it; chmod o+r it, or keep it out of the handler folder")
            if info.st_size > MAX_FILE:
                raise BuildError(f"{path}: larger than {MAX_FILE} bytes")
            if not entry.endswith(".pyc"):
                out.append((rel, path))
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(current, d))]
    return out


def digest_of(template: Template, interpreter: str, files: Sequence[tuple[str, str]]) -> str:
    hasher = hashlib.sha256()
    info = os.stat(interpreter)
    for part in (FORMAT, template.lang, os.path.realpath(interpreter),
                 f"{info.st_size}:{info.st_mtime_ns}"):
        hasher.update(part.encode() + b"\0")
    for rel, path in template.runner_files():
        with open(path, "rb") as file:
            data = file.read()
        hasher.update((f"{rel}\0" if template.runtime is Runtime.GO else "").encode()
                      + data + b"\0")
    for rel, path in files:
        with open(path, "rb") as file:
            data = file.read()
        hasher.update(f"{rel}\0{len(data)}\0".encode() + data)
    return hasher.hexdigest()


def _own_folder(path: str, mode: int) -> None:
    """``path`` as a real folder of ours with ``mode`` (not through a link)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        os.mkdir(path, mode)
        info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise BuildError(f"{path}: not a folder of this user's (a link or someone else's)")
    os.chmod(path, mode)


class Builder:
    """Builds the functions of stack files into ``root``."""

    def __init__(self, root: str, *, uid_range: str = DEFAULT_UID_RANGE,
                 env: Mapping[str, str] | None = None,
                 say: Callable[[str], None] = lambda text: None) -> None:
        self.root = os.path.abspath(root)
        self.uid_range = UidRange.parse(uid_range) if os.geteuid() == 0 else None
        self.passed = {k: v for k, v in (os.environ if env is None else env).items()
                       if PASSED_ENV.match(k)}
        self.say = say
        self._sandbox: Sandbox | None = None

    def identity(self, name: str) -> Identity:
        if self.uid_range is None:
            return resolve_identity()
        return self.uid_range.identity(self.uid_range.uid_for(name, account_exists))

    def sandbox(self, identity: Identity) -> Sandbox:
        if self._sandbox is None:
            os.makedirs(os.path.join(self.root, ".probe"), 0o755, exist_ok=True)
            self._sandbox = detect_sandbox(launch_prefix(identity), os.path.join(
                self.root, ".probe"))
            if not self._sandbox.available:
                self.say(f"warning: builds run without a sandbox: {self._sandbox.reason}")
        return self._sandbox

    def prepare_root(self, identity: Identity) -> None:
        missing = []
        folder = self.root
        while not os.path.exists(folder):
            missing.append(folder)
            folder = os.path.dirname(folder)
        for path in reversed(missing):
            os.mkdir(path, 0o711)
        if self.root.startswith(os.path.dirname(SYSTEM_BUILDS) + "/") and identity.switch:
            parent = os.path.dirname(SYSTEM_BUILDS)
            os.chmod(parent, stat.S_IMODE(os.stat(parent).st_mode) | 0o011)
        if not identity.may(self.root, os.X_OK):
            raise BuildError(f"build folder {self.root}: user {identity.user} (the "
                             f"functions' uid) cannot reach it; give --build-dir a folder "
                             f"that every user may pass through (e.g. under /var/lib)")

    # -- one function --------------------------------------------------------------------
    def build(self, stack: Stack, function: StackFunction) -> BuildResult:
        started = time.monotonic()
        template = template_for(function.lang)
        assert template is not None   # load_stack checked it
        interpreter = template.interpreter()
        if interpreter is None:
            raise BuildError(f"{function.name}: lang {function.lang} needs "
                             f"{template.runtime.value}, which is not installed here")
        handler_file = os.path.join(function.handler, template.handler_file)
        if not os.path.isfile(handler_file):
            raise BuildError(f"{function.name}: {handler_file} is missing (functions."
                             f"{function.name}.handler names {function.handler})")
        files = _files(function.handler)
        digest = digest_of(template, interpreter, files)
        identity = self.identity(function.name)
        self.prepare_root(identity)
        home = os.path.join(self.root, function.name)
        _own_folder(home, 0o711)
        lock = os.open(os.path.join(home, ".lock"),
                       os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)   # two builds of one function take turns
            return self._build(function, template, interpreter, files, digest, identity,
                               home, started)
        finally:
            os.close(lock)

    def _build(self, function: StackFunction, template: Template, interpreter: str,
               files: Sequence[tuple[str, str]], digest: str, identity: Identity,
               home: str, started: float) -> BuildResult:
        final = os.path.join(home, digest[:24])
        runner = os.path.join(final, "index.py" if template.runtime is Runtime.PYTHON
                              else "index.js")
        if template.runtime is Runtime.PYTHON:
            command: tuple[str, ...] = (interpreter, "-I", runner, template.contract)
        elif template.runtime is Runtime.GO:
            command = (os.path.join(final, "function", golang.BINARY),)
        else:
            command = (interpreter, runner)
        if os.path.isfile(os.path.join(final, "build.json")):
            return BuildResult(function.name, function.lang, digest, final, command, True)
        work = os.path.join(home, ".new-" + digest[:24])
        shutil.rmtree(work, ignore_errors=True)
        os.mkdir(work, 0o755)
        try:
            if template.runtime is Runtime.GO:
                golang.assemble(self, template, function, files, work, identity,
                                interpreter)
                golang.build_binary(self, template, function, identity, home, work, interpreter)
            else:
                self._assemble(template, function, files, work, runner)
                self._dependencies(template, function, identity, home, work, interpreter)
                self._check(template, function, identity, home, work, interpreter)
            with open(os.path.join(work, "build.json"), "w") as file:
                json.dump({"name": function.name, "lang": function.lang, "digest": digest,
                           "command": list(command)}, file)
            os.rename(work, final)
        finally:
            remove_tree(work)
        return BuildResult(function.name, function.lang, digest, final, command, False,
                           time.monotonic() - started)

    def _assemble(self, template: Template, function: StackFunction,
                  files: Sequence[tuple[str, str]], work: str, runner: str) -> None:
        copy_file(template.runner_path, os.path.join(work, os.path.basename(runner)), 0o444)
        target = os.path.join(work, "function")
        os.mkdir(target, 0o755)
        for rel, path in files:
            folder = os.path.dirname(os.path.join(target, rel))
            os.makedirs(folder, 0o755, exist_ok=True)
            executable = os.stat(path).st_mode & 0o100
            copy_file(path, os.path.join(target, rel), 0o555 if executable else 0o444)

    def _dependencies(self, template: Template, function: StackFunction, identity: Identity,
                      home: str, work: str, interpreter: str) -> None:
        deps_file = os.path.join(work, "function", template.deps_file)
        if template.runtime is Runtime.PYTHON:
            venv = self._writable(os.path.join(work, "venv"), identity)
            self.run(function.name, identity, home, [interpreter, "-m", "venv",
                                                      "--without-pip", venv], (venv,), "venv",
                      binds=(work,))
            if os.path.isfile(deps_file) and _has_requirements(deps_file):
                self._pip(function, identity, home, interpreter, venv, deps_file, work)
            return
        if not os.path.isfile(deps_file):
            return
        # npm installs into the handler folder itself, as on OpenFaaS (``file:``
        # dependencies stay relative to it): that copy becomes the build uid's
        deps = os.path.join(work, "function")
        if identity.switch:
            for current, _dirs, names in os.walk(deps):
                for entry in [current] + [os.path.join(current, n) for n in names]:
                    os.chown(entry, identity.uid, identity.gid, follow_symlinks=False)
        npm = shutil.which("npm", path=ROOT_PATH)
        if npm is None:
            raise BuildError(f"{function.name}: {template.deps_file} needs npm, which is "
                             f"not installed here")
        lock = os.path.isfile(os.path.join(deps, "package-lock.json"))
        code, output = self.run(function.name, identity, home,
                                 [npm, "ci" if lock else "install", "--omit=dev",
                                  "--no-audit", "--no-fund", "--prefix", deps], (deps,), "npm",
                                 binds=(work,))
        if code != 0:
            raise BuildError(f"{function.name}: npm could not install the dependencies of "
                             f"{shown(function, template.deps_file)}; its last lines:\n"
                             + tail(output))

    def _pip(self, function: StackFunction, identity: Identity, home: str,
             interpreter: str, venv: str, requirements: str, work: str) -> None:
        argv = [interpreter, "-m", "pip", "--python", os.path.join(venv, "bin", "python"),
                "install", "--no-input", "--disable-pip-version-check", "--no-warn-script-location",
                "-r", requirements]
        code, output = self.run(function.name, identity, home, argv, (venv,), "pip",
                                 binds=(work,))
        if code != 0:
            found = (re.findall(r"No matching distribution found for (\S+)", output)
                     or re.findall(r"satisf(?:y|ies) the requirement (\S+)", output)
                     or re.findall(r"Failed to build (\S+)", output)
                     or re.findall(r"Invalid requirement: '?([^'\s]+)", output))
            what = found[-1] if found else "the requirements"
            raise BuildError(f"{function.name}: pip could not install {what} (from "
                             f"{shown(function, 'requirements.txt')}); its last lines:\n"
                             + tail(output))

    def _check(self, template: Template, function: StackFunction, identity: Identity,
               home: str, work: str, interpreter: str) -> None:
        runner = os.path.join(work, "index.py" if template.runtime is Runtime.PYTHON
                              else "index.js")
        argv = ([interpreter, "-I", runner, template.contract, "--check"]
                if template.runtime is Runtime.PYTHON else [interpreter, runner, "--check"])
        code, output = self.run(function.name, identity, home, argv, (), "check",
                                 binds=(work,))
        if code != 0:
            lines = [line for line in output.strip().splitlines() if line.strip()]
            problem = lines[-1] if lines else f"exit status {code}"
            if problem.startswith("function/"):
                problem = shown(function, problem[len("function/"):])
            raise BuildError(f"{function.name}: the handler does not load: {problem}")

    # -- the sandbox ---------------------------------------------------------------------
    def _writable(self, path: str, identity: Identity) -> str:
        os.mkdir(path, 0o755)
        if identity.switch:
            os.chown(path, identity.uid, identity.gid)
        return path

    def run(self, name: str, identity: Identity, home: str, argv: Sequence[str],
             writable: Sequence[str], what: str, binds: Sequence[str] = (),
             env_extra: Mapping[str, str] | None = None,
             cwd: str | None = None) -> tuple[int, str]:
        """``argv`` as ``identity`` in its sandbox, in ``cwd`` (default its HOME);
        (exit status, stdout+stderr)."""
        sandbox = self.sandbox(identity)
        mount = os.path.join(home, ".home")
        _own_folder(mount, 0o755)
        if not sandbox.available and identity.switch:
            os.chown(mount, identity.uid, identity.gid)
            os.chmod(mount, 0o700)
        env = {"PATH": ROOT_PATH, "HOME": mount, "LANG": "C.UTF-8", "USER": identity.user,
               **self.passed, **(env_extra or {})}
        layout = Layout(home=mount, binds=tuple(binds), writable=tuple(writable),
                        disk=BUILD_DISK)
        inner = ["/bin/sh", "-c", 'umask 022 && cd -- "$1" && shift && exec "$@"', "sh",
                 cwd or mount, *argv]
        prefix = launch_prefix(identity, {"RLIMIT_NPROC": BUILD_NPROC} if identity.switch
                               else {})
        full = [*prefix, *sandbox.wrap(layout, env, inner)]
        try:
            done = subprocess.run(full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  env={"PATH": ROOT_PATH}, cwd="/", timeout=BUILD_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise BuildError(f"{name}: {what} took longer than {BUILD_TIMEOUT:.0f}s") from None
        finally:
            if not sandbox.available:
                shutil.rmtree(mount, ignore_errors=True)
        return done.returncode, done.stdout.decode("utf-8", "replace")


def _has_requirements(path: str) -> bool:
    with open(path, encoding="utf-8", errors="replace") as file:
        return any(line.strip() and not line.strip().startswith("#") for line in file)


def remove_tree(path: str) -> None:
    """``rmtree`` that also removes read-only folders (Go's module cache makes its
    folders 0555) where they are this user's own: only when not root, since a root
    process never changes a mode inside a build uid's folder; root needs no mode."""
    def retry(function: Callable[..., object], failed: str, _: object) -> None:
        if os.geteuid() == 0:
            return
        try:
            parent = os.path.dirname(failed)
            if not os.path.islink(parent):
                os.chmod(parent, 0o700)
            if os.path.isdir(failed) and not os.path.islink(failed):
                os.chmod(failed, 0o700)
                shutil.rmtree(failed, onerror=lambda *args: None)
            else:
                function(failed)
        except OSError:
            pass

    shutil.rmtree(path, onerror=retry)


def prune(root: str, name: str, keep: Sequence[str]) -> None:
    """Remove the function's build folders except ``keep`` (full paths)."""
    home = os.path.join(os.path.abspath(root), name)
    try:
        entries = os.listdir(home)
    except OSError:
        return
    for entry in entries:
        path = os.path.join(home, entry)
        if path not in keep and not entry.startswith(".") and os.path.isdir(path) \
                and not os.path.islink(path):
            remove_tree(path)
