"""The start race (issue 22): a start right after a stop is judged on reports made
after it, never on the node's report from before the stop.

The node's converger, the reports, the leader's fold and the FSM's plan run here
together on a ``task.Clock``: a memory store, the route table, the local converger
with an HTTP-mode runtime whose replicas the test drives (FakeReplica: the stop
finishes when the test says so). Measured on commit 15642f0 against a real node:
the API said ``active`` 35-55 ms after the start while the gate answered ``503
function fn is stopped`` for another 1.0-2.0 s, because the leader folded the node's
``ready`` from before the stop while the node was still stopping.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from faastwist.cluster.converger import LocalConverger
from faastwist.cluster.reports import Report, aggregate
from faastwist.gate.routes import RouteTable
from faastwist.lifecycle.reconciler import plan
from faastwist.model.fsm import Event, FunctionStatus, State, apply_event
from faastwist.providers.base import NoCapacity
from faastwist.providers.runtime import HttpRuntime
from faastwist.store.base import FunctionRecord
from faastwist.store.memory import MemoryStore
from tests.support.process import FakeFactory, fast_tuning, function_spec
from tests.support.turns import turn


class Runtimes:
    """The provider calls the converger makes, on HttpRuntimes (as providers/process.py
    keeps them), with replicas the test drives."""

    def __init__(self, clock: Clock, on_change: Any) -> None:
        self.clock = clock
        self.factory = FakeFactory(auto_stop=False)
        self.runtimes: dict[str, HttpRuntime] = {}
        self.on_change = on_change

    def _runtime(self, spec: Any) -> HttpRuntime:
        runtime = self.runtimes.get(spec.name)
        if runtime is None:
            runtime = self.runtimes[spec.name] = HttpRuntime(
                spec, self.clock, fast_tuning(), self.factory, self._changed)
        return runtime

    def _changed(self, name: str, ready: int) -> None:
        # as ProcessProvider._changed: a verdict is announced, "stopped" is not (the
        # converger reports that once the stop is done)
        if self.runtimes[name].observe().event is not None:
            self.on_change(name)

    def deploy(self, spec: Any) -> Deferred[None]:
        return self._runtime(spec).deploy()

    def start(self, spec: Any) -> Deferred[None]:
        return self._runtime(spec).start()

    update = deploy

    def stop(self, spec: Any) -> Deferred[None]:
        return self._runtime(spec).stop()

    def delete(self, name: str) -> Deferred[None]:
        self.runtimes.pop(name, None)
        return succeed(None)


class Reports:
    node_id = "n0"

    def __init__(self) -> None:
        self.reports: dict[str, Report | None] = {}

    def report(self, name: str, report: Report | None) -> None:
        self.reports[name] = report


class Node:
    def __init__(self) -> None:
        self.clock = Clock()
        self.store = MemoryStore()
        self.spec = function_spec(minReplica=1, maxReplica=2)
        self.record = self._fired(self.store.create(
            self.spec, FunctionStatus(self.spec.name, State.ACTIVE, epoch=1)))
        self.routes = RouteTable(self.store, self.clock)
        self.routes.startService()
        self.session = Reports()
        self.provider = Runtimes(self.clock, lambda name: self.converger.report(name))
        self.converger = LocalConverger(self.routes, self.provider, self.session, self.clock,
                                        60.0)
        self.converger.startService()
        turn(self.clock)

    @staticmethod
    def _fired(d: Deferred[Any]) -> Any:
        results: list[Any] = []
        d.addBoth(results.append)
        assert results, "not fired"
        if hasattr(results[0], "raiseException"):
            results[0].raiseException()
        return results[0]

    def operator(self, event: Event) -> None:
        record = self._fired(self.store.get(self.spec.name))
        self._fired(self.store.update(record, status=apply_event(record.status, event, 1.0)))
        turn(self.clock)

    def leader_plan(self) -> Any:
        """What the leader concludes from this node's report now."""
        record: FunctionRecord = self._fired(self.store.get(self.spec.name))
        report = self.session.reports[self.spec.name]
        assert report is not None
        observation = aggregate(self.spec.name, {"n0": report}, ["n0"])
        return record, plan(record, observation, 1.0, 120.0)

    def leader_applies(self) -> FunctionRecord:
        record, decided = self.leader_plan()
        status = record.status
        for event in decided.events:
            status = apply_event(status, event, 2.0)
        return self._fired(self.store.update(record, status=status))


def test_a_start_during_a_slow_stop_is_not_judged_on_the_report_from_before_it() -> None:
    node = Node()
    runtime = node.provider.runtimes["fn"]
    replica = node.provider.factory.made[0]
    replica.become_ready()
    turn(node.clock)
    before = node.session.reports["fn"]
    assert before is not None and before.event is Event.READY and before.epoch == 1

    node.operator(Event.STOP)     # the node begins stopping; the child takes its time
    assert replica.stopping and runtime.stopped
    node.operator(Event.START)    # the operator starts it again at once
    # the node's report is still the one from before the stop (it reports once the
    # stop is done): no verdict on the start from it (the old code went active here)
    assert node.session.reports["fn"] is before
    record, decided = node.leader_plan()
    assert record.status.state is State.INACTIVE and record.status.start_pending
    assert decided.events == ()
    # the provider announces a change meanwhile: the node reports, but it has not
    # acted on the start yet, and its report says so
    node.converger.report("fn")
    assert node.session.reports["fn"].epoch != record.status.epoch
    assert node.leader_plan()[1].events == ()
    try:
        runtime.acquire()
    except NoCapacity as exc:
        assert "is stopped" in str(exc)   # what the gate would have answered
    else:
        raise AssertionError("the stopping runtime served")

    replica.exit_after_stop()      # the stop finishes; the node acts on the start
    turn(node.clock)
    assert not runtime.stopped
    node.provider.factory.made[-1].become_ready()
    turn(node.clock)
    report = node.session.reports["fn"]
    assert report.epoch == record.status.epoch and report.event is Event.READY
    updated = node.leader_applies()
    assert updated.status.state is State.ACTIVE
    assert runtime.acquire() is not None   # what the API says, the gate does


def test_reports_that_disagree_on_the_epoch_conclude_nothing() -> None:
    ready = Report("a", "d", False, Event.READY, epoch=3)
    behind = attrs.evolve(ready, node="b", epoch=2)
    assert aggregate("fn", {"a": ready, "b": behind}, ["a", "b"]).event is None
    both = aggregate("fn", {"a": ready, "b": attrs.evolve(behind, epoch=3)}, ["a", "b"])
    assert (both.event, both.epoch) == (Event.READY, 3)
    # a report from a node that predates epochs agrees with any
    legacy = Report.decode(b'{"node": "b", "digest": "d", "stopped": false, "event": "ready"}')
    assert legacy.epoch is None
    assert aggregate("fn", {"a": ready, "b": legacy}, ["a", "b"]).event is Event.READY
    assert Report.decode(ready.encode()) == ready
