"""The node starts as the shipped unit (conf/faasgate.service) starts it.

No systemd runs here, so the test does what systemd would do with the unit: it checks
the unit with ``systemd-analyze verify`` (any warning fails), then runs the unit's
ExecStart with the unit's environment and working directory, the shipped
conf/etc/controller.yaml in a read-only config folder and a fresh data folder made as
StateDirectory= makes it, and speaks sd_notify with it (Type=notify); as root, as the
unit runs it (the ``sandbox`` marker: deselected where that cannot be). The install
paths map to folders of the test: /opt/faastwist -> a prefix whose bin/ is this venv's,
/etc/faastwist -> the config folder, /var/lib/faastwist -> the data folder. Beyond the
unit's text: PYTHONPATH (this tree's code over the venv's installed copy); what it
emulates of the unit's hardening is in ``systemd_like_command``.

With ``FAASTWIST_INSTALLED_PREFIX`` set to what ``make install-service PREFIX=...`` made,
the test runs that installed copy instead, without PYTHONPATH and with ProtectHome too
(its interpreter is Debian's, not one under /root).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from tests.support.covered import coverage_env, measuring
from tests.support.node import ROOT, http, node_port
from tests.support.process import PYTHON

pytestmark = [pytest.mark.systemd, pytest.mark.process, pytest.mark.e2e, pytest.mark.etcd,
              pytest.mark.nats, pytest.mark.slow]

UNIT = ROOT / "conf" / "faasgate.service"
ETC_CONFIG = ROOT / "conf" / "etc" / "controller.yaml"
#: a venv made by `make install-service PREFIX=...` to run instead of this tree
INSTALLED = os.environ.get("FAASTWIST_INSTALLED_PREFIX", "")
#: systemd's PATH for system services (Debian 12, merged /usr)
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: what the sandbox does as a function: its uid, its secret (where OpenFaaS functions
#: read it) and its body upper-cased
FUNCTION = ("import os, sys; secret = open('/var/openfaas/secrets/unit-secret').read(); "
            "sys.stdout.write(f'{os.getuid()} {secret} ' + sys.stdin.read().upper())")


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> values (keys may repeat), with systemd's comment and
    line-continuation rules."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None and "=" in line, f"not a unit line: {line!r}"
        key, value = line.split("=", 1)
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(section: dict[str, list[str]], key: str) -> str:
    values = section.get(key, [])
    assert len(values) == 1, f"{key}: {values}"
    return values[0]


def unit_environment(service: dict[str, list[str]]) -> dict[str, str]:
    env = {}
    for value in service.get("Environment", []):
        for word in shlex.split(value):
            key, _, val = word.partition("=")
            env[key] = val
    return env


def test_the_unit_runs_the_node_as_root_with_delegation_and_sandbox_safe_hardening():
    """What the unit must say, whatever systemd-analyze accepts."""
    service = parse_unit(UNIT.read_text())["Service"]
    assert "User" not in service and "DynamicUser" not in service   # functions get uids
    assert one(service, "Delegate") == "yes"          # the node's cgroup is its own
    for key in ("ProtectControlGroups", "ProtectKernelTunables", "ProtectKernelLogs",
                "RestrictNamespaces", "SystemCallFilter", "PrivateUsers",
                "CapabilityBoundingSet", "MemoryDenyWriteExecute"):
        assert key not in service, f"{key} breaks the function sandboxes or limits"
    assert one(service, "ProtectSystem") == "strict"
    assert one(service, "NoNewPrivileges") == "yes"
    assert one(service, "StateDirectory") == "faastwist"
    assert one(service, "WorkingDirectory") == "/var/lib/faastwist"
    argv = shlex.split(one(service, "ExecStart"))
    assert argv[argv.index("--config") + 1] == "/etc/faastwist/controller.yaml"
    assert "--nodaemon" in argv and one(service, "Type") == "notify"


class Installed:
    """The unit's paths mapped into tmp_path, and the unit rewritten to them."""

    def __init__(self, root: Path) -> None:
        self.prefix = root / "opt" / "faastwist"
        self.prefix.mkdir(parents=True)
        (self.prefix / "bin").symlink_to(Path(INSTALLED) / "bin" if INSTALLED
                                         else Path(sys.executable).parent)
        self.etc = root / "etc" / "faastwist"
        self.etc.mkdir(parents=True)
        self.state = root / "var" / "lib" / "faastwist"
        self.units = root / "units"
        self.units.mkdir()

    def rewrite(self, text: str) -> str:
        return (text.replace("/opt/faastwist/", f"{self.prefix}/")
                .replace("/etc/faastwist/", f"{self.etc}/")
                .replace("/var/lib/faastwist", str(self.state)))


