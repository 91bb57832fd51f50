"""Prometheus metrics, in one registry per service so tests never share state.

Gate metric names and labels follow OpenFaaS's gateway where the meaning is the
same (``gateway_function_invocation_total{function_name,code}`` and friends), so
existing dashboards work; the control plane's are ``faastwist_*``.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from faastwist.model.fsm import State


class _BareNameAlias(Collector):
    """Also exports a counter under its bare name, without ``_total``.

    OpenFaaS's gateway (Go client) exports ``gateway_function_invocation_started``
    with no suffix, and dashboards and idlers query that name; prometheus_client
    always appends ``_total`` to a counter, so the alias is an untyped series with
    the counter's values.
    """

    def __init__(self, counter: Counter) -> None:
        self.counter = counter

    def collect(self) -> Iterator[Metric]:
        for family in self.counter.collect():
            alias = Metric(family.name, family.documentation, "unknown")
            for sample in family.samples:
                if sample.name == family.name + "_total":
                    alias.add_sample(family.name, sample.labels, sample.value)
            yield alias


class Metrics:
    """Every metric faastwist exports; pass one instance to each component."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # gate (OpenFaaS-compatible names)
        self.invocations = Counter(
            "gateway_function_invocation", "Function invocations by status code",
            ["function_name", "code"], registry=r)
        self.invocation_seconds = Histogram(
            "gateway_functions_seconds", "Function invocation time taken",
            ["function_name", "code"], registry=r)
        self.invocation_started = Counter(
            "gateway_function_invocation_started", "Function invocations started",
            ["function_name"], registry=r)
        r.register(_BareNameAlias(self.invocation_started))
        self.inflight = Gauge(
            "gateway_function_inflight_requests", "Requests in flight per function",
            ["function_name"], registry=r)
        self.upstream_errors = Counter(
            "faastwist_gate_upstream_errors", "Upstream failures by kind",
            ["function_name", "kind"], registry=r)
        self.rate_limited = Counter(
            "faastwist_gate_rate_limited", "Requests refused with 429 by the function's "
            "rateLimit (per node)", ["function_name"], registry=r)
        self.unauthorized = Counter(
            "faastwist_gate_unauthorized", "Requests refused with 401 (no or a wrong "
            "function key)", ["function_name"], registry=r)
        self.bytes_in = Counter(
            "faastwist_gate_request_bytes", "Request body bytes received from clients",
            ["function_name"], registry=r)
        self.bytes_out = Counter(
            "faastwist_gate_response_bytes", "Response body bytes sent to clients",
            ["function_name"], registry=r)
        self.replicas = Gauge(
            "gateway_service_count", "Ready replicas per function",
            ["function_name"], registry=r)
        # control plane
        self.function_state = Gauge(
            "faastwist_function_state", "1 for the current state of each function",
            ["function_name", "state"], registry=r)
        self.transitions = Counter(
            "faastwist_fsm_transitions", "FSM transitions applied",
            ["from", "to", "event"], registry=r)
        self.reconcile_seconds = Histogram(
            "faastwist_reconcile_pass_seconds", "Duration of one reconcile pass",
            registry=r)
        self.reconcile_errors = Counter(
            "faastwist_reconcile_errors", "Reconcile passes that ended with an error",
            ["kind"], registry=r)
        self.provider_calls = Counter(
            "faastwist_provider_api_calls", "Provider API calls", ["verb", "code"],
            registry=r)
        self.store_operations = Counter(
            "faastwist_store_operations", "Store operations", ["op", "result"],
            registry=r)
        self.watch_reconnects = Counter(
            "faastwist_store_watch_reconnects", "Store watch restarts", registry=r)
        self.leader = Gauge(
            "faastwist_leader", "1 when this node runs the reconciler", registry=r)
        # asynchronous invocations
        self.async_queued = Gauge(
            "faastwist_async_queued", "Calls not finished yet: waiting, running or between attempts (cluster-wide)",
            ["function_name"], registry=r)
        self.async_inflight = Gauge(
            "faastwist_async_inflight", "Queued calls running on this node",
            ["function_name"], registry=r)
        self.async_oldest = Gauge(
            "faastwist_async_oldest_seconds", "Age of the oldest unfinished queued call",
            ["function_name"], registry=r)
        self.async_accepted = Counter(
            "faastwist_async_accepted", "Calls stored in the queue (202 answered)",
            ["function_name"], registry=r)
        self.async_done = Counter(
            "faastwist_async_completed", "Queued calls finished, by outcome",
            ["function_name", "outcome"], registry=r)
        self.async_retries = Counter(
            "faastwist_async_retries", "Queued calls scheduled for another attempt",
            ["function_name"], registry=r)
        self.async_dead = Counter(
            "faastwist_async_dead_letters", "Queued calls moved to the dead letters",
            ["function_name"], registry=r)
        self.async_callbacks = Counter(
            "faastwist_async_callbacks", "Callback deliveries, by result",
            ["function_name", "result"], registry=r)

    def set_state(self, name: str, state: State | None) -> None:
        """Export ``state`` as the one current state of ``name`` (None: forget it)."""
        for candidate in State:
            if state is None:
                try:
                    self.function_state.remove(name, candidate.value)
                except KeyError:
                    pass
            else:
                self.function_state.labels(name, candidate.value).set(
                    1 if candidate is state else 0)
