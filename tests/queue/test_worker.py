"""The queue workers on one Clock: a node's gate in memory, the in-memory JetStream (held
to nats-server by test_jetstream_contract.py). What a queued call goes through: its run
through the gate, its status record, retries in the delayed stream, dead letters with
their reason, callbacks, the order "outcome stored, then acknowledged", in-progress
acknowledgements, the concurrency bound, inactive and deleted functions."""

from __future__ import annotations

import pytest
from twisted.internet.defer import ensureDeferred

from faastwist.model.fsm import State
from faastwist.queue.messages import Outcome
from faastwist.queue.steps import ATTEMPTS, BACK, DUE
from faastwist.queue.worker import (
    CALLBACKS,
    DELAYED,
    DELAYED_CONCURRENCY,
    INACTIVE_RECHECK,
    PULL_EXPIRES,
    SWEEP_INTERVAL,
    Worker,
)
from tests.support.gate import function as function_spec
from tests.support.queue import QueueNode

HOOK = "http://hook.example/done"


@pytest.fixture
def node() -> QueueNode:
    made = QueueNode(max_attempts=3, backoff_base=1.0).start()
    made.worker.random = lambda: 0.0   # backoff: exactly half of each ceiling
    made.add("fn")
    return made


def states(node: QueueNode, call: str = "fn.c1") -> list[str]:
    return [what.split(" ")[1] for op, what in node.journal("put_status")
            if what.split(" ")[0] == call]


# -- a call's run and its outcome ----------------------------------------------------------

def test_a_call_runs_through_the_gate_and_its_outcome_is_stored_then_acknowledged(node) -> None:
    node.submit("c1", target="/status/201", body=b"the body")
    node.run_for(0.5)
    [request] = node.gate.upstream.requests
    assert (request["method"], request["uri"], request["body"]) == ("POST", "/status/201",
                                                                     "the body")
    assert request["headers"]["x-call-id"] == ["c1"]
    record = node.record("fn", "c1")
    assert (record["state"], record["attempts"], record["lastStatus"]) == ("succeeded", 1, 201)
    # the order that makes "at least once" safe: the outcome is stored, then acknowledged
    assert node.journal("put_status", "ack") == [
        ("put_status", "fn.c1 running"), ("put_status", "fn.c1 succeeded"),
        ("ack", "faas.ctl.call.fn.c1")]
    assert node.subjects("calls") == []
    assert node.gate.counter("faastwist_async_completed_total",
                             {"function_name": "fn", "outcome": "succeeded"}) == 1


def test_a_4xx_answer_is_final_and_recorded_as_failed(node) -> None:
    node.submit("c1", target="/status/404")
    node.run_for(0.5)
    record = node.record("fn", "c1")
    assert (record["state"], record["attempts"], record["lastStatus"]) == ("failed", 1, 404)
    assert len(node.gate.upstream.requests) == 1 and node.subjects("delayed") == []


def test_no_acknowledgement_while_the_outcome_cannot_be_stored(node) -> None:
    """The status store is away when the call has run: the call stays unacknowledged
    (so it is redelivered if this node gives up) and is acknowledged only once its
    outcome is stored."""
    node.server.refusing["put_status"] = lambda what: what.endswith("succeeded")
    node.submit("c1", target="/status/200")
    node.run_for(10.0)
    assert node.journal("ack") == []
    consumer = node.server.consumer(node.queue.names.calls, "call-fn")
    assert (consumer.num_pending(), len(consumer.pending)) == (0, 1)
    assert node.subjects("calls") == ["faas.ctl.call.fn.c1"]
    del node.server.refusing["put_status"]
    node.run_for(1.0)
    assert node.journal("put_status", "ack")[-2:] == [
        ("put_status", "fn.c1 succeeded"), ("ack", "faas.ctl.call.fn.c1")]
    assert node.subjects("calls") == []
    assert len(node.gate.upstream.requests) == 1   # it ran once


def test_the_callback_is_stored_before_the_acknowledgement(node) -> None:
    node.submit("c1", target="/status/200", callback=HOOK)
    node.run_for(0.5)
    ops = [entry for entry in node.server.journal if entry[1].endswith("c1")
           or entry[1].startswith("fn.c1")]
    assert ops.index(("publish", "faas.ctl.callback.fn.c1")) < ops.index(
        ("ack", "faas.ctl.call.fn.c1"))
    [(url, call_id, fn, outcome, body)] = node.receiver.sent
    assert (url, call_id, fn, outcome.status, outcome.attempts, outcome.reason) == (
        HOOK, "c1", "fn", 200, 1, "")
    assert body == b"status"   # the function's answer
    record = node.record("fn", "c1")
    assert record["callback"] == {"status": 200, "attempts": 1}
    assert record["callbackUrl"] == HOOK


# -- retries and dead letters --------------------------------------------------------------