def verify(unit: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                          text=True, timeout=60)


def test_systemd_analyze_refuses_a_broken_unit(tmp_path):
    """The check below can fail: a misspelt key or value is a warning, not an exit code,
    so every line on stderr counts."""
    installed = Installed(tmp_path)
    installed.state.mkdir(parents=True)
    text = installed.rewrite(UNIT.read_text())
    for broken in (text.replace("Type=notify", "Type=notifyy"),
                   text.replace("Delegate=yes", "Delegat=yes"),
                   text.replace(f"{installed.prefix}/bin/twistd", f"{installed.prefix}/twistd")):
        unit = installed.units / "faasgate.service"
        unit.write_text(broken)
        result = verify(unit)
        assert result.returncode != 0 or result.stderr.strip(), broken


@pytest.fixture
def root():
    """The folder the unit's paths map into: passable for function users, as / is
    (pytest's tmp_path is 0700: function folders would then go elsewhere), and not
    under /tmp, which the node's PrivateTmp hides."""
    path = Path(tempfile.mkdtemp(prefix="faastwist-unit-", dir="/var/tmp"))
    path.chmod(0o711)
    yield path
    for folder in path.rglob("*"):   # the read-only config folder, made writable again
        if folder.is_dir() and not folder.is_symlink():
            folder.chmod(0o755)
    shutil.rmtree(path)


