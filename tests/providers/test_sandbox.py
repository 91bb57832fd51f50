"""The sandbox's argv and environment, the uid per function, the loader variables a spec
may not set, and staging that never follows a link (fast tier: no root needed)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from email.message import Message
from pathlib import Path

import pytest

from faastwist.providers import classicwatchdog
from faastwist.providers import sandbox as sandbox_module
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
from faastwist.model.watchdogenv import header_env
from faastwist.util.users import resolve_identity

LAYOUT = Layout(home="/data/functions/f/home", code="/data/functions/f/code",
                binds=("/tmp/t/conf",), node_binds=("/data/functions/.runtime/code",),
                hidden=("/data", "/var/lib/faastwist"),
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
    assert binds == [("/", "/"), ("/tmp/t/conf", "/tmp/t/conf"), (LAYOUT.code, LAYOUT.code),
                     (LAYOUT.node_binds[0], LAYOUT.node_binds[0]),
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


def test_the_whole_argv_for_one_layout() -> None:
    """The sandbox is its argv: every option and its order, pinned."""
    assert bwrap_options(LAYOUT, {"A": "1"}) == [
        "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
        "--unshare-cgroup-try", "--disable-userns", "--die-with-parent",
        "--hostname", "function",
        "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev",
        "--size", "5242880", "--tmpfs", "/tmp",
        "--ro-bind", "/tmp/t/conf", "/tmp/t/conf",
        "--size", "65536", "--tmpfs", "/data", "--size", "65536", "--tmpfs", "/var/lib/faastwist",
        "--size", "5242880", "--perms", "0700", "--tmpfs", "/data/functions/f/home",
        "--ro-bind", "/data/functions/f/code", "/data/functions/f/code",
        "--ro-bind", "/data/functions/.runtime/code", "/data/functions/.runtime/code",
        "--ro-bind", "/data/functions/.secrets/f-x", "/var/openfaas/secrets",
        "--remount-ro", "/data", "--remount-ro", "/var/lib/faastwist",
        "--chdir", "/data/functions/f/home", "--clearenv", "--setenv", "A", "1"]


def test_defaults_and_descriptions() -> None:
    assert attrs_fields(Layout(home="/h")) == {
        "home": "/h", "code": None, "binds": (), "node_binds": (), "writable": (), "hidden": (),
        "secrets": None,
        "disk": 128 * 2**20, "network": Network.HOST}
    assert (Network("host"), Network("none")) == (Network.HOST, Network.NONE)
    assert Sandbox(None).reason == "" and not Sandbox(None).available
    assert Sandbox("/usr/bin/bwrap").available
    assert Sandbox("/usr/bin/bwrap").describe() == (
        "bubblewrap: user, pid, ipc, uts and mount namespaces; no capabilities")
    assert OPENFAAS_SECRETS_PATH == "/var/openfaas/secrets"
    assert ROOT_PATH == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert sandbox_module.ENV == (shutil.which("env") or "/usr/bin/env")
    assert os.path.basename(sandbox_module.ENV) == "env"


def attrs_fields(record: object) -> dict:
    import attrs
    return attrs.asdict(record, recurse=False)


# checks what the probe is started with: the bwrap argv ends "-- true", PATH only, cwd /
PROBE_CHECK = """
import os, sys
args = sys.argv[1:]
problems = []
if args[0] != "/opt/bwrap": problems.append("bwrap " + args[0])
if args[-2:] != ["--", "true"]: problems.append("tail " + repr(args[-2:]))
if args[args.index("--setenv") + 1:args.index("--setenv") + 3] != ["PATH", os.environ["PATH"]]:
    problems.append("setenv")
if "--size" not in args or args[args.index("--size") + 1] != str(2**20): problems.append("size")
env = {k: v for k, v in os.environ.items() if k != "LC_CTYPE"}   # Python's own (PEP 538)
if env != {"PATH": "%s"}: problems.append("env " + repr(env))
if os.getcwd() != "/": problems.append("cwd " + os.getcwd())
if problems:
    sys.stderr.write("; ".join(problems) + "\\n")
    sys.exit(1)
""" % ROOT_PATH


def test_the_probe(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sandbox_module.shutil, "which", lambda name, path=None: None)
    assert detect_sandbox([], "/tmp/home") == Sandbox(None, "bubblewrap (bwrap) is not installed")
    monkeypatch.setattr(sandbox_module.shutil, "which",
                        lambda name, path=None: "/opt/bwrap" if (name, path) == ("bwrap", ROOT_PATH) else None)
    assert detect_sandbox([sys.executable, "-c", PROBE_CHECK], "/tmp/home") == Sandbox("/opt/bwrap")
    missing = detect_sandbox([str(tmp_path / "nothing")], "/tmp/home")
    assert missing.bwrap is None and missing.reason.startswith(
        "bwrap did not run: [Errno 2] No such file or directory")
    silent = detect_sandbox(["/bin/sh", "-c", "exit 3"], "/tmp/home")
    assert silent == Sandbox(None, "bwrap cannot make namespaces here: exit 3")
    many = detect_sandbox(["/bin/sh", "-c", "printf 'one\\n\\377 two\\n' >&2; exit 1"], "/tmp/home")
    assert many.reason == "bwrap cannot make namespaces here: \ufffd two"


def test_in_place_folders_details(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("relative.py").write_text("")     # a relative name is a word, never a bind
    assert in_place_folders(["relative.py"], None) == ()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x.py").write_text("")
    (tmp_path / "a" / "y.py").write_text("")
    (tmp_path / "b" / "z.py").write_text("")
    argv = ["prog", "-c", f"{tmp_path}/a/x.py\0", f"{tmp_path}/a/x.py", f"{tmp_path}/a/y.py",
            str(tmp_path / "a"), f"{tmp_path}/b/z.py"]
    assert in_place_folders(argv, None) == (f"{tmp_path}/a", f"{tmp_path}/b")
    assert in_place_folders(argv, f"{tmp_path}/a") == (f"{tmp_path}/b",)
    assert in_place_folders([f"{tmp_path}/a", f"{tmp_path}/ab/x"], f"{tmp_path}/a") == ()
    for folder in ("/", "/usr/lib", "/bin", "/sbin", "/lib", "/lib64", "/etc/x", "/opt/y"):
        assert sandbox_module._system(folder), folder
    for folder in ("/tmp/usr", "/srv/bin", "/home/etc"):
        assert not sandbox_module._system(folder), folder
