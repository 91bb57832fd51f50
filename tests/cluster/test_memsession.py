"""One contract for the node session (cluster/session.py ``ClusterSession``): the etcd
``NodeSession`` on a real etcd and the ``MemorySession`` of a node alone on a memory
store answer a single node's cases the same way, as the converger, the leader's
ClusterView and the node see them (reports visible to ``read_reports``, listener calls
on a change, this node live with its record). Then what only the memory one promises
(its timing on a Clock).
"""

from __future__ import annotations

from typing import Any, Callable

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import Clock, deferLater

from faastwist.cluster.memsession import MemorySession
from faastwist.cluster.reports import Report
from faastwist.cluster.session import ClusterSession, NodeSession
from faastwist.metrics import Metrics
from faastwist.model.fsm import Event
from faastwist.store.etcd import EtcdStore
from tests.support.etcd import unique_prefix

RECORD = {"admin": "127.0.0.1:2381", "gate": "127.0.0.1:10083"}


async def wait_for(predicate: Callable[[], Any], timeout: float = 10.0,
                   what: str = "condition") -> None:
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        await deferLater(reactor, 0.02, lambda: None)


def observed(event: Event | None, node: str = "n0", message: str = "") -> Report:
    return Report(node, "d1", False, event, message)


class Heard:
    """What the listeners were told, in order."""

    def __init__(self, session: ClusterSession) -> None:
        self.calls: list[str | None] = []
        session.on_reports_changed(self.calls.append)


@pytest.fixture(params=["memory", pytest.param("etcd", marks=pytest.mark.etcd)])
def make_session(request: pytest.FixtureRequest):
    """``make_session(node) -> ClusterSession`` (not started), on the real reactor."""
    stores: list[EtcdStore] = []
    sessions: list[Any] = []
    if request.param == "etcd":
        server = request.getfixturevalue("etcd_server")
        prefix = unique_prefix("session")

    async def make(node: str = "n0") -> ClusterSession:
        made: Any
        if request.param == "memory":
            made = MemorySession(reactor, node, RECORD)
        else:
            store = EtcdStore(reactor, [server.client_url], prefix, "faascontroller", 5.0,
                              Metrics())
            await store.connect()
            stores.append(store)
            made = NodeSession(reactor, store, node, 10, RECORD)
        sessions.append(made)
        return made

    yield make
    for session in sessions:
        if session.running:
            pytest_twisted.blockon(session.stopService())
    for store in stores:
        pytest_twisted.blockon(store.close())


async def started(make_session: Any, node: str = "n0") -> tuple[ClusterSession, Heard]:
    session = await make_session(node)
    heard = Heard(session)
    session.startService()
    await wait_for(lambda: session.live() == [node] and None in heard.calls,
                   what="this node live and the listeners told")
    return session, heard


@pytest_twisted.ensureDeferred
async def test_a_started_session_is_the_live_node_with_its_record(make_session) -> None:
    session, heard = await started(make_session)
    assert session.node_id == "n0"
    assert dict(session.members["n0"]) == dict(RECORD, id="n0")
    assert await session.read_reports() == ({}, ["n0"])


@pytest_twisted.ensureDeferred
async def test_a_report_reaches_read_reports_and_the_listeners(make_session) -> None:
    session, heard = await started(make_session)
    ready = observed(Event.READY)
    session.report("fn", ready)
    await wait_for(lambda: "fn" in heard.calls, what="the listener told of fn")
    assert await session.read_reports() == ({"fn": {"n0": ready}}, ["n0"])
    heard.calls.clear()
    failed = observed(Event.ERROR, message="exit 3")
    session.report("fn", failed)
    await wait_for(lambda: "fn" in heard.calls, what="the change told")
    assert await session.read_reports() == ({"fn": {"n0": failed}}, ["n0"])


@pytest_twisted.ensureDeferred
async def test_a_withdrawn_report_leaves_read_reports_and_is_told(make_session) -> None:
    session, heard = await started(make_session)
    session.report("gone", observed(Event.READY))
    session.report("kept", observed(Event.PENDING))
    await wait_for(lambda: {"gone", "kept"} <= set(heard.calls), what="both told")
    heard.calls.clear()
    session.report("gone", None)
    await wait_for(lambda: "gone" in heard.calls, what="the withdrawal told")
    reports, live = await session.read_reports()
    assert (set(reports), live) == ({"kept"}, ["n0"])


@pytest_twisted.ensureDeferred
async def test_reports_made_before_the_start_are_published_by_it(make_session) -> None:
    session = await make_session()
    heard = Heard(session)
    early = observed(Event.READY)
    session.report("early", early)
    session.startService()
    await wait_for(lambda: "early" in heard.calls, what="the early report told")
    await wait_for(lambda: session.live() == ["n0"], what="live")
    assert await session.read_reports() == ({"early": {"n0": early}}, ["n0"])


# -- the memory session alone --------------------------------------------------------------

def test_memory_listeners_hear_on_the_next_turn_once_per_function() -> None:
    """Never inside ``report`` (the converger reports from the middle of its pass, as
    etcd's watch would answer later); several changes in one turn: one call each."""
    clock = Clock()
    session = MemorySession(clock, "n0", RECORD)
    heard = Heard(session)
    session.startService()
    assert heard.calls == []
    clock.advance(0)
    assert heard.calls == [None]
    session.report("b", observed(Event.READY))
    session.report("a", observed(Event.READY))
    session.report("b", observed(Event.ERROR))
    session.report("a", observed(Event.READY))   # unchanged: nothing new to tell
    assert heard.calls == [None]
    clock.advance(0)
    assert heard.calls == [None, "a", "b"]
    session.report("a", observed(Event.READY))
    session.report("nothing", None)              # nothing to withdraw
    clock.advance(0)
    assert heard.calls == [None, "a", "b"]


def test_memory_stop_takes_the_node_and_its_reports_away_and_a_start_brings_them() -> None:
    clock = Clock()
    session = MemorySession(clock, "n0", RECORD)
    heard = Heard(session)
    session.startService()
    session.report("fn", observed(Event.READY))
    clock.advance(0)
    session.stopService()
    assert session.live() == [] and dict(session.members) == {}
    done: list[Any] = []
    session.read_reports().addCallback(done.append)
    assert done == [({}, [])]
    session.report("fn", observed(Event.ERROR))   # kept for the next start
    clock.advance(0)
    assert heard.calls == [None, "fn"]
    session.startService()
    clock.advance(0)
    assert heard.calls == [None, "fn", None, "fn"]
    session.read_reports().addCallback(done.append)
    assert done[1] == ({"fn": {"n0": observed(Event.ERROR)}}, ["n0"])


def test_a_failing_memory_listener_does_not_stop_the_others() -> None:
    clock = Clock()
    session = MemorySession(clock, "n0", RECORD)

    def broken(name: str | None) -> None:
        raise RuntimeError("listener bug")
    session.on_reports_changed(broken)
    heard = Heard(session)
    session.startService()
    clock.advance(0)
    assert heard.calls == [None]
