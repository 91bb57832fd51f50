"""util/failures: the exception a Failure carries, typed for errbacks and error handlers."""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred, fail
from twisted.python.failure import Failure

from faastwist.util.failures import error_as, error_of


class Refused(ValueError):
    pass


def test_error_of_is_the_exception_the_failure_carries() -> None:
    exc = Refused("no")
    assert error_of(Failure(exc)) is exc


def test_error_of_a_failure_made_in_an_except_block() -> None:
    try:
        raise KeyError("missing")
    except KeyError as exc:
        caught = exc
        failure = Failure()
    assert error_of(failure) is caught


def test_a_failure_without_its_exception_is_a_type_error_naming_it() -> None:
    failure = Failure(Refused("no"))
    failure.value = None   # what Twisted's Optional annotation allows, never seen in use
    with pytest.raises(TypeError, match="a Failure without its exception"):
        error_of(failure)


def test_error_as_gives_the_kind_a_handler_was_registered_for() -> None:
    exc = Refused("no")
    assert error_as(Failure(exc), ValueError) is exc   # a subclass is that kind
    assert error_as(Failure(exc), Refused) is exc


def test_error_as_another_kind_is_a_type_error_naming_both() -> None:
    with pytest.raises(TypeError, match=r"expected a KeyError failure, got Refused\('no'\)"):
        error_as(Failure(Refused("no")), KeyError)


def test_in_an_errback_after_trap() -> None:
    seen: list[str] = []

    def errback(failure: Failure) -> None:
        failure.trap(Refused)
        seen.append(str(error_as(failure, Refused)))

    d: Deferred[None] = fail(Refused("late"))
    d.addErrback(errback)
    assert seen == ["late"]
