"""Small helpers with no faastwist imports: field readers, units, RFC 3339 times, timers,
a body producer, loopback ports, a supervised child server (``supervised``, imported by
its module name).

The names below are loaded on first use (PEP 562), so that importing one helper module
(``faastwist.util.times`` from the CLI, say) does not import Twisted through the body
producer: the CLI starts in about half the time without it.
"""

from importlib import import_module
from typing import Any

_HOMES = {
    "BytesProducer": "bodyproducer",
    "FieldError": "fields", "FieldReader": "fields",
    "free_port": "ports", "port_is_free": "ports",
    "NamedTimers": "timers",
    "format_rfc3339": "times", "parse_rfc3339": "times",
    "UnitError": "units", "format_duration": "units", "parse_duration": "units",
    "parse_quantity": "units", "parse_size": "units",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value
