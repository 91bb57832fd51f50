"""The etcd client's rounds over its members (store/failover.py), on a Clock.

Every attempt is a Deferred the test holds: it answers, fails or stays silent, and the
Clock decides when timeouts, hedges and suspicions end.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock

from faastwist.store.failover import (
    HEDGE_AFTER,
    SUSPECT_FOR,
    AttemptTimedOut,
    Members,
    Miss,
    Round,
    RoundFailed,
)

URLS = ("http://a", "http://b", "http://c")


class Wire:
    """The attempts a round made, in order, each a Deferred the test settles."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.attempts: dict[str, Deferred] = {}
        self.cancelled: list[str] = []

    def request(self, url: str) -> Deferred:
        self.asked.append(url)
        d: Deferred = Deferred(lambda _: self.cancelled.append(url))
        self.attempts[url] = d
        return d

    def refuse(self, url: str) -> None:
        self.attempts[url].errback(ConnectionRefusedError())


def move_on(miss: Miss) -> None:
    """A judge for reads: every failure is the member's, try the next one."""


def run(clock: Clock, members: Members, wire: Wire, timeout: float = 5.0,
        judge: Any = move_on, hedge: float | None = None,
        observed: list | None = None) -> tuple[Round, list]:
    attempt = Round(clock, members, wire.request, timeout, judge, hedge,
                    observed.append if observed is not None else None)
    outcome: list = []
    attempt.start().addBoth(outcome.append)
    return attempt, outcome


@pytest.mark.parametrize("start", range(3))
def test_a_round_tries_every_member_once_from_the_preferred_one(start: int) -> None:
    """With three members the old loop moved its index twice per failure and tried
    a, a+2, a+2: now every member, once, in ring order."""
    clock, wire = Clock(), Wire()
    members = Members(URLS, clock, start)
    _, outcome = run(clock, members, wire)
    expected = list(URLS[start:] + URLS[:start])
    for position, url in enumerate(expected):
        assert wire.asked == expected[:position + 1]
        wire.refuse(url)
    assert wire.asked == expected
    assert isinstance(outcome[0].value, RoundFailed)
    assert [m.endpoint for m in outcome[0].value.misses] == expected
    assert str(outcome[0].value).count("Connection was refused") == 3
    clock.advance(60)
    assert wire.asked == expected  # and nothing more, ever


def test_the_member_that_answered_is_asked_first_next_time() -> None:
    clock, wire = Clock(), Wire()
    members = Members(URLS, clock, 0)
    _, outcome = run(clock, members, wire)
    wire.refuse("http://a")
    wire.attempts["http://b"].callback("answer")
    assert outcome == ["answer"]
    wire2 = Wire()
    _, outcome = run(clock, members, wire2)
    assert wire2.asked == ["http://b"]


def test_a_member_that_timed_out_is_tried_last_for_a_while() -> None:
    clock, wire = Clock(), Wire()
    members = Members(URLS, clock, 0)
    _, outcome = run(clock, members, wire, timeout=2.0)
    clock.advance(1.999)
    assert wire.asked == ["http://a"] and not outcome
    clock.advance(0.001)
    assert wire.cancelled == ["http://a"]
    assert wire.asked == ["http://a", "http://b"]
    wire.attempts["http://b"].callback("b answers")
    assert outcome == ["b answers"]
    assert members.suspects() == ["http://a"]
    # b failing now: the next round goes c, then a (the suspect) last
    wire2 = Wire()
    _, outcome = run(clock, members, wire2)
    wire2.refuse("http://b")
    wire2.refuse("http://c")
    assert wire2.asked == ["http://b", "http://c", "http://a"]
    wire2.attempts["http://a"].callback("a is back")
    assert outcome == ["a is back"] and members.suspects() == []
    # a suspicion ends by itself too
    members.failed("http://c", timed_out=True)
    clock.advance(SUSPECT_FOR - 0.01)
    assert members.order()[-1] == "http://c"
    clock.advance(0.01)
    assert members.order() == ["http://a", "http://b", "http://c"]


def test_a_timed_out_miss_says_so_and_is_counted_as_a_timeout() -> None:
    clock, wire, observed = Clock(), Wire(), []
    members = Members(URLS[:2], clock, 0)
    _, outcome = run(clock, members, wire, timeout=1.5, observed=observed)
    clock.advance(1.5)
    wire.refuse("http://b")
    assert str(outcome[0].value) == ("http://a: no answer within 1.5s; "
                                     "http://b: Connection was refused by other side.")
    assert [(m.endpoint, m.timed_out) for m in observed] == [("http://a", True),
                                                            ("http://b", False)]
    assert isinstance(observed[0].reason, AttemptTimedOut)


