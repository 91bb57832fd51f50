"""RFC 3339 times as the admin API answers them (faastwist.util.times)."""

from __future__ import annotations

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
])
def test_parse(text: str, seconds: float) -> None:
    assert parse_rfc3339(text) == pytest.approx(seconds)


def test_round_trip() -> None:
    for seconds in (1.0, 1_700_000_000.123, 4_102_444_800.5):
        assert parse_rfc3339(format_rfc3339(seconds)) == pytest.approx(seconds, abs=5e-4)


def test_other_forms_are_none_and_impossible_times_an_error() -> None:
    for text in ("", "5m", "2023-11-14", "2023-11-14T22:13:20", "1700000000"):
        assert parse_rfc3339(text) is None
    with pytest.raises(ValueError, match="day is out of range"):
        parse_rfc3339("2023-02-30T00:00:00Z")
