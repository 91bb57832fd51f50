"""The lifecycle FSM against DESIGN.md's table, cell by cell, plus random walks."""

import attrs
import pytest
from hypothesis import given, strategies as st

from faastwist.model.fsm import (
    Event, FunctionStatus, InvalidEvent, State, TRANSITIONS, apply_event, next_state,
)

# DESIGN.md's table, transcribed independently of faastwist.model.fsm.TRANSITIONS
_TABLE = """
initial  | active  | initial | failed | -        | -        | initial | destroyed
active   | active  | failed  | failed | -        | inactive | -       | -
inactive | active  | failed  | failed | inactive | -        | initial | destroyed
failed   | initial | failed  | failed | -        | -        | initial | destroyed
"""
_EVENTS = ["ready", "pending", "error", "start", "stop", "update", "delete"]
EXPECTED = {}
for line in _TABLE.strip().splitlines():
    cells = [c.strip() for c in line.split("|")]
    for event, target in zip(_EVENTS, cells[1:]):
        EXPECTED[(State(cells[0]), Event(event))] = None if target == "-" else State(target)

ALL_PAIRS = [(s, e) for s in State for e in Event]


@pytest.mark.parametrize("state, event", ALL_PAIRS)
def test_every_cell_matches_design(state, event):
    expected = EXPECTED.get((state, event))  # destroyed row: absent, so refused
    if expected is None:
        with pytest.raises(InvalidEvent) as info:
            next_state(state, event)
        assert str(info.value) == f"invalid event: {event.value}, current state: {state.value}"
    else:
        assert next_state(state, event) is expected


def test_table_has_no_extra_transitions():
    assert {k: v for k, v in EXPECTED.items() if v is not None} == dict(TRANSITIONS)


def test_start_from_inactive_is_recorded_as_pending_start():
    status = FunctionStatus("f", State.INACTIVE)
    started = apply_event(status, Event.START, now=5.0)
    assert started.state is State.INACTIVE and started.start_pending
    assert started.event is Event.START and started.updated == 5.0
    assert apply_event(started, Event.READY, 6.0).state is State.ACTIVE
    assert not apply_event(started, Event.READY, 6.0).start_pending
    failed = apply_event(started, Event.ERROR, 6.0, message="boom", ext_data={"a": "b"})
    assert failed.state is State.FAILED and not failed.start_pending
    assert failed.message == "boom" and failed.ext_data == {"a": "b"}


def test_status_round_trips_through_dict():
    status = FunctionStatus("f", State.FAILED, Event.ERROR, {"Ready": "False/X/y"}, "m", 3.5, True)
    assert FunctionStatus.from_dict(status.to_dict()) == status
    fresh = FunctionStatus.initial("g", 1.0)
    assert FunctionStatus.from_dict(fresh.to_dict()) == fresh


@given(st.lists(st.sampled_from(list(Event)), max_size=60))
def test_random_event_sequences_stay_in_defined_states(events):
    status = FunctionStatus.initial("f", 0.0)
    for index, event in enumerate(events):
        try:
            after = apply_event(status, event, float(index))
        except InvalidEvent:
            assert (status.state, event) not in TRANSITIONS
            continue
        assert after.state in State
        assert after.state is TRANSITIONS[(status.state, event)]
        status = after
        if status.state is State.DESTROYED:
            # terminal: every event is refused from here on
            for later in Event:
                with pytest.raises(InvalidEvent):
                    apply_event(status, later, 0.0)
            break


def test_operator_events_are_the_admin_apis_four():
    from faastwist.model.fsm import OPERATOR_EVENTS

    assert OPERATOR_EVENTS == {Event.START, Event.STOP, Event.UPDATE, Event.DELETE}


def test_invalid_event_names_the_event_and_the_state():
    with pytest.raises(InvalidEvent) as info:
        next_state(State.ACTIVE, Event.START)
    assert info.value.event is Event.START and info.value.state is State.ACTIVE


def test_a_new_status_and_a_sparse_record_have_the_documented_defaults():
    for status in (FunctionStatus("f"), FunctionStatus.from_dict({"name": "f", "state": "initial"})):
        assert status.state is State.INITIAL and status.event is None
        assert status.ext_data == {} and status.message == ""
        assert status.updated == 0.0 and status.start_pending is False


