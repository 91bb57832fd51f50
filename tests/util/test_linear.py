"""Spec patterns on RE2 (faastwist.util.linear): linear time, and what it refuses is
refused with the reason."""

from __future__ import annotations

import time

import pytest

from faastwist.util.linear import PatternError, compile_linear


def test_a_catastrophic_pattern_for_re_runs_in_linear_time() -> None:
    pattern = compile_linear(r"^/(a+)+$")
    started = time.monotonic()
    assert pattern.search("/" + "a" * 5000 + "!") is None
    assert time.monotonic() - started < 1.0       # re takes hours on this input


def test_groups_and_sub_work_as_in_re() -> None:
    pattern = compile_linear(r"^/api/(\w+)/(.*)$")
    assert pattern.sub(r"/\2/\1", "/api/v1/users") == "/users/v1"
    assert pattern.search("/api/v2/x").group(1) == "v2"


@pytest.mark.parametrize("pattern, reason", [
    (r"(a)\1", r"invalid escape sequence: \1"),
    (r"(?=a)a", "invalid perl operator: (?="),
    (r"(?<!b)a", "invalid perl operator: (?<!"),
])
def test_backtracking_features_are_refused_with_the_reason(pattern: str, reason: str) -> None:
    with pytest.raises(PatternError) as caught:
        compile_linear(pattern)
    assert str(caught.value) == ("does not compile on RE2 (linear time, as Go's regexp): "
                                 + reason)            # RE2's bytes reason, decoded


def test_a_non_pattern_is_refused() -> None:
    with pytest.raises(PatternError, match="^does not compile on RE2: "):
        compile_linear(None)  # type: ignore[arg-type]


def test_a_refusal_prints_nothing(capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(PatternError):
        compile_linear(r"(a)\1")
    assert capfd.readouterr().err == ""
