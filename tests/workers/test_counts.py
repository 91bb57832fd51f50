"""A worker's counts as deltas, and the main process's one view of them."""

from __future__ import annotations

import json

import pytest
from prometheus_client import generate_latest

from faastwist.metrics import BUCKETS, Metrics
from faastwist.workers.counts import CountsReporter, apply_delta, forget_active


def serve(metrics: Metrics, name: str, code: int, seconds: float, n: int = 1) -> None:
    """What the gate does per request, ``n`` times."""
    counts = metrics.gate.counts(name)
    for _ in range(n):
        counts.started += 1
        counts.bytes_in += 10
        counts.bytes_out += 20
        counts.finished(code, seconds)


def wire(delta: dict) -> dict:
    return json.loads(json.dumps(delta))  # what crosses the channel


def test_only_what_changed_is_sent() -> None:
    worker = Metrics()
    reporter = CountsReporter(worker)
    assert reporter.delta() == {}
    serve(worker, "a", 200, 0.02, 3)
    worker.gate.counts("b")  # known but idle
    first = reporter.delta()
    assert set(first) == {"a"}
    assert first["a"]["s"] == 3 and first["a"]["i"] == 30 and first["a"]["o"] == 60
    assert first["a"]["c"]["200"][0] == 3
    assert reporter.delta() == {}  # nothing new
    serve(worker, "a", 500, 0.5)
    worker.gate.counts("a").active += 2
    worker.gate.counts("a").error("connect")
    worker.rate_limited.labels("a").inc()
    second = reporter.delta()["a"]
    assert second["s"] == 1 and second["a"] == 2 and "200" not in second["c"]
    assert second["c"]["500"][0] == 1 and second["e"] == {"connect": 1} and second["r"] == 1


def test_two_workers_add_up_and_survive_a_restart_monotonic() -> None:
    main = Metrics()
    serve(main, "fn", 200, 0.01, 2)  # the main's own (queued calls it ran)
    workers = [Metrics(), Metrics()]
    reporters = [CountsReporter(m) for m in workers]
    shares: list[dict[str, int]] = [{}, {}]
    serve(workers[0], "fn", 200, 0.01, 5)
    serve(workers[1], "fn", 200, 2.0, 7)
    workers[1].gate.counts("fn").active = 4
    for reporter, share in zip(reporters, shares):
        apply_delta(main, wire(reporter.delta()), share)
    total = main.gate.counts("fn")
    assert total.started == 14 and total.codes[200][0] == 14 and total.active == 4
    assert total.bytes_in == 140
    assert sum(total.codes[200][2:]) == 14  # every request in one bucket
    assert total.codes[200][2 + BUCKETS.index(2.5)] == 7
    # worker 1 dies with 4 in flight: its counts stay, its in-flight share goes
    forget_active(main, shares[1])
    assert total.active == 0 and total.started == 14
    replacement = Metrics()
    serve(replacement, "fn", 200, 0.01, 1)
    apply_delta(main, wire(CountsReporter(replacement).delta()), shares[1])
    assert total.started == 15 and total.codes[200][0] == 15
    page = generate_latest(main.registry).decode()
    assert 'gateway_function_invocation_total{code="200",function_name="fn"} 15.0' in page


@pytest.mark.parametrize("delta", [
    [], {"fn": 3}, {"fn": {"s": "1"}}, {"fn": {"s": True}}, {"fn": {"c": {"200": [1, 2]}}},
    {"fn": {"c": {"x": [0] * (2 + len(BUCKETS))}}}, {"fn": {"e": {"connect": None}}},
    {"ok": {"s": 1}, "fn": {"a": "x"}},
])
def test_a_malformed_delta_changes_nothing(delta) -> None:
    main = Metrics()
    with pytest.raises(ValueError):
        apply_delta(main, delta, {})
    assert main.gate.functions == {}
