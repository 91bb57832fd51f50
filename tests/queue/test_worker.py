"""The queue workers on one Clock: a node's gate in memory, the in-memory JetStream (held
to nats-server by test_jetstream_contract.py). What a queued call goes through: its run
through the gate, its status record, retries in the delayed stream, dead letters with
their reason, callbacks, the order "outcome stored, then acknowledged", in-progress
acknowledgements, the concurrency bound, inactive and deleted functions."""

from __future__ import annotations

import pytest

from faastwist.model.fsm import State
from faastwist.queue.steps import ATTEMPTS, BACK, DUE
from faastwist.queue.worker import CALLBACKS, DELAYED, INACTIVE_RECHECK, SWEEP_INTERVAL
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
    assert [entry for entry in journal[last_run + 1:] if "delayed" not in entry[1]][:4] == [
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
