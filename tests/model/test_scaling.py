"""OpenFaaS's scaling labels and the alert arithmetic (OpenFaaS CE's CalculateReplicas)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from faastwist.admin.openfaas_model import deployment_to_spec
from faastwist.model.scaling import AlertStatus, alert_step, scale_settings
from faastwist.model.spec import AutoScaleType, SpecError
from faastwist.providers.cpusample import group_cpu_seconds, parse_stat

FIRING, RESOLVED = AlertStatus.FIRING, AlertStatus.RESOLVED


@pytest.mark.parametrize("status, current, low, high, factor, wanted", [
    (FIRING, 1, 1, 4, 20, 2),      # ceil(4 * 20 / 100) = 1 step
    (FIRING, 2, 1, 4, 20, 3),
    (FIRING, 4, 1, 4, 20, 4),      # capped at max
    (FIRING, 1, 1, 10, 20, 3),     # step 2
    (FIRING, 1, 1, 10, 100, 10),
    (FIRING, 1, 1, 0, 20, 5),      # no max: OpenFaaS's default max 20, step 4
    (FIRING, 3, 1, 4, 0, 3),       # factor 0: no change
    (FIRING, 0, 0, 4, 20, 1),      # from zero
    (FIRING, 1, 3, 4, 20, 3),      # never below min
    (RESOLVED, 4, 1, 4, 20, 1),
    (RESOLVED, 4, 2, 4, 0, 2),
])
def test_alert_step(status, current, low, high, factor, wanted) -> None:
    step = alert_step(status, current, low, high, factor)
    assert (step.current, step.wanted) == (current, wanted)
    assert step.why.startswith("alert " + status.value)


@pytest.mark.parametrize("labels, kind, value", [
    ({}, AutoScaleType.RPS, "45"),
    ({"com.openfaas.scale.type": "capacity", "com.openfaas.scale.target": "10"},
     AutoScaleType.CONCURRENCY, "9"),
    ({"com.openfaas.scale.type": "CPU", "com.openfaas.scale.target": "900",
      "com.openfaas.scale.target-proportion": "0.5"}, AutoScaleType.CPU, "450"),
    ({"com.openfaas.scale.target": "5", "com.openfaas.scale.target-proportion": "1"},
     AutoScaleType.RPS, "5"),
    ({"com.openfaas.scale.target": "3", "com.openfaas.scale.target-proportion": "0.7"},
     AutoScaleType.RPS, "2.1"),
])
def test_labels_become_the_specs_scale_type_and_value(labels, kind, value) -> None:
    assert scale_settings(labels) == (kind, value)
    spec = deployment_to_spec({"service": "f", "envProcess": "cat", "labels": labels},
                              "openfaas-fn")
    assert (spec.auto_scale_type, spec.auto_scale_value) == (kind, value)
    assert dict(spec.labels) == labels       # kept as given


@pytest.mark.parametrize("labels, field", [
    ({"com.openfaas.scale.type": "memory"}, "labels.com.openfaas.scale.type"),
    ({"com.openfaas.scale.target": "0"}, "labels.com.openfaas.scale.target"),
    ({"com.openfaas.scale.target": "lots"}, "labels.com.openfaas.scale.target"),
    ({"com.openfaas.scale.target-proportion": "1.5"},
     "labels.com.openfaas.scale.target-proportion"),
    ({"com.openfaas.scale.target-proportion": "nan"},
     "labels.com.openfaas.scale.target-proportion"),
    ({"com.openfaas.scale.factor": "101"}, "labels.com.openfaas.scale.factor"),
    ({"com.openfaas.scale.factor": "-1"}, "labels.com.openfaas.scale.factor"),
])
def test_bad_labels_name_the_label(labels, field) -> None:
    with pytest.raises(SpecError) as caught:
        deployment_to_spec({"service": "f", "envProcess": "cat", "labels": labels},
                           "openfaas-fn")
    assert str(caught.value).startswith(field + ":"), caught.value


def test_parse_stat_counts_from_the_last_bracket() -> None:
    line = ("123 (a) b) (c) S 1 777 777 0 -1 4194304 1 0 0 0 250 50 30 20 20 0 1 0 1 1 1 "
            "18446744073709551615")
    group, seconds = parse_stat(line)
    ticks = os.sysconf("SC_CLK_TCK")
    assert group == 777 and seconds == pytest.approx(350 / ticks)
    assert parse_stat("garbage") is None and parse_stat("1 (x) S 1") is None


def test_group_cpu_seconds_measures_a_real_busy_group() -> None:
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"],
                            start_new_session=True)
    try:
        first = group_cpu_seconds([busy.pid])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            later = group_cpu_seconds([busy.pid])
            if later.get(busy.pid, 0) - first.get(busy.pid, 0) >= 0.2:
                break
            time.sleep(0.05)
        assert later[busy.pid] - first.get(busy.pid, 0) >= 0.2
        assert group_cpu_seconds([os.getpgrp() + 10**7]) == {}   # no such group
    finally:
        busy.kill()
        busy.wait()
