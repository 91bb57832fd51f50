"""OpenFaaS's scaling labels, read once, and the arithmetic both autoscalers share.

A deployment through ``/system/functions`` carries its scaling in labels. Pro-style
labels (``com.openfaas.scale.type``/``.target``/``.target-proportion``) become the spec's
autoScaleType/autoScaleValue, which the built-in autoscaler and Knative already follow:
``rps`` and ``cpu`` keep their names, ``capacity`` (in-flight requests per replica) is
our ``concurrency``, and the value is ``target * target-proportion`` (OpenFaaS scales
when the load per replica passes that proportion of the target). Defaults are OpenFaaS
Pro's: rps, 50, 0.90. ``com.openfaas.scale.factor`` is CE's: the step of alert-driven
scaling in percent of max (default 20), and 0 turns autoscaling off.
"""

from __future__ import annotations

import math
from decimal import Decimal, InvalidOperation
from enum import Enum
from typing import Mapping

import attrs

from faastwist.model.spec import AutoScaleType, FunctionSpec, SpecError

SCALE_TYPE = "com.openfaas.scale.type"
SCALE_TARGET = "com.openfaas.scale.target"
SCALE_PROPORTION = "com.openfaas.scale.target-proportion"
SCALE_FACTOR = "com.openfaas.scale.factor"

DEFAULT_TYPE = "rps"
DEFAULT_TARGET = Decimal(50)
DEFAULT_PROPORTION = Decimal("0.90")
DEFAULT_FACTOR = 20
#: the max an alert scales to when the function names none (OpenFaaS's default max)
DEFAULT_ALERT_MAX = 20

#: OpenFaaS's names -> our autoScaleType
_TYPES = {"rps": AutoScaleType.RPS, "capacity": AutoScaleType.CONCURRENCY,
          "cpu": AutoScaleType.CPU}


class AlertStatus(str, Enum):
    FIRING = "firing"
    RESOLVED = "resolved"


def _number(labels: Mapping[str, str], key: str, default: Decimal) -> Decimal:
    raw = labels.get(key)
    if raw is None:
        return default
    try:
        value = Decimal(raw.strip())
    except InvalidOperation:
        raise SpecError(f"labels.{key}", f"must be a positive number, got {raw!r}") from None
    if not value.is_finite() or value <= 0:
        raise SpecError(f"labels.{key}", f"must be a positive number, got {raw!r}")
    return value


def scale_settings(labels: Mapping[str, str]) -> tuple[AutoScaleType, str]:
    """(autoScaleType, autoScaleValue) for a deployment's labels; SpecError names the
    label that is wrong."""
    raw_type = labels.get(SCALE_TYPE, DEFAULT_TYPE).strip().lower()
    if raw_type not in _TYPES:
        raise SpecError(f"labels.{SCALE_TYPE}", f"must be one of rps, capacity, cpu, got "
                                                f"{labels.get(SCALE_TYPE)!r}")
    target = _number(labels, SCALE_TARGET, DEFAULT_TARGET)
    proportion = _number(labels, SCALE_PROPORTION, DEFAULT_PROPORTION)
    if proportion > 1:
        raise SpecError(f"labels.{SCALE_PROPORTION}", f"must be a fraction from 0 to 1 (0.9 "
                                                      f"= 90% of the target), got "
                                                      f"{labels[SCALE_PROPORTION]!r}")
    factor(labels)   # validated now, not at the first alert
    value = (target * proportion).normalize()
    return _TYPES[raw_type], format(value, "f")


def factor(labels: Mapping[str, str]) -> int:
    """``com.openfaas.scale.factor``: percent of max per alert, 0-100 (0: no autoscaling)."""
    raw = labels.get(SCALE_FACTOR)
    if raw is None:
        return DEFAULT_FACTOR
    text = raw.strip()
    if not text.isdigit() or int(text) > 100:
        raise SpecError(f"labels.{SCALE_FACTOR}", f"must be a whole number 0-100 (percent of "
                                                  f"max per alert), got {raw!r}")
    return int(text)


def autoscaling_on(spec: FunctionSpec) -> bool:
    """False when ``com.openfaas.scale.factor`` is 0 (OpenFaaS's way to turn it off)."""
    try:
        return factor(spec.labels) != 0
    except SpecError:
        return True


@attrs.frozen
class AlertStep:
    """What an alert does to one function: from how many replicas to how many, and why."""

    current: int
    wanted: int
    why: str


def alert_step(status: AlertStatus, current: int, minimum: int, maximum: int,
               percent: int) -> AlertStep:
    """OpenFaaS CE's rule: a firing alert adds ``ceil(max * factor / 100)`` replicas up
    to max; a resolved one returns to min. Max 0 (unbounded) counts as
    ``DEFAULT_ALERT_MAX``; a factor of 0 changes nothing."""
    upper = maximum or DEFAULT_ALERT_MAX
    if status is AlertStatus.RESOLVED:
        return AlertStep(current, minimum, "alert resolved: back to min")
    step = math.ceil(upper * percent / 100)
    if step <= 0:
        return AlertStep(current, current, f"alert firing, but {SCALE_FACTOR} is 0")
    wanted = max(minimum, min(current + step, upper))
    return AlertStep(current, wanted, f"alert firing: +{step} ({percent}% of max {upper})")
