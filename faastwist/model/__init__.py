"""What a function is (its spec) and which states it moves through (the FSM).

Every subsystem shares these records, so they sit below all of them: the store keeps
them, providers run them, the gate routes them, the lifecycle moves them.
"""

from faastwist.model.fsm import Event, FunctionStatus, InvalidEvent, State, apply_event
from faastwist.model.spec import FunctionSpec, SpecError

__all__ = ["Event", "FunctionSpec", "FunctionStatus", "InvalidEvent", "SpecError", "State",
           "apply_event"]
