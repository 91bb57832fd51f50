"""The watchdog's settings and request environment (OpenFaaS's classic contract).

A function's environment carries the classic watchdog's knobs (``exec_timeout``,
``read_timeout``, ``write_timeout`` as bare seconds or Go durations, ``content_type``,
``combine_output``, ``max_inflight``, ``write_debug``); they are read once per spec,
checked when the spec is (so a typo is a 400 naming the variable, not a 500 later),
and each request's head becomes ``Http_*`` variables for the forked process.
"""

from __future__ import annotations

import json
import shlex
from typing import Iterable, Mapping

import attrs

from faastwist.model.spec import FunctionSpec, SpecError
from faastwist.util.units import UnitError, parse_duration

DEFAULT_CONTENT_TYPE = "text/plain; charset=utf-8"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@attrs.frozen
class WatchdogSettings:
    """How one function's requests are run; ``classic`` is OpenFaaS's envProcess
    watchdog (its log lines, output combined by default), else faastwist's fork mode."""

    name: str
    timeout: float                  # the function's own timeout (the gate's)
    exec_timeout: float = 0.0       # 0: only the function's timeout applies
    read_timeout: float = 0.0
    write_timeout: float = 0.0
    content_type: str = DEFAULT_CONTENT_TYPE
    combine_output: bool = False
    max_inflight: int = 0           # 0: unbounded
    write_debug: bool = False
    classic: bool = False
    queue: int = 0                  # fork mode's maxReplica: processes at once, others wait

    @property
    def kill_after(self) -> tuple[float, str]:
        """The earliest deadline of one run and the setting that sets it."""
        best = (self.timeout, "timeout")
        for value, key in ((self.exec_timeout, "exec_timeout"),
                           (self.write_timeout, "write_timeout")):
            if value and value < best[0]:
                best = (value, key)
        return best


def _seconds(env: Mapping[str, str], key: str, field: str) -> float:
    raw = env.get(key, "").strip()
    if not raw:
        return 0.0
    try:
        value = float(raw)  # a bare number is seconds, as the classic watchdog reads it
    except ValueError:
        try:
            value = parse_duration(raw)
        except UnitError as exc:
            raise SpecError(f"{field}.{key}", f"must be seconds or a Go duration like 10s: "
                                              f"{exc}") from None
    if value < 0 or value != value:
        raise SpecError(f"{field}.{key}", f"must not be negative, got {raw!r}")
    return value


def _flag(env: Mapping[str, str], key: str, default: bool, field: str) -> bool:
    raw = env.get(key)
    if raw is None:
        return default
    lowered = raw.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise SpecError(f"{field}.{key}", f"must be true or false, got {raw!r}")


def read_settings(spec: FunctionSpec, classic: bool, env: Mapping[str, str] | None = None,
                  field: str = "env") -> WatchdogSettings:
    """The watchdog settings of ``spec`` (from ``env``, default its own), or SpecError."""
    env = spec.env if env is None else env
    raw_inflight = env.get("max_inflight", "").strip()
    inflight = 0
    if raw_inflight:
        if not raw_inflight.isdigit():
            raise SpecError(f"{field}.max_inflight", f"must be a whole number, got "
                                                     f"{raw_inflight!r}")
        inflight = int(raw_inflight)
    return WatchdogSettings(
        name=spec.name, timeout=spec.timeout,
        exec_timeout=_seconds(env, "exec_timeout", field),
        read_timeout=_seconds(env, "read_timeout", field),
        write_timeout=_seconds(env, "write_timeout", field),
        content_type=env.get("content_type") or DEFAULT_CONTENT_TYPE,
        combine_output=_flag(env, "combine_output", classic, field),
        max_inflight=inflight,
        write_debug=_flag(env, "write_debug", False, field),
        classic=classic,
        queue=0 if classic else spec.max_replica,
    )


def header_env(headers: Iterable[tuple[bytes, Iterable[bytes]]], method: bytes, uri: bytes,
               host: bytes, content_length: int) -> dict[str, str]:
    """The classic watchdog's request environment: ``Http_X_Name`` per header, plus
    ``Http_Method``, ``Http_Path``, ``Http_Query``, ``Http_Host`` and
    ``Http_ContentLength``."""
    env: dict[str, str] = {}
    for raw_name, values in headers:
        name = raw_name.decode("latin-1")
        key = "Http_" + "_".join(part.capitalize() for part in name.split("-"))
        env[key] = ",".join(v.decode("latin-1") for v in values)
    path, _, query = uri.decode("latin-1").partition("?")
    env["Http_Method"] = method.decode("latin-1")
    env["Http_Path"] = path
    env["Http_Query"] = query
    env["Http_Host"] = host.decode("latin-1")
    env["Http_ContentLength"] = str(content_length)
    return env


def fprocess_argv(fprocess: str) -> list[str]:
    """envProcess split as a shell would split words (no shell runs it), or ValueError."""
    argv = shlex.split(fprocess)
    if not argv:
        raise ValueError("is empty")
    return argv


def settings_json(settings: WatchdogSettings) -> str:
    """The checked settings as the classic watchdog replica reads them
    (classicwatchdog.py: it cannot import this module)."""
    return json.dumps(attrs.asdict(settings))
