"""The steps after a queued call ran (or could not): its status record, a retry in the
delayed stream, a dead letter, its callback; and delivering callbacks.

A mixin of ``worker.Worker`` (which owns the connection, the bridge and the loops), kept
apart so that each module reads on its own. Every step that stores something is
repeated while NATS is away (``_persist``): a call is acknowledged only after its outcome
is stored, so giving up would run the function again.

Retries wait in the delayed stream (``FAAS_DELAYED_C``), never as a negative
acknowledgement with a delay: that kept the message counted in its consumer's
``max_ack_pending`` for the whole backoff, so a few failing calls (or callbacks to one
receiver that is down) stopped every other one. The delayed consumer puts each message
back when due; a message carries its attempts so far with it.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import deferLater
from twisted.logger import Logger

from faastwist.queue.messages import (
    BadMessage,
    Outcome,
    call_headers,
    outcome_headers,
    read_call,
    read_outcome,
    status_record,
)
from faastwist.queue.policy import CallbackRefused, Outcome as Decision, decide

log = Logger(namespace="faastwist.queue")

#: Headers of a delayed message: attempts so far, when it is due (epoch seconds), and
#: where it goes back to: "call" (the calls stream) or "callback".
ATTEMPTS = "Faas-Attempts-So-Far"
DUE = "Faas-Due"
BACK = "Faas-Back"
#: Tries of a step after the function ran (0.5 s apart) before leaving it to redelivery.
PERSIST = 40


def attempts_so_far(headers: Any) -> int:
    """The attempts (or deliveries) a message made before it waited in the delayed
    stream; 0 for one that never did."""
    try:
        return max(0, int((headers or {}).get(ATTEMPTS, 0)))
    except (TypeError, ValueError):
        return 0


class Steps:
    """What ``Worker`` provides: ``bridge``, ``js``, ``names``, ``config``, ``reactor``,
    ``metrics``, ``service`` (its callback sender), ``backoff``, ``random``, ``running``."""

    bridge: Any
    js: Any
    names: Any
    config: Any
    reactor: Any
    metrics: Any
    service: Any
    backoff: Any
    random: Any
    running: bool

    async def _delay(self, msg: Any, call: Any, attempts: int, due: float,
                     back: str = "call") -> None:
        """Move a call (``back="call"``) or a callback (``"callback"``) to the delayed
        stream until ``due``: a negative acknowledgement with a delay would keep it
        counted in its consumer's max_ack_pending for the whole backoff, and a few
        failing calls (or callbacks to one dead receiver) would stop all the others."""
        headers = dict(msg.headers or {})
        headers[ATTEMPTS] = str(attempts)
        headers[DUE] = repr(due)
        headers[BACK] = back
        # once per stored message, even if this node dies before acknowledging it (the
        # stream sequence: a dead letter retried later is a new message, not a duplicate)
        key = self.names.call_key(call.function, call.call_id)
        headers["Nats-Msg-Id"] = f"{key}.{back}.d{int(msg.metadata.sequence.stream)}"
        await self._persist(self.js.publish,
                            self.names.delayed_subject(call.function, call.call_id),
                            msg.data or b"", headers, self.config.timeout)
        await self._persist(self.js.ack, msg)

    async def _release(self, msg: Any) -> None:
        """A delayed call: put back until it is due, then queued again (the calls
        stream de-duplicates a second release of the same attempt)."""
        headers = dict(msg.headers or {})
        try:
            due = float(headers.pop(DUE))
            back = headers.pop(BACK, "call")
            function = self.names.function_of_delayed(msg.subject)
            call_id = headers["Faas-Call-Id"]
        except (KeyError, ValueError):
            log.warn("dropping a delayed call faastwist cannot read: {subject}",
                     subject=msg.subject)
            await self.bridge.call(self.js.ack, msg)
            return
        wait = due - self.reactor.seconds()
        if wait > 0.01:
            await self.bridge.call(self.js.nak, msg, wait)
            return
        key = self.names.call_key(function, call_id)
        headers["Nats-Msg-Id"] = f"{key}.r{int(msg.metadata.sequence.stream)}"
        subject = (self.names.callback_subject(function, call_id) if back == "callback"
                   else self.names.call_subject(function, call_id))
        await self._persist(self.js.publish, subject, msg.data or b"", headers,
                            self.config.timeout)
        await self._persist(self.js.ack, msg)

    async def _persist(self, function: Any, *args: Any) -> Any:
        """A step after the function ran, repeated while NATS is away (up to PERSIST
        tries): giving up would leave the message to be redelivered, and the function
        to run again, only after the ack wait."""
        for attempt in range(PERSIST):
            try:
                return await self.bridge.call(function, *args)
            except Exception as exc:
                if attempt == PERSIST - 1 or not self.running:
                    raise
                log.debug("queue step {step} failed ({error}); again", step=function.__name__,
                          error=str(exc))
                await deferLater(self.reactor, 0.5, lambda: None)

    async def _dead(self, msg: Any, call: Any, outcome: Outcome, body: bytes = b"") -> None:
        """Store the call in the dead letters (its request body, the last outcome)."""
        headers = call_headers(call, dedup=False)
        headers.update(outcome_headers(outcome))
        await self._persist(self.js.publish, self.names.dead_subject(call.function, call.call_id),
                            call.body, headers, self.config.timeout)
        await self._status(call, "dead", outcome.attempts, outcome.status or None,
                           reason=outcome.reason)
        if call.callback and outcome.attempts:
            await self._publish_callback(call, outcome, body)
        await self._persist(self.js.ack, msg)
        self.metrics.async_dead.labels(call.function).inc()
        self.metrics.async_done.labels(call.function, "dead").inc()
        log.info("call {call_id} of {function} moved to the dead letters: {reason}",
                 call_id=call.call_id, function=call.function, reason=outcome.reason)

    async def _publish_callback(self, call: Any, outcome: Outcome, body: bytes) -> None:
        headers = call_headers(call, dedup=False)
        headers.update(outcome_headers(outcome))
        await self._persist(self.js.publish,
                            self.names.callback_subject(call.function, call.call_id),
                            body, headers, self.config.timeout)

    async def _status(self, call: Any, state: str, attempts: int, last_status: Any,
                      reason: str = "", **extra: Any) -> None:
        record = status_record(call, state, self.reactor.seconds(), attempts, last_status,
                               reason, **extra)
        await self._persist(self.js.put_status, call.function, call.call_id, record)

    # -- callbacks -----------------------------------------------------------------------

    async def _deliver(self, msg: Any) -> None:
        try:
            call = read_call(msg.headers, msg.data)
            outcome = read_outcome(msg.headers)
        except BadMessage as exc:
            log.warn("dropping a callback faastwist cannot read: {error}", error=str(exc))
            await self.bridge.call(self.js.ack, msg)
            return
        # deliveries so far: those before a backoff travel with the message
        delivery = attempts_so_far(msg.headers) + int(msg.metadata.num_delivered)
        counter = self.metrics.async_callbacks
        try:
            status = await self.service.sender.send(call.callback or "", call.call_id,
                                                    call.function, outcome, call.body)
        except CallbackRefused as exc:
            counter.labels(call.function, "refused").inc()
            log.warn("callback of {call_id} to {url} refused: {error}", call_id=call.call_id,
                     url=call.callback, error=str(exc))
            await self._callback_result(call, {"error": str(exc), "attempts": delivery})
            await self.bridge.call(self.js.ack, msg)
            return
        decision = decide(status, delivery, self.config.max_attempts)
        if decision is Decision.RETRY:
            counter.labels(call.function, "retried").inc()
            due = self.reactor.seconds() + self.backoff.delay(delivery, self.random())
            await self._delay(msg, call, delivery, due, back="callback")
            return
        counter.labels(call.function, "delivered" if decision is Decision.DONE else "failed").inc()
        await self._callback_result(call, {"status": status, "attempts": delivery})
        await self.bridge.call(self.js.ack, msg)

    async def _callback_result(self, call: Any, result: dict[str, Any]) -> None:
        record = await self.bridge.call(self.js.get_status, call.function, call.call_id)
        if record is None:
            return
        record["callback"] = result
        await self.bridge.call(self.js.put_status, call.function, call.call_id, record)