def test_a_retryable_answer_waits_in_the_delayed_stream_and_runs_again(node) -> None:
    node.submit("c1", target="/status/503")
    node.run_for(0.1)
    record = node.record("fn", "c1")
    assert (record["state"], record["attempts"], record["lastStatus"]) == ("queued", 1, 503)
    assert record["nextAttempt"] == pytest.approx(node.clock.seconds() - 0.1 + 0.5, abs=0.06)
    # out of the calls stream (it holds no slot of the function meanwhile)
    assert node.subjects("calls") == []
    [delayed] = node.stored("delayed")
    assert delayed.subject == "faas.ctl.delayed.fn.c1"
    assert (delayed.headers[ATTEMPTS], delayed.headers[BACK]) == ("1", "call")
    assert float(delayed.headers[DUE]) == record["nextAttempt"]
    # recorded, moved to the delayed stream, then acknowledged (never the other way)
    assert node.journal("put_status", "publish", "ack")[-3:] == [
        ("put_status", "fn.c1 queued"), ("publish", "faas.ctl.delayed.fn.c1"),
        ("ack", "faas.ctl.call.fn.c1")]
    assert len(node.gate.upstream.requests) == 1
    node.run_for(0.3)
    assert len(node.gate.upstream.requests) == 1    # not before it is due
    node.run_for(0.3)
    assert len(node.gate.upstream.requests) == 2
    assert node.record("fn", "c1")["attempts"] == 2
    # when due: back into the calls stream, then the delayed copy acknowledged
    released = node.journal("publish", "ack", "nak")
    moved = released.index(("publish", "faas.ctl.call.fn.c1"), 1)
    assert released[moved + 1] == ("ack", "faas.ctl.delayed.fn.c1")


def test_a_call_that_uses_up_its_attempts_is_a_dead_letter_with_its_reason(node) -> None:
    node.submit("c1", target="/status/503", callback=HOOK)
    node.run_for(5.0)   # 0.5 s then 1 s of backoff
    assert len(node.gate.upstream.requests) == 3
    record = node.record("fn", "c1")
    assert (record["state"], record["attempts"], record["lastStatus"]) == ("dead", 3, 503)
    assert record["reason"] == "no attempts left (3 of 3)"
    [dead] = node.stored("dead")
    assert dead.subject == "faas.ctl.dead.fn.c1" and dead.data == b"hello"
    assert dead.headers["Faas-Reason"] == "no attempts left (3 of 3)"
    assert (dead.headers["Faas-Status"], dead.headers["Faas-Attempts"]) == ("503", "3")
    # the callback of a dead letter says why
    [(url, call_id, _, outcome, _)] = node.receiver.sent
    assert (url, call_id, outcome.status, outcome.attempts) == (HOOK, "c1", 503, 3)
    assert outcome.reason == "no attempts left (3 of 3)"
    assert node.subjects("calls") == [] and node.subjects("delayed") == []
    assert node.gate.counter("faastwist_async_dead_letters_total", {"function_name": "fn"}) == 1
    # the last attempt's message is acknowledged only after the dead letter, its record
    # and its callback are stored
    journal = node.server.journal
    last_run = len(journal) - 1 - journal[::-1].index(("put_status", "fn.c1 running"))
    assert [entry for entry in journal[last_run + 1:] if "delayed" not in entry[1]
            and entry[0] not in ("pull", "bind", "progress")][:4] == [
        ("publish", "faas.ctl.dead.fn.c1"), ("put_status", "fn.c1 dead"),
        ("publish", "faas.ctl.callback.fn.c1"), ("ack", "faas.ctl.call.fn.c1")]


def test_the_spec_s_max_attempts_wins(node) -> None:
    node.add("one", maxAttempts=1)
    node.submit("c1", fn="one", target="/status/500")
    node.run_for(2.0)
    assert node.record("one", "c1")["reason"] == "no attempts left (1 of 1)"


def test_a_retry_after_longer_than_the_backoff_is_honoured(node) -> None:
    node.submit("c1", target="/status/429")
    node.run_for(0.1)
    assert node.record("fn", "c1")["attempts"] == 1  # echo sends no Retry-After: backoff
    node.run_for(0.5)
    assert len(node.gate.upstream.requests) == 2


# -- functions not active or gone ----------------------------------------------------------

def test_a_call_for_an_inactive_function_waits_without_using_attempts(node) -> None:
    node.add("idle", state=State.INACTIVE)
    node.submit("c1", fn="idle", target="/status/200")
    node.run_for(INACTIVE_RECHECK * 2 + 1)
    assert node.gate.upstream.requests == []
    assert node.record("idle", "c1") is None          # nothing ran, nothing counted
    assert ("nak", "faas.ctl.call.idle.c1") in node.server.journal
    node.set_state("idle", State.ACTIVE)
    node.run_for(INACTIVE_RECHECK + 1)
    record = node.record("idle", "c1")
    assert (record["state"], record["attempts"]) == ("succeeded", 1)


def test_a_call_for_an_inactive_function_dies_after_max_age(node) -> None:
    node.add("idle", state=State.INACTIVE)
    node.submit("c1", fn="idle", enqueued=node.clock.seconds() - node.config.max_age - 1)
    node.run_for(0.5)
    record = node.record("idle", "c1")
    assert record["state"] == "dead" and "not active within queue.maxAge" in record["reason"]
    assert "(state: inactive)" in record["reason"]


def test_calls_of_a_deleted_function_go_to_the_dead_letters(node) -> None:
    node.add("gone", state=State.INACTIVE)
    node.submit("c1", fn="gone")
    node.delete("gone")
    node.run_for(SWEEP_INTERVAL * 2 + 1)
    record = node.record("gone", "c1")
    assert (record["state"], record["reason"]) == ("dead", "function deleted")
    assert [m.subject for m in node.stored("dead")] == ["faas.ctl.dead.gone.c1"]
    node.run_for(SWEEP_INTERVAL)
    # its consumer goes once it is empty
    assert "call-gone" not in node.server.stream(node.queue.names.calls).consumers


def test_calls_found_with_no_route_are_adopted_only_when_seen_twice(node) -> None:
    """A function created on another node may not be in this node's table yet."""
    js = node.queue.js
    node.wait(node.bridge.call(js.publish, node.queue.names.call_subject("new", "c1"),
                               b"", {"Faas-Call-Id": "c1"}, 1.0))
    node.worker._sweep()
    node.settle()
    assert "new" not in node.worker.loops
    node.add("new")     # the watch brings it before the second sweep
    node.run_for(SWEEP_INTERVAL + 0.5)
    assert node.stored("dead") == []


