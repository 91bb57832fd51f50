"""Function processes never run as root and see nothing of the node (real processes).

The node side runs as root in this test environment; where it does not, the tests
that need a user switch are skipped (the rest still hold).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from faastwist.config import ConfigError, ControllerConfig
from faastwist.model.spec import SpecError
from faastwist.providers.isolation import (
    Tools,
    function_env,
    launch_prefix,
    plan_command,
    resolve_program,
    search_path,
)
from faastwist.util.users import UserError, can_access, resolve_identity
from tests.providers.test_process import call, wait_for
from tests.support.process import PYTHON, REPO, function_spec, make_provider, write_script

ECHO = str(REPO / "conf" / "functions" / "echo.py")

as_root = pytest.mark.root   # deselected when not root (tests/conftest.py)
SECRETS = {"FAASTWIST_ADMIN_TOKEN": "s3cret-token", "NOTIFY_SOCKET": "/run/systemd/notify",
           "PYTHONPATH": "/node/only", "AWS_SECRET_ACCESS_KEY": "aws-secret"}

# prints who it is, where it runs, its environment, and what it can read
REPORT = """
import json, os, sys
def readable(path):
    try:
        open(path, "rb").close()
        return True
    except OSError:
        return False
def listable(path):
    try:
        return os.listdir(path)
    except OSError:
        return None
data = os.environ["PROBE_DATA"]
report = {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(),
          "cwd": os.getcwd(), "env": dict(os.environ),
          "log": readable(os.path.join(data, "logs", "other.log")),
          "token": readable(os.path.join(data, "admin-tokens")),
          "data": listable(data), "home": [os.stat(".").st_uid, os.stat(".").st_mode & 0o777]}
