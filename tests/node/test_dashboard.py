"""conf/grafana-dashboard.json stays in step with metrics.py: every series a panel
queries is one faastwist exports, with labels it really has; the layout is sound."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from faastwist.metrics import Metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "conf" / "grafana-dashboard.json"
#: labels Prometheus adds at scrape time, and the histogram bucket label
SCRAPE_LABELS = {"instance", "job", "le"}
PROMQL_WORDS = {"sum", "by", "rate", "increase", "histogram_quantile", "count", "max",
                "label_values", "without", "avg", "min"}


def exported() -> dict[str, set[str]]:
    """Sample name -> label names, for every series Metrics exports."""
    metrics = Metrics()
    out: dict[str, set[str]] = {}
    registry = metrics.registry
    for collector in set(registry._collector_to_names):  # every registered metric
        labels = set(getattr(collector, "_labelnames", ()) or
                     getattr(getattr(collector, "counter", None), "_labelnames", ()))
        for family in collector.collect():
            # a custom collector (the gate's GateCollector) names its labels per family
            family_labels = labels | set(getattr(family, "_labelnames", ()))
            if family.type == "counter":
                names = [family.name + "_total"]
            elif family.type == "histogram":
                names = [family.name + s for s in ("_bucket", "_sum", "_count")]
            else:
                names = [family.name]
            for name in names:
                out[name] = family_labels | ({"le"} if name.endswith("_bucket") else set())
    return out


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _exprs(dashboard: dict) -> list[tuple[str, str]]:
    found = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", ()):
            found.append((panel["title"], target["expr"]))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            found.append((variable["name"], variable["query"]["query"]))
    return found


def test_every_queried_series_is_exported_with_those_labels(dashboard) -> None:
    series = exported()
    used: set[str] = set()
    for title, expr in _exprs(dashboard):
        assert expr.count("(") == expr.count(")"), title
        assert expr.count("{") == expr.count("}"), title
        for name, selector in re.findall(r"\b([a-z_]+_[a-z_]+)\b(\{[^}]*\})?", expr):
            if name in PROMQL_WORDS or name.startswith("__") or name in SCRAPE_LABELS:
                continue
            if name in {"function_name", "code", "kind", "state", "verb", "op", "result",
                        "event", "from", "to"}:
                continue  # a label in by (...)
            assert name in series, f"{title}: {name} is not exported by faastwist"
            used.add(name)
            for key in re.findall(r"(\w+)\s*[=!]~?", selector):
                assert key in series[name] | SCRAPE_LABELS, f"{title}: {name} has no label {key}"
        for group in re.findall(r"by \(([^)]*)\)", expr):
            for label in (g.strip() for g in group.split(",")):
                assert label in set().union(*series.values()) | SCRAPE_LABELS, (title, label)
    # the panels the issue asks for are there
    for needed in ("gateway_function_invocation_total", "gateway_functions_seconds_bucket",
                   "faastwist_gate_upstream_errors_total", "faastwist_function_state",
                   "faastwist_reconcile_pass_seconds_bucket",
                   "faastwist_provider_api_calls_total", "faastwist_leader"):
        assert needed in used


def test_layout_and_variables(dashboard) -> None:
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps another panel"
                cells.add((x, y))
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel["targets"], panel["title"]
    names = {v["name"] for v in dashboard["templating"]["list"]}
    assert names == {"datasource", "instance", "function"}
    quantiles = [t["expr"] for p in panels if p["title"] == "Latency p50 / p90 / p99"
                 for t in p["targets"]]
    assert [e.split(",")[0] for e in quantiles] == [
        "histogram_quantile(0.5", "histogram_quantile(0.9", "histogram_quantile(0.99"]