def test_a_message_faastwist_cannot_read_is_acknowledged_and_dropped(node) -> None:
    node.wait(node.bridge.call(node.queue.js.publish, node.queue.names.call_subject("fn", "x"),
                               b"junk", {"Faas-Call-Id": "x"}, 1.0))
    node.run_for(0.5)
    assert node.subjects("calls") == [] and node.gate.upstream.requests == []


# -- while a call runs ---------------------------------------------------------------------

def test_in_progress_acknowledgements_keep_a_long_call_from_being_redelivered(node) -> None:
    node.add("slow", timeout="60s")
    node.submit("c1", fn="slow", target="/hang")
    node.run_for(node.config.ack_wait * 4)
    assert len(node.gate.upstream.requests) == 1          # never delivered twice
    progress = [w for op, w in node.journal("progress")]
    assert len(progress) == 12 and set(progress) == {"faas.ctl.call.slow.c1"}
    node.gate.upstream.hanging[0].finish()
    node.run_for(0.5)
    assert node.record("slow", "c1")["state"] == "succeeded"
    node.run_for(node.config.ack_wait * 2)
    assert len(node.journal("progress")) == 12           # the ticker stopped with it


def test_a_dead_nodes_call_is_run_again_after_one_ack_wait() -> None:
    a = QueueNode(ack_wait=3.0).start()
    a.add("slow", timeout="60s")
    a.submit("c1", fn="slow", target="/hang")
    a.run_for(0.5)
    a.queue.stop_worker()   # the node dies: its connection with it
    a.wait(a.bridge.call(a.queue.js.close))
    b = QueueNode(server=a.server, gate=a.gate, ack_wait=3.0).start()
    b.run_for(2.0)
    assert len(a.gate.upstream.requests) == 1
    # after the ack wait, the next sweep finds the call stored and b's loop takes it
    b.run_for(1.0 + SWEEP_INTERVAL)
    assert len(a.gate.upstream.requests) == 2
    assert b.record("slow", "c1")["attempts"] == 2   # the redelivery counts its attempt


def test_the_calls_in_flight_stay_at_the_function_s_concurrency(node) -> None:
    node.add("two", asyncConcurrency=2, timeout="60s")
    for index in range(5):
        node.submit(f"c{index}", fn="two", target="/hang")
    node.run_for(1.0)
    assert len(node.gate.upstream.hanging) == 2
    consumer = node.server.consumer(node.queue.names.calls, "call-two")
    assert consumer.max_ack_pending == 2 and len(consumer.pending) == 2
    assert node.worker.loops["two"].inflight == 2
    node.gate.upstream.hanging[0].finish()
    node.run_for(0.5)
    assert len(node.gate.upstream.hanging) == 3    # a freed slot runs the next at once
    assert node.worker.inflight() == 2


# -- callbacks -----------------------------------------------------------------------------

def test_a_failing_callback_is_retried_without_running_the_function_again(node) -> None:
    node.receiver.status = 502
    node.submit("c1", target="/status/200", callback=HOOK)
    node.run_for(5.0)
    assert len(node.gate.upstream.requests) == 1
    assert len(node.receiver.sent) == 3
    assert node.record("fn", "c1")["callback"] == {"status": 502, "attempts": 3}
    assert node.subjects("callbacks") == [] and node.subjects("delayed") == []
    assert node.gate.counter("faastwist_async_callbacks_total",
                             {"function_name": "fn", "result": "retried"}) == 2
    assert node.gate.counter("faastwist_async_callbacks_total",
                             {"function_name": "fn", "result": "failed"}) == 1


def test_a_refused_callback_is_recorded_and_not_retried(node) -> None:
    node.receiver.refuse = "callbacks to 127.0.0.1 are refused"
    node.submit("c1", target="/status/200", callback=HOOK)
    node.run_for(3.0)
    assert len(node.receiver.sent) == 1
    assert node.record("fn", "c1")["callback"] == {
        "error": "callbacks to 127.0.0.1 are refused", "attempts": 1}
    assert node.subjects("callbacks") == []


# -- stopping ------------------------------------------------------------------------------

def test_a_stopped_worker_runs_nothing_more(node) -> None:
    node.queue.stop_worker()
    assert not node.worker.running
    node.submit("c1", target="/status/200")
    node.run_for(SWEEP_INTERVAL * 2)
    assert node.gate.upstream.requests == []
    assert node.subjects("calls") == ["faas.ctl.call.fn.c1"]
    assert CALLBACKS in node.worker.loops and DELAYED in node.worker.loops


# -- consumers and pull requests -----------------------------------------------------------

def test_the_consumers_and_their_settings(node) -> None:
    names = node.queue.names
    callbacks = node.server.consumer(names.callbacks, "callbacks")
    assert (callbacks.filter_subject, callbacks.max_ack_pending, callbacks.ack_wait) == (
        "faas.ctl.callback.*.>", 32, 3.0)
    delayed = node.server.consumer(names.delayed, "delayed")
    assert (delayed.filter_subject, delayed.max_ack_pending, delayed.ack_wait) == (
        "faas.ctl.delayed.*.>", 1_000_000, 3.0)
    # a function's consumer is made the first time a call of it is there, not before
    node.add("two", asyncConcurrency=2)
    assert sorted(node.server.stream(names.calls).consumers) == []
    node.submit("c1", fn="two")
    node.settle()
    consumer = node.server.consumer(names.calls, "call-two")
    assert (consumer.filter_subject, consumer.max_ack_pending, consumer.ack_wait) == (
        "faas.ctl.call.two.>", 2, 3.0)
    assert sorted(node.server.stream(names.calls).consumers) == ["call-two"]