def test_a_callers_cancel_ends_the_round_at_once_and_is_no_members_failure() -> None:
    clock, wire, judged = Clock(), Wire(), []
    members = Members(URLS, clock, 0)
    attempt = Round(clock, members, wire.request, 5.0, judged.append)
    d = attempt.start()
    outcome: list = []
    d.addBoth(outcome.append)
    clock.advance(0.1)
    d.cancel()
    assert outcome[0].check(CancelledError)
    assert wire.cancelled == ["http://a"]
    assert judged == []  # the cancel was not taken for a's failure
    clock.advance(60)
    assert wire.asked == ["http://a"]
    # a member cancelled early is not a suspect: the caller was in a hurry
    assert members.suspects() == [] and members.active == "http://a"


def test_a_callers_deadline_bounds_the_round() -> None:
    """``addTimeout`` on the round (what the admin API does): at the deadline the
    caller gets its TimeoutError, the attempt is cancelled, no other member is asked;
    a member silent that long becomes a suspect."""
    clock, wire = Clock(), Wire()
    members = Members(URLS, clock, 0)
    attempt = Round(clock, members, wire.request, 5.0, move_on)
    outcome: list = []
    attempt.start().addTimeout(2.0, clock).addBoth(outcome.append)
    clock.advance(1.999)
    assert outcome == []
    clock.advance(0.001)
    assert outcome[0].check(TimeoutError)
    assert wire.asked == ["http://a"] and wire.cancelled == ["http://a"]
    assert members.order() == ["http://b", "http://c", "http://a"]
    clock.advance(60)
    assert wire.asked == ["http://a"]


def test_a_write_silent_past_the_hedge_delay_makes_its_member_a_suspect_on_cancel() -> None:
    clock, wire = Clock(), Wire()
    members = Members(URLS, clock, 0)
    d = Round(clock, members, wire.request, 5.0, move_on).start()
    d.addErrback(lambda f: f.trap(CancelledError))
    clock.advance(HEDGE_AFTER)
    d.cancel()
    assert members.suspects() == ["http://a"]
    assert members.order() == ["http://b", "http://c", "http://a"]


def test_a_reader_asks_the_next_member_past_a_silent_one_and_takes_the_first_answer() -> None:
    clock, wire, observed = Clock(), Wire(), []
    members = Members(URLS, clock, 0)
    _, outcome = run(clock, members, wire, hedge=HEDGE_AFTER, observed=observed)
    clock.advance(HEDGE_AFTER - 0.01)
    assert wire.asked == ["http://a"]
    clock.advance(0.01)
    assert wire.asked == ["http://a", "http://b"]
    wire.refuse("http://b")  # refused: straight on to c, a still asked
    assert wire.asked == URLS_LIST
    wire.attempts["http://c"].callback("c answers")
    assert outcome == ["c answers"]
    assert wire.cancelled == ["http://a"]  # outrun: cancelled, and now a suspect
    assert members.suspects() == ["http://a"] and members.active == "http://c"
    assert [(m.endpoint, m.timed_out) for m in observed] == [("http://b", False),
                                                            ("http://a", True)]
    clock.advance(60)
    assert wire.asked == URLS_LIST


URLS_LIST = list(URLS)


def test_a_hedged_round_ends_when_the_last_member_in_flight_fails() -> None:
    clock, wire = Clock(), Wire()
    members = Members(URLS, clock, 0)
    _, outcome = run(clock, members, wire, timeout=2.0, hedge=0.5)
    clock.advance(0.5)
    clock.advance(0.5)
    assert wire.asked == URLS_LIST and outcome == []
    wire.refuse("http://b")
    wire.refuse("http://c")
    assert outcome == []  # a is still in flight
    clock.advance(1.0)    # a's own timeout (2 s after it was asked)
    assert isinstance(outcome[0].value, RoundFailed)
    assert [m.endpoint for m in outcome[0].value.misses] == ["http://b", "http://c", "http://a"]


