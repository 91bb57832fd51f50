"""``POST /system/alert``: OpenFaaS CE's alert-driven autoscaling.

Prometheus evaluates ``APIHighInvocationRate`` over the gate's
``gateway_function_invocation_total``; AlertManager posts its webhook (payload version
4) here, as it does to OpenFaaS's gateway. Each alert names a function in the label
``function_name`` (``name`` or ``name.namespace``): a firing alert adds
``ceil(max * com.openfaas.scale.factor / 100)`` replicas up to max, a resolved one
returns to the function's min (model/scaling.py). Replicas are set the way
``/system/scale-function`` sets them (minReplica, no restart), and the function's own
min is kept in the label ``com.openfaas.scale.min`` (added if absent), which is where
OpenFaaS reads it from too. Routed by ``OpenFaaSAPI``, so it is authenticated like
every ``/system/*`` route; unknown functions are skipped, as OpenFaaS does.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.logger import Logger

from faastwist.admin.codec import ApiError
from faastwist.admin.openfaas_model import SCALE_MIN, SCALE_ZERO, _flag, _replicas
from faastwist.model.fsm import State
from faastwist.model.scaling import AlertStatus, alert_step, factor
from faastwist.model.spec import SpecError
from faastwist.store.base import Conflict, NotFound

log = Logger()

#: the webhook payload version AlertManager (0.x) sends
PAYLOAD_VERSION = "4"
MAX_ALERTS = 1000
ATTEMPTS = 3   # compare-and-swap rounds against a racing writer


@attrs.frozen
class Alert:
    status: AlertStatus
    function: str


def read_alerts(document: Any) -> list[Alert]:
    """The alerts of a webhook payload; ApiError(400) names the field that is wrong."""
    if not isinstance(document, dict):
        raise ApiError(400, "body must be a JSON object (AlertManager's webhook payload)")
    version = document.get("version", PAYLOAD_VERSION)
    if version != PAYLOAD_VERSION:
        raise ApiError(400, f"version: payload version {version!r} is not supported; "
                            f"AlertManager sends {PAYLOAD_VERSION!r}")
    alerts = document.get("alerts")
    if not isinstance(alerts, list):
        raise ApiError(400, "alerts: must be a list of alerts")
    if len(alerts) > MAX_ALERTS:
        raise ApiError(400, f"alerts: at most {MAX_ALERTS} per request, got {len(alerts)}")
    out = []
    for index, alert in enumerate(alerts):
        if not isinstance(alert, dict):
            raise ApiError(400, f"alerts[{index}]: must be an object")
        try:
            status = AlertStatus(alert.get("status"))
        except ValueError:
            raise ApiError(400, f"alerts[{index}].status: must be firing or resolved, got "
                                f"{alert.get('status')!r}") from None
        labels = alert.get("labels", {})
        if not isinstance(labels, dict):
            raise ApiError(400, f"alerts[{index}].labels: must be an object")
        name = labels.get("function_name", "")
        if not isinstance(name, str):
            raise ApiError(400, f"alerts[{index}].labels.function_name: must be text")
        out.append(Alert(status, name))
    return out


def own_min(labels: Any) -> int:
    """The function's min as OpenFaaS reads it: the label, else 0 with scale.zero, else 1."""
    if SCALE_MIN in labels:
        return _replicas(labels, SCALE_MIN, 1)
    return 0 if _flag(labels, SCALE_ZERO) else 1


async def _apply(api: Any, alert: Alert) -> dict[str, Any]:
    name, _, namespace = alert.function.partition(".")
    if not name:
        return {"function": alert.function, "skipped": "no function_name label"}
    if namespace and namespace != api.namespace:
        return {"function": alert.function,
                "skipped": f"namespace {namespace} is not this gate's ({api.namespace})"}
    for _ in range(ATTEMPTS):
        try:
            record = await api._timed(api.store.get(name))
        except NotFound:
            return {"function": name, "skipped": "no such function"}
        spec, status = record.spec, record.status
        if status.state is State.DESTROYED or (status.state is State.INACTIVE
                                               and not status.start_pending):
            return {"function": name, "skipped": f"function is {status.state.value}"}
        try:
            minimum, percent = own_min(spec.labels), factor(spec.labels)
        except SpecError as exc:
            return {"function": name, "skipped": str(exc)}
        observed = (await api._observe([name])).get(name)
        desired = observed.ext_data.get("desired", "") if observed is not None else ""
        current = max(spec.min_replica, int(desired) if desired.isdigit() else 0)
        step = alert_step(alert.status, current, minimum, spec.max_replica, percent)
        labels = dict(spec.labels)
        labels.setdefault(SCALE_MIN, str(minimum))   # the min to return to, kept
        new_spec = attrs.evolve(spec, min_replica=step.wanted, labels=labels)
        if new_spec == spec:
            return {"function": name, "from": current, "to": current, "why": step.why}
        try:
            await api._timed(api.store.update(record, spec=new_spec))
        except Conflict as exc:
            if not exc.retryable:   # a function a Kubernetes object owns (store/owned.py)
                raise
            continue   # another writer won: read again and apply to what it wrote
        api.kick(name)
        log.info("alert {status} for {name}: scaling from {old} to {new} replicas ({why})",
                 status=alert.status.value, name=name, old=current, new=step.wanted,
                 why=step.why)
        return {"function": name, "from": current, "to": step.wanted, "why": step.why}
    raise ApiError(409, f"function {name} changed {ATTEMPTS} times while the alert was "
                        f"applied; AlertManager will send it again")


async def handle_alerts(api: Any, document: Any) -> dict[str, Any]:
    """Apply a webhook payload's alerts in order (``api``: the OpenFaaSAPI); what each
    did, for the answer."""
    return {"alerts": [await _apply(api, alert) for alert in read_alerts(document)]}