def test_pull_requests_ask_for_the_free_slots_and_expire_on_the_server(node) -> None:
    assert ("callbacks", 32, PULL_EXPIRES) in node.server.pull_requests
    assert ("delayed", DELAYED_CONCURRENCY, PULL_EXPIRES) in node.server.pull_requests
    assert (PULL_EXPIRES, DELAYED_CONCURRENCY) == (2.0, 64)
    node.add("two", asyncConcurrency=3, timeout="60s")
    node.submit("c1", fn="two", target="/hang")
    node.submit("c2", fn="two", target="/hang")
    node.run_for(0.1)
    asked = [(batch, expires) for durable, batch, expires in node.server.pull_requests
             if durable == "call-two"]
    # one request for the 3 free slots: each call runs as it arrives
    assert asked == [(3, 2.0)] and len(node.gate.upstream.hanging) == 2
    node.submit("c3", fn="two", target="/hang")
    # at the limit: no request at all (never one for zero messages)
    node.run_for(PULL_EXPIRES * 3)
    asked = [batch for durable, batch, _ in node.server.pull_requests if durable == "call-two"]
    assert asked == [3] and len(node.gate.upstream.hanging) == 3
    node.gate.upstream.hanging[0].finish()
    node.run_for(0.1)
    asked = [batch for durable, batch, _ in node.server.pull_requests if durable == "call-two"]
    assert asked == [3, 1]      # one slot free: a request for one


def test_an_idle_function_s_loop_asks_once_then_waits_to_be_woken(node) -> None:
    node.add("idle")
    node.worker.wake("idle")
    node.run_for(PULL_EXPIRES * 5)
    assert [d for d, _, _ in node.server.pull_requests if d == "call-idle"] == ["call-idle"]
    # woken while its request is out: no second request meanwhile, one right after
    node.worker.wake("idle")
    node.settle()
    node.worker.wake("idle")
    node.settle()
    assert [d for d, _, _ in node.server.pull_requests if d == "call-idle"] == ["call-idle"] * 2
    node.run_for(PULL_EXPIRES + 0.1)
    assert [d for d, _, _ in node.server.pull_requests if d == "call-idle"] == ["call-idle"] * 3
    node.run_for(PULL_EXPIRES * 5)
    assert [d for d, _, _ in node.server.pull_requests if d == "call-idle"] == ["call-idle"] * 3


def test_the_sweep_runs_at_start_and_every_interval(node) -> None:
    node.queue._meter.stop()    # it asks for the backlog too
    assert node.bridge.calls.count("backlog") == 1
    node.run_for(SWEEP_INTERVAL - 0.1)
    assert node.bridge.calls.count("backlog") == 1
    node.run_for(0.2)
    assert node.bridge.calls.count("backlog") == 2
    node.run_for(SWEEP_INTERVAL)
    assert (node.bridge.calls.count("backlog"), SWEEP_INTERVAL) == (3, 5.0)


def test_a_failed_bind_is_tried_again_a_second_later_or_when_woken(node) -> None:
    node.add("fb")
    failures = [1]

    def once(durable: str) -> bool:
        if durable == "call-fb" and failures:
            failures.pop()
            return True
        return False
    node.server.refusing["bind"] = once
    node.worker.wake("fb")
    node.settle()
    calls = node.server.stream(node.queue.names.calls).consumers
    assert "call-fb" not in calls
    node.run_for(0.9)
    assert "call-fb" not in calls
    node.run_for(0.2)
    assert "call-fb" in calls
    # a failed bind and a wake before the retry: bound at once
    node.add("fw")
    failures.append(1)
    node.server.refusing["bind"] = lambda d: d == "call-fw" and bool(failures) and (
        failures.pop() or True)
    node.worker.wake("fw")
    node.settle()
    assert "call-fw" not in calls
    node.run_for(0.3)
    node.worker.wake("fw")
    node.settle()
    assert "call-fw" in calls
    assert node.bridge.calls.count("bind") == 2 + 2 + 2   # callbacks, delayed, two each


def test_two_wakes_while_binding_bind_once(node) -> None:
    node.add("w")
    binds = node.bridge.calls.count("bind")
    node.worker.wake("w")
    node.worker.wake("w")
    node.settle()
    assert node.bridge.calls.count("bind") == binds + 1


def test_a_failed_pull_is_asked_again_a_second_later(node) -> None:
    node.add("fp")
    refused = [1]
    node.server.refusing["pull"] = lambda d: d == "call-fp" and bool(refused) and (
        refused.pop() or True)
    node.submit("c1", fn="fp", target="/status/200")
    node.run_for(0.9)
    assert node.gate.upstream.requests == []
    node.run_for(0.2)
    assert len(node.gate.upstream.requests) == 1


def test_a_message_delivered_after_stop_is_given_back_at_once(node) -> None:
    node.add("late")
    node.worker.wake("late")
    node.settle()              # its pull request waits on the server
    node.worker.stop()
    node.submit("c1", fn="late")
    node.settle()
    # given back at once, each time the request still open on the server brings it
    assert node.server.naks and set(node.server.naks) == {("faas.ctl.call.late.c1", 0)}
    assert node.gate.upstream.requests == []


def test_stop_before_start_and_stop_cancels_what_waits() -> None:
    node = QueueNode().start(attach=False)
    worker = Worker(node.queue, node.gate.context)
    worker.stop()   # never started: nothing to stop
    assert not worker.running
    node.queue.attach(node.gate.context)
    node.add("idle", state=State.INACTIVE)
    node.submit("c1", fn="idle")
    node.run_for(0.5)
    wake = node.queue.worker._wakes["idle"]
    node.queue.stop_worker()
    assert not wake.active() and node.queue.worker._wakes == {}
    assert not node.queue.worker._sweeper.running


