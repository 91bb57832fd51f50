"""The lifecycle FSM against DESIGN.md's table, cell by cell, plus random walks."""

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