def test_a_judge_that_raises_ends_the_round_with_its_exception() -> None:
    clock, wire = Clock(), Wire()
    members = Members(URLS, clock, 1)

    class Unknown(Exception):
        pass

    def writes(miss: Miss) -> None:
        if miss.timed_out:
            raise Unknown(f"{miss.endpoint}: outcome unknown")

    _, outcome = run(clock, members, wire, timeout=3.0, judge=writes)
    wire.refuse("http://b")  # refused: surely not applied, the next member
    clock.advance(3.0)
    assert outcome[0].check(Unknown) and str(outcome[0].value) == "http://c: outcome unknown"
    assert wire.asked == ["http://b", "http://c"]
    assert members.suspects() == ["http://c"]
    clock.advance(60)
    assert wire.asked == ["http://b", "http://c"]


def test_a_definite_answer_through_the_judge_leaves_the_member_preferred() -> None:
    """A failed compare is an answer: the member is healthy and stays first."""
    clock, wire = Clock(), Wire()
    members = Members(URLS, clock, 0)

    class Lost(Exception):
        pass

    def answers(miss: Miss) -> None:
        raise miss.reason

    _, outcome = run(clock, members, wire, judge=answers)
    wire.attempts["http://a"].errback(Lost("compare failed"))
    assert outcome[0].check(Lost)
    assert members.active == "http://a" and members.suspects() == []


def test_a_request_that_raises_is_that_members_miss() -> None:
    clock = Clock()
    members = Members(URLS, clock, 0)
    asked: list[str] = []

    def request(url: str) -> Deferred:
        asked.append(url)
        if url != "http://c":
            raise ValueError(f"cannot build a request for {url}")
        return Deferred()

    outcome: list = []
    Round(clock, members, request, 1.0, move_on).start().addBoth(outcome.append)
    assert asked == URLS_LIST and outcome == []
    clock.advance(1.0)
    assert "cannot build a request for http://a" in str(outcome[0].value)


class Probes:
    """``leaderless(url)``: each probe a Deferred the test answers."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, Deferred]] = []

    def __call__(self, url: str) -> Deferred:
        d: Deferred = Deferred()
        self.asked.append((url, d))
        return d


def test_a_member_that_loses_its_leader_with_a_call_pending_ends_it_early() -> None:
    """etcd holds a call it accepted before losing its quorum for its own request
    timeout; asked every HEDGE_AFTER whether it still has a leader, the round learns
    it sooner, and a write's outcome is then unknown (not "not applied")."""
    from faastwist.store.failover import LostLeader

    clock, wire, probes = Clock(), Wire(), Probes()
    members = Members(URLS, clock, 0)
    misses: list[Miss] = []

    class Unknown(Exception):
        pass

    def writes(miss: Miss) -> None:
        misses.append(miss)
        raise Unknown(str(miss.reason))

    outcome: list = []
    Round(clock, members, wire.request, 5.0, writes, None, None,
          probes).start().addBoth(outcome.append)
    clock.advance(HEDGE_AFTER)
    assert [url for url, _ in probes.asked] == ["http://a"]
    probes.asked[0][1].callback(False)          # still has a leader: asked again later
    clock.advance(HEDGE_AFTER)
    assert len(probes.asked) == 2
    probes.asked[1][1].errback(ConnectionRefusedError())  # the probe failed: again later
    clock.advance(HEDGE_AFTER)
    assert len(probes.asked) == 3 and outcome == []
    probes.asked[2][1].callback(True)           # no leader now
    assert wire.cancelled == ["http://a"]
    assert outcome[0].check(Unknown) and isinstance(misses[0].reason, LostLeader)
    assert not misses[0].timed_out and clock.seconds() == 3 * HEDGE_AFTER < 5.0
    assert "no leader" in str(outcome[0].value)
    clock.advance(60)
    assert len(probes.asked) == 3 and wire.asked == ["http://a"]


def test_no_probe_outlives_its_attempt() -> None:
    clock, wire, probes = Clock(), Wire(), Probes()
    members = Members(URLS, clock, 0)
    outcome: list = []
    Round(clock, members, wire.request, 5.0, move_on, HEDGE_AFTER, None,
          probes).start().addBoth(outcome.append)
    clock.advance(HEDGE_AFTER)  # a is probed, and b asked (hedged)
    assert [url for url, _ in probes.asked] == ["http://a"]
    wire.attempts["http://b"].callback("b answers")
    assert probes.asked[0][1].called  # the probe in flight was cancelled with the round
    probes.asked[0][1].callback(True)  # and an answer now changes nothing
    assert outcome == ["b answers"] and wire.cancelled == ["http://a"]
    clock.advance(60)
    assert len(probes.asked) == 1
