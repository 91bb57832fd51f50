"""The one error table of the admin port (faastwist/admin/errors.py): every domain error
gets its code and message here, routing errors theirs, and a bug a 500 that hides its
text while the log keeps the traceback."""

from __future__ import annotations


import pytest
from twisted.python.failure import Failure
from werkzeug.exceptions import BadRequest, HTTPException, MethodNotAllowed
from werkzeug.exceptions import NotFound as RouteNotFound
from werkzeug.routing import RequestRedirect

from faastwist.admin.codec import ApiError
from faastwist.admin.errors import (
    ANSWERED,
    ANSWERS,
    UNEXPECTED,
    SecretInUse,
    answer,
    error_answer,
    routing_answer,
)
from faastwist.model.fsm import Event, InvalidEvent, State
from faastwist.model.spec import SpecError
from faastwist.providers.base import ProviderError
from faastwist.store.base import (
    AlreadyExists,
    Conflict,
    NotFound,
    OutcomeUnknown,
    StoreUnavailable,
)
from faastwist.store.secrets import SecretExists, SecretNotFound
from tests.support.logcapture import logged


@pytest.mark.parametrize(("error", "code", "message"), [
    (SpecError("name", "must match [a-z]"), 400, "name: must match [a-z]"),
    (NotFound("echo"), 404, "function echo not found"),
    (SecretNotFound("s1"), 404, "secret s1 not found"),
    (AlreadyExists("echo"), 409, "function echo already exists"),
    (Conflict("echo"), 409, "function echo was changed concurrently; read it again and retry"),
    (InvalidEvent(Event.STOP, State.FAILED), 409, "invalid event: stop, current state: failed"),
    (SecretExists("s1"), 409, "secret s1 already exists; update it with PUT"),
    (OutcomeUnknown("etcd timed out"), 503, "outcome unknown: etcd timed out"),
    (StoreUnavailable("no quorum"), 503, "function store unavailable: no quorum"),
    (ProviderError("kourier refused"), 502,
     "the provider could not be asked: kourier refused"),
])
def test_every_domain_error_has_its_code_and_message(error: BaseException, code: int,
                                                     message: str) -> None:
    assert answer(error) == (code, message, {})
    assert isinstance(error, ANSWERED)


def test_an_api_error_is_answered_as_raised_with_its_headers() -> None:
    error = ApiError(429, "too many", {"Retry-After": "3"})
    assert answer(error) == (429, "too many", {"Retry-After": "3"})


def test_anything_else_is_no_answer() -> None:
    """None: the caller treats it as a bug (500, logged), never as a known answer."""
    assert answer(KeyError("x")) is None
    assert answer(RuntimeError("boom")) is None


def test_the_first_matching_row_wins_and_no_type_is_in_two_rows() -> None:
    """OutcomeUnknown is a StoreUnavailable: its own row comes first, so a write whose
    fate is unknown is never answered as a plain outage. A type listed twice would let
    the order of ANSWERS decide silently."""
    assert issubclass(OutcomeUnknown, StoreUnavailable)
    assert answer(OutcomeUnknown("x"))[1] == "outcome unknown: x"
    seen: list[type[BaseException]] = [kind for kinds, _, _ in ANSWERS for kind in kinds]
    assert len(seen) == len(set(seen)) == len(ANSWERED)


def test_a_secret_in_use_names_at_most_ten_users() -> None:
    few = SecretInUse("db", ["a", "b"])
    assert str(few) == ("secret db is used by function(s) a, b; remove it from their "
                        "secrets (or delete them) first")
    assert few.name == "db" and few.users == ["a", "b"]
    users = [f"fn{i}" for i in range(13)]
    many = str(SecretInUse("db", users))
    assert "fn0, fn1, fn2, fn3, fn4, fn5, fn6, fn7, fn8, fn9 and 3 more;" in many
    assert "fn10" not in many
    assert "more" not in str(SecretInUse("db", users[:10]))
    assert "fn9 and 1 more;" in str(SecretInUse("db", users[:11]))
    assert answer(SecretInUse("db", ["a"]))[0] == 409


def test_method_not_allowed_lists_the_allowed_methods_sorted() -> None:
    code, message, headers = routing_answer(MethodNotAllowed(["PUT", "GET", "DELETE"]),
                                            "POST", "/apis/v2/faas/ctl/echo")
    assert code == 405
    assert message == ("method POST is not allowed on /apis/v2/faas/ctl/echo; allowed: "
                       "DELETE, GET, PUT")
    assert headers == {"Allow": "DELETE, GET, PUT"}


def test_a_redirect_keeps_its_code_and_location() -> None:
    redirect = RequestRedirect("http://127.0.0.1:9100/apis/v2/faas/ctl/")
    code, message, headers = routing_answer(redirect, "GET", "/apis/v2/faas/ctl")
    assert code == redirect.code == 308
    assert message == "moved to http://127.0.0.1:9100/apis/v2/faas/ctl/"
    assert headers == {"Location": "http://127.0.0.1:9100/apis/v2/faas/ctl/"}


def test_no_such_route_names_the_method_and_path() -> None:
    assert routing_answer(RouteNotFound(), "GET", "/nope") == (
        404, "no such route: GET /nope", {})


def test_another_routing_error_keeps_its_code_and_description() -> None:
    assert routing_answer(BadRequest("bad path"), "GET", "/x") == (400, "bad path", {})


def test_a_routing_error_without_a_code_is_a_500_named_by_its_class() -> None:
    assert routing_answer(HTTPException(), "GET", "/x") == (500, "Unknown Error", {})


def failure_of(error: BaseException) -> Failure:
    try:
        raise error
    except BaseException:
        return Failure()


def test_a_bug_is_a_500_that_hides_its_text_and_logs_its_traceback() -> None:
    result, events = logged(lambda: error_answer(
        failure_of(ZeroDivisionError("secret detail")), b"PUT", b"/apis/v2/faas/ctl/x",
        "easegress"))
    assert result == (500, UNEXPECTED, {})
    assert UNEXPECTED == "internal error; the node's log has the details"
    assert "secret detail" not in result[1]
    failures = [e for e in events if e.get("log_failure") is not None]
    assert len(failures) == 1
    event = failures[0]
    assert (event["api"], event["method"], event["path"]) == (
        "easegress", "PUT", "/apis/v2/faas/ctl/x")
    assert event["log_failure"].check(ZeroDivisionError)


def test_known_and_routing_errors_are_answered_without_a_log_line() -> None:
    result, events = logged(lambda: error_answer(failure_of(NotFound("x")),
                                                 b"GET", b"/x", "openfaas"))
    assert result == (404, "function x not found", {})
    routed, more = logged(lambda: error_answer(failure_of(RouteNotFound()), b"GET",
                                               b"/system/nope", "openfaas"))
    assert routed == (404, "no such route: GET /system/nope", {})
    assert not [e for e in events + more if e.get("log_failure") is not None]


def test_a_path_that_is_not_utf8_is_still_answered() -> None:
    routed = error_answer(failure_of(RouteNotFound()), b"GET", b"/caf\xe9", "openfaas")
    assert routed == (404, "no such route: GET /caf\xe9", {})
