"""Parsing of the unit-bearing values found in configs and specs.

Go-style durations (``1m30s``) because the config is Easegress-compatible, and
Kubernetes quantities (``180m``, ``100Mi``) because they go straight into a
Knative Service.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_DURATION_UNITS = {
    "ns": Decimal("1e-9"),
    "us": Decimal("1e-6"),
    "µs": Decimal("1e-6"),
    "ms": Decimal("1e-3"),
    "s": Decimal(1),
    "m": Decimal(60),
    "h": Decimal(3600),
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")

_QUANTITY = re.compile(
    r"^(?P<number>[+-]?(?:\d+(?:\.\d*)?|\.\d+))"
    r"(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?\d+)?$"
)
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
    "k": Decimal(10**3), "M": Decimal(10**6), "G": Decimal(10**9), "T": Decimal(10**12),
    "P": Decimal(10**15), "E": Decimal(10**18),
}


class UnitError(ValueError):
    """A value that does not parse; the message says what was expected."""


_PARSED_DURATIONS: dict[str, float] = {}


def parse_duration(value: object) -> float:
    """Seconds from a Go duration string (``10s``, ``1m30s``, ``500ms``) or a number.

    A bare number is taken as seconds, which is what YAML gives for ``timeout: 5``.
    """
    if type(value) is str:
        found = _PARSED_DURATIONS.get(value)
        if found is not None:
            return found
        seconds = _parse_duration(value)
        if len(_PARSED_DURATIONS) < 1024:  # the same few values recur in every spec
            _PARSED_DURATIONS[value] = seconds
        return seconds
    return _parse_duration(value)


def _parse_duration(value: object) -> float:
    if isinstance(value, bool):
        raise UnitError(f"expected a duration like 10s, got {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise UnitError(f"must not be negative, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise UnitError(f"expected a duration like 10s, got {value!r}")
    text = value.strip()
    if text == "0":
        return 0.0
    position = 0
    total = Decimal(0)
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            break
        total += Decimal(match.group(1)) * _DURATION_UNITS[match.group(2)]
        position = match.end()
    if position == 0 or position != len(text):
        raise UnitError(f"expected a duration like 10s, 1m30s or 500ms, got {value!r}")
    return float(total)


def format_duration(seconds: float) -> str:
    """The shortest Go-style string for a number of seconds (inverse of parse_duration)."""
    if seconds == 0:
        return "0s"
    millis = round(seconds * 1000)
    if millis % 1000:
        if millis < 1000:
            return f"{millis}ms"
        return f"{millis / 1000:g}s"
    whole = millis // 1000
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    out = ""
    if hours:
        out += f"{hours}h"
    if minutes:
        out += f"{minutes}m"
    if secs or not out:
        out += f"{secs}s"
    return out


def parse_quantity(value: object) -> Decimal:
    """The numeric value of a Kubernetes resource quantity (``180m`` is 0.18)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise UnitError(f"expected a Kubernetes quantity like 100m or 128Mi, got {value!r}")
    match = _QUANTITY.match(str(value).strip())
    if match is None:
        raise UnitError(f"expected a Kubernetes quantity like 100m or 128Mi, got {value!r}")
    try:
        number = Decimal(match.group("number"))
    except InvalidOperation:  # pragma: no cover - the regexp admits only decimals
        raise UnitError(f"expected a Kubernetes quantity, got {value!r}") from None
    suffix = match.group("suffix") or ""
    if suffix in _BINARY:
        result = number * _BINARY[suffix]
    elif suffix in _DECIMAL:
        result = number * _DECIMAL[suffix]
    else:
        result = number * (Decimal(10) ** int(suffix[1:]))
    if result < 0:
        raise UnitError(f"must not be negative, got {value!r}")
    return result


def parse_size(value: object) -> int:
    """Bytes from an integer or a quantity (``1Mi``, ``64M``)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise UnitError(f"must not be negative, got {value!r}")
        return value
    return int(parse_quantity(value))
