"""What a call logged through twisted.logger, for tests that check a log line."""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from twisted.logger import globalLogPublisher

T = TypeVar("T")


def logged(call: Callable[[], T]) -> tuple[T, list[dict[str, Any]]]:
    """``call()``'s result and the log events it emitted."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        return call(), events
    finally:
        globalLogPublisher.removeObserver(events.append)  # type: ignore[arg-type]
