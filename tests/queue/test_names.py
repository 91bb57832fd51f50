"""The queue's subject names: a call's subject names its function (the wake-ups and the
sweep read it back)."""

from __future__ import annotations

from faastwist.queue.jetstream import Names


def test_function_of_call_reads_back_the_function_of_any_call_subject() -> None:
    for controller in ("faascontroller", "c", "ctl-2"):
        names = Names(controller)
        for function in ("fn", "f", "a-b_c", "f00042"):
            assert names.function_of_call(names.call_subject(function, "3fa9-17")) == function
            assert names.function_of_call(names.call_subject(function)) == function
