"""How the process provider starts a function's processes: as whom, in which sandbox,
with which argv, environment and folders.

One uid per function (``process.uidRange``; a root node with no ``process.user``), so
that no function can signal, trace or read another's processes or files; one sandbox
per process (sandbox.py); folders the node owns for everything it writes (isolation.py).
The provider asks this module for the argv and the environment of the launch, and
gives the spawned process nothing else.
"""

from __future__ import annotations

import os
import shutil
from typing import Mapping, Sequence

from twisted.logger import Logger

from faastwist.config import ProcessConfig
from faastwist.model.spec import FunctionSpec, ProcessMode, SpecError
from faastwist.providers import classicwatchdog
from faastwist.providers.isolation import (
    SYSTEM_ROOT,
    FunctionFolders,
    Staging,
    Tools,
    function_env,
    functions_root,
    launch_prefix,
    plan_command,
    prepare_folders,
    resolve_program,
    search_path,
    stage,
)
from faastwist.providers.sandbox import (
    OPENFAAS_SECRETS_PATH,
    Layout,
    Network,
    Sandbox,
    detect_sandbox,
    in_place_folders,
    root_env,
)
from faastwist.util.users import Identity, UidRange, account_exists, resolve_identity

log = Logger()

RUNTIME = ".runtime"   # the node's helpers that run as a function (classicwatchdog.py)


