"""How calls, callbacks and dead letters are laid out as JetStream messages.

The body is the message payload, unchanged; everything else travels in NATS headers
(``Faas-*``; JSON where a value is a list). Header names and values of HTTP requests
are latin-1 text, which JSON carries without loss.
"""

from __future__ import annotations

import json
from typing import Any

import attrs

from faastwist.gate.asynccall import QueuedCall
from faastwist.queue.jetstream import Names


class BadMessage(Exception):
    """A message in a faastwist stream that faastwist did not write (or cannot read)."""


def call_headers(call: QueuedCall, dedup: bool = True) -> dict[str, str]:
    headers = {
        "Faas-Function": call.function,
        "Faas-Call-Id": call.call_id,
        "Faas-Method": call.method,
        "Faas-Target": call.target,
        "Faas-Client": call.client_ip,
        "Faas-Enqueued": repr(call.enqueued),
        "Faas-Headers": json.dumps([list(h) for h in call.headers]),
    }
    if call.callback:
        headers["Faas-Callback"] = call.callback
    if dedup:
        # JetStream drops a second publish with the same id within its duplicate
        # window: a client that re-sends its X-Call-Id after a lost 202 queues once;
        # the id is scoped by the function (one stream holds every function's calls)
        headers["Nats-Msg-Id"] = Names.call_key(call.function, call.call_id)
    return headers


def read_call(headers: dict[str, str] | None, payload: bytes | None) -> QueuedCall:
    h = headers or {}
    try:
        stored = json.loads(h["Faas-Headers"])
        return QueuedCall(
            function=h["Faas-Function"], call_id=h["Faas-Call-Id"], method=h["Faas-Method"],
            target=h["Faas-Target"], client_ip=h.get("Faas-Client", ""),
            enqueued=float(h["Faas-Enqueued"]),
            headers=tuple((str(n), str(v)) for n, v in stored),
            body=payload or b"", callback=h.get("Faas-Callback") or None)
    except (KeyError, ValueError, TypeError) as exc:
        raise BadMessage(f"not a faastwist call message: {exc}") from None


@attrs.frozen
class Outcome:
    """A call's last answer, carried to the callback and into the dead letters."""

    status: int
    attempts: int
    duration: float
    headers: tuple[tuple[str, str], ...] = ()
    reason: str = ""


def outcome_headers(outcome: Outcome) -> dict[str, str]:
    return {
        "Faas-Status": str(outcome.status),
        "Faas-Attempts": str(outcome.attempts),
        "Faas-Duration": f"{outcome.duration:.6f}",
        "Faas-Response-Headers": json.dumps([list(h) for h in outcome.headers]),
        "Faas-Reason": outcome.reason,
    }


def read_outcome(headers: dict[str, str] | None) -> Outcome:
    h = headers or {}
    try:
        return Outcome(
            status=int(h.get("Faas-Status", "0")), attempts=int(h.get("Faas-Attempts", "0")),
            duration=float(h.get("Faas-Duration", "0")),
            headers=tuple((str(n), str(v)) for n, v in
                          json.loads(h.get("Faas-Response-Headers", "[]"))),
            reason=h.get("Faas-Reason", ""))
    except (ValueError, TypeError) as exc:
        raise BadMessage(f"not a faastwist outcome: {exc}") from None


def status_record(call: QueuedCall, state: str, now: float, attempts: int = 0,
                  last_status: int | None = None, reason: str = "",
                  **extra: Any) -> dict[str, Any]:
    """The key-value record of a call (what GET .../async/{callId} shows)."""
    record: dict[str, Any] = {
        "callId": call.call_id, "function": call.function, "state": state,
        "attempts": attempts, "enqueued": call.enqueued, "updated": now,
    }
    if last_status is not None:
        record["lastStatus"] = last_status
    if reason:
        record["reason"] = reason
    if call.callback:
        record["callbackUrl"] = call.callback
    record.update(extra)
    return record
