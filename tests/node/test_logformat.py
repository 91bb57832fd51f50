"""--log-format json: lines parse, carry the named fields, failures carry tracebacks;
and twistd really installs the observer (a real twistd run with a probe plugin)."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from twisted.logger import Logger, LogLevel, globalLogPublisher
from twisted.python import log as legacy
from twisted.python import usage

from faastwist import logformat
from faastwist.logformat import event_as_dict, json_file_observer, use_log_format

ROOT = Path(__file__).resolve().parents[2]
TWISTD = Path(sys.executable).parent / "twistd"


def _lines(stream: io.StringIO) -> list[dict]:
    text = stream.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_named_fields_become_json_fields() -> None:
    out = io.StringIO()
    log = Logger(namespace="faastwist.gate.service", observer=json_file_observer(out))
    log.info("{method} {path} -> {status}", method="GET", path="/hello", status=200,
             function_name="demo", duration=0.0123, bytes_out=42, call_id="abc",
             tags=["a", "b"], extra={"k": 1})
    log.warn("plain warning")
    first, second = _lines(out)
    assert first["message"] == "GET /hello -> 200"
    assert first["level"] == "info"
    assert first["namespace"] == "faastwist.gate.service"
    assert first["time"].endswith("Z") and "T" in first["time"]
    for key, value in {"method": "GET", "path": "/hello", "status": 200, "function_name": "demo",
                       "duration": 0.0123, "bytes_out": 42, "call_id": "abc",
                       "tags": ["a", "b"], "extra": {"k": 1}}.items():
        assert first[key] == value
    assert not any(key.startswith("log_") for key in first)
    assert second == {"time": second["time"], "level": "warn", "namespace": "faastwist.gate.service",
                      "message": "plain warning"}


def test_unencodable_fields_are_left_out_and_reserved_names_kept_apart() -> None:
    out = io.StringIO()
    log = Logger(namespace="t", observer=json_file_observer(out))
    log.info("{message} at {time}", message="shadowed", time=3, obj=object(),
             raw=b"bytes", ratio=math.nan, ok=True, none=None)
    (line,) = _lines(out)
    assert line["message"] == "shadowed at 3"
    assert line["level"] == "info"
    assert line["field_message"] == "shadowed"
    assert line["field_time"] == 3 and line["time"].endswith("Z")
    assert line["ok"] is True and line["none"] is None
    for dropped in ("obj", "raw", "ratio"):
        assert dropped not in line


def test_failure_carries_exception_and_traceback() -> None:
    out = io.StringIO()
    log = Logger(namespace="faastwist.lifecycle.reconciler", observer=json_file_observer(out))
    try:
        {}["missing"]
    except KeyError:
        log.failure("reconcile pass failed for {name}", name="demo")
    (line,) = _lines(out)
    assert line["level"] == "critical"
    assert line["message"] == "reconcile pass failed for demo"
    assert line["name"] == "demo"
    assert line["exception"] == "KeyError: 'missing'"
    assert line["traceback"].startswith("Traceback (most recent call last):")
    assert "test_failure_carries_exception_and_traceback" in line["traceback"]


def test_legacy_events_are_rendered_once() -> None:
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        legacy.msg("old style %d" % 7, system="HTTPChannel,0,127.0.0.1")
        try:
            _ = 1 / 0
        except ZeroDivisionError:
            legacy.err(None, "while serving")
    finally:
        globalLogPublisher.removeObserver(events.append)
    message, error = (event_as_dict(e) for e in events[-2:])
    assert message["message"] == "old style 7"
    assert message["system"] == "HTTPChannel,0,127.0.0.1"
    assert "isError" not in message and "field_message" not in message
    assert error["message"] == "while serving"
    assert error["exception"] == "ZeroDivisionError: division by zero"
    assert "Traceback" in error["traceback"]
    json.dumps(error)


def test_levels() -> None:
    out = io.StringIO()
    observer = json_file_observer(out)
    for level in LogLevel.iterconstants():
        Logger(namespace="t", observer=observer).emit(level, "x")
    assert [line["level"] for line in _lines(out)] == ["debug", "info", "warn", "error",
                                                       "critical"]


class _Sub(usage.Options):
    optParameters = [["log-format", None, "text", ""]]

    def postOptions(self) -> None:
        use_log_format(self, self["log-format"])


def _parse(parent: dict, argv: list[str]) -> _Sub:
    sub = _Sub()
    sub.parent = parent  # what usage.Options does for a subcommand
    sub.parseOptions(argv)
    return sub


@pytest.fixture(autouse=True)
def _reset_destination():
    yield
    logformat._destination = None
    logformat._access = None


def test_use_log_format_fills_twistd_logger() -> None:
    parent = {"logger": None, "logfile": None, "nodaemon": True, "syslog": False}
    _parse(parent, ["--log-format", "json"])
    assert parent["logger"] == "faastwist.logformat.json_observer"
    assert logformat._destination is None

    parent = {"logger": None, "logfile": "/var/log/x.log", "nodaemon": True, "syslog": False}
    _parse(parent, ["--log-format", "json"])
    assert logformat._destination == "/var/log/x.log"

    parent = {"logger": None, "logfile": None, "nodaemon": False, "syslog": False}
    _parse(parent, ["--log-format", "json"])
    assert logformat._destination == "twistd.log"

    explicit = object()
    parent = {"logger": explicit, "logfile": None, "nodaemon": True, "syslog": False}
    _parse(parent, ["--log-format", "json"])
    assert parent["logger"] is explicit

    parent = {"logger": None, "logfile": None, "nodaemon": True, "syslog": False}
    _parse(parent, ["--log-format", "text"])
    assert parent["logger"] == "faastwist.logformat.text_observer"

    # twistd's syslog observer, and its own refusal of a daemon logging to stdout, stay
    parent = {"logger": None, "logfile": None, "nodaemon": True, "syslog": True}
    _parse(parent, ["--log-format", "text"])
    assert parent["logger"] is None
    parent = {"logger": None, "logfile": "-", "nodaemon": False, "syslog": False}
    _parse(parent, ["--log-format", "text"])
    assert parent["logger"] is None


def test_use_log_format_errors() -> None:
    with pytest.raises(usage.UsageError, match="--log-format must be one of text, json"):
        _parse({"logger": None}, ["--log-format", "xml"])
    with pytest.raises(usage.UsageError, match="--syslog"):
        _parse({"logger": None, "syslog": True}, ["--log-format", "json"])


def test_json_observer_follows_logfile(tmp_path) -> None:
    logformat._destination = str(tmp_path / "faasgate.log")
    observer = logformat.json_observer()
    Logger(namespace="t", observer=observer).info("to the file {n}", n=1)
    (line,) = [json.loads(x) for x in (tmp_path / "faasgate.log").read_text().splitlines()]
    assert line["message"] == "to the file 1" and line["n"] == 1
    # the gate's access log writes its batches to the same file, as JSON
    write, json_lines = logformat.access_sink()
    assert json_lines is True
    write('{"namespace": "faastwist.access"}\n')
    assert (tmp_path / "faasgate.log").read_text().splitlines()[-1] == (
        '{"namespace": "faastwist.access"}')


def test_text_observer_is_twistds_format_and_shares_its_file(tmp_path) -> None:
    assert logformat.access_sink() == (None, False)
    logformat._destination = str(tmp_path / "faasgate.log")
    observer = logformat.text_observer()
    Logger(namespace="t.ns", observer=observer).info("hello {n}", n=1)
    write, json_lines = logformat.access_sink()
    assert json_lines is False
    write("access line\n")
    lines = (tmp_path / "faasgate.log").read_text().splitlines()
    assert len(lines) == 2 and lines[0].endswith(" [t.ns#info] hello 1")
    assert lines[1] == "access line"


PROBE_TAP = '''
from twisted.application.service import Service
from twisted.logger import Logger
from twisted.python import usage
from faastwist.logformat import use_log_format
log = Logger()
class Options(usage.Options):
    optParameters = [["log-format", None, "text", "text or json"]]
    def postOptions(self):
        use_log_format(self, self["log-format"])
class ProbeService(Service):
    def startService(self):
        super().startService()
        log.info("probe up {count}", count=3, function_name="demo")
        from twisted.internet import reactor
        reactor.callLater(0, reactor.stop)
def makeService(options):
    return ProbeService()
'''


@pytest.mark.parametrize("argv", [
    ["lfprobe", "--log-format", "json"],
    ["--logger", "faastwist.logformat.json_observer", "lfprobe"],
])
@pytest.mark.process
def test_twistd_installs_the_json_observer(tmp_path, argv) -> None:
    """Measured, not assumed: a real twistd 26 run with a probe plugin."""
    (tmp_path / "lfprobe_tap.py").write_text(textwrap.dedent(PROBE_TAP))
    plugins = tmp_path / "twisted" / "plugins"
    plugins.mkdir(parents=True)
    (plugins / "lfprobe_plugin.py").write_text(
        "from twisted.application.service import ServiceMaker\n"
        "lfprobe = ServiceMaker('lfprobe', 'lfprobe_tap', 'probe', 'lfprobe')\n")
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}")
    done = subprocess.run([str(TWISTD), "-n", "--pidfile=", *argv], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    probe = [line for line in lines if line["namespace"] == "lfprobe_tap"]
    assert probe == [{"time": probe[0]["time"], "level": "info", "namespace": "lfprobe_tap",
                      "message": "probe up 3", "count": 3, "function_name": "demo"}]
    assert lines[-1]["message"] == "Server Shut Down."
