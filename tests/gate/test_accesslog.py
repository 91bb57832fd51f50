"""The gate's buffered access log: the lines the log observers would have written,
written in batches on a timer, when many wait, and at stop."""

from __future__ import annotations

import json
import time

from twisted.internet.task import Clock
from twisted.logger import Logger, formatEventAsClassicLogText

from faastwist.gate.accesslog import FORMAT, AccessLog
from faastwist.logformat import event_as_dict

WHEN = 1_790_000_000.25


def _log(json_lines: bool, **kwargs):
    clock = Clock()
    out: list[str] = []
    access = AccessLog(clock, out.append, json_lines, **kwargs)
    access.start()
    return clock, out, access


def _record(access: AccessLog, path: bytes = b"/p?q=1", call_id: bytes = b"c-1") -> None:
    access.record(WHEN, b"POST", path, "demo10", 200, 0.0123456, 17, call_id)


def test_json_line_is_what_the_json_observer_writes_for_the_event() -> None:
    clock, out, access = _log(True)
    _record(access, path=b'/a"b\\c\x01\xe9')
    assert out == []
    clock.advance(0.5)
    (batch,) = out
    line = json.loads(batch)
    fields = dict(method="POST", path='/a"b\\c\x01\xe9', function="demo10", status=200,
                  duration=0.0123456, bytes=17, call_id="c-1")
    captured: list[dict] = []
    Logger(namespace="faastwist.access", observer=captured.append).info(FORMAT, **fields)
    expected = event_as_dict({**captured[0], "log_time": WHEN})
    assert line.keys() == expected.keys()
    for key in expected:
        if key == "duration":
            assert abs(line[key] - expected[key]) < 1e-6
        else:
            assert line[key] == expected[key], key
    assert line["time"] == "2026-09-21T14:13:20.250Z"


def test_text_line_is_twistds_classic_format() -> None:
    clock, out, access = _log(False)
    _record(access)
    access.stop()
    captured: list[dict] = []
    Logger(namespace="faastwist.access", observer=captured.append).info(
        FORMAT, method="POST", path="/p?q=1", function="demo10", status=200,
        duration=0.0123456, bytes=17, call_id="c-1")
    expected = formatEventAsClassicLogText({**captured[0], "log_time": WHEN})
    assert out == [expected]
    assert expected.endswith("[faastwist.access#info] POST /p?q=1 demo10 200 0.0123s 17B c-1\n")


def test_batches_by_time_by_size_and_at_stop() -> None:
    clock, out, access = _log(True, interval=0.5, max_lines=3)
    _record(access)
    _record(access)
    clock.advance(0.4)
    assert out == []
    clock.advance(0.1)
    assert len(out) == 1 and out[0].count("\n") == 2
    for _ in range(3):
        _record(access)
    assert len(out) == 2 and out[1].count("\n") == 3  # max_lines reached: at once
    _record(access)
    access.stop()  # shutdown: nothing stays behind
    assert len(out) == 3 and out[2].count("\n") == 1
    clock.advance(5)
    assert len(out) == 3  # the timer is gone
    assert all(json.loads(line)["status"] == 200 for b in out for line in b.splitlines())


def test_a_failing_stream_loses_lines_but_not_the_gate() -> None:
    clock = Clock()

    def broken(text: str) -> None:
        raise OSError(28, "No space left on device")

    access = AccessLog(clock, broken, True)
    access.start()
    _record(access)
    _record(access)
    clock.advance(0.5)
    assert access.dropped == 2 and access.lines == []
    access.stop()


def test_without_a_stream_each_line_is_a_log_event() -> None:
    from twisted.logger import globalLogPublisher

    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        access = AccessLog(Clock())
        access.start()
        _record(access)
        access.stop()
    finally:
        globalLogPublisher.removeObserver(events.append)
    (event,) = [e for e in events if e.get("log_namespace") == "faastwist.access"]
    assert (event["method"], event["path"], event["status"], event["call_id"]) == (
        "POST", "/p?q=1", 200, "c-1")


def test_local_time_offset_in_text_mode() -> None:
    clock, out, access = _log(False)
    _record(access)
    access.flush()
    assert out[0].startswith(time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(int(WHEN))))
