"""The sandbox's argv and environment, the uid per function, the loader variables a spec
may not set, and staging that never follows a link (fast tier: no root needed)."""

from __future__ import annotations

import os
import subprocess
import sys
from email.message import Message
from pathlib import Path

import pytest

from faastwist.config import ConfigError, ControllerConfig
from faastwist.model.spec import FunctionSpec, SpecError, loader_variable
from faastwist.providers import classicwatchdog
from faastwist.providers.isolation import FunctionFolders, Staging, prepare_folders, stage
from faastwist.providers.sandbox import (
    OPENFAAS_SECRETS_PATH,
    ROOT_PATH,
    Layout,
    Network,
    Sandbox,
    bwrap_options,
    detect_sandbox,
    in_place_folders,
    root_env,
)
from faastwist.providers.secretfiles import SecretFiles
from faastwist.providers.watchdogenv import header_env
from faastwist.util.users import UidRange, UserError, resolve_identity

LAYOUT = Layout(home="/data/functions/f/home", code="/data/functions/f/code",
                binds=("/tmp/t/conf",), hidden=("/data", "/var/lib/faastwist"),
                secrets="/data/functions/.secrets/f-x", disk=5 * 2**20)


def _pairs(options: list[str], flag: str) -> list[str]:
    return [options[i + 1] for i, o in enumerate(options) if o == flag]


def test_the_environment_reaches_only_the_function_after_a_clear() -> None:
    env = {"A": "1", "PORT": "8080", "Http_X": "a b"}
    options = bwrap_options(LAYOUT, env)
    clear = options.index("--clearenv")
    setenv = [i for i, o in enumerate(options) if o == "--setenv"]
    assert setenv and min(setenv) > clear
    assert [(options[i + 1], options[i + 2]) for i in setenv] == sorted(env.items())
    assert root_env({"FAASTWIST_OWNER": "t"}) == {"PATH": ROOT_PATH, "FAASTWIST_OWNER": "t"}


def test_namespaces_and_no_privileges() -> None:
    options = bwrap_options(LAYOUT, {})
    for flag in ("--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
                 "--disable-userns", "--die-with-parent"):
        assert flag in options
    assert "--unshare-net" not in options
    assert "--unshare-net" in bwrap_options(Layout(home="/h", network=Network.NONE), {})
    assert "--cap-add" not in options and "--bind" not in options   # nothing writable bound


def test_mount_order_read_only_system_then_private_places() -> None:
    options = bwrap_options(LAYOUT, {})
    root = options.index("--ro-bind")
    assert options[root:root + 3] == ["--ro-bind", "/", "/"]
    tmp = options.index("/tmp")
    assert options[tmp - 3:tmp] == ["--size", str(5 * 2**20), "--tmpfs"]
    # hidden folders become empty tmpfs before the home is made inside them, and are
    # made read-only only after every mount inside them
    assert _pairs(options, "--tmpfs") == ["/tmp", "/data", "/var/lib/faastwist", LAYOUT.home]
    home = options.index(LAYOUT.home)
    assert options[home - 5:home] == ["--size", str(5 * 2**20), "--perms", "0700", "--tmpfs"]
    assert _pairs(options, "--remount-ro") == ["/data", "/var/lib/faastwist"]
    assert min(i for i, o in enumerate(options) if o == "--remount-ro") > max(
        i for i, o in enumerate(options) if o == "--ro-bind")
    binds = [(options[i + 1], options[i + 2]) for i, o in enumerate(options) if o == "--ro-bind"]
    assert binds == [("/", "/"), (LAYOUT.code, LAYOUT.code), ("/tmp/t/conf", "/tmp/t/conf"),
                     (LAYOUT.secrets, OPENFAAS_SECRETS_PATH)]
    assert _pairs(options, "--chdir") == [LAYOUT.home]
    assert "--bind" not in options   # a function writes only its HOME and /tmp


def test_a_build_writes_only_its_dependency_folder() -> None:
    """``faastwist build``: the dependency folder goes read-write on top of the read-only
    build folder (so after it), and nowhere else."""
    layout = Layout(home="/b/fn/.home", binds=("/b/fn/new",), writable=("/b/fn/new/venv",))
    options = bwrap_options(layout, {})
    assert _pairs(options, "--bind") == ["/b/fn/new/venv"]
    assert options.index("--bind") > options.index("/b/fn/new")


