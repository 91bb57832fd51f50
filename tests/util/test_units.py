"""Go durations, Kubernetes quantities and sizes."""

from decimal import Decimal

import pytest
from hypothesis import given, strategies as st

from faastwist.util.units import UnitError, format_duration, parse_duration, parse_quantity, parse_size


@pytest.mark.parametrize("text, seconds", [
    ("10s", 10.0), ("1m30s", 90.0), ("500ms", 0.5), ("2h", 7200.0), ("1.5s", 1.5),
    ("0", 0.0), ("100us", 0.0001), ("1h1m1s", 3661.0), (5, 5.0), (0.25, 0.25),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "10", "s", "10x", "1m 30s", "-1s", True, None, [1], -3])
def test_parse_duration_rejects(bad):
    with pytest.raises(UnitError):
        parse_duration(bad)


@given(st.integers(min_value=0, max_value=10**6))
def test_format_duration_round_trips_whole_milliseconds(millis):
    seconds = millis / 1000
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


@pytest.mark.parametrize("text, value", [
    ("180m", Decimal("0.18")), ("1", Decimal(1)), ("100Mi", Decimal(100 * 2**20)),
    ("1.5Gi", Decimal(int(1.5 * 2**30))), ("2k", Decimal(2000)), ("1e3", Decimal(1000)),
    (2, Decimal(2)),
])
def test_parse_quantity(text, value):
    assert parse_quantity(text) == value


@pytest.mark.parametrize("bad", ["", "abc", "10 Mi", "1MiB", "-1", "1.2.3", None, True])
def test_parse_quantity_rejects(bad):
    with pytest.raises(UnitError):
        parse_quantity(bad)


def test_parse_size():
    assert parse_size("1Mi") == 2**20
    assert parse_size(512) == 512
    with pytest.raises(UnitError):
        parse_size(-1)
