"""Admin routes for asynchronous calls: a call's status, the dead letters, retry, purge.

``add_async_routes`` registers them on ``AdminAPI``'s Klein app (api.py calls it where
it defines its own routes), so they share its controller check, error answers and
whatever guards wrap the admin resource; the queue is reached through
``AdminAPI.async_calls``, set by the node when async invocations are on (503 when not).

- ``GET    {function}/async/{callId}``        the call's state, attempts, last status
- ``POST   {function}/async/{callId}/retry``  queue a dead letter again
- ``GET    {function}/async``                 the function's dead letters
- ``DELETE {function}/async``                 purge the function's dead letters
"""

from __future__ import annotations

import re
from typing import Any, Protocol

from klein import Klein
from twisted.internet.defer import Deferred

from faastwist.admin.codec import ApiError, query_params, respond
from faastwist.admin.routing import FUNCTION, controller_route
from faastwist.model.spec import SpecError, check_name
from faastwist.util.times import format_rfc3339

CALL_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
#: a record's times: epoch seconds in the queue, RFC 3339 in answers (as every time the
#: API shows)
TIMES = ("enqueued", "updated", "deadAt")


class AdminAPI(Protocol):
    """What these routes use of ``api.AdminAPI`` (which imports this module)."""

    controller: str
    async_calls: Any   # queue.service.QueueService, or None

    def _timed(self, d: Deferred[Any], what: str, code: int) -> Deferred[Any]: ...


def present(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` as the API shows it: its times as RFC 3339 text."""
    out = dict(record)
    for key in TIMES:
        value = out.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = format_rfc3339(value)
    return out


def _queue(api: AdminAPI, fn: str, call_id: str | None = None) -> Any:
    try:
        check_name(fn, "function")
    except SpecError as exc:
        raise ApiError(400, str(exc)) from None
    if call_id is not None and not CALL_ID.match(call_id):
        raise ApiError(400, "callId: must be 1-128 letters, digits, '-' or '_'")
    queue = api.async_calls
    if queue is None:
        raise ApiError(503, "asynchronous invocations are not enabled on this node")
    return queue


async def _ask(api: AdminAPI, coroutine: Any) -> Any:
    from twisted.internet.defer import ensureDeferred

    try:
        return await api._timed(ensureDeferred(coroutine), "the queue", 503)
    except ApiError:
        raise
    except Exception as exc:
        raise ApiError(503, f"the queue is unavailable: {exc}") from None


async def async_status(self: AdminAPI, request: Any, version: str, controller: str, fn: str,
                       call_id: str) -> bytes:
    queue = _queue(self, fn, call_id)
    record = await _ask(self, queue.status(fn, call_id))
    if record is None:
        raise ApiError(404, f"no call {call_id} of function {fn} (unknown, or its record "
                            f"expired: queue.statusTTL)")
    return respond(request, 200, present(record))


async def async_retry(self: AdminAPI, request: Any, version: str, controller: str, fn: str,
                      call_id: str) -> bytes:
    queue = _queue(self, fn, call_id)
    record = await _ask(self, queue.retry(fn, call_id))
    if record is None:
        raise ApiError(404, f"no dead letter {call_id} of function {fn}")
    return respond(request, 202, present(record))


async def async_dead_letters(self: AdminAPI, request: Any, version: str, controller: str,
                             fn: str) -> bytes:
    queue = _queue(self, fn)
    params = query_params(request.uri, ("limit",))
    raw = params.get("limit") or "1000"
    if not raw.isdigit() or not 1 <= int(raw) <= 10000:
        raise ApiError(400, "limit: must be a number from 1 to 10000")
    entries = await _ask(self, queue.dead_letters(fn, int(raw)))
    return respond(request, 200, {"function": fn,
                                  "deadLetters": [present(e) for e in entries]})


async def async_purge(self: AdminAPI, request: Any, version: str, controller: str,
                      fn: str) -> bytes:
    queue = _queue(self, fn)
    await _ask(self, queue.purge(fn))
    return respond(request, 200, {"function": fn, "purged": True})


def add_async_routes(app: Klein) -> None:
    """Register the routes above on ``app`` (the admin API's)."""
    for url, method, handler in (
            (FUNCTION + "/async/<call_id>", "GET", async_status),
            (FUNCTION + "/async/<call_id>/retry", "POST", async_retry),
            (FUNCTION + "/async", "GET", async_dead_letters),
            (FUNCTION + "/async", "DELETE", async_purge)):
        controller_route(app, url, method)(handler)


__all__ = ["add_async_routes", "present"]