# -- when a call is looked at again --------------------------------------------------------

def test_an_inactive_function_s_call_is_looked_at_again_after_the_recheck(node) -> None:
    node.add("idle", state=State.INACTIVE)
    node.submit("c1", fn="idle")
    node.settle()
    first = node.clock.seconds()
    assert node.server.naks == [("faas.ctl.call.idle.c1", INACTIVE_RECHECK)]
    wake = node.worker._wakes["idle"]
    assert wake.getTime() == pytest.approx(first + INACTIVE_RECHECK + 0.05)
    node.run_for(1.0)
    node.worker._wake_later("idle", INACTIVE_RECHECK)   # a later one: the earlier stays
    assert node.worker._wakes["idle"] is wake and wake.active()
    node.run_for(INACTIVE_RECHECK)
    assert [s for s, _ in node.server.naks].count("faas.ctl.call.idle.c1") == 2
    assert INACTIVE_RECHECK == 5.0


def test_an_earlier_wake_replaces_a_later_one(node) -> None:
    node.add("idle", state=State.INACTIVE)
    node.worker._wake_later("idle", 10.0)
    later = node.worker._wakes["idle"]
    node.worker._wake_later("idle", 2.0)
    assert not later.active()
    assert node.worker._wakes["idle"].getTime() == pytest.approx(node.clock.seconds() + 2.05)


def test_the_default_jitter_is_random_within_the_backoff() -> None:
    node = QueueNode(backoff_base=1.0).start()
    node.add("fn")
    node.submit("c1", target="/status/503")
    node.settle()
    wait = node.record("fn", "c1")["nextAttempt"] - node.clock.seconds()
    assert 0.5 <= wait < 1.0


def test_a_retry_after_longer_than_the_backoff_sets_the_next_attempt(node) -> None:
    node.submit("c1", target="/retry-after/30")
    node.settle()
    record = node.record("fn", "c1")
    assert record["nextAttempt"] == pytest.approx(node.clock.seconds() + 30.0)
    node.run_for(29.0)
    assert len(node.gate.upstream.requests) == 1
    node.run_for(2.0)
    assert len(node.gate.upstream.requests) == 2


def test_a_400_is_a_failure_and_a_399_a_success(node) -> None:
    node.submit("c1", target="/status/400")
    node.submit("c2", target="/status/399")
    node.run_for(0.5)
    assert node.record("fn", "c1")["state"] == "failed"
    assert node.record("fn", "c2")["state"] == "succeeded"


def test_a_first_delivery_reads_no_record(node) -> None:
    node.submit("c1", target="/status/200")
    node.run_for(0.5)
    assert node.bridge.calls.count("get_status") == 0


def test_a_redelivery_counts_on_from_the_record_and_keeps_the_last_status() -> None:
    a = QueueNode(ack_wait=3.0).start()
    a.add("slow", timeout="60s")
    a.submit("c1", fn="slow", target="/hang")
    a.run_for(0.5)
    a.queue.stop_worker()
    a.wait(a.bridge.call(a.queue.js.close))
    b = QueueNode(server=a.server, gate=a.gate, ack_wait=3.0).start()
    b.wait(b.bridge.call(b.queue.js.put_status, "slow", "c1", {
        "callId": "c1", "function": "slow", "state": "running", "attempts": 3,
        "lastStatus": 502}))
    states_before = len(b.journal("put_status"))
    b.run_for(3.0 + SWEEP_INTERVAL)
    running = [w for _, w in b.journal("put_status")[states_before:]]
    assert running[0] == "slow.c1 running"
    record = b.record("slow", "c1")
    assert (record["attempts"], record["lastStatus"], record["state"]) == (4, 502, "running")


# -- functions that are gone ---------------------------------------------------------------

def test_max_age_is_a_bound_a_call_may_reach(node) -> None:
    node.add("idle", state=State.INACTIVE)
    node.submit("c1", fn="idle", enqueued=node.clock.seconds() - node.config.max_age)
    node.run_for(0.5)
    assert node.record("idle", "c1") is None   # exactly maxAge old: still waiting
    node.submit("c2", fn="idle", enqueued=node.clock.seconds() - node.config.max_age - 0.01)
    node.run_for(0.5)
    record = node.record("idle", "c2")
    assert record["reason"] == ("function idle was not active within queue.maxAge "
                                "(state: inactive)")
    [dead] = node.stored("dead")
    assert (dead.headers["Faas-Status"], dead.headers["Faas-Attempts"],
            dead.headers["Faas-Duration"]) == ("0", "0", "0.000000")


def test_a_deleted_function_s_dead_letter_has_no_status_and_no_callback(node) -> None:
    node.add("gone", state=State.INACTIVE)
    node.submit("c1", fn="gone", callback=HOOK)
    node.delete("gone")
    assert "gone" in node.worker.loops    # bound: kept to drain its calls
    node.run_for(INACTIVE_RECHECK + 1)
    record = node.record("gone", "c1")
    assert (record["state"], record["attempts"], record["reason"]) == (
        "dead", 0, "function deleted")
    assert "lastStatus" not in record
    [dead] = node.stored("dead")
    assert (dead.headers["Faas-Status"], dead.headers["Faas-Attempts"],
            dead.headers["Faas-Duration"]) == ("0", "0", "0.000000")
    assert node.receiver.sent == [] and node.subjects("callbacks") == []


