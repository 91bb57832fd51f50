"""The gate's per-function counts of a worker, sent to the main process as deltas.

A worker keeps its counts as plain integers (``FunctionCounts``), like a one-process
gate. Every second, and once more after it drained, it sends what changed since the
previous report; the main process adds each delta into its own ``FunctionCounts``
(the ones the admin port's /metrics exports), so the node has one view whatever the
number of workers, and a counter stays monotonic when a worker dies and is replaced:
what the dead worker reported is already in the main's totals. The in-flight gauge is
a delta too; the main subtracts what a dead worker still had in flight.

Delta shape, per function name: ``s`` started, ``a`` in flight, ``i``/``o`` body bytes
in/out, ``c`` {code: [count, seconds, bucket...]}, ``e`` {kind: n}, ``r`` refused by
the rate limit, ``u`` refused without a valid key. Absent keys are zero.
"""

from __future__ import annotations

from typing import Any

from faastwist.metrics import BUCKETS, FunctionCounts, Metrics

Delta = dict[str, dict[str, Any]]
_NOTHING: tuple[int, int, int, int, dict[int, list[Any]], dict[str, int]] = (0, 0, 0, 0, {}, {})


def _refusals(counter: Any) -> dict[str, float]:
    """function -> count of a prometheus_client counter labelled by function_name."""
    found: dict[str, float] = {}
    for family in counter.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                found[sample.labels["function_name"]] = sample.value
    return found


class CountsReporter:
    """Worker side: what changed in ``metrics`` since the last ``delta()``."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        #: name -> (started, active, bytes_in, bytes_out, codes copy, errors copy)
        self._sent: dict[str, tuple[int, int, int, int, dict[int, list[Any]], dict[str, int]]] = {}
        self._refused: dict[str, tuple[float, float]] = {}

    def delta(self) -> Delta:
        out: Delta = {}
        for name, f in list(self.metrics.gate.functions.items()):
            old = self._sent.get(name) or _NOTHING
            now = (f.started, f.active, f.bytes_in, f.bytes_out, f.codes, f.errors)
            if old[:4] == now[:4] and old[4] == f.codes and old[5] == f.errors:
                continue
            entry: dict[str, Any] = {}
            for key, current, sent in (("s", now[0], old[0]), ("a", now[1], old[1]),
                                       ("i", now[2], old[2]), ("o", now[3], old[3])):
                if current != sent:
                    entry[key] = current - sent
            codes: dict[str, list[Any]] = {}
            for code, cell in f.codes.items():
                previous = old[4].get(code)
                if previous != cell:
                    base = previous or [0] * len(cell)
                    codes[str(code)] = [a - b for a, b in zip(cell, base)]
            if codes:
                entry["c"] = codes
            errors = {kind: n - old[5].get(kind, 0) for kind, n in f.errors.items()
                      if n != old[5].get(kind, 0)}
            if errors:
                entry["e"] = errors
            self._sent[name] = (f.started, f.active, f.bytes_in, f.bytes_out,
                                {c: list(v) for c, v in f.codes.items()}, dict(f.errors))
            out[name] = entry
        limited = _refusals(self.metrics.rate_limited)
        unauthorized = _refusals(self.metrics.unauthorized)
        for name in set(limited) | set(unauthorized):
            now_r = (limited.get(name, 0.0), unauthorized.get(name, 0.0))
            old_r = self._refused.get(name, (0.0, 0.0))
            if now_r != old_r:
                entry = out.setdefault(name, {})
                if now_r[0] != old_r[0]:
                    entry["r"] = now_r[0] - old_r[0]
                if now_r[1] != old_r[1]:
                    entry["u"] = now_r[1] - old_r[1]
                self._refused[name] = now_r
        return out


def _number(value: Any, what: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what} must be a number, got {value!r}")
    return value


def apply_delta(metrics: Metrics, delta: Any, active: dict[str, int]) -> None:
    """Main side: add a worker's ``delta`` into ``metrics``; ``active`` keeps that
    worker's share of each function's in-flight gauge (to take back when it dies).
    Raises ValueError on a malformed delta before changing anything."""
    if not isinstance(delta, dict):
        raise ValueError("counts must be an object")
    width = 2 + len(BUCKETS)
    checked: list[tuple[str, dict[str, Any]]] = []
    for name, entry in delta.items():
        if not isinstance(entry, dict):
            raise ValueError(f"counts of {name!r} must be an object")
        for key in ("s", "a", "i", "o", "r", "u"):
            _number(entry.get(key, 0), f"{name}.{key}")
        for code, cell in (entry.get("c") or {}).items():
            if not str(code).isdigit() or not isinstance(cell, list) or len(cell) != width:
                raise ValueError(f"{name}.c.{code} must be a list of {width} numbers")
            for n in cell:
                _number(n, f"{name}.c.{code}")
        for kind, n in (entry.get("e") or {}).items():
            _number(n, f"{name}.e.{kind}")
        checked.append((name, entry))
    for name, entry in checked:
        f: FunctionCounts = metrics.gate.counts(name)
        f.started += entry.get("s", 0)
        moved = entry.get("a", 0)
        if moved:
            f.active += moved
            active[name] = active.get(name, 0) + moved
        f.bytes_in += entry.get("i", 0)
        f.bytes_out += entry.get("o", 0)
        for code, cell in (entry.get("c") or {}).items():
            mine = f.codes.get(int(code))
            if mine is None:
                mine = f.codes[int(code)] = [0, 0.0] + [0] * len(BUCKETS)
            for index, n in enumerate(cell):
                mine[index] += n
        for kind, n in (entry.get("e") or {}).items():
            f.errors[kind] = f.errors.get(kind, 0) + n
        if entry.get("r"):
            metrics.rate_limited.labels(name).inc(entry["r"])
        if entry.get("u"):
            metrics.unauthorized.labels(name).inc(entry["u"])


def forget_active(metrics: Metrics, active: dict[str, int]) -> None:
    """A worker is gone: its requests are no longer in flight."""
    for name, n in active.items():
        if n:
            metrics.gate.counts(name).active -= n
    active.clear()
