"""One answer for every error of the admin port's APIs (Easegress and OpenFaaS).

Each API renders an answer its own way (YAML or JSON as the client accepts, or JSON
only), but which code, message and headers an error gets is decided here once:
``ApiError`` (raised by a handler with its answer), the domain errors of the store,
the FSM, the spec and the provider (``ANSWERS``; the two APIs each had a copy, and they
drifted: OpenFaaS answered an unknown outcome as "unavailable" and a provider error as
500), routing errors (404, 405 with ``Allow``, redirects), and anything else: a bug,
logged with its traceback and answered 500 without it.
"""

from __future__ import annotations

from typing import Callable

from twisted.logger import Logger
from twisted.python.failure import Failure
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.routing import RequestRedirect

from faastwist.admin.codec import ApiError
from faastwist.model.fsm import InvalidEvent
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
from faastwist.util.failures import error_of

log = Logger()

#: the answer to an error nobody expected (its traceback goes to the log only)
UNEXPECTED = "internal error; the node's log has the details"

Answer = tuple[int, str, dict[str, str]]


class SecretInUse(Exception):
    """A secret that functions name cannot be deleted (409 naming them)."""

    def __init__(self, name: str, users: list[str]) -> None:
        shown = ", ".join(users[:10]) + (f" and {len(users) - 10} more"
                                         if len(users) > 10 else "")
        super().__init__(f"secret {name} is used by function(s) {shown}; remove it from "
                         f"their secrets (or delete them) first")
        self.name = name
        self.users = users


#: (exception types, code, message) for every domain error; first match wins.
ANSWERS: tuple[tuple[tuple[type[BaseException], ...], int, Callable[[BaseException], str]], ...] = (
    ((SpecError,), 400, str),
    ((NotFound, SecretNotFound), 404, str),
    ((AlreadyExists, Conflict, InvalidEvent, SecretExists, SecretInUse), 409, str),
    ((OutcomeUnknown,), 503, lambda e: f"outcome unknown: {e}"),
    ((StoreUnavailable,), 503, lambda e: f"function store unavailable: {e}"),
    ((ProviderError,), 502, lambda e: f"the provider could not be asked: {e}"),
)

#: Every type ``answer`` knows (for a Klein ``handle_errors``).
ANSWERED: tuple[type[BaseException], ...] = tuple(
    kind for kinds, _, _ in ANSWERS for kind in kinds)


def answer(exc: BaseException) -> Answer | None:
    """``(code, message, headers)`` for a domain error or an ApiError; None: a bug."""
    if isinstance(exc, ApiError):
        return exc.code, exc.message, exc.headers
    for kinds, code, message in ANSWERS:
        if isinstance(exc, kinds):
            return code, message(exc), {}
    return None


def routing_answer(exc: HTTPException, method: str, path: str) -> Answer:
    """Klein's (werkzeug's) routing errors: no such route, method not allowed, redirect."""
    if isinstance(exc, MethodNotAllowed):
        allowed = ", ".join(sorted(exc.valid_methods or ()))
        return 405, f"method {method} is not allowed on {path}; allowed: {allowed}", {
            "Allow": allowed}
    if isinstance(exc, RequestRedirect):
        return exc.code, f"moved to {exc.new_url}", {"Location": exc.new_url}
    if exc.code == 404:
        return 404, f"no such route: {method} {path}", {}
    return exc.code or 500, exc.description or exc.name, {}


def error_answer(failure: Failure, method: bytes, path: bytes, api: str) -> Answer:
    """The answer to any error a request handler raised; a bug is logged (``api`` names
    the API in the log line) and answered ``UNEXPECTED``."""
    exc = error_of(failure)
    known = answer(exc)
    if known is not None:
        return known
    method_text, path_text = method.decode("latin-1"), path.decode("latin-1")
    if isinstance(exc, HTTPException):
        return routing_answer(exc, method_text, path_text)
    log.failure("{api} request {method} {path} failed", failure, api=api, method=method_text,
                path=path_text)
    return 500, UNEXPECTED, {}


__all__ = ["ANSWERED", "ANSWERS", "Answer", "SecretInUse", "UNEXPECTED", "answer",
           "error_answer", "routing_answer"]