def test_a_function_never_woken_leaves_no_loop_when_deleted(node) -> None:
    node.add("quiet")
    assert "quiet" in node.worker.loops
    node.delete("quiet")
    assert "quiet" not in node.worker.loops and "quiet" not in node.worker._settings


def test_a_settings_change_rebinds_a_consumer_in_use_and_a_status_change_does_not(node) -> None:
    node.add("fn2", asyncConcurrency=2)
    node.submit("c1", fn="fn2")
    node.run_for(0.5)
    loop = node.worker.loops["fn2"]
    binds = node.bridge.calls.count("bind")
    node.set_state("fn2", State.ACTIVE)     # the status changed, not the settings
    assert node.bridge.calls.count("bind") == binds
    record = node.wait(node.gate.store.get("fn2"))
    node.wait(node.gate.store.update(record, spec=function_spec("fn2", asyncConcurrency=5)))
    node.settle()
    assert node.worker.loops["fn2"] is loop and loop.limit == 5
    assert node.bridge.calls.count("bind") == binds + 1
    assert node.server.consumer(node.queue.names.calls, "call-fn2").max_ack_pending == 5


def test_consumers_of_functions_gone_while_no_node_ran_are_drained_at_start() -> None:
    first = QueueNode().start(attach=False)
    js, names = first.queue.js, first.queue.names
    first.wait(first.bridge.call(js.bind, "old", names.calls, "call-old",
                                 names.call_subject("old"), 8, 3.0))
    first.submit("c1", fn="old")
    node = QueueNode(server=first.server, gate=first.gate).start()
    node.run_for(1.0)
    assert node.record("old", "c1")["reason"] == "function deleted"
    node.run_for(PULL_EXPIRES * 2)
    assert "call-old" not in node.server.stream(names.calls).consumers


def test_calls_of_a_function_with_no_route_are_dead_on_the_second_sweep(node) -> None:
    node.wait(node.queue.submit(node.call("c1", fn="ghost")))
    node.settle()
    assert "ghost" not in node.worker.loops
    node.run_for(SWEEP_INTERVAL * 2 + 0.1)    # seen by two sweeps: adopted
    node.run_for(0.5)
    assert node.record("ghost", "c1")["reason"] == "function deleted"
    node.run_for(PULL_EXPIRES * 2)
    assert "ghost" not in node.worker.loops
    assert "call-ghost" not in node.server.stream(node.queue.names.calls).consumers


# -- the steps after a call ran (steps.py) -------------------------------------------------

def test_a_step_is_tried_every_half_second_forty_times_then_left_to_redelivery(node) -> None:
    tries: list[float] = []

    def count(what: str) -> bool:
        if what == "fn.c1 succeeded":
            tries.append(node.clock.seconds())
            return True
        return False
    node.server.refusing["put_status"] = count
    node.submit("c1", target="/status/200")
    node.run_for(0.2)
    started = tries[0]
    node.run_for(10.0)
    # half a second apart (plus the step of this test's clock)
    assert all(0.5 <= b - a <= 0.56 for a, b in zip(tries, tries[1:]))
    node.run_for(11.0)   # (before the ack wait after the last try ends)
    assert len(tries) == 40 and 19.5 <= tries[-1] - started <= 21.0
    assert node.journal("ack") == []   # given up: the call waits for its redelivery
    consumer = node.server.consumer(node.queue.names.calls, "call-fn")
    assert len(consumer.pending) == 1


def test_a_stopped_worker_stops_trying_a_step(node) -> None:
    tries: list[float] = []
    node.server.refusing["put_status"] = lambda what: what.endswith("succeeded") and (
        tries.append(1) or True)
    node.submit("c1", target="/status/200")
    node.run_for(1.1)
    assert len(tries) == 3
    node.worker.stop()
    node.run_for(5.0)
    assert len(tries) == 4   # the try under way when it stopped, then none


def delayed(node: QueueNode, call_id: str, due: float, back: str = "call",
            drop: str = "") -> None:
    call = node.call(call_id, callback=HOOK if back == "callback" else None)
    from faastwist.queue.messages import call_headers

    headers = call_headers(call, dedup=False)
    headers.update({ATTEMPTS: "2", DUE: repr(due), BACK: back})
    headers.pop(drop, None)
    node.wait(node.bridge.call(node.queue.js.publish,
                               node.queue.names.delayed_subject("fn", call_id),
                               call.body, headers, 1.0))


def test_a_delayed_call_due_now_goes_back_at_once_with_its_attempts(node) -> None:
    node.submit("x", target="/hang")  # something to make the clock's start visible
    delayed(node, "c1", node.clock.seconds() + 0.005)
    node.settle()
    assert [s for s, _ in node.server.naks if "delayed" in s] == []
    back = [m for m in node.server.journal if m == ("publish", "faas.ctl.call.fn.c1")]
    assert back == [("publish", "faas.ctl.call.fn.c1")]
    node.run_for(0.5)
    record = node.record("fn", "c1")
    assert (record["state"], record["attempts"]) == ("succeeded", 3)   # 2 before, this one


def test_a_delayed_call_waits_until_due_and_is_released_once(node) -> None:
    delayed(node, "c1", node.clock.seconds() + 3.0)
    node.settle()
    [(subject, wait)] = node.server.naks
    assert subject == "faas.ctl.delayed.fn.c1" and wait == pytest.approx(3.0)
    node.run_for(2.9)
    assert node.gate.upstream.requests == []
    node.run_for(0.3)
    assert len(node.gate.upstream.requests) == 1
    [released] = [m for m in node.stored("calls")] or [None]
    assert released is None   # ran and acknowledged
    publishes = [w for op, w in node.journal("publish") if w == "faas.ctl.call.fn.c1"]
    assert publishes == ["faas.ctl.call.fn.c1"]


