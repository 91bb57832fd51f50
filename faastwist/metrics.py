"""Prometheus metrics, in one registry per service so tests never share state.

Gate metric names and labels follow OpenFaaS's gateway where the meaning is the
same (``gateway_function_invocation_total{function_name,code}`` and friends), so
existing dashboards work; the control plane's are ``faastwist_*``.

The gate's per-request series are plain integers in ``FunctionCounts`` (one object
per function, a few ``+=`` per request, no lock, no prometheus_client call) that
``GateCollector`` turns into metric families when /metrics is scraped: measured,
prometheus_client's five locked increments per request were about 8% of the gate's
time. prometheus_client still does the exposition. The control plane's metrics are
ordinary prometheus_client objects (they change a few times per second at most)."""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    UnknownMetricFamily,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from faastwist.model.fsm import State


#: gateway_functions_seconds's buckets (prometheus_client's defaults, +Inf last)
BUCKETS = Histogram.DEFAULT_BUCKETS
_BUCKET_LABELS = tuple(floatToGoString(b) for b in BUCKETS)


class FunctionCounts:
    """One function's gate counters as plain numbers; the gate adds to them per request.

    ``codes`` maps a status code to ``[count, seconds_sum, bucket_0, ... bucket_inf]``
    (per-bucket, not cumulative: one ``+= 1`` per request; the collector sums them).
    """

    __slots__ = ("name", "created", "started", "active", "bytes_in", "bytes_out", "codes",
                 "errors")

    def __init__(self, name: str) -> None:
        self.name = name
        self.created = time.time()
        self.started = 0
        self.active = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.codes: dict[int, list[Any]] = {}
        self.errors: dict[str, int] = {}

    def finished(self, code: int, seconds: float) -> None:
        cell = self.codes.get(code)
        if cell is None:
            cell = self.codes[code] = [0, 0.0] + [0] * len(BUCKETS)
        cell[0] += 1
        cell[1] += seconds
        cell[2 + bisect_left(BUCKETS, seconds)] += 1

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


class GateCollector(Collector):
    """Exports every function's ``FunctionCounts`` under OpenFaaS's names at scrape time.

    Families: gateway_function_invocation (counter), gateway_functions_seconds
    (histogram), gateway_function_invocation_started (counter, plus the bare-named
    untyped alias OpenFaaS's dashboards and idlers query), gateway_function_inflight_requests
    (gauge), faastwist_gate_upstream_errors, faastwist_gate_request_bytes and
    faastwist_gate_response_bytes (counters).
    """

    def __init__(self) -> None:
        self.functions: dict[str, FunctionCounts] = {}

    def counts(self, name: str) -> FunctionCounts:
        found = self.functions.get(name)
        if found is None:
            found = self.functions[name] = FunctionCounts(name)
        return found

    def describe(self) -> Iterator[Metric]:
        return self._families(())

    def collect(self) -> Iterator[Metric]:
        return self._families(list(self.functions.values()))

    def _families(self, functions: Any) -> Iterator[Metric]:
        label = ["function_name"]
        invocations = CounterMetricFamily("gateway_function_invocation",
                                          "Function invocations by status code",
                                          labels=["function_name", "code"])
        seconds = HistogramMetricFamily("gateway_functions_seconds",
                                        "Function invocation time taken",
                                        labels=["function_name", "code"])
        started = CounterMetricFamily("gateway_function_invocation_started",
                                      "Function invocations started", labels=label)
        # OpenFaaS's Go gateway exports the started count with no _total suffix, and
        # prometheus_client always appends one to a counter: an untyped alias
        bare = UnknownMetricFamily("gateway_function_invocation_started",
                                   "Function invocations started", labels=label)
        inflight = GaugeMetricFamily("gateway_function_inflight_requests",
                                     "Requests in flight per function", labels=label)
        errors = CounterMetricFamily("faastwist_gate_upstream_errors",
                                     "Upstream failures by kind",
                                     labels=["function_name", "kind"])
        bytes_in = CounterMetricFamily("faastwist_gate_request_bytes",
                                       "Request body bytes received from clients", labels=label)
        bytes_out = CounterMetricFamily("faastwist_gate_response_bytes",
                                        "Response body bytes sent to clients", labels=label)
        for f in functions:
            name, created = f.name, f.created
            for code, cell in sorted(f.codes.items()):
                code_label = str(code)
                invocations.add_metric([name, code_label], cell[0], created=created)
                if not any(cell[2:]):
                    continue  # counted but never timed (only through the counter view)
                running, buckets = 0, []
                for bucket_label, n in zip(_BUCKET_LABELS, cell[2:]):
                    running += n
                    buckets.append((bucket_label, running))
                seconds.add_metric([name, code_label], buckets, cell[1])
            started.add_metric([name], f.started, created=created)
            bare.add_metric([name], f.started)
            inflight.add_metric([name], f.active)
            for kind, n in sorted(f.errors.items()):
                errors.add_metric([name, kind], n, created=created)
            bytes_in.add_metric([name], f.bytes_in, created=created)
            bytes_out.add_metric([name], f.bytes_out, created=created)
        yield from (invocations, seconds, started, bare, inflight, errors, bytes_in,
                    bytes_out)


class _Child:
    """What ``.labels(...)`` of a view returns: prometheus_client's child API over the
    plain counts (for code off the hot path, and tests)."""

    def __init__(self, apply: Any) -> None:
        self._apply = apply

    def inc(self, amount: float = 1) -> None:
        self._apply(amount)

    def observe(self, amount: float) -> None:
        self._apply(amount)

    def set(self, value: float) -> None:
        self._apply(value)