"""
HTTP_REPORT = REPORT + """
from http.server import BaseHTTPRequestHandler, HTTPServer
class H(BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.dumps(report).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"""
FORK_REPORT = REPORT + "sys.stdout.write(json.dumps(report))\n"


def _node_files(data: Path) -> None:
    (data / "logs").mkdir(parents=True, exist_ok=True)
    (data / "logs" / "other.log").write_text("another function's log\n")
    token = data / "admin-tokens"
    token.write_text("admin 00\n")
    token.chmod(0o600)


def _check(report: dict, provider, name: str) -> None:
    env = report["env"]
    for key in SECRETS:
        assert key not in env, key
    assert report["uid"] == provider.launcher.identity_of(name).uid
    assert report["uid"] != 0 and report["gid"] != 0 and 0 not in report["groups"]
    assert not report["log"] and not report["token"]
    # the sandbox shows an empty folder in place of the node's data folder
    assert provider.launcher.sandbox.available
    assert report["data"] == []
    assert report["cwd"] == provider.home(name) == env["HOME"]
    assert {k for k in env if not k.startswith("Http_")} <= {"PATH", "HOME", "USER", "LOGNAME", "PYTHONUNBUFFERED", "PORT",
                        "PROBE_DATA", "FAASTWIST_FUNCTION", "FAASTWIST_OWNER",
                        "FAASTWIST_GATE_PID", "LC_CTYPE", "PWD"}
    assert "/root" not in env["PATH"]
    # its home is its own, 0700: a tmpfs in the sandbox (the folder on the host is the
    # node's mount point), else the folder itself
    assert report["home"] == [report["uid"], 0o700]
    home = os.stat(provider.home(name))
    assert (home.st_uid, home.st_mode & 0o777) == (os.geteuid(), 0o755)


@pytest.mark.slow
@pytest.mark.root      # root drops to the function's user; deselected otherwise
@pytest.mark.sandbox   # in a sandbox, where the node's folders are hidden
@pytest_twisted.ensureDeferred
async def test_http_and_fork_functions_run_unprivileged_with_a_clean_environment(
        providers, tmp_path):
    node_env = {"PATH": os.environ["PATH"], **SECRETS}
    provider = providers(base_env=node_env)
    data = Path(provider.config.data_dir)
    _node_files(data)
    # the scripts sit in a folder only root may enter (pytest's tmp is 0700): staged
    http_script = write_script(tmp_path, "report_http.py", HTTP_REPORT)
    fork_script = write_script(tmp_path, "report_fork.py", FORK_REPORT)
    env = {"PROBE_DATA": str(data)}
    http = function_spec(name="who-http", command=[PYTHON, http_script], env=env)
    fork = function_spec(name="who-fork", command=[PYTHON, fork_script], env=env, mode="fork")
    for spec in (http, fork):
        provider.check_spec(spec)
        await provider.deploy(spec)
        code, body, _ = await call(provider, spec)
        assert code == 200, body
        _check(json.loads(body), provider, spec.name)
    staged = Path(provider.launcher.folders("who-http").code) / "report_http.py"
    assert staged.read_text() == Path(http_script).read_text()
    await provider.delete("who-http")
    assert not os.path.exists(provider.home("who-http"))
    # pytest's tmp is closed to the function user: the folders are scratch under
    # /var/lib/faastwist, gone when the provider stops
    assert provider.functions_dir.startswith("/var/lib/faastwist/")
    await provider.stopService()
    assert not os.path.exists(provider.functions_dir)


@as_root
def test_identity_defaults_and_refusals():
    nobody = resolve_identity(euid=0)
    assert (nobody.user, nobody.uid, nobody.switch) == ("nobody", 65534, True)
    assert nobody.group in ("nogroup", "nobody")
    with pytest.raises(UserError, match="user: 'root' is root"):
        resolve_identity("root", euid=0)
    with pytest.raises(UserError, match="group: 'root' is root's group"):
        resolve_identity("nobody", "root", euid=0)
    with pytest.raises(UserError, match="user: no such user: 'no-such-user-x'"):
        resolve_identity("no-such-user-x", euid=0)
    with pytest.raises(UserError, match="group: no such group"):
        resolve_identity("nobody", "no-such-group-x", euid=0)


def test_config_names_the_process_user_key(tmp_path):
    with pytest.raises(ConfigError, match="process.user: no such user"):
        ControllerConfig.from_dict({"process": {"user": "no-such-user-x"}}, tmp_path)
    config = ControllerConfig.from_dict({"process": {}}, tmp_path)
    assert config.process.config_dir == str(tmp_path.resolve())


@pytest.fixture
def open_tmp():
    """A folder anyone may enter (pytest's tmp_path sits under a 0700 folder)."""
    folder = Path(tempfile.mkdtemp(prefix="faastwist-iso-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


@as_root
def test_access_check_follows_the_mode_bits(open_tmp):
    tmp_path = open_tmp
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    (closed / "open.py").write_text("x")
    (closed / "open.py").chmod(0o644)
    opened = tmp_path / "opened"
    opened.mkdir()
    opened.chmod(0o755)
    (opened / "secret").write_text("x")
    (opened / "secret").chmod(0o600)
    (opened / "public").write_text("x")
    (opened / "public").chmod(0o644)
    assert not can_access(str(closed / "open.py"), 65534, (65534,), os.R_OK)
    assert not can_access(str(opened / "secret"), 65534, (65534,), os.R_OK)
    assert can_access(str(opened / "public"), 65534, (65534,), os.R_OK)
    assert not can_access(str(opened / "public"), 65534, (65534,), os.X_OK)
    assert can_access(str(opened / "secret"), 0, (0,), os.R_OK)


@as_root
def test_command_staging_rules(tmp_path):
    identity = resolve_identity(euid=0)
    config_dir = tmp_path / "conf"      # under a 0700 folder: the user cannot reach it
    config_dir.mkdir()
    script = write_script(config_dir, "fn.py", "print('hi')\n")
    os.chmod(script, 0o644)
    private = write_script(config_dir, "key.pem", "PRIVATE\n")
    os.chmod(private, 0o600)
    data = tmp_path / "data"
    data.mkdir()
    in_data = write_script(data, "admin-tokens", "admin 00\n")
    os.chmod(in_data, 0o644)
    outside = write_script(tmp_path, "elsewhere.py", "print('x')\n")
    path = search_path(os.environ["PATH"], identity)
    code = str(tmp_path / "fn" / "code")

    def plan(*command):
        return plan_command(function_spec(command=list(command)), identity, str(tmp_path),
                            path, code, [str(config_dir)], [str(data)])
    staged = plan(PYTHON, "-u", script, "word")
    assert staged.argv == (PYTHON, "-u", f"{code}/fn.py", "word")
    assert staged.copies == ((str(Path(script).resolve()), f"{code}/fn.py"),)
    # a relative path is taken from the workdir (here tmp_path)
    assert plan(PYTHON, "conf/fn.py").argv[1] == f"{code}/fn.py"
    for refused in (private, in_data, outside):
        with pytest.raises(SpecError, match="command: .*user nobody cannot read it"):
            plan(PYTHON, refused)
    # python3 on a PATH whose first hit sits under /root resolves to one nobody may run
    program = resolve_program("python3", "/root/.pyenv/shims:/usr/bin:/bin", "/", identity)
    assert program is None or not program.startswith("/root")
    with pytest.raises(SpecError, match="command: .*no such executable"):
        plan("no-such-program-x")


def test_environment_is_built_from_nothing():
    identity = resolve_identity()
    env = function_env(function_spec(env={"A": "1", "PATH": "/custom"}), identity, "/h",
                       "/usr/bin", 8080, {"FAASTWIST_FUNCTION": "fn"})
    assert env == {"PATH": "/custom", "HOME": "/h", "USER": identity.user,
                   "LOGNAME": identity.user, "PYTHONUNBUFFERED": "1", "A": "1",
                   "PORT": "8080", "FAASTWIST_FUNCTION": "fn"}


@as_root
@pytest.mark.process
@pytest.mark.parametrize("tools", [Tools.find(), Tools(None, None, None)],
                         ids=["util-linux", "python-launcher"])
def test_launch_prefix_drops_to_the_function_user(tools):
    identity = resolve_identity(euid=0)
    prefix = launch_prefix(identity, {"RLIMIT_AS": 512 * 2**20}, tools=tools)
    out = subprocess.run([*prefix, "/bin/sh", "-c", "id -u; id -g; id -G; ulimit -v; ps -o sid= -p $$"],
                         capture_output=True, text=True, timeout=10, env={"PATH": "/usr/bin:/bin"})
    uid, gid, groups, limit, sid = out.stdout.split("\n")[:5]
    assert (int(uid), int(gid), groups.split()) == (identity.uid, identity.gid,
                                                   [str(identity.gid)])
    assert int(limit) == 512 * 1024
    assert int(sid) != os.getsid(0)


def test_a_spec_cannot_claim_the_nodes_ports(providers):
    provider = providers(reserved_ports=lambda: {2381, 10083})
    with pytest.raises(SpecError, match="port: 2381 is one of this node's own ports"):
        provider.check_spec(function_spec(command=[PYTHON, "-c", "pass"], port=2381))
    provider.check_spec(function_spec(command=[PYTHON, "-c", "pass"], port=2382))


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_readiness_needs_the_replicas_own_listener(providers):
    """Something else answers on the function's fixed port: the replica never becomes
    ready, so the gate never proxies there; once it listens itself, it is ready."""
    from twisted.internet.protocol import Factory, Protocol

    provider = providers()
    squatter = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
    port = squatter.getHost().port
    try:
        spec = function_spec(name="late", port=port, minReplica=1, command=[
            PYTHON, "-c", "import time; time.sleep(30)"])
        await provider.deploy(spec)
        replica = provider.runtimes["late"].replicas[0]
        await wait_for(lambda: replica._foreign_warned, timeout=5)
        await deferLater(reactor, 0.3, lambda: None)
        assert not replica.ready
    finally:
        await squatter.stopListening()
    await provider.delete("late")
    # the real thing: its own listener on a fixed port is accepted
    server = function_spec(name="own", minReplica=1, command=[PYTHON, ECHO])
    await provider.deploy(server)
    await wait_for(lambda: provider.runtimes["own"].ready)


@pytest.mark.sandbox
@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_a_command_beside_the_data_folder_runs_and_the_data_stays_hidden():
    """A command file used in place from a folder that also holds the node's data folder
    (a config folder often does): the folder is bound, the data folder still hidden."""
    folder = Path(tempfile.mkdtemp(prefix="faastwist-open-"))
    provider = None
    try:
        folder.chmod(0o755)
        (folder / "data").mkdir()
        (folder / "data" / "secret").write_text("node only")
        script = write_script(folder, "show.py", """
            import json, os, sys
            sys.stdout.write(json.dumps(os.listdir(os.environ["DATA"])))
        """)
        os.chmod(script, 0o644)
        provider = make_provider(reactor, folder / "data", stage_roots=[])
        spec = function_spec(name="beside", command=[PYTHON, script], mode="fork",
                             env={"DATA": str(folder / "data")})
        provider.check_spec(spec)
        await provider.deploy(spec)
        code, body, _ = await call(provider, spec)
        # only the way to its own folders (mount points), nothing of the node's
        assert (code, json.loads(body)) == (200, ["functions"]), body
    finally:
        if provider is not None:
            await provider.stopService()
        shutil.rmtree(folder, ignore_errors=True)