def test_the_ids_that_make_moves_happen_once(node) -> None:
    node.submit("c1", target="/status/503")
    node.settle()
    [waiting] = node.stored("delayed")
    assert waiting.headers["Nats-Msg-Id"] == "fn.c1.call.d1"
    node.run_for(1.0)
    [again] = [m for m in node.server.stream(node.queue.names.calls).dedupe
               if m.startswith("fn.c1.r")]
    assert again == "fn.c1.r1"


def test_a_delayed_callback_goes_back_to_the_callbacks(node) -> None:
    node.queue.worker.stop()
    delayed(node, "c1", 0.0, back="callback")
    node.queue.worker.running = True
    node.queue.worker.wake(DELAYED)
    node.queue.worker._pull(node.worker.loops[DELAYED])
    node.run_for(0.5)
    assert ("publish", "faas.ctl.callback.fn.c1") in node.server.journal
    [(url, call_id, _, outcome, _)] = node.receiver.sent
    assert (url, call_id) == (HOOK, "c1")


@pytest.mark.parametrize("drop", [DUE, "Faas-Call-Id"])
def test_a_delayed_message_faastwist_cannot_read_is_dropped(node, drop) -> None:
    delayed(node, "c1", 0.0, drop=drop)
    node.run_for(0.5)
    assert node.subjects("delayed") == [] and node.subjects("calls") == []
    assert ("ack", "faas.ctl.delayed.fn.c1") in node.server.journal


def test_a_callback_faastwist_cannot_read_is_dropped(node) -> None:
    node.wait(node.bridge.call(node.queue.js.publish,
                               node.queue.names.callback_subject("fn", "c1"), b"",
                               {"Faas-Call-Id": "c1"}, 1.0))
    node.run_for(0.5)
    assert node.receiver.sent == [] and node.subjects("callbacks") == []


def test_a_callback_whose_record_expired_writes_none(node) -> None:
    from faastwist.queue.messages import call_headers, outcome_headers

    call = node.call("c1", callback=HOOK)
    headers = call_headers(call, dedup=False)
    headers.update(outcome_headers(Outcome(200, 1, 0.1)))
    node.wait(node.bridge.call(node.queue.js.publish,
                               node.queue.names.callback_subject("fn", "c1"), b"answer",
                               headers, 1.0))
    node.run_for(0.5)
    assert len(node.receiver.sent) == 1
    assert node.journal("put_status") == [] and node.record("fn", "c1") is None


def test_callback_deliveries_count_on_from_before_their_backoff(node) -> None:
    node.receiver.status = 500
    node.submit("c1", target="/status/200", callback=HOOK)
    node.run_for(0.2)
    [waiting] = node.stored("delayed")
    assert (waiting.headers[ATTEMPTS], waiting.headers[BACK]) == ("1", "callback")
    assert waiting.headers["Nats-Msg-Id"] == "fn.c1.callback.d1"
    node.run_for(0.6)
    [waiting] = node.stored("delayed")
    assert waiting.headers[ATTEMPTS] == "2"


def test_a_pull_request_the_server_never_ends_is_given_up_and_asked_again(node) -> None:
    """The bridge bounds a pull at its expiry plus 5 s; a second later the loop asks
    again (a server that lost the request must not stall the function)."""
    from twisted.internet.defer import Deferred

    real = node.queue.js.pull
    hung: list[float] = []

    async def hang_once(key, batch, expires, deliver):
        if key == "hp" and not hung:
            hung.append(node.clock.seconds())
            await Deferred()   # never answered
        return await real(key, batch, expires, deliver)
    node.queue.js.pull = hang_once
    node.add("hp")
    node.submit("c1", fn="hp", target="/status/200")
    node.settle()
    assert hung == [node.clock.seconds()]
    node.run_for(PULL_EXPIRES + 5 + 0.9)
    assert node.gate.upstream.requests == []
    node.run_for(0.3)
    assert len(node.gate.upstream.requests) == 1


# -- loops of functions that exist, and of those that are gone -----------------------------

def test_a_consumer_found_at_start_for_a_function_this_node_has_keeps_its_settings() -> None:
    first = QueueNode().start(attach=False)
    js, names = first.queue.js, first.queue.names
    first.wait(first.bridge.call(js.bind, "fn", names.calls, "call-fn",
                                 names.call_subject("fn"), 8, 3.0))
    node = QueueNode(server=first.server, gate=first.gate)
    node.add("fn", asyncConcurrency=2)
    node.start()
    node.run_for(0.5)
    assert node.worker.loops["fn"].limit == 2
    node.submit("c1", target="/status/200")
    node.run_for(0.5)
    assert node.record("fn", "c1")["state"] == "succeeded"


def test_a_sweep_that_ends_after_stop_adopts_nothing(node) -> None:
    node.wait(node.queue.submit(node.call("c1", fn="ghost")))
    node.run_for(SWEEP_INTERVAL + 0.1)        # seen once
    assert node.worker._absent == {"ghost"}
    node.worker._sweep()                      # seen twice, but the answer comes after stop
    node.worker.stop()
    node.run_for(1.0)
    assert "ghost" not in node.worker.loops
    assert "call-ghost" not in node.server.stream(node.queue.names.calls).consumers


def test_a_status_change_keeps_the_consumer_as_it_is(node) -> None:
    node.add("st", asyncConcurrency=2)
    node.submit("c1", fn="st")
    node.run_for(0.5)
    binds = node.bridge.calls.count("bind")
    node.set_state("st", State.INACTIVE)
    node.set_state("st", State.ACTIVE)
    assert node.bridge.calls.count("bind") == binds


