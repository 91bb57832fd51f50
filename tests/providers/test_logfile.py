"""Function log files: record format, size rotation, backwards reading, followers."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings, strategies as st
from twisted.internet.task import Clock

from faastwist.providers.base import LogLine
from faastwist.providers.logfile import FunctionLog, format_record, parse_record, read_lines


@settings(max_examples=300, deadline=None)
@given(stamp=st.floats(min_value=0, max_value=4e9, allow_nan=False),
       text=st.text(alphabet=st.characters(blacklist_characters="\n\r"), max_size=40))
def test_a_followed_line_equals_the_line_read_back(stamp: float, text: str) -> None:
    """The admin API de-duplicates follow against history by equality."""
    line = LogLine("fn", "fn-123", round(stamp, 6), text)
    assert parse_record("fn", format_record(line, "stdout")) == line


def test_lines_that_are_not_records_are_skipped() -> None:
    assert parse_record("fn", "garbage\n") is None
    assert parse_record("fn", "not-a-date fn-1 stdout hi\n") is None
    assert parse_record("fn", "2024-01-02T03:04:05.000006Z fn-1 stdout\n").text == ""


def make_log(tmp_path: Path, max_bytes: int = 10_000) -> tuple[FunctionLog, Clock, list[float]]:
    clock = Clock()
    now = [1_700_000_000.0]
    log = FunctionLog("fn", tmp_path / "logs" / "fn.log", clock, max_bytes, lambda: now[0])
    return log, clock, now


def test_writes_are_flushed_shortly_after(tmp_path: Path) -> None:
    log, clock, _ = make_log(tmp_path)
    log.emit("fn-1", "stdout", "hello")
    assert log.file.path.read_text() == ""
    clock.advance(0.25)
    assert log.file.path.read_text().endswith(" fn-1 stdout hello\n")


def test_rotation_keeps_one_backup_and_reads_span_both(tmp_path: Path) -> None:
    log, _, now = make_log(tmp_path, max_bytes=2_000)
    for index in range(100):
        now[0] += 1
        log.emit("fn-1", "stdout", f"line {index:03d} " + "x" * 20)
    log.file.flush()
    backup = log.file.path.with_name("fn.log.1")
    assert backup.exists()
    assert log.file.path.stat().st_size < 2_000 and backup.stat().st_size >= 2_000
    everything = read_lines("fn", log.file.path, None, None)
    texts = [l.text[:8] for l in everything]
    assert texts == sorted(texts) and texts[-1] == "line 099"
    assert len(everything) < 100           # the oldest rotated away for good
    current = len(log.file.path.read_text().splitlines())
    assert current < 40                     # so a tail of 40 spans both files
    tail = read_lines("fn", log.file.path, 40, None)
    assert [l.text[:8] for l in tail] == [f"line {i:03d}" for i in range(60, 100)]
    since = read_lines("fn", log.file.path, None, 1_700_000_000.0 + 96)
    assert [l.text[:8] for l in since] == ["line 095", "line 096", "line 097", "line 098",
                                           "line 099"]
    assert read_lines("fn", log.file.path, 0, None) == []
    log.file.remove()
    assert not log.file.path.exists() and not backup.exists()
    assert read_lines("fn", log.file.path, 10, None) == []


def test_backwards_reading_crosses_block_boundaries(tmp_path: Path) -> None:
    log, _, now = make_log(tmp_path, max_bytes=10**9)
    for index in range(3000):
        now[0] += 0.001
        log.emit("fn-1", "stderr", f"{index} " + "y" * (index % 50))
    log.file.flush()
    lines = read_lines("fn", log.file.path, 2500, None)
    assert [int(l.text.split()[0]) for l in lines] == list(range(500, 3000))


def test_followers_get_lines_until_they_stop(tmp_path: Path) -> None:
    log, _, _ = make_log(tmp_path)
    got: list[str] = []
    stop = log.follow(lambda line: got.append(line.text))
    log.emit("fn-1", "stdout", "one")
    stop()
    log.emit("fn-1", "stdout", "two")
    assert got == ["one"]

    def broken(line: LogLine) -> None:
        raise RuntimeError("client gone")
    log.follow(broken)
    log.emit("fn-1", "stdout", "three")       # a failing follower is dropped, not fatal
    assert log.followers == []