class Launcher:
    """Builds every function process's launch; blocking parts (staging, probing) run at
    start or on the provider's threads."""

    def __init__(self, config: ProcessConfig, token: str, *, workdir: str,
                 node_path: str, identity: Identity | None = None,
                 stage_roots: Sequence[str] = (), tools: Tools | None = None,
                 sandbox: bool = True) -> None:
        self.config = config
        self.workdir = workdir
        self.tools = tools or Tools.find()
        single = identity or resolve_identity(config.user, config.group)
        #: a uid per function, or None: every function runs as ``single``
        self.uid_range = (UidRange.parse(config.uid_range)
                          if identity is None and single.switch and not config.user else None)
        #: whom the mode-bit checks ask about: any function uid is "others" to every file
        self.identity = (self.uid_range.identity(self.uid_range.first)
                         if self.uid_range is not None else single)
        self.path = search_path(node_path, self.identity)
        self.data_dir = os.path.abspath(config.data_dir)
        self.stage_roots = tuple(stage_roots)
        self.functions_dir, self.passthrough = functions_root(config.data_dir, self.identity,
                                                              token)
        self.runtime_dir = os.path.join(self.functions_dir, RUNTIME)
        self.network = Network(config.network)
        self.sandbox = Sandbox(None, "turned off") if not sandbox else Sandbox(None, "not probed")
        self._probe = sandbox
        #: whether secrets appear at OpenFaaS's path (else at their own, bound read-only)
        self.secrets_mount = False
        self._uids: dict[str, Identity] = {}
        self._staged: dict[str, tuple[tuple[str, ...], Staging]] = {}

    # -- start ---------------------------------------------------------------------------
    def start(self) -> None:
        """Probe bubblewrap and copy the node's helpers where functions may read, but
        never write, them."""
        os.makedirs(self.functions_dir, exist_ok=True)
        prepare_folders(FunctionFolders(self.runtime_dir), self.identity, self.passthrough,
                        sandboxed=True)
        source = classicwatchdog.__file__
        stage(Staging((), ((source, self.watchdog_file),)))
        if self._probe:
            probe = launch_prefix(self.identity, {}, None, tools=self.tools)
            self.sandbox = detect_sandbox(probe, "/tmp/home")
        try:   # the mount point must exist: the sandbox's / is read-only
            os.makedirs(OPENFAAS_SECRETS_PATH, mode=0o755, exist_ok=True)
            self.secrets_mount = True
        except OSError:
            self.secrets_mount = False
        if not self.sandbox.available:
            log.warn("functions run without a sandbox: {reason}", reason=self.sandbox.reason)

    @property
    def watchdog_file(self) -> str:
        return os.path.join(FunctionFolders(self.runtime_dir).code, "classicwatchdog.py")

    # -- identities and folders ----------------------------------------------------------
    def identity_of(self, name: str) -> Identity:
        """The function's identity (its own uid from the range, kept while it exists)."""
        if self.uid_range is None:
            return self.identity
        identity = self._uids.get(name)
        if identity is None:
            held = {other.uid for other in self._uids.values()}
            uid = self.uid_range.uid_for(name, lambda uid: uid in held or account_exists(uid))
            identity = self._uids[name] = self.uid_range.identity(uid)
        return identity

    def forget(self, name: str) -> None:
        """The function is gone (its processes too): its uid may serve another."""
        self._uids.pop(name, None)
        self._staged.pop(name, None)

    def folders(self, name: str) -> FunctionFolders:
        return FunctionFolders(os.path.join(self.functions_dir, name))

    def hidden(self) -> tuple[str, ...]:
        """The node's folders no function sees (empty and read-only in its sandbox)."""
        hidden = [self.data_dir]
        if self.functions_dir.startswith(SYSTEM_ROOT + "/"):
            hidden.append(SYSTEM_ROOT)
        return tuple(hidden)

    # -- commands ------------------------------------------------------------------------
    def plan(self, spec: FunctionSpec) -> Staging:
        """The command as the function will run it (SpecError naming ``command``)."""
        return plan_command(spec, self.identity, self.workdir, self.path,
                            self.folders(spec.name).code, self.stage_roots, (self.data_dir,))

    def check(self, spec: FunctionSpec) -> None:
        """What the provider's check_spec adds for where and how functions run here."""
        if self.network is Network.NONE and spec.mode is not ProcessMode.FORK:
            raise SpecError("mode", "process.network is none: only fork-mode functions run "
                                    "here (the gate must reach an HTTP replica's port)")
        if spec.watchdog and self.watchdog_python() is None:
            raise SpecError("envProcess", f"the classic watchdog needs a python3 that the "
                                          f"function user may run on {self.path}")

    def prepare(self, spec: FunctionSpec) -> Staging:
        """Folders made and files staged for ``spec`` (once per command); blocking."""
        cached = self._staged.get(spec.name)
        if cached is not None and cached[0] == spec.command:
            return cached[1]
        identity = self.identity_of(spec.name)
        try:
            staging = self.plan(spec) if spec.command else Staging((), ())
            prepare_folders(self.folders(spec.name), identity, self.passthrough,
                            self.sandbox.available)
            stage(staging)
        except (SpecError, OSError) as exc:
            # it passed check_spec: a file changed since; the start fails visibly
            log.warn("function {name}: cannot prepare its command: {error}",
                     name=spec.name, error=str(exc))
            staging = Staging(spec.command, ())
        self._staged[spec.name] = (spec.command, staging)
        return staging

    def watchdog_python(self) -> str | None:
        return resolve_program("python3", self.path, self.workdir, self.identity)

    def watchdog_program(self) -> list[str]:
        """An envProcess replica's program: the classic watchdog, as the function, from
        the node's read-only copy, ``-I`` (no PYTHON* variable, no current folder)."""
        python = self.watchdog_python() or "python3"
        return [python, "-I", self.watchdog_file]

    # -- the launch ----------------------------------------------------------------------
    def environment(self, spec: FunctionSpec, port: int | None,
                    own: Mapping[str, str], secrets: str | None) -> dict[str, str]:
        """The function process's whole environment (isolation.function_env), with its
        secrets folder as it sees it."""
        identity = self.identity_of(spec.name)
        env = function_env(spec, identity, self.folders(spec.name).home, self.path, port,
                           own)
        if secrets is not None:
            env["FAASTWIST_SECRETS_DIR"] = (OPENFAAS_SECRETS_PATH if self.sandbox.available
                                            and self.secrets_mount else secrets)
        return env

    def launch(self, spec: FunctionSpec, program: Sequence[str], env: Mapping[str, str],
               rlimits: Mapping[str, int], cgroup_procs: str | None,
               own: Mapping[str, str], secrets: str | None,
               network: Network | None = None) -> tuple[list[str], dict[str, str]]:
        """(argv, the launch's environment) of one function process: ``env`` reaches
        only ``program`` (sandbox.py)."""
        identity = self.identity_of(spec.name)
        limits = dict(rlimits)
        if self.uid_range is not None:
            limits["RLIMIT_NPROC"] = self.config.pids_limit   # per uid: per function
        prefix = launch_prefix(identity, limits, cgroup_procs, tools=self.tools)
        folders = self.folders(spec.name)
        node_binds: tuple[str, ...] = ()
        if spec.watchdog:
            node_binds = (FunctionFolders(self.runtime_dir).code,)
        if secrets is not None and not self.secrets_mount:
            node_binds, secrets = (*node_binds, secrets), None
        layout = Layout(home=folders.home, code=folders.code,
                        binds=in_place_folders(program, folders.code), node_binds=node_binds,
                        hidden=self.hidden(), secrets=secrets, disk=self.config.disk_limit,
                        network=network or self.network)
        return [*prefix, *self.sandbox.wrap(layout, env, program)], root_env(own)

    def describe(self, name: str) -> dict[str, str]:
        """extData: who the function runs as and what isolates it."""
        identity = self.identity_of(name)
        how = "uid of its own (process.uidRange)" if self.uid_range is not None else "process.user"
        described = {"user": f"{identity.user}:{identity.group} ({how})",
                     "sandbox": self.sandbox.describe()}
        if self.sandbox.available:
            described["diskLimit"] = str(self.config.disk_limit)
            described["network"] = self.network.value
        if self.uid_range is not None:
            described["pidsLimit"] = f"RLIMIT_NPROC={self.config.pids_limit}"
        return described

    def remove(self, name: str) -> None:
        """Delete the function's folders (blocking); rmtree never follows a link."""
        shutil.rmtree(self.folders(name).root, ignore_errors=True)

    def finish(self) -> None:
        """The provider stops: scratch outside the data folder goes."""
        if self.functions_dir.startswith(SYSTEM_ROOT + "/"):
            shutil.rmtree(self.functions_dir, ignore_errors=True)
        else:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)
            try:
                os.rmdir(self.functions_dir)   # gone when no function is left
            except OSError:
                pass
