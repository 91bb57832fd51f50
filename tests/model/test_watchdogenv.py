"""The watchdog's settings from a function's environment, and the request environment."""

from __future__ import annotations

import pytest

from faastwist.model.spec import FunctionSpec, SpecError
from faastwist.model.watchdogenv import header_env, read_settings


def spec(**env: str) -> FunctionSpec:
    return FunctionSpec(name="f", env=env, timeout=30.0, max_replica=4)


def test_settings_accept_bare_seconds_and_go_durations() -> None:
    settings = read_settings(spec(exec_timeout="2.5", write_timeout="1m", read_timeout="500ms",
                                  max_inflight="3", content_type="application/json",
                                  write_debug="true"), classic=True)
    assert (settings.exec_timeout, settings.write_timeout, settings.read_timeout) == (
        2.5, 60.0, 0.5)
    assert settings.max_inflight == 3 and settings.write_debug
    assert settings.content_type == "application/json"
    assert settings.kill_after == (2.5, "exec_timeout")
    assert settings.combine_output and settings.queue == 0     # classic defaults
    fork = read_settings(spec(), classic=False)
    assert not fork.combine_output and fork.queue == 4 and fork.kill_after == (30.0, "timeout")
    assert read_settings(spec(write_timeout="10s"), True).kill_after == (10.0, "write_timeout")
    assert not read_settings(spec(combine_output="false"), True).combine_output


@pytest.mark.parametrize("env, field", [
    ({"exec_timeout": "soon"}, "env.exec_timeout"),
    ({"read_timeout": "-1"}, "env.read_timeout"),
    ({"max_inflight": "1.5"}, "env.max_inflight"),
    ({"write_debug": "sometimes"}, "env.write_debug"),
])
def test_bad_settings_name_the_variable(env: dict, field: str) -> None:
    with pytest.raises(SpecError, match=f"^{field}:"):
        read_settings(spec(**env), classic=True)


def test_request_environment() -> None:
    env = header_env([(b"X-Custom-Header", [b"a", b"b"]), (b"content-type", [b"text/plain"])],
                     b"PATCH", b"/a/b?x=1&y=2", b"gate:8080", 12)
    assert env == {"Http_X_Custom_Header": "a,b", "Http_Content_Type": "text/plain",
                   "Http_Method": "PATCH", "Http_Path": "/a/b", "Http_Query": "x=1&y=2",
                   "Http_Host": "gate:8080", "Http_ContentLength": "12"}
