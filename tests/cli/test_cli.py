"""The ``faastwist`` CLI: every command against a real faasgate node (subprocess, real
HTTP), the API's error messages with exit 1, usage errors with exit 2, and the pure
output helpers."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.support.cli import cli_env, echo_spec, run_cli, wait_for
from faastwist.cli.output import Progress, human_age, list_rows, table
from faastwist.util.ports import free_port
from tests.support.node import ROOT
from tests.support.process import PYTHON as FUNCTION_PYTHON

pytestmark = pytest.mark.slow


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def api_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """Exit 1 with ``Error: <the API's message>`` on stderr, nothing on stdout."""
    assert result.returncode == 1, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert result.stderr.startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr


def usage_error(result: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert fragment in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


# -- against a running node ------------------------------------------------------------

def test_status_shows_server_info_and_health(cli_node) -> None:
    out = ok(run_cli(cli_node, "status"))
    lines = dict(line.split(":", 1) for line in out.splitlines())
    assert lines["controller"].strip() == "clictl"
    assert lines["provider"].strip() == "process"
    assert lines["healthz"].strip() == "ok"
    assert lines["readyz"].strip() == "ok"
    assert lines["server"].strip() == cli_node.admin_root
    data = json.loads(ok(run_cli(cli_node, "status", "-o", "json")))
    assert data["controller"] == "clictl" and data["leader"] is True
    admin = cli_node.admin_root.split("//", 1)[1]
    assert data["leaderNode"] == {"id": data["node"], "admin": admin}
    assert lines["leaderNode"].strip() == f"{data['node']} (admin {admin})"
    assert lines["nodes"].strip().startswith(f"{data['node']} (admin {admin}, gate ")


def test_the_tour_create_wait_list_get_invoke_logs_stop_update_start_delete(
        cli_node, tmp_path: Path) -> None:
    spec = echo_spec(tmp_path, "tour", env={"GREETING": "hi"})

    out = ok(run_cli(cli_node, "create", "-f", str(spec)))
    assert out.strip() == "function tour created (state: initial)"

    api_error(run_cli(cli_node, "create", "-f", str(spec)), "tour", "already exists")

    waited = run_cli(cli_node, "wait", "tour", "--for", "active", "--timeout", "30s")
    assert ok(waited).strip() == "function tour is active"
    assert "\r" not in waited.stderr          # not a terminal: plain lines, no spinner

    table_out = ok(run_cli(cli_node, "list"))
    header, *rows = table_out.splitlines()
    assert header.split() == ["NAME", "STATE", "EVENT", "REPLICAS", "IMAGE", "AGE"]
    row = next(r for r in rows if r.startswith("tour "))
    assert row.split()[1:4] == ["active", "ready", "1/1..1"]
    assert "echo_app.py" in row
    # columns are aligned: every row's STATE starts where the header's does
    assert all(r[header.index("STATE") - 1] == " " for r in rows)
    assert "tour" in ok(run_cli(cli_node, "list", "-o", "name")).split()
    listed = json.loads(ok(run_cli(cli_node, "list", "-o", "json")))
    assert any(item["spec"]["name"] == "tour" for item in listed)

    got = json.loads(ok(run_cli(cli_node, "get", "tour", "-o", "json")))
    assert got["spec"]["name"] == "tour" and got["status"]["state"] == "active"
    assert yaml.safe_load(ok(run_cli(cli_node, "get", "tour")))["spec"]["env"] == {"GREETING": "hi"}

    answer = json.loads(ok(run_cli(cli_node, "invoke", "tour", "--data", "hello",
                                   "-H", "X-Test: one", "--path", "/some/where")))
    assert answer == {"method": "POST", "path": "/some/where", "body": "hello",
                      "greeting": "hi", "xTest": "one"}
    body_file = tmp_path / "body.txt"
    body_file.write_text("from a file")
    assert json.loads(ok(run_cli(cli_node, "invoke", "tour", "-d", f"@{body_file}")))["body"] \
        == "from a file"
    assert json.loads(ok(run_cli(cli_node, "invoke", "tour", "-d", "-", input="from stdin")))[
        "body"] == "from stdin"
    assert json.loads(ok(run_cli(cli_node, "invoke", "tour")))["method"] == "GET"
    included = run_cli(cli_node, "invoke", "tour", "-i", "-v", "-X", "PUT", "-d", "x")
    head, _, body = ok(included).partition("\n\n")
    assert head.startswith("HTTP/1.1 200 OK") and "Content-Type: application/json" in head
    assert json.loads(body)["method"] == "PUT"
    assert "HTTP 200" in included.stderr and " ms" in included.stderr
    api_error(run_cli(cli_node, "invoke", "tour", "--path", "/status/418"),
              "HTTP 418 from tour: you asked for 418")

    def logged() -> str:
        text = ok(run_cli(cli_node, "logs", "tour", "--tail", "50"))
        return text if "echo POST /some/where 5 bytes: hello" in text else ""
    lines = wait_for(logged, timeout=15).splitlines()
    assert len(lines) <= 50
    raw = ok(run_cli(cli_node, "logs", "tour", "--tail", "2", "-o", "raw")).splitlines()
    assert len(raw) == 2 and all(not line[:4].isdigit() for line in raw)
    for entry in ok(run_cli(cli_node, "logs", "tour", "--tail", "3", "-o", "json")).splitlines():
        assert json.loads(entry)["name"] == "tour"

    out = ok(run_cli(cli_node, "stop", "tour"))
    assert out.strip() == "function tour stopped (state: inactive)"
    ok(run_cli(cli_node, "wait", "tour", "--for", "inactive", "--timeout", "20s"))
    api_error(run_cli(cli_node, "stop", "tour"), "invalid event: stop, current state: inactive")
    api_error(run_cli(cli_node, "invoke", "tour", "-d", "x"), "HTTP ")

    spec.write_text(spec.read_text().replace("GREETING: hi", "GREETING: hello again"))
    assert ok(run_cli(cli_node, "update", "-f", str(spec))).strip() == \
        "function tour updated (state: initial)"
    ok(run_cli(cli_node, "wait", "tour", "--timeout", "30s"))
    assert json.loads(ok(run_cli(cli_node, "invoke", "tour", "-d", "y")))["greeting"] \
        == "hello again"
    api_error(run_cli(cli_node, "start", "tour"), "invalid event: start, current state: active")
    api_error(run_cli(cli_node, "delete", "tour"), "active")

    ok(run_cli(cli_node, "stop", "tour"))
    ok(run_cli(cli_node, "wait", "tour", "--for", "inactive", "--timeout", "20s"))
    assert ok(run_cli(cli_node, "start", "tour")).strip() == \
        "function tour started (state: inactive, start requested)"
    ok(run_cli(cli_node, "wait", "tour", "--for", "active", "--timeout", "30s"))
    ok(run_cli(cli_node, "stop", "tour"))
    assert ok(run_cli(cli_node, "delete", "tour")).strip() == "function tour deleted"
    ok(run_cli(cli_node, "wait", "tour", "--for", "deleted", "--timeout", "20s"))
    api_error(run_cli(cli_node, "get", "tour"), "tour", "not found")


def test_readme_tour_with_the_example_specs(cli_node) -> None:
    """The README's tour, command for command, on conf/echo.yaml and conf/wordcount.yaml."""
    ok(run_cli(cli_node, "status"))
    assert ok(run_cli(cli_node, "create", "-f", "conf/echo.yaml")).startswith(
        "function echo created")
    ok(run_cli(cli_node, "create", "-f", "conf/wordcount.yaml"))
    ok(run_cli(cli_node, "wait", "echo", "--for", "active"))
    ok(run_cli(cli_node, "wait", "wordcount", "--for", "active"))
    rows = {line.split()[0]: line.split() for line in ok(run_cli(cli_node, "list")).splitlines()}
    assert rows["echo"][1:3] == ["active", "ready"] and rows["echo"][3].endswith("0..4")
    assert rows["wordcount"][1:3] == ["active", "ready"]
    assert rows["wordcount"][3].endswith("0..8")
    assert ok(run_cli(cli_node, "invoke", "echo", "-d", "hello, faastwist")) == \
        "V3 Body is \nhello, faastwist"
    assert ok(run_cli(cli_node, "invoke", "wordcount", "-d", "-",
                      input="to be or not to be\n")) == "1 6 19\n"
    wait_for(lambda: ok(run_cli(cli_node, "logs", "echo", "--tail", "5")).strip(), timeout=15)
    ok(run_cli(cli_node, "stop", "echo"))
    api_error(run_cli(cli_node, "invoke", "echo", "-d", "again"), "HTTP ")
    ok(run_cli(cli_node, "start", "echo"))
    ok(run_cli(cli_node, "wait", "echo"))
    assert yaml.safe_load(ok(run_cli(cli_node, "get", "echo")))["status"]["state"] == "active"
    ok(run_cli(cli_node, "stop", "echo"))
    ok(run_cli(cli_node, "update", "-f", "conf/echo.yaml"))
    ok(run_cli(cli_node, "wait", "echo"))
    ok(run_cli(cli_node, "stop", "echo", "wordcount"))
    ok(run_cli(cli_node, "delete", "echo", "wordcount"))
    names = ok(run_cli(cli_node, "list", "-o", "name")).split()
    assert "echo" not in names and "wordcount" not in names


def test_create_errors_print_the_api_message(cli_node, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: typo\ncommand: [cat]\nlimitedCPU: 100m\n")
    api_error(run_cli(cli_node, "create", "-f", str(bad)), "limitedCPU", "unknown field")
    bad.write_text("name: Not_A_Label\ncommand: [cat]\n")
    api_error(run_cli(cli_node, "create", "-f", str(bad)), "name", "DNS-1123")
    bad.write_text("{name: [unclosed\n")
    api_error(run_cli(cli_node, "create", "-f", str(bad)))
    json_spec = tmp_path / "nocmd.json"
    json_spec.write_text(json.dumps({"name": "nocmd"}))
    api_error(run_cli(cli_node, "create", "-f", str(json_spec)), "command")
    assert "nocmd" not in ok(run_cli(cli_node, "list", "-o", "name")).split()


def test_create_from_stdin_and_update_with_explicit_name(cli_node, tmp_path: Path) -> None:
    spec = echo_spec(tmp_path, "stdin-fn", minReplica=0)
    ok(run_cli(cli_node, "create", "-f", "-", input=spec.read_text()))
    ok(run_cli(cli_node, "wait", "stdin-fn", "--timeout", "30s"))
    ok(run_cli(cli_node, "stop", "stdin-fn"))
    other = tmp_path / "other.yaml"
    other.write_text(spec.read_text().replace("name: stdin-fn", "name: another"))
    # the URL names one function and the body another: the API refuses
    api_error(run_cli(cli_node, "update", "stdin-fn", "-f", str(other)), "cannot be renamed")
    ok(run_cli(cli_node, "update", "stdin-fn", "-f", "-", input=spec.read_text()))
    ok(run_cli(cli_node, "wait", "stdin-fn", "--timeout", "30s"))
    ok(run_cli(cli_node, "stop", "stdin-fn"))
    ok(run_cli(cli_node, "wait", "stdin-fn", "--for", "inactive", "--timeout", "20s"))
    ok(run_cli(cli_node, "delete", "stdin-fn"))


def test_lifecycle_commands_on_missing_functions(cli_node) -> None:
    for args in (["get", "ghost"], ["start", "ghost"], ["stop", "ghost"], ["delete", "ghost"],
                 ["logs", "ghost"], ["wait", "ghost", "--timeout", "2s"]):
        api_error(run_cli(cli_node, *args), "ghost", "not found")


def test_several_names_report_each_failure(cli_node, tmp_path: Path) -> None:
    result = run_cli(cli_node, "stop", "ghost-a", "ghost-b")
    assert result.returncode == 1
    assert "Error: ghost-a: " in result.stderr and "Error: ghost-b: " in result.stderr


def test_wait_times_out_with_exit_1(cli_node, tmp_path: Path) -> None:
    spec = tmp_path / "crash.yaml"
    spec.write_text(yaml.safe_dump({"name": "crasher", "minReplica": 1,
                                    "command": [FUNCTION_PYTHON, "-c", "raise SystemExit(3)"]}))
    ok(run_cli(cli_node, "create", "-f", str(spec)))
    started = time.monotonic()
    result = run_cli(cli_node, "wait", "crasher", "--for", "active", "--timeout", "2s")
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    *progress, last = result.stderr.strip().splitlines()
    assert last.startswith("Error: timed out after 2s waiting for crasher to be active; "
                           "it is "), result.stderr
    # not a terminal: one plain line per state seen, no spinner
    assert progress and all(line.startswith("waiting for crasher to be active: ")
                            for line in progress), result.stderr
    assert "\r" not in result.stderr
    assert elapsed < 15
    # on a terminal: a spinner redrawn in place
    leader, follower = pty.openpty()
    try:
        spun = subprocess.run([sys.executable, "-m", "faastwist.cli", "wait", "crasher",
                               "--timeout", "1500ms"], stdout=subprocess.PIPE, stderr=follower,
                              env=cli_env(cli_node, tmp_path), cwd=str(ROOT), timeout=30)
        os.close(follower)
        screen = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:   # EIO: the terminal's other end is closed
                break
            if not chunk:
                break
            screen += chunk
    finally:
        os.close(leader)
    assert spun.returncode == 1
    text = screen.decode()
    assert "\r| waiting for crasher to be active: failed" in text
    assert "\r/ waiting for crasher to be active: failed" in text
    assert "Error: timed out after 1.5s waiting for crasher" in text
    ok(run_cli(cli_node, "delete", "crasher"))


def test_logs_follow_streams_new_lines(cli_node, tmp_path: Path) -> None:
    spec = echo_spec(tmp_path, "follow")
    ok(run_cli(cli_node, "create", "-f", str(spec)))
    ok(run_cli(cli_node, "wait", "follow", "--timeout", "30s"))
    ok(run_cli(cli_node, "invoke", "follow", "-d", "history-line"))
    wait_for(lambda: "history-line" in ok(run_cli(cli_node, "logs", "follow", "--tail", "1")))
    env = cli_env(cli_node, tmp_path)
    follower = subprocess.Popen([sys.executable, "-m", "faastwist.cli", "logs", "follow",
                                 "--follow", "--tail", "1", "-o", "raw"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                cwd=str(ROOT), text=True)
    try:
        assert follower.stdout is not None
        # the history line arrives once the stream is open (the API subscribes first)
        assert "echo POST / 12 bytes: history-line" in follower.stdout.readline()
        ok(run_cli(cli_node, "invoke", "follow", "-d", "streamed-line"))
        line = follower.stdout.readline()
        assert "echo POST / 13 bytes: streamed-line" in line
        assert follower.poll() is None        # still following
    finally:
        follower.send_signal(signal.SIGINT)
        try:
            follower.wait(10)
        except subprocess.TimeoutExpired:
            follower.kill()
            follower.wait(5)
    assert follower.returncode == 0, follower.stderr.read() if follower.stderr else ""
    ok(run_cli(cli_node, "stop", "follow"))


def test_settings_flags_over_env_over_config_file(cli_node, tmp_path: Path) -> None:
    config_dir = tmp_path / ".config" / "faastwist"
    config_dir.mkdir(parents=True)
    (config_dir / "config.yaml").write_text(
        f"server: {cli_node.admin_root}\ncontroller: clictl\ntoken: {cli_node.token}\n")
    no_server = {"FAASTWIST_SERVER": "", "FAASTWIST_GATE": "", "FAASTWIST_TOKEN": ""}
    # the file alone is enough
    result = run_cli(None, "list", "-o", "json", home=tmp_path, env=no_server)
    assert isinstance(json.loads(ok(result)), list)
    # the environment beats the file, the flag beats the environment
    dead = f"http://127.0.0.1:{free_port()}"
    api_error(run_cli(None, "list", home=tmp_path, env={"FAASTWIST_SERVER": dead}),
              f"cannot reach the faastwist admin API at {dead}")
    ok(run_cli(None, "--server", cli_node.admin_root, "list", "-o", "json", home=tmp_path,
               env={"FAASTWIST_SERVER": dead}))
    # a controller that does not exist: the API's 404 message
    api_error(run_cli(cli_node, "--controller", "nosuchctl", "list"), "nosuchctl")
    api_error(run_cli(cli_node, "list", env={"FAASTWIST_CONTROLLER": "nosuchctl"}), "nosuchctl")
    # a broken config file is a usage error naming the key
    (config_dir / "config.yaml").write_text("servr: http://x\n")
    usage_error(run_cli(None, "list", home=tmp_path, env=no_server), "servr: unknown key")


def test_shell_completion_of_commands_and_names(cli_node, tmp_path: Path) -> None:
    script = ok(run_cli(None, "completion", "bash"))
    assert "_FAASTWIST_COMPLETE" in script and "complete " in script
    assert "compdef" in ok(run_cli(None, "completion", "zsh"))
    spec = echo_spec(tmp_path, "complete-me", minReplica=0)
    ok(run_cli(cli_node, "create", "-f", str(spec)))
    result = run_cli(cli_node, env={"_FAASTWIST_COMPLETE": "bash_complete",
                                    "COMP_WORDS": "faastwist get complete", "COMP_CWORD": "2"})
    assert "plain,complete-me" in ok(result).splitlines()
    result = run_cli(cli_node, env={"_FAASTWIST_COMPLETE": "bash_complete",
                                    "COMP_WORDS": "faastwist sto", "COMP_CWORD": "1"})
    assert "plain,stop" in ok(result).splitlines()


# -- without a node ----------------------------------------------------------------------

def test_unreachable_server_is_exit_1() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    api_error(run_cli(None, "--server", dead, "list"), "cannot reach", "connection refused")
    api_error(run_cli(None, "--server", dead, "status"), "cannot reach")


@pytest.mark.parametrize("args, fragment", [
    (["create"], "Missing option '-f'"),
    (["get"], "Missing argument 'NAME'"),
    (["get", "x", "-o", "xml"], "'xml' is not one of"),
    (["wait", "x", "--timeout", "soon"], "expected a duration"),
    (["wait", "x", "--for", "sleeping"], "'sleeping' is not one of"),
    (["logs", "x", "--tail", "-1"], "-1 is not in the range"),
    (["frobnicate"], "No such command 'frobnicate'"),
    (["--server", "ftp://x", "list"], "--server: must be an http:// or https:// URL"),
    (["create", "-f", "/nonexistent/spec.yaml"], "cannot read it"),
    (["invoke", "x", "-H", "no-colon"], "is not K:V"),
])
def test_usage_errors_are_exit_2(args: list[str], fragment: str) -> None:
    usage_error(run_cli(None, *args), fragment)


def test_update_needs_a_name_from_somewhere(tmp_path: Path) -> None:
    spec = tmp_path / "noname.yaml"
    spec.write_text("image: x\n")
    usage_error(run_cli(None, "update", "-f", str(spec)), "has no name field")


@pytest.mark.installed   # deselected where faastwist is not installed (make install)
def test_console_script_entry_point() -> None:
    from importlib.metadata import entry_points

    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert scripts["faastwist"] == "faastwist.cli:main"
    script = Path(sys.executable).parent / "faastwist"
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True,
                            env=cli_env(None, ROOT), timeout=30)
    assert result.returncode == 0 and result.stdout.startswith("faastwist ")


# -- output helpers -------------------------------------------------------------------------

@pytest.mark.parametrize("seconds, text", [
    (0, "0s"), (59.9, "59s"), (60, "1m"), (125, "2m5s"), (600, "10m"), (3599, "59m"),
    (3600, "1h"), (3660, "1h1m"), (4 * 3600 + 60, "4h"), (86400, "1d"), (86400 + 7200, "1d2h"),
    (8 * 86400, "8d"), (-5, "0s"),
])
def test_human_age(seconds: float, text: str) -> None:
    assert human_age(seconds) == text


def test_table_aligns_columns() -> None:
    out = table([["a", "longer", "x"], ["bbbb", "s", "y"]], ["N", "STATE", "Z"])
    assert out.splitlines() == ["N     STATE   Z", "a     longer  x", "bbbb  s       y"]


def test_list_rows_from_records() -> None:
    records = [
        {"spec": {"name": "b", "image": "reg/x:1", "minReplica": 1, "maxReplica": 3},
         "status": {"state": "active", "event": "ready", "updated": "1970-01-01T00:16:40.000Z"}},
        {"spec": {"name": "a", "command": ["python3", "app.py"], "minReplica": 0,
                  "maxReplica": 0},
         "status": {"state": "inactive", "event": "", "startPending": True,
                    "extData": {"replicas": "0"}, "updated": 0}},
    ]
    assert list_rows(records, now=1000.0 + 7200) == [
        ["a", "inactive(starting)", "-", "0/0..*", "python3 app.py", "-"],
        ["b", "active", "ready", "1..3", "reg/x:1", "2h"],
    ]
    # epoch seconds (older servers) still give an age; text that is no time gives none
    records[1]["status"]["updated"] = 1000.0 + 3600
    records[0]["status"]["updated"] = "yesterday"
    assert [row[-1] for row in list_rows(records, now=1000.0 + 7200)] == ["1h", "-"]


def test_image_column_keeps_the_ends_of_long_values() -> None:
    from faastwist.cli.output import image

    assert image({"command": ["/usr/bin/python3", "app.py"]}) == "python3 app.py"
    long = image({"command": ["/usr/bin/python3", "/very/long/path/to/the/functions/app.py"]})
    assert len(long) == 40 and long.startswith("python3 /ve") and long.endswith("/app.py")
    assert image({"image": "registry.example.com/team/project/function-name:v1.2.3"}) == \
        "registry.exa...ject/function-name:v1.2.3"
    assert image({}) == "-"


def test_progress_plain_lines_only_on_change() -> None:
    import io

    stream = io.StringIO()
    progress = Progress(stream, interactive=False)
    for text in ("a: initial", "a: initial", "a: failed"):
        progress.update(text)
    progress.done()
    assert stream.getvalue() == "a: initial\na: failed\n"


def test_progress_spinner_on_a_terminal() -> None:
    import io

    stream = io.StringIO()
    progress = Progress(stream, interactive=True)
    progress.update("a: initial")
    progress.update("a: initial")
    progress.done()
    frames = stream.getvalue().split("\r")
    assert frames[1].startswith("| a: initial [") and frames[2].startswith("/ a: initial [")
    assert stream.getvalue().endswith("\r")


def test_async_list_reads_rfc3339_and_epoch_times() -> None:
    """The API shows a dead letter's deadAt as RFC 3339 (older nodes: epoch seconds)."""
    from faastwist.cli.asynccmd import _seconds

    assert _seconds("2026-12-07T19:00:00.500Z", 0.0) == 1796670000.5
    assert _seconds(1796670000.5, 0.0) == 1796670000.5
    assert _seconds("2026-02-30T00:00:00Z", 7.0) == 7.0 and _seconds(None, 7.0) == 7.0
