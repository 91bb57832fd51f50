"""Which etcd member a call goes to, and when it moves on to the next one.

One call is one *round*: every endpoint at most once, in an order fixed when the round
starts (the member that answered last first, then the others around the ring, members
that timed out lately last). The round has a timeout per attempt; a reader does not
wait for it: past ``hedge_after`` it asks the next member too and takes the first
answer (reads are idempotent), so a silent member costs a reader ``hedge_after``, not
the whole timeout. A write goes to one member at a time and moves on only when the
member surely did not apply it (the judge decides).

Cancelling the round's Deferred (a caller's timeout, a client gone) cancels what is in
flight and ends the round at once: a cancel is never taken for a member's failure.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from faastwist.util.failures import error_of

#: A member that timed out is tried last for this long.
SUSPECT_FOR = 30.0
#: A reader asks the next member too after this long without an answer.
HEDGE_AFTER = 0.75


class LostLeader(Exception):
    """The member said it has no leader while the call was pending there (a write's
    outcome is then unknown: the entry may still commit once a quorum is back)."""

    def __init__(self, endpoint: str) -> None:
        super().__init__("etcdserver: no leader (the member lost it while the call was "
                         "pending)")
        self.endpoint = endpoint


class AttemptTimedOut(Exception):
    """A member did not answer within the attempt's timeout (or another answered first)."""

    def __init__(self, endpoint: str, timeout: float) -> None:
        super().__init__(f"no answer within {timeout:g}s")
        self.endpoint = endpoint


@attrs.frozen
class Miss:
    """Why one member of a round did not answer."""

    endpoint: str
    reason: BaseException
    timed_out: bool


class RoundFailed(Exception):
    """Every member of a round failed; ``misses`` says how, in the order tried."""

    def __init__(self, misses: Sequence[Miss]) -> None:
        super().__init__("; ".join(f"{m.endpoint}: {describe(m.reason)}" for m in misses)
                         or "no endpoint tried")
        self.misses = tuple(misses)


def describe(exc: BaseException) -> str:
    """One line; twisted.web wraps a failed request in ResponseFailed & co. (``reasons``)."""
    reasons = getattr(exc, "reasons", None)
    if reasons:
        exc = reasons[0].value
    message = getattr(exc, "message", None)  # etcd's own words, without the wrapping
    if isinstance(message, str) and message:
        return message
    return str(exc) or type(exc).__name__


@attrs.define
class Members:
    """The endpoints of one etcd cluster, the one to try first, and recent suspects."""

    urls: tuple[str, ...]
    clock: IReactorTime
    preferred: int = 0
    suspect_for: float = SUSPECT_FOR
    _suspect_until: dict[str, float] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        self.preferred %= len(self.urls)

    def order(self) -> list[str]:
        """Every endpoint once: the preferred one and the ring after it, suspects last."""
        ring = list(self.urls[self.preferred:] + self.urls[:self.preferred])
        now = self.clock.seconds()
        for url, until in list(self._suspect_until.items()):
            if until <= now:
                del self._suspect_until[url]
        return ([u for u in ring if u not in self._suspect_until]
                + [u for u in ring if u in self._suspect_until])

    def suspects(self) -> list[str]:
        now = self.clock.seconds()
        return [u for u in self.urls if self._suspect_until.get(u, 0.0) > now]

    @property
    def active(self) -> str:
        return self.urls[self.preferred]

    def answered(self, url: str) -> None:
        self.preferred = self.urls.index(url)
        self._suspect_until.pop(url, None)

    def failed(self, url: str, timed_out: bool) -> None:
        """The next round starts past ``url``; a member that timed out becomes a suspect."""
        index = self.urls.index(url)
        if index == self.preferred:
            self.preferred = (index + 1) % len(self.urls)
        if timed_out:
            self._suspect_until[url] = self.clock.seconds() + self.suspect_for


#: ``judge(miss)`` ends the round by raising, or returns to let it move on.
Judge = Callable[[Miss], None]


