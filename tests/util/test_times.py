"""RFC 3339 times as the admin API answers them (faastwist.util.times)."""

from __future__ import annotations

import time

import pytest

from faastwist.util.times import format_rfc3339, parse_rfc3339


def test_format_is_utc_with_milliseconds() -> None:
    assert format_rfc3339(1_700_000_000.0) == "2023-11-14T22:13:20.000Z"
    assert format_rfc3339(1_700_000_000.1234) == "2023-11-14T22:13:20.123Z"
    assert format_rfc3339(1_700_000_000.9996) == "2023-11-14T22:13:21.000Z"   # rounds


@pytest.mark.parametrize("text, seconds", [
    ("2023-11-14T22:13:20.000Z", 1_700_000_000.0),
    ("2023-11-14T22:13:20Z", 1_700_000_000.0),
    ("2023-11-14t22:13:20.5z", 1_700_000_000.5),
    ("2023-11-15T00:13:20+02:00", 1_700_000_000.0),
    (" 2023-11-14 20:13:20.25-02:00 ", 1_700_000_000.25),
    # offsets with minutes (India, Nepal, Newfoundland): every digit of hh:mm counts
    ("2023-11-15T03:43:20+05:30", 1_700_000_000.0),
    ("2023-11-15T03:58:20+05:45", 1_700_000_000.0),
    ("2023-11-14T18:43:20-03:30", 1_700_000_000.0),
    ("2023-11-15T10:13:20+12:00", 1_700_000_000.0),
    ("2023-11-14T22:13:20+00:00", 1_700_000_000.0),
    ("2023-11-14T22:13:20-00:00", 1_700_000_000.0),
])
def test_parse(text: str, seconds: float) -> None:
    # absolute tolerance: approx's relative default would pass a time 1700 s off
    assert parse_rfc3339(text) == pytest.approx(seconds, abs=1e-6)


def test_z_is_utc_whatever_the_machine_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "America/St_Johns")
    time.tzset()
    try:
        assert parse_rfc3339("2023-11-14T22:13:20Z") == 1_700_000_000.0
    finally:
        monkeypatch.undo()
        time.tzset()


def test_an_offset_with_minutes_moves_the_time_by_those_minutes() -> None:
    utc = parse_rfc3339("2023-11-14T22:13:20Z")
    assert parse_rfc3339("2023-11-14T22:13:20+00:45") == utc - 45 * 60
    assert parse_rfc3339("2023-11-14T22:13:20-00:07") == utc + 7 * 60
    assert parse_rfc3339("2023-11-14T22:13:20+01:59") == utc - 119 * 60


def test_round_trip() -> None:
    for seconds in (1.0, 1_700_000_000.123, 4_102_444_800.5):
        assert parse_rfc3339(format_rfc3339(seconds)) == pytest.approx(seconds, abs=5e-4)


def test_other_forms_are_none_and_impossible_times_an_error() -> None:
    for text in ("", "5m", "2023-11-14", "2023-11-14T22:13:20", "1700000000"):
        assert parse_rfc3339(text) is None
    with pytest.raises(ValueError, match="^not a valid time: day is out of range"):
        parse_rfc3339("2023-02-30T00:00:00Z")