def test_start_pending_is_kept_by_a_pending_verdict_and_cleared_by_the_others():
    # a record with a start waiting in initial (as stored): "pending" is no verdict there
    started = FunctionStatus("f", State.INITIAL, Event.START, start_pending=True)
    still = apply_event(started, Event.PENDING, 2.0)
    assert still.state is State.INITIAL and still.start_pending is True
    for event, state in ((Event.READY, State.ACTIVE), (Event.ERROR, State.FAILED),
                         (Event.UPDATE, State.INITIAL), (Event.DELETE, State.DESTROYED)):
        after = apply_event(still, event, 3.0)
        assert after.state is state and after.start_pending is False, event
    # inactive -> start stays inactive until the provider answers; pending there is the
    # verdict "it did not come up": failed, and the start is over
    waiting = apply_event(FunctionStatus("f", State.INACTIVE), Event.START, 1.0)
    assert waiting.state is State.INACTIVE and waiting.start_pending is True
    verdict = apply_event(waiting, Event.PENDING, 2.0)
    assert verdict.state is State.FAILED and verdict.start_pending is False
    stopped = apply_event(apply_event(waiting, Event.READY, 2.0), Event.STOP, 3.0)
    assert stopped.state is State.INACTIVE and stopped.start_pending is False


def test_a_rollouts_progress_is_under_extdata_rollout() -> None:
    """README: extData.rollout is ``in progress``, then ``failed`` or gone."""
    from faastwist.model.fsm import ROLLOUT_KEY

    assert ROLLOUT_KEY == "rollout"


def test_a_record_written_before_created_existed_reads_as_created_0() -> None:
    assert FunctionStatus.from_dict({"name": "a", "state": "active"}).created == 0.0
    assert FunctionStatus("a").created == 0.0
    assert FunctionStatus.initial("a", 7.0).created == 7.0


def test_only_an_event_that_changes_nothing_returns_the_same_record() -> None:
    """The reconciler applies an event per function per pass: when nothing changes the
    record itself comes back (no copy, no write); any change gives a new record."""
    ready = apply_event(FunctionStatus("a", State.INACTIVE, updated=5.0), Event.READY, 5.0)
    assert apply_event(ready, Event.READY, 5.0) is ready
    # the state changes although the event is the one before (FAILED -READY-> INITIAL
    # -READY-> ACTIVE), at the same instant
    initial = apply_event(FunctionStatus("a", State.FAILED, updated=5.0), Event.READY, 5.0)
    assert initial.state is State.INITIAL
    assert apply_event(initial, Event.READY, 5.0).state is State.ACTIVE
    # the same state, but another event, a message, extData, start_pending or a later time
    assert apply_event(ready, Event.PENDING, 5.0).event is Event.PENDING  # ACTIVE stays
    assert apply_event(ready, Event.READY, 5.0, message="m").message == "m"
    assert dict(apply_event(ready, Event.READY, 5.0, ext_data={"k": "v"}).ext_data) == {"k": "v"}
    pending = attrs.evolve(ready, start_pending=True)
    assert apply_event(pending, Event.READY, 5.0).start_pending is False
    assert apply_event(ready, Event.READY, 6.0).updated == 6.0


def test_the_epoch_counts_the_operators_events_only() -> None:
    """Nodes report the epoch they acted on; the leader takes a verdict only from
    reports of the current one, so only the operator's intent may move it."""
    status = FunctionStatus.initial("f", 1.0)
    assert status.epoch == 0
    for event, epoch in ((Event.READY, 0), (Event.STOP, 1), (Event.PENDING, 1),
                         (Event.UPDATE, 2), (Event.READY, 2), (Event.STOP, 3),
                         (Event.START, 4), (Event.READY, 4), (Event.ERROR, 4)):
        status = apply_event(status, event, 2.0)
        assert status.epoch == epoch, event
    assert FunctionStatus.from_dict(status.to_dict()) == status
    older = {k: v for k, v in status.to_dict().items() if k != "epoch"}
    assert FunctionStatus.from_dict(older).epoch == 0   # a record from before epochs