def test_the_callback_loop_asks_again_as_soon_as_a_request_ends(node) -> None:
    node.run_for(PULL_EXPIRES * 4 + 0.3)
    asked = [d for d, _, _ in node.server.pull_requests if d == "callbacks"]
    assert len(asked) == 5      # at 0, 2, 4, 6, 8 s: always one waiting on the server


def test_a_call_published_as_a_deleted_function_s_loop_looks_is_not_lost(node) -> None:
    from faastwist.queue.messages import call_headers

    real = node.queue.js.pull
    published: list[int] = []

    async def then_publish(key, batch, expires, deliver):
        got = await real(key, batch, expires, deliver)
        if key == "gone" and not published:   # between the empty request and the look
            published.append(node.server.publish(
                node.queue.names.call_subject("gone", "c1"), b"",
                call_headers(node.call("c1", fn="gone"), dedup=False)))
        return got
    node.queue.js.pull = then_publish
    node.add("gone")
    node.worker.wake("gone")
    node.settle()
    node.server.watchers.clear()   # no wake-up by the publication: the look must see it
    node.delete("gone")
    node.run_for(PULL_EXPIRES + 1.0)
    assert published
    assert node.record("gone", "c1")["reason"] == "function deleted"


def test_a_failed_look_at_a_deleted_function_s_consumer_is_tried_a_second_later(node) -> None:
    node.add("gone")
    node.worker.wake("gone")
    node.settle()
    node.delete("gone")
    refused = [1]
    node.server.refusing["pending"] = lambda d: d == "call-gone" and bool(refused) and (
        refused.pop() or True)
    node.run_for(PULL_EXPIRES + 0.05)   # the request ends empty; the look fails
    asked = len([d for d, _, _ in node.server.pull_requests if d == "call-gone"])
    node.run_for(0.9)
    assert len([d for d, _, _ in node.server.pull_requests if d == "call-gone"]) == asked
    node.run_for(0.2)
    assert len([d for d, _, _ in node.server.pull_requests if d == "call-gone"]) == asked + 1


# -- what the steps store, exactly ---------------------------------------------------------

def test_the_delayed_stream_s_header_names_are_a_stored_format(node) -> None:
    node.submit("c1", target="/status/503")
    node.settle()
    [waiting] = node.stored("delayed")
    assert waiting.headers["Faas-Attempts-So-Far"] == "1"
    assert waiting.headers["Faas-Back"] == "call"
    assert float(waiting.headers["Faas-Due"]) == node.record("fn", "c1")["nextAttempt"]


def test_a_delayed_message_without_its_way_back_goes_to_the_calls(node) -> None:
    delayed(node, "c1", 0.0, drop=BACK)
    node.run_for(0.5)
    assert node.record("fn", "c1")["state"] == "succeeded"


def test_unreadable_attempts_count_as_none(node) -> None:
    call = node.call("c1")
    from faastwist.queue.messages import call_headers

    headers = call_headers(call, dedup=False)
    headers.update({ATTEMPTS: "many", DUE: "0.0", BACK: "call"})
    node.wait(node.bridge.call(node.queue.js.publish,
                               node.queue.names.delayed_subject("fn", "c1"), b"x", headers, 1.0))
    node.run_for(0.5)
    assert node.record("fn", "c1")["attempts"] == 1


def test_an_empty_body_stays_empty_through_a_retry(node) -> None:
    node.submit("c1", target="/status/503", body=b"")
    node.run_for(1.0)
    assert [r["body"] for r in node.gate.upstream.requests] == ["", ""]


def test_a_call_that_dies_again_after_a_retry_has_its_dead_letter_and_callback(node) -> None:
    node.add("once", maxAttempts=1)
    node.submit("c1", fn="once", target="/status/500", callback=HOOK)
    node.run_for(1.0)
    assert [m.subject for m in node.stored("dead")] == ["faas.ctl.dead.once.c1"]
    node.wait(ensureDeferred(node.queue.retry("once", "c1")))
    node.run_for(1.0)
    # within JetStream's duplicate window: still stored, still called back
    assert [m.subject for m in node.stored("dead")] == ["faas.ctl.dead.once.c1"]
    assert node.record("once", "c1")["state"] == "dead"
    assert len(node.receiver.sent) == 2
    assert node.gate.counter("faastwist_async_completed_total",
                             {"function_name": "once", "outcome": "dead"}) == 2


def test_records_carry_no_reason_unless_there_is_one(node) -> None:
    node.submit("c1", target="/status/200")
    node.run_for(0.5)
    assert "reason" not in node.record("fn", "c1")


def test_callback_results_are_counted_by_kind(node) -> None:
    node.submit("c1", target="/status/200", callback=HOOK)
    node.run_for(0.5)
    node.receiver.refuse = "no"
    node.submit("c2", target="/status/200", callback=HOOK)
    node.run_for(0.5)
    count = node.gate.counter
    assert count("faastwist_async_callbacks_total",
                 {"function_name": "fn", "result": "delivered"}) == 1
    assert count("faastwist_async_callbacks_total",
                 {"function_name": "fn", "result": "refused"}) == 1


def test_a_callback_message_without_a_url_is_sent_to_none(node) -> None:
    from faastwist.queue.messages import call_headers, outcome_headers

    headers = call_headers(node.call("c1"), dedup=False)
    headers.update(outcome_headers(Outcome(200, 1, 0.1)))
    node.wait(node.bridge.call(node.queue.js.publish,
                               node.queue.names.callback_subject("fn", "c1"), b"", headers, 1.0))
    node.run_for(0.5)
    assert [url for url, *_ in node.receiver.sent] == [""]