def test_without_bubblewrap_env_is_cleared_too() -> None:
    sandbox = Sandbox(None, "bubblewrap (bwrap) is not installed")
    assert sandbox.wrap(LAYOUT, {"B": "2", "A": "1"}, ["/bin/prog", "x"]) == [
        sandbox.wrap(LAYOUT, {}, [])[0], "-i", "A=1", "B=2", "/bin/prog", "x"]
    assert sandbox.describe() == ("none (bubblewrap (bwrap) is not installed): uid and "
                                  "limits only")
    wrapped = Sandbox("/usr/bin/bwrap").wrap(LAYOUT, {"A": "1"}, ["/bin/prog"])
    assert wrapped[0] == "/usr/bin/bwrap" and wrapped[-2:] == ["--", "/bin/prog"]


def test_a_probe_that_fails_says_why(tmp_path: Path) -> None:
    found = detect_sandbox(["/bin/sh", "-c", "echo no namespaces for you >&2; exit 3", "x"],
                           str(tmp_path))
    if found.reason == "bubblewrap (bwrap) is not installed":
        assert found.bwrap is None
        return
    assert found.bwrap is None
    assert found.reason == "bwrap cannot make namespaces here: no namespaces for you"


def test_in_place_folders_bind_only_what_a_fresh_tmp_would_cover(tmp_path: Path) -> None:
    script = tmp_path / "fn.py"
    script.write_text("")
    code = tmp_path / "code"
    code.mkdir()
    (code / "staged.py").write_text("")
    argv = ["/usr/bin/python3", str(script), str(code / "staged.py"), "word", "/nope/x"]
    assert in_place_folders(argv, str(code)) == (str(tmp_path),)


def test_uid_range_parse_and_one_uid_per_function() -> None:
    uids = UidRange.parse("200000-200009")
    assert (uids.first, uids.last, uids.size) == (200000, 200009, 10)
    a = uids.uid_for("echo")
    assert uids.uid_for("echo") == a and 200000 <= a <= 200009
    assert uids.uid_for("echo", lambda uid: uid == a) == 200000 + (a - 200000 + 1) % 10
    with pytest.raises(UserError, match="all 10 uids are taken"):
        uids.uid_for("echo", lambda uid: True)
    identity = uids.identity(a)
    assert (identity.user, identity.uid, identity.group, identity.gid, identity.switch) == (
        str(a), a, str(a), a, True)
    for bad in ("200000", "x-y", "5-900000", "300000-200000", "0-10", "1000-4294967295"):
        with pytest.raises(UserError) as raised:
            UidRange.parse(bad)
        assert raised.value.key == "uidRange"
    assert UidRange.parse("1000-4294967294").size == 4294967294 - 1000 + 1


@pytest.mark.parametrize("key", ["LD_PRELOAD", "LD_LIBRARY_PATH", "ld_audit", "PYTHONPATH",
                                 "PYTHONSTARTUP", "BASH_ENV", "ENV", "BASH_FUNC_x%%",
                                 "PERL5OPT", "NODE_OPTIONS", "GLIBC_TUNABLES", "GCONV_PATH",
                                 "FAASTWIST_OWNER", "IFS", "JAVA_TOOL_OPTIONS", "RUBYOPT"])
def test_loader_variables_are_refused(key: str) -> None:
    assert loader_variable(key)
    with pytest.raises(SpecError) as raised:
        FunctionSpec.from_dict({"name": "f", "command": ["x"], "env": {key: "v"}})
    assert str(raised.value).startswith(f"env.{key}: is refused")


@pytest.mark.parametrize("key", ["NODE_ENV", "MALLOC_ARENA_MAX", "PATH", "LANG", "TZ",
                                 "HOME", "fprocess", "exec_timeout", "MY_LD_THING"])
def test_ordinary_variables_pass(key: str) -> None:
    assert not loader_variable(key)
    assert FunctionSpec.from_dict({"name": "f", "command": ["x"], "env": {key: "v"}}).env