class Round:
    """One call over the members; ``start()`` returns its Deferred (cancellable)."""

    def __init__(self, clock: IReactorTime, members: Members,
                 request: Callable[[str], Deferred], timeout: float, judge: Judge,
                 hedge_after: float | None = None,
                 observe: Callable[[Miss], None] | None = None,
                 leaderless: Callable[[str], Deferred] | None = None) -> None:
        self.clock = clock
        #: ``leaderless(url)`` fires True when the member says it has no leader: asked
        #: every HEDGE_AFTER while a call is pending there (a member that loses its
        #: quorum holds calls already accepted for its own request timeout)
        self.leaderless = leaderless
        self._probes: dict[str, IDelayedCall] = {}
        self._asking: dict[str, Deferred] = {}
        self._lost: set[str] = set()
        #: sees every miss, those of members outrun or cut short by a cancel too
        self.observe = observe
        self.members = members
        self.request = request
        self.timeout = timeout
        self.judge = judge
        #: None: one member at a time (writes)
        self.hedge_after = None if hedge_after is None else min(hedge_after, timeout)
        self.result: Deferred = Deferred(self._cancel)
        self._waiting = members.order()
        self._flying: dict[str, tuple[Deferred, IDelayedCall]] = {}
        self._started: dict[str, float] = {}
        self._timed_out: set[str] = set()
        self._hedge: IDelayedCall | None = None
        self._misses: list[Miss] = []
        self._over = False
        #: the endpoints asked, in order (tests and logs read it)
        self.tried: list[str] = []

    def start(self) -> Deferred:
        self._next()
        return self.result

    def _next(self) -> None:
        if self._over:
            return
        if not self._waiting:
            if not self._flying:
                self._finish(Failure(RoundFailed(self._misses)))
            return
        url = self._waiting.pop(0)
        self.tried.append(url)
        try:
            attempt = self.request(url)
        except Exception as exc:  # a request that cannot even be built is this member's miss
            attempt = Deferred()
            attempt.errback(exc)
        timer = self.clock.callLater(self.timeout, self._expire, url)
        self._flying[url] = (attempt, timer)
        self._started[url] = self.clock.seconds()
        self._arm_probe(url)
        self._arm_hedge()
        attempt.addBoth(self._settled, url)

    def _arm_hedge(self) -> None:
        if self._hedge is not None and self._hedge.active():
            self._hedge.cancel()
        self._hedge = None
        if self.hedge_after is not None and self._waiting and not self._over:
            self._hedge = self.clock.callLater(self.hedge_after, self._next)

    def _arm_probe(self, url: str) -> None:
        if self.leaderless is not None and url in self._flying and not self._over:
            self._probes[url] = self.clock.callLater(HEDGE_AFTER, self._probe, url)

    def _probe(self, url: str) -> None:
        self._probes.pop(url, None)
        if url not in self._flying or self._over:
            return
        leaderless = self.leaderless
        if leaderless is None:   # (probes are armed only with it)
            return
        try:
            asked = leaderless(url)
        except Exception:
            return
        asked.addTimeout(self.timeout, self.clock)
        self._asking[url] = asked

        def answered(lost: Any) -> None:
            self._asking.pop(url, None)
            if url not in self._flying or self._over:
                return
            if lost is True:
                self._lost.add(url)
                self._flying[url][0].cancel()
            else:
                self._arm_probe(url)
        def failed(_: Any) -> None:
            self._asking.pop(url, None)
            self._arm_probe(url)
        asked.addCallbacks(answered, failed)

    def _expire(self, url: str) -> None:
        self._timed_out.add(url)
        self._flying[url][0].cancel()

    def _settled(self, result: Any, url: str) -> None:
        _, timer = self._flying.pop(url)
        if timer.active():
            timer.cancel()
        probe = self._probes.pop(url, None)
        if probe is not None and probe.active():
            probe.cancel()
        if self._over:
            return None  # cancelled by the caller, or outrun by another member
        if not isinstance(result, Failure):
            self.members.answered(url)
            self._finish(result)
            return None
        timed_out = url in self._timed_out
        if timed_out:
            reason: BaseException = AttemptTimedOut(url, self.timeout)
        elif url in self._lost:
            reason = LostLeader(url)
        else:
            reason = error_of(result)
        miss = Miss(url, reason, timed_out)
        self._misses.append(miss)
        if self.observe is not None:
            self.observe(miss)
        try:
            self.judge(miss)
        except BaseException:
            # the round ends here: an answer that settles the call (the member is
            # fine unless it timed out), or a write whose outcome nobody knows
            if timed_out:
                self.members.failed(url, timed_out)
            self._finish(Failure())
            return None
        self.members.failed(url, timed_out)
        self._next()
        return None

    def _finish(self, result: Any) -> None:
        self._over = True
        self._stop_all(slow_after=0.0)  # another member answered first: the rest are slow
        if isinstance(result, Failure):
            self.result.errback(result)
        else:
            self.result.callback(result)

    def _stop_all(self, slow_after: float) -> None:
        """Cancel what is in flight; a member asked ``slow_after`` ago or more without
        answering becomes a suspect (it is as slow as one a reader hedges past)."""
        if self._hedge is not None and self._hedge.active():
            self._hedge.cancel()
        for probe in self._probes.values():
            if probe.active():
                probe.cancel()
        self._probes.clear()
        for asked in list(self._asking.values()):
            asked.cancel()  # its errback finds the round over
        now = self.clock.seconds()
        for url, (attempt, _) in list(self._flying.items()):
            waited = now - self._started[url]
            if waited >= slow_after:
                self.members.failed(url, timed_out=True)
                if self.observe is not None:
                    self.observe(Miss(url, AttemptTimedOut(url, waited), True))
            attempt.cancel()

    def _cancel(self, _: Deferred) -> None:
        """The caller gave up: stop at once (Deferred.cancel then fails with CancelledError)."""
        self._over = True
        self._stop_all(slow_after=HEDGE_AFTER if self.hedge_after is None
                       else self.hedge_after)
