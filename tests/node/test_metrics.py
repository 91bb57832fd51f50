"""Per-function gauges exported at scrape time (no labelled child per function)."""

from __future__ import annotations

from prometheus_client import generate_latest

from faastwist.metrics import Metrics
from faastwist.model.fsm import State


def test_ready_replicas_are_read_from_the_dict_at_each_scrape() -> None:
    metrics = Metrics()
    metrics.replicas["fn-a"] = 2
    metrics.replicas["fn-b"] = 0
    sample = metrics.registry.get_sample_value
    assert sample("gateway_service_count", {"function_name": "fn-a"}) == 2
    assert sample("gateway_service_count", {"function_name": "fn-b"}) == 0
    text = generate_latest(metrics.registry).decode()
    assert "# TYPE gateway_service_count gauge" in text
    assert 'gateway_service_count{function_name="fn-a"} 2.0' in text
    metrics.replicas["fn-a"] = 3
    metrics.replicas.pop("fn-b")
    assert sample("gateway_service_count", {"function_name": "fn-a"}) == 3
    assert sample("gateway_service_count", {"function_name": "fn-b"}) is None


def test_function_states_stay_exported_beside_the_replicas() -> None:
    metrics = Metrics()
    metrics.replicas["fn"] = 1
    metrics.states["fn"] = State.ACTIVE
    sample = metrics.registry.get_sample_value
    assert sample("faastwist_function_state", {"function_name": "fn", "state": "active"}) == 1
    assert sample("gateway_service_count", {"function_name": "fn"}) == 1
