"""The function lifecycle FSM: Easegress's table, as data, plus the persisted record.

``start`` from inactive keeps the state inactive and sets ``start_pending``; the
reconciler then asks the provider and applies ready/error/pending. The pending start
lives in the store, so a restart does not lose it.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Mapping

import attrs


class State(str, Enum):
    INITIAL = "initial"
    ACTIVE = "active"
    INACTIVE = "inactive"
    FAILED = "failed"
    DESTROYED = "destroyed"


class Event(str, Enum):
    READY = "ready"
    PENDING = "pending"
    ERROR = "error"
    START = "start"
    STOP = "stop"
    UPDATE = "update"
    DELETE = "delete"


S, E = State, Event

#: (state, event) -> next state; a pair that is absent is refused.
TRANSITIONS: Mapping[tuple[State, Event], State] = {
    (S.INITIAL, E.READY): S.ACTIVE,
    (S.INITIAL, E.PENDING): S.INITIAL,
    (S.INITIAL, E.ERROR): S.FAILED,
    (S.INITIAL, E.UPDATE): S.INITIAL,
    (S.INITIAL, E.DELETE): S.DESTROYED,
    (S.ACTIVE, E.READY): S.ACTIVE,
    (S.ACTIVE, E.PENDING): S.FAILED,
    (S.ACTIVE, E.ERROR): S.FAILED,
    (S.ACTIVE, E.STOP): S.INACTIVE,
    (S.INACTIVE, E.READY): S.ACTIVE,
    (S.INACTIVE, E.PENDING): S.FAILED,
    (S.INACTIVE, E.ERROR): S.FAILED,
    (S.INACTIVE, E.START): S.INACTIVE,
    (S.INACTIVE, E.UPDATE): S.INITIAL,
    (S.INACTIVE, E.DELETE): S.DESTROYED,
    (S.FAILED, E.READY): S.INITIAL,
    (S.FAILED, E.PENDING): S.FAILED,
    (S.FAILED, E.ERROR): S.FAILED,
    (S.FAILED, E.UPDATE): S.INITIAL,
    (S.FAILED, E.DELETE): S.DESTROYED,
}

#: extData key of a rolling update's progress while the previous version serves
ROLLOUT_KEY = "rollout"

#: Events an operator sends through the admin API; the others come from the provider.
OPERATOR_EVENTS = frozenset({E.START, E.STOP, E.UPDATE, E.DELETE})


class InvalidEvent(Exception):
    """The event is not allowed in the current state (the admin API answers 409)."""

    def __init__(self, event: Event, state: State) -> None:
        super().__init__(f"invalid event: {event.value}, current state: {state.value}")
        self.event = event
        self.state = state


def next_state(state: State, event: Event) -> State:
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise InvalidEvent(event, state) from None


@attrs.frozen
class FunctionStatus:
    """The persisted FSM record of one function."""

    name: str
    state: State = State.INITIAL
    event: Event | None = None
    ext_data: Mapping[str, str] = attrs.field(factory=dict)
    message: str = ""
    updated: float = 0.0
    start_pending: bool = False
    created: float = 0.0  # when the function was created (OpenFaaS's createdAt)
    #: counts the operator's events (start, stop, update, delete, rollouts): a node's
    #: report names the epoch it acted on, so the leader never takes a report made
    #: before the latest intent (the state as it was before a stop) for a verdict on it
    epoch: int = 0

    @classmethod
    def initial(cls, name: str, now: float) -> "FunctionStatus":
        return cls(name=name, state=State.INITIAL, updated=now, created=now)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state.value,
            "event": self.event.value if self.event else "",
            "extData": dict(self.ext_data),
            "message": self.message,
            "updated": self.updated,
            "startPending": self.start_pending,
            "created": self.created,
            "epoch": self.epoch,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FunctionStatus":
        event = data.get("event") or None
        return cls(
            name=data["name"],
            state=State(data["state"]),
            event=Event(event) if event else None,
            ext_data=dict(data.get("extData") or {}),
            message=data.get("message", ""),
            updated=float(data.get("updated", 0.0)),
            start_pending=bool(data.get("startPending", False)),
            created=float(data.get("created", 0.0)),
            epoch=int(data.get("epoch", 0) or 0),
        )


def apply_event(status: FunctionStatus, event: Event, now: float, *,
                message: str | None = None,
                ext_data: Mapping[str, str] | None = None) -> FunctionStatus:
    """The record after ``event``, or InvalidEvent; pure, so it is easy to test.

    ``message``/``ext_data`` replace the old ones when given (provider observations);
    a start request sets ``start_pending``, and any provider verdict clears it.
    """
    new_state = next_state(status.state, event)
    start_pending = status.start_pending
    if event is Event.START:
        start_pending = True
    elif event in (Event.READY, Event.ERROR, Event.STOP, Event.UPDATE, Event.DELETE):
        start_pending = False
    elif event is Event.PENDING and status.state is State.INACTIVE:
        start_pending = False
    epoch = status.epoch + 1 if event in OPERATOR_EVENTS else status.epoch
    if (new_state is status.state and event is status.event and message is None
            and ext_data is None and start_pending == status.start_pending
            and now == status.updated and epoch == status.epoch):
        return status  # nothing changes: no copy (the reconciler's pass, per function)
    return attrs.evolve(
        status,
        state=new_state,
        event=event,
        message=status.message if message is None else message,
        ext_data=status.ext_data if ext_data is None else dict(ext_data),
        updated=now,
        start_pending=start_pending,
        epoch=epoch,
    )