@pytest.mark.parametrize("process, message", [
    ({"uidRange": "9-5"}, "process.uidRange: must lie within 1000-4294967294"),
    ({"uidRange": "abc"}, "process.uidRange: must be FIRST-LAST"),
    ({"diskLimit": "512Ki"}, "process.diskLimit: must be at least 1Mi"),
    ({"pidsLimit": 8}, "process.pidsLimit: must be at least 16, got 8"),
    ({"network": "loopback"}, "process.network: must be one of host, none"),
])
def test_config_names_the_process_key(tmp_path: Path, process: dict, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        ControllerConfig.from_dict({"provider": "process", "process": process}, tmp_path)
    assert str(raised.value).startswith(message)


def test_config_defaults(tmp_path: Path) -> None:
    config = ControllerConfig.from_dict({"provider": "process"}, tmp_path).process
    assert (config.uid_range, config.disk_limit, config.pids_limit, config.network) == (
        "200000-265535", 128 * 2**20, 512, "host")


def test_staging_replaces_a_planted_link_and_never_writes_through_it(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    victim.chmod(0o600)
    source = tmp_path / "fn.py"
    source.write_text("print('hi')")
    code = tmp_path / "fn" / "code"
    code.mkdir(parents=True)
    target = code / "fn.py"
    target.symlink_to(victim)
    (code / "fn.py.staging").symlink_to(victim)
    stage(Staging((), ((str(source), str(target)),)))
    assert not target.is_symlink() and target.read_text() == "print('hi')"
    assert oct(target.stat().st_mode & 0o777) == "0o444"
    assert victim.read_text() == "precious" and victim.stat().st_mode & 0o777 == 0o600
    # a folder on the way that is a link: refused, nothing written through it
    (code / "sub").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError, match="is a symlink"):
        stage(Staging((), ((str(source), str(code / "sub" / "deeper" / "fn.py")),)))
    assert not (tmp_path / "elsewhere").exists()


def test_prepare_folders_takes_back_what_someone_else_left(tmp_path: Path) -> None:
    identity = resolve_identity()           # no switch when not root; root: nobody
    folders = FunctionFolders(str(tmp_path / "functions" / "f"))
    (tmp_path / "functions").mkdir()
    os.symlink(tmp_path / "victim-folder", folders.root)   # a planted link for the root
    (tmp_path / "victim-folder").mkdir()
    (tmp_path / "victim-folder" / "keep").write_text("x")
    prepare_folders(folders, identity, (), sandboxed=True)
    assert not os.path.islink(folders.root) and os.path.isdir(folders.code)
    assert (tmp_path / "victim-folder" / "keep").read_text() == "x"
    assert oct(os.stat(folders.root).st_mode & 0o777) == "0o711"
    assert oct(os.stat(folders.code).st_mode & 0o777) == "0o755"


def test_secret_files_never_follow_a_planted_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    files = SecretFiles(tmp_path / "secrets")
    folder = Path(files.write("f", {"key": b"one"}))
    (folder / ".key.new").symlink_to(victim)
    files.write("f", {"key": b"two"})
    assert (folder / "key").read_bytes() == b"two" and victim.read_text() == "precious"
    assert oct(folder.stat().st_mode & 0o777) == "0o755"
    assert oct((folder / "key").stat().st_mode & 0o777) == "0o400"


def test_the_classic_watchdog_names_headers_as_watchdogenv_does() -> None:
    """classicwatchdog.py cannot import watchdogenv (it runs as the function, on the
    standard library alone): both must give the same Http_* variables."""
    head = Message()
    for name, value in (("Content-Type", "text/plain"), ("X-Call-Id", "a b"),
                        ("x-multi", "1"), ("x-multi", "2"), ("Host", "gate:1")):
        head[name] = value
    ours = classicwatchdog.header_env(head, "POST", "/p/q?x=1&y", 5)
    raw = [(b"content-type", [b"text/plain"]), (b"x-call-id", [b"a b"]),
           (b"x-multi", [b"1", b"2"]), (b"host", [b"gate:1"])]
    assert ours == header_env(raw, b"POST", b"/p/q?x=1&y", b"gate:1", 5)


def test_the_classic_watchdog_runs_without_the_node_packages(tmp_path: Path) -> None:
    """Started as the node starts it (-I, the file alone, no faastwist or Twisted
    importable), it refuses missing settings clearly instead of a traceback."""
    copy = tmp_path / "classicwatchdog.py"
    copy.write_text(Path(classicwatchdog.__file__).read_text())
    result = subprocess.run([sys.executable, "-I", str(copy)], capture_output=True,
                            env={"PATH": ROOT_PATH}, timeout=20, cwd=str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.decode().startswith("watchdog cannot start: KeyError('FAASTWIST_WATCHDOG')")
