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


@pytest.mark.parametrize("text, seconds", [
    ("3ns", "3e-9"), ("3us", "3e-6"), ("3µs", "3e-6"), ("3ms", "0.003"), ("3s", "3"),
    ("3m", "180"), ("3h", "10800"), ("1h2m3s4ms5us6ns", "3723.004005006"),
    (".5s", "0.5"), ("2.s", "2"), (" 0 ", "0")])
def test_every_duration_unit_exactly(text: str, seconds: str) -> None:
    assert parse_duration(text) == float(Decimal(seconds))
    assert parse_duration(text) == float(Decimal(seconds))    # the cached answer too


@pytest.mark.parametrize("bad, message", [
    (True, "expected a duration like 10s, got True"),
    (None, "expected a duration like 10s, got None"),
    (-1, "must not be negative, got -1"),
    ("10", "expected a duration like 10s, 1m30s or 500ms, got '10'"),
    ("1s x", "expected a duration like 10s, 1m30s or 500ms, got '1s x'"),
    ("x1s", "expected a duration like 10s, 1m30s or 500ms, got 'x1s'"),
])
def test_duration_refusals_are_exact(bad: object, message: str) -> None:
    with pytest.raises(UnitError) as caught:
        parse_duration(bad)
    assert str(caught.value) == message


@pytest.mark.parametrize("seconds, text", [
    (0, "0s"), (0.25, "250ms"), (1.5, "1.5s"), (60, "1m"), (3600, "1h"), (3661, "1h1m1s"),
    (7200.0, "2h"), (59, "59s"), (3660, "1h1m")])
def test_format_duration_exactly(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("text, value", [
    ("1Ki", 2**10), ("1Mi", 2**20), ("1Gi", 2**30), ("1Ti", 2**40), ("1Pi", 2**50),
    ("1Ei", 2**60), ("1n", "1e-9"), ("1u", "1e-6"), ("1m", "0.001"), ("1", 1),
    ("1k", 10**3), ("1M", 10**6), ("1G", 10**9), ("1T", 10**12), ("1P", 10**15),
    ("1E", 10**18), ("2e3", 2000), ("2E-3", "0.002"), (" +1.5Ki ", 1536), (3, 3), (0.5, "0.5")])
def test_every_quantity_suffix_exactly(text: object, value: object) -> None:
    assert parse_quantity(text) == Decimal(str(value))


@pytest.mark.parametrize("bad, message", [
    (True, "expected a Kubernetes quantity like 100m or 128Mi, got True"),
    ([1], "expected a Kubernetes quantity like 100m or 128Mi, got [1]"),
    ("1Xi", "expected a Kubernetes quantity like 100m or 128Mi, got '1Xi'"),
    ("-1Mi", "must not be negative, got '-1Mi'"),
])
def test_quantity_refusals_are_exact(bad: object, message: str) -> None:
    with pytest.raises(UnitError) as caught:
        parse_quantity(bad)
    assert str(caught.value) == message


def test_sizes_are_whole_bytes() -> None:
    assert parse_size(5) == 5 and parse_size("1.5Ki") == 1536 and parse_size("10m") == 0
    with pytest.raises(UnitError) as caught:
        parse_size(-1)
    assert str(caught.value) == "must not be negative, got -1"
    with pytest.raises(UnitError):
        parse_size(True)


def test_zero_is_a_value_not_a_refusal() -> None:
    assert parse_duration(0) == 0.0 and parse_duration(0.0) == 0.0
    assert parse_quantity("0") == 0 and parse_quantity("0Mi") == 0
    assert parse_size(0) == 0
    assert format_duration(1) == "1s" and format_duration(0) == "0s"