@pytest.fixture
def notify_socket(root):
    """systemd's end of sd_notify (outside /tmp, as /run/systemd/notify is)."""
    path = str(root / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    yield path, sock
    sock.close()


def wait_notify(sock: socket.socket, want: bytes, timeout: float, process) -> list[bytes]:
    """The datagrams up to and including one that holds ``want``. What was sent before
    the process ended still counts (a node may send STOPPING=1 and exit at once)."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        exited = process.poll() is not None
        sock.settimeout(0.05 if exited else min(1.0, max(0.01, deadline - time.monotonic())))
        try:
            message = sock.recv(4096)
        except socket.timeout:
            assert not exited, f"faasgate exited with {process.returncode} before {want!r}"
            continue
        seen.append(message)
        if want in message.split(b"\n"):
            return seen
    raise AssertionError(f"no {want!r} from faasgate in {timeout}s; got {seen}")


def private_tmp(writable: list[Path], hold: Path) -> str:
    """PrivateTmp=yes: an empty tmpfs on /tmp. A checkout (or coverage folder) that
    itself lies under /tmp, as a CI clone may, is bound into the new /tmp where it was
    (read-only unless ``writable``): an installed unit runs from /opt, which a private
    /tmp does not hide. The tmpfs is made on ``hold`` (an empty folder outside /tmp),
    filled, then moved onto /tmp."""
    needed = {ROOT.resolve(): False, Path(sys.prefix).resolve(): False}
    needed.update({folder.resolve(): True for folder in writable})
    kept = sorted((folder, rw) for folder, rw in needed.items()
                  if folder.is_relative_to("/tmp") and folder != Path("/tmp"))
    script = f"mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs {shlex.quote(str(hold))}\n"
    for folder, rw in kept:
        target = shlex.quote(str(hold / folder.relative_to("/tmp")))
        script += (f"mkdir -p {target}\n"
                   f"mount --bind {shlex.quote(str(folder))} {target}\n")
        if not rw:
            script += f"mount -o remount,bind,ro {target}\n"
    # -n: with / read-only, mount(8) cannot record a moved mount in its table
    return script + f"mount -n --move {shlex.quote(str(hold))} /tmp\n"


def systemd_like_command(argv: list[str], state: Path, pre: list[str],
                         hold: Path) -> list[str]:
    """ExecStart as systemd would run it for this unit, as far as this machine allows:
    as root, in a mount namespace of its own where, as ProtectSystem=strict leaves it,
    only the StateDirectory is writable (root ignores mode bits, not a read-only
    mount), /tmp is an empty tmpfs (PrivateTmp=yes), and with no_new_privs
    (NoNewPrivileges=yes); ProtectHome=yes too for an installed copy (this venv's
    interpreter may live under /root). ``pre``: the unit's ``ExecStartPre=+`` commands,
    run with full privileges before all that, on a machine that has no /var/openfaas
    yet (an empty tmpfs hides this one's). Not emulated: the cgroup delegation."""
    if measuring() and not INSTALLED:   # tests/support/covered: the same twistd, measured
        argv = [sys.executable, "-m", "tests.support.covered", *argv[1:]]
    writable = [state]
    if os.environ.get("COVERAGE_FILE"):   # where a measured node saves its data
        writable.append(Path(os.environ["COVERAGE_FILE"]).parent)
    script = "set -e\n"
    fresh = os.path.isdir("/var/openfaas")
    if fresh:
        script += "mount -t tmpfs -o mode=0755 tmpfs /var/openfaas\n"
    script += "".join(f"{command}\n" for command in pre)
    if fresh:
        script += "mount -o remount,ro /var/openfaas\n"
    for folder in writable:
        script += f"mount --bind {shlex.quote(str(folder))} {shlex.quote(str(folder))}\n"
    if INSTALLED:
        script += "".join(f"mount -t tmpfs -o mode=0755 tmpfs {hidden}\n"
                          for hidden in ("/root", "/home", "/run/user")
                          if os.path.isdir(hidden))
    script += "mount -o remount,bind,ro /\n" + private_tmp(writable, hold)
    script += 'exec "$@"\n'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
            "faasgate", "setpriv", "--no-new-privs", *argv]


@pytest.mark.sandbox   # the unit runs the node as root, its functions in bubblewrap
def test_the_node_starts_as_the_unit_starts_it(tmp_path, root, notify_socket):
    """The shipped unit and /etc config, started as systemd starts them; a function
    call in its own uid and sandbox; all state in the data folder; a clean stop."""
    installed = Installed(root)
    unit_text = installed.rewrite(UNIT.read_text())
    unit = installed.units / "faasgate.service"
    unit.write_text(unit_text)
    service = parse_unit(unit_text)["Service"]

    # StateDirectory=faastwist with StateDirectoryMode: made by systemd before the start
    mode = int(one(service, "StateDirectoryMode"), 8)
    installed.state.mkdir(parents=True)
    installed.state.chmod(mode)
    result = verify(unit)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr

    # the shipped /etc/faastwist/controller.yaml, on this test's ports, in a read-only folder
    config = yaml.safe_load(installed.rewrite(ETC_CONFIG.read_text()))
    assert config["dataDir"] == str(installed.state)
    gate_port, admin_port = node_port(), node_port()
    config["httpServer"].update(port=gate_port, address="127.0.0.1")
    config["admin"]["port"] = admin_port
    (installed.etc / "controller.yaml").write_text(yaml.safe_dump(config))
    (installed.etc / "controller.yaml").chmod(0o444)
    installed.etc.chmod(0o555)
    etc_before = sorted(os.listdir(installed.etc))

    argv = shlex.split(one(service, "ExecStart"))
    assert argv[0] == f"{installed.prefix}/bin/twistd" and os.access(argv[0], os.X_OK)
    path, sock = notify_socket
    watchdog = re.fullmatch(r"(\d+)s", one(service, "WatchdogSec"))
    assert watchdog
    env = {"PATH": SYSTEMD_PATH, **unit_environment(service),
           "NOTIFY_SOCKET": path, "WATCHDOG_USEC": str(int(watchdog[1]) * 10**6),
           "STATE_DIRECTORY": str(installed.state), "INVOCATION_ID": os.urandom(16).hex(),
           **({} if INSTALLED else {"PYTHONPATH": str(ROOT), **coverage_env()})}
    log = open(tmp_path / "faasgate.log", "wb")
    pre = [value[1:] for value in service.get("ExecStartPre", [])]
    assert all(value.startswith("+") for value in service.get("ExecStartPre", []))
    hold = root / "private-tmp"   # where the private /tmp is made before it is moved
    hold.mkdir()
    process = subprocess.Popen(systemd_like_command(argv, installed.state, pre, hold),
                               cwd=one(service, "WorkingDirectory"), env=env, stdout=log,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               start_new_session=True, umask=0o022)
    log.close()
    try:
        start = float(re.fullmatch(r"(\d+)s", one(service, "TimeoutStartSec"))[1])
        try:
            wait_notify(sock, b"READY=1", start, process)
        except AssertionError as exc:
            log_tail = (tmp_path / "faasgate.log").read_text(errors="replace")[-4000:]
            raise AssertionError(log_tail) from exc
        admin = f"http://127.0.0.1:{admin_port}"
        status, _, body = http("GET", f"{admin}/readyz")
        assert status == 200, body

        # the first admin token, where the operator docs say: dataDir/admin-tokens.admin
        token = (installed.state / "admin-tokens.admin").read_text().strip()
        auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/yaml",
                "Accept": "application/json"}
        status, _, body = http("POST", f"{admin}/system/secrets",
                               json.dumps({"name": "unit-secret", "value": "s3cret"}),
                               {**auth, "Content-Type": "application/json"})
        assert status == 202, body
        spec = {"name": "shout", "mode": "fork", "command": [PYTHON, "-c", FUNCTION],
                "secrets": ["unit-secret"]}
        status, _, body = http("POST", f"{admin}/apis/v2/faas/faascontroller/",
                               yaml.safe_dump(spec), auth)
        assert status == 201, body
        deadline = time.monotonic() + 30
        while True:
            status, _, body = http("POST", f"http://127.0.0.1:{gate_port}/function/shout",
                                   b"hello unit")
            if status == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert status == 200, body
        uid, secret, answer = body.decode().split(" ", 2)
        assert (secret, answer) == ("s3cret", "HELLO UNIT")
        # a root node: each function its own uid from uidRange
        low, high = map(int, config["process"]["uidRange"].split("-"))
        assert low <= int(uid) <= high

        # all state in the data folder, nothing beside the config
        assert sorted(os.listdir(installed.etc)) == etc_before
        held = set(os.listdir(installed.state))
        assert {"etcd", "nats", "admin-tokens", "admin-tokens.admin", "secrets.key",
                "functions"} <= held
        assert (installed.state / "secrets.key").stat().st_mode & 0o777 == 0o600
        assert (installed.state / "admin-tokens").stat().st_mode & 0o077 == 0
        # a function may pass through the data folder, not list it
        assert installed.state.stat().st_mode & 0o777 == 0o711
        # the hardening kept bubblewrap working (the node falls back to uid-only without)
        assert "sandbox: bubblewrap" in (tmp_path / "faasgate.log").read_text()

        # systemctl stop: SIGTERM to the main process; STOPPING=1, then a clean exit
        process.send_signal(signal.SIGTERM)
        wait_notify(sock, b"STOPPING=1", 10, process)
        stop = float(re.fullmatch(r"(\d+)s", one(service, "TimeoutStopSec"))[1])
        code = process.wait(stop)
        # systemd counts SIGTERM as a clean exit of the main process (twistd re-raises it)
        assert code in (0, -signal.SIGTERM), (tmp_path / "faasgate.log").read_text()[-4000:]
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        try:   # KillMode=mixed: SIGKILL to whatever the node left in its session
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    log_text = (tmp_path / "faasgate.log").read_text(errors="replace")
    assert "Traceback" not in log_text, log_text[-4000:]
    json.loads(log_text.splitlines()[0])   # --log-format json: the journal gets objects