class _CounterView:
    def __init__(self, gate: GateCollector, field: str) -> None:
        self.gate, self.field = gate, field

    def labels(self, name: str, code: str | None = None) -> _Child:
        counts = self.gate.counts(name)
        if self.field == "invocations":
            if code is None:
                raise TypeError("invocations are labelled with their status code")
            status = int(code)

            def apply(amount: float) -> None:
                cell = counts.codes.get(status)
                if cell is None:
                    cell = counts.codes[status] = [0, 0.0] + [0] * len(BUCKETS)
                cell[0] += amount
            return _Child(apply)
        field = self.field
        return _Child(lambda amount: setattr(counts, field, getattr(counts, field) + amount))


class _HistogramView:
    def __init__(self, gate: GateCollector) -> None:
        self.gate = gate

    def labels(self, name: str, code: str) -> _Child:
        counts = self.gate.counts(name)

        def apply(seconds: float) -> None:
            # observe without counting an invocation twice: the counter is separate
            cell = counts.codes.get(int(code))
            if cell is None:
                cell = counts.codes[int(code)] = [0, 0.0] + [0] * len(BUCKETS)
            cell[1] += seconds
            cell[2 + bisect_left(BUCKETS, seconds)] += 1
        return _Child(apply)


class _GaugeView:
    def __init__(self, gate: GateCollector) -> None:
        self.gate = gate

    def labels(self, name: str) -> _Child:
        counts = self.gate.counts(name)
        return _Child(lambda value: setattr(counts, "active", int(value)))


class _ErrorView:
    def __init__(self, gate: GateCollector) -> None:
        self.gate = gate

    def labels(self, name: str, kind: str) -> _Child:
        counts = self.gate.counts(name)

        def apply(amount: float) -> None:
            counts.errors[kind] = counts.errors.get(kind, 0) + int(amount)
        return _Child(apply)


class Metrics:
    """Every metric faastwist exports; pass one instance to each component."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # gate (OpenFaaS-compatible names): plain counts, exported at scrape time
        self.gate = GateCollector()
        r.register(self.gate)
        self.invocations = _CounterView(self.gate, "invocations")
        self.invocation_seconds = _HistogramView(self.gate)
        self.invocation_started = _CounterView(self.gate, "started")
        self.inflight = _GaugeView(self.gate)
        self.upstream_errors = _ErrorView(self.gate)
        self.bytes_in = _CounterView(self.gate, "bytes_in")
        self.bytes_out = _CounterView(self.gate, "bytes_out")
        # refusals (rare by nature): ordinary prometheus_client counters
        self.rate_limited = Counter(
            "faastwist_gate_rate_limited", "Requests refused with 429 by the function's "
            "rateLimit (per node)", ["function_name"], registry=r)
        self.unauthorized = Counter(
            "faastwist_gate_unauthorized", "Requests refused with 401 (no or a wrong "
            "function key)", ["function_name"], registry=r)
        #: name -> ready replicas (process provider); exported at scrape time: a labelled
        #: gauge child per function cost ~60 us each to create, 0.6 s of a 10,000-function
        #: node's start-up
        self.replicas: dict[str, int] = {}
        r.register(_ReplicaCollector(self.replicas))
        # control plane
        #: name -> current State; exported at scrape time (the reconciler sets it for
        #: every function on every pass: 10,000 functions, 50,000 gauge writes)
        self.states: dict[str, State] = {}
        r.register(_StateCollector(self.states))
        self.transitions = Counter(
            "faastwist_fsm_transitions", "FSM transitions applied",
            ["from", "to", "event"], registry=r)
        self.reconcile_seconds = Histogram(
            "faastwist_reconcile_pass_seconds", "Duration of one reconcile pass",
            registry=r)
        self.reconcile_errors = Counter(
            "faastwist_reconcile_errors", "Reconcile passes that ended with an error",
            ["kind"], registry=r)
        self.reconcile_retried = Counter(
            "faastwist_reconcile_retried",
            "Reconcile steps or passes an expected store condition left to the next pass "
            "(conflict, not_found, unavailable)", ["kind"], registry=r)
        self.provider_calls = Counter(
            "faastwist_provider_api_calls", "Provider API calls", ["verb", "code"],
            registry=r)
        self.store_operations = Counter(
            "faastwist_store_operations", "Store operations", ["op", "result"],
            registry=r)
        self.watch_reconnects = Counter(
            "faastwist_store_watch_reconnects", "Store watch restarts", registry=r)
        self.etcd_misses = Counter(
            "faastwist_etcd_member_misses",
            "Calls an etcd member did not answer (refused, timeout, no_leader, error)",
            ["endpoint", "reason"], registry=r)
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
        self.async_refused = Counter(
            "faastwist_async_refused", "Calls the queue refused: the function at its "
            "maxQueued (function-full, 429) or the queue at queue.maxBytes (queue-full, 507)",
            ["function_name", "reason"], registry=r)
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
        if state is None:
            self.states.pop(name, None)
        else:
            self.states[name] = state


class _ReplicaCollector(Collector):
    """gateway_service_count (OpenFaaS's name): ready replicas per function."""

    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily("gateway_service_count", "Ready replicas per function",
                                 labels=["function_name"])

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for name, count in sorted(list(self.counts.items())):  # one copy, then read
            family.add_metric([name], count)
        yield family


class _StateCollector(Collector):
    """faastwist_function_state: 1 for each function's current state, 0 for the others."""

    def __init__(self, states: dict[str, State]) -> None:
        self.states = states

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("faastwist_function_state",
                                "1 for the current state of each function",
                                labels=["function_name", "state"])

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("faastwist_function_state",
                                   "1 for the current state of each function",
                                   labels=["function_name", "state"])
        values = [state.value for state in State]
        for name, current in sorted(list(self.states.items())):  # one copy, then read
            for value in values:
                family.add_metric([name, value], 1 if value == current.value else 0)
        yield family
