"""RFC 3339 times, the form every time takes in the admin API's answers.

The store keeps float epoch seconds (cheap to compare, and what the FSM computes
with); the API boundary turns them into text such as ``2026-11-28T18:04:55.123Z``
(UTC, milliseconds) that humans, ``date -d`` and JavaScript's ``Date.parse`` read.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


def format_rfc3339(seconds: float) -> str:
    """Epoch seconds as UTC RFC 3339 with milliseconds: ``2026-11-28T18:04:55.123Z``."""
    stamp = datetime.fromtimestamp(round(seconds, 3), tz=timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def parse_rfc3339(text: str) -> float | None:
    """Epoch seconds from an RFC 3339 time (any offset, any fraction).

    None when ``text`` is not in that form (so a caller can try another, such as a
    duration); ValueError when it is but names no real time (February 30th).
    """
    match = _RFC3339.match(text.strip())
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction, zone = match.group(7), match.group(8)
    if zone in ("Z", "z"):
        tz = timezone.utc
    else:
        sign = 1 if zone[0] == "+" else -1
        tz = timezone(sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
    try:
        stamp = datetime(year, month, day, hour, minute, second, tzinfo=tz)
    except ValueError as exc:
        raise ValueError(f"not a valid time: {exc}") from None
    return stamp.timestamp() + (float(fraction) if fraction else 0.0)
