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


FORGED = b"x 200 0.0001s 0B forged\r\n2026-01-01T00:00:00+0000 [faastwist.access#info] \"q\\"


def test_a_call_id_with_spaces_cannot_forge_fields_or_lines_in_text() -> None:
    """Issue 21: ``X-Call-Id`` with spaces forged fields in the text access log."""
    clock, out, access = _log(False)
    _record(access, path=b'/a b"\x01\xe9', call_id=FORGED)
    access.stop()
    (batch,) = out
    assert batch.count("\n") == 1 and batch.endswith("\n")
    message = batch.split(" [faastwist.access#info] ", 1)[1].rstrip("\n")
    fields = message.split(" ")
    assert fields == ["POST", "/a\\x20b\\x22\\x01\\xe9", "demo10", "200", "0.0123s", "17B",
                      "x\\x20200\\x200.0001s\\x200B\\x20forged\\x0d\\x0a2026-01-01T00:00:00"
                      "+0000\\x20[faastwist.access#info]\\x20\\x22q\\x5c"]
    assert batch.isascii()


def test_text_fields_escape_exactly_the_unsafe_bytes() -> None:
    from faastwist.gate.accesslog import text_field

    safe = bytes(range(0x21, 0x7f)).replace(b'"', b"").replace(b"\\", b"")
    assert text_field(safe) == safe.decode()
    for byte in [*range(0x21), 0x22, 0x5c, *range(0x7f, 0x100)]:
        assert text_field(bytes([byte])) == "\\x%02x" % byte


def test_json_keeps_the_values_as_received_quoted() -> None:
    clock, out, access = _log(True)
    _record(access, call_id=FORGED)
    access.stop()
    line = json.loads(out[0])
    assert line["call_id"] == FORGED.decode("latin-1") and out[0].count("\n") == 1


def test_log_events_carry_the_escaped_fields_and_a_dash_for_no_function() -> None:
    from twisted.logger import globalLogPublisher

    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        access = AccessLog(Clock())
        access.record(WHEN, b"GET", b"/x", "", 400, 0.001, 10, b"a b")
    finally:
        globalLogPublisher.removeObserver(events.append)
    (event,) = [e for e in events if e.get("log_namespace") == "faastwist.access"]
    text = formatEventAsClassicLogText(event)
    assert text.endswith("GET /x - 400 0.0010s 10B a\\x20b\n")


def test_no_function_is_a_dash_in_text() -> None:
    clock, out, access = _log(False)
    access.record(WHEN, b"GET", b"/", "", 400, 0.001, 10, b"c")
    access.stop()
    assert out[0].endswith("[faastwist.access#info] GET / - 400 0.0010s 10B c\n")
