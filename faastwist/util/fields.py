"""A small strict reader for the mappings that come from YAML or JSON.

Specs and the controller config are read with it so that every problem is reported
the same way: the dotted path of the field and what is wrong with it. Unknown keys
are errors (Easegress drops them silently, so a typo like ``limitedCPU`` goes
unnoticed there).
"""

from __future__ import annotations

import enum
from typing import Any, Callable, Iterable, Mapping, TypeVar, Union, overload

from faastwist.util.units import UnitError, parse_duration, parse_size

T = TypeVar("T")
D = TypeVar("D")


class _Missing(enum.Enum):
    """No default: the field is required (None is a default like any other)."""

    MISSING = "missing"


_MISSING = _Missing.MISSING


class FieldError(ValueError):
    """A value at ``path`` is wrong; ``str()`` gives ``path: problem``."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}" if path else problem)
        self.path = path
        self.problem = problem


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


class FieldReader:
    """Reads typed fields out of one mapping and remembers which keys were used."""

    def __init__(self, data: object, path: str, error: type[FieldError] = FieldError) -> None:
        self.error = error
        self.path = path
        if data is None:
            data = {}
        # type() first: isinstance against the Mapping ABC is slow, and a store listing
        # reads 10,000 specs of five sections each
        if type(data) is not dict and not isinstance(data, Mapping):
            raise error(path or "(document)", f"must be a mapping, got {_type_name(data)}")
        for key in data:
            if type(key) is not str:
                raise error(path or "(document)", f"keys must be strings, got {key!r}")
        self.data: Mapping[str, Any] = data
        self.used: set[str] = set()

    def child_path(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def fail(self, key: str, problem: str) -> FieldError:
        return self.error(self.child_path(key), problem)

    def raw(self, key: str, default: object = _MISSING) -> Any:
        """The value as the document has it (JSON: Any), or ``default``."""
        self.used.add(key)
        value = self.data.get(key, None)
        if value is None:
            if default is _MISSING:
                raise self.fail(key, "is required")
            return default
        return value

    @overload
    def string(self, key: str, default: _Missing = _MISSING) -> str: ...

    @overload
    def string(self, key: str, default: D) -> Union[str, D]: ...

    def string(self, key: str, default: object = _MISSING) -> object:
        value = self.raw(key, default)
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, str):
            raise self.fail(key, f"must be a string, got {_type_name(value)}")
        return value

    @overload
    def integer(self, key: str, default: _Missing = _MISSING, low: int | None = None,
                high: int | None = None) -> int: ...

    @overload
    def integer(self, key: str, default: D, low: int | None = None,
                high: int | None = None) -> Union[int, D]: ...

    def integer(self, key: str, default: object = _MISSING, low: int | None = None,
                high: int | None = None) -> object:
        value = self.raw(key, default)
        if value is default and default is not _MISSING:
            return value
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"must be an integer, got {_type_name(value)}")
        if (low is not None and value < low) or (high is not None and value > high):
            if high is None:
                raise self.fail(key, f"must be at least {low}, got {value}")
            raise self.fail(key, f"must be {low}-{high}, got {value}")
        return value

    @overload
    def boolean(self, key: str, default: _Missing = _MISSING) -> bool: ...

    @overload
    def boolean(self, key: str, default: D) -> Union[bool, D]: ...

    def boolean(self, key: str, default: object = _MISSING) -> object:
        value = self.raw(key, default)
        if not isinstance(value, bool):
            raise self.fail(key, f"must be true or false, got {_type_name(value)}")
        return value

    @overload
    def duration(self, key: str, default: _Missing = _MISSING, minimum: float = 0.0) -> float: ...

    @overload
    def duration(self, key: str, default: D, minimum: float = 0.0) -> Union[float, D]: ...

    def duration(self, key: str, default: object = _MISSING, minimum: float = 0.0) -> object:
        value = self.raw(key, default)
        if value is default and default is not _MISSING:
            return value
        try:
            seconds = parse_duration(value)
        except UnitError as exc:
            raise self.fail(key, str(exc)) from None
        if seconds < minimum:
            raise self.fail(key, f"must be at least {minimum:g}s, got {value!r}")
        return seconds

    @overload
    def size(self, key: str, default: _Missing = _MISSING) -> int: ...

    @overload
    def size(self, key: str, default: D) -> Union[int, D]: ...

    def size(self, key: str, default: object = _MISSING) -> object:
        value = self.raw(key, default)
        if value is default and default is not _MISSING:
            return value
        try:
            return parse_size(value)
        except UnitError as exc:
            raise self.fail(key, str(exc)) from None

    @overload
    def choice(self, key: str, choices: Iterable[str], default: _Missing = _MISSING) -> str: ...

    @overload
    def choice(self, key: str, choices: Iterable[str], default: D) -> Union[str, D]: ...

    def choice(self, key: str, choices: Iterable[str], default: object = _MISSING) -> object:
        value = self.string(key, default)
        options = list(choices)
        if value not in options:
            raise self.fail(key, f"must be one of {', '.join(options)}, got {value!r}")
        return value

    @overload
    def string_list(self, key: str, default: _Missing = _MISSING) -> tuple[str, ...]: ...

    @overload
    def string_list(self, key: str, default: D) -> Union[tuple[str, ...], D]: ...

    def string_list(self, key: str, default: object = _MISSING) -> object:
        value = self.raw(key, default)
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, list):
            raise self.fail(key, f"must be a list of strings, got {_type_name(value)}")
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise self.error(f"{self.child_path(key)}[{index}]",
                                 f"must be a string, got {_type_name(item)}")
        return tuple(value)

    @overload
    def string_map(self, key: str, default: _Missing = _MISSING) -> dict[str, str]: ...

    @overload
    def string_map(self, key: str, default: D) -> Union[dict[str, str], D]: ...

    def string_map(self, key: str, default: object = _MISSING) -> object:
        value = self.raw(key, default)
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, Mapping):
            raise self.fail(key, f"must be a mapping of strings, got {_type_name(value)}")
        out: dict[str, str] = {}
        for name, item in value.items():
            if not isinstance(name, str) or not name:
                raise self.fail(key, f"keys must be non-empty strings, got {name!r}")
            if isinstance(item, bool) or not isinstance(item, (str, int, float)):
                raise self.error(f"{self.child_path(key)}.{name}",
                                 f"must be a string, got {_type_name(item)}")
            out[name] = str(item)
        return out

    def section(self, key: str, build: Callable[["FieldReader"], T],
                empty: T | None = None) -> T:
        """Read a nested mapping with ``build``; a missing section reads as empty.

        ``empty``, when given, is what ``build`` makes of an empty section, returned
        as is for a missing or empty one (most specs have no request adaptor).
        """
        self.used.add(key)
        data = self.data.get(key)
        if empty is not None and not data and (data is None or type(data) is dict):
            return empty
        reader = FieldReader(data, self.child_path(key), self.error)
        result = build(reader)
        reader.finish()
        return result

    def finish(self) -> None:
        """Refuse keys nobody asked for, naming the first one."""
        for key in self.data:
            if key not in self.used:
                raise self.fail(key, "unknown field")
