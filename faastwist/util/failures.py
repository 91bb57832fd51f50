"""A Failure's exception, typed.

Twisted types ``Failure.value`` as optional, yet a Failure always carries its exception
(made without one in flight it raises ``NoCurrentExceptionError`` instead). Errbacks
narrow the exception with ``isinstance`` on what this returns.
"""

from __future__ import annotations

from typing import TypeVar

from twisted.python.failure import Failure


def error_of(failure: Failure) -> BaseException:
    """The exception ``failure`` carries."""
    value = failure.value
    if value is None:  # not reached: see the module docstring
        raise TypeError(f"a Failure without its exception: {failure!r}")
    return value


E = TypeVar("E", bound=BaseException)


def error_as(failure: Failure, kind: type[E]) -> E:
    """The exception of ``failure``, which a handler registered for ``kind`` knows it to
    be (Klein's ``handle_errors``, an errback after ``failure.trap(kind)``)."""
    value = error_of(failure)
    if not isinstance(value, kind):
        raise TypeError(f"expected a {kind.__name__} failure, got {value!r}")
    return value
