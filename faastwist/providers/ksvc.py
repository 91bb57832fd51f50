"""Pure translations between faastwist and Knative Services (serving.knative.dev/v1).

Kept free of I/O so that both directions are unit-tested against tables of real
Knative objects: a spec becomes a ksvc body, and a ksvc's status becomes an
Observation (which FSM event, if any, the reconciler may conclude from it).
"""

from __future__ import annotations

import copy
import math
from typing import Any, Mapping

from faastwist.model.fsm import Event
from faastwist.providers.base import Observation
from faastwist.model.spec import AutoScaleType, FunctionSpec

GROUP = "serving.knative.dev"
VERSION = "v1"
PLURAL = "services"
API_VERSION = f"{GROUP}/{VERSION}"

CONTROLLER_LABEL = "faastwist.io/controller"
DIGEST_ANNOTATION = "faastwist.io/spec-digest"
STOPPED_ANNOTATION = "faastwist.io/stopped"
#: The container variable OpenFaaS's watchdog reads its command from (envProcess)
FPROCESS_ENV = "fprocess"
SECRETS_VOLUME = "openfaas-secrets"
SECRETS_PATH = "/var/openfaas/secrets"

_AUTOSCALING = "autoscaling.knative.dev/"
CLASS_ANNOTATION = _AUTOSCALING + "class"
METRIC_ANNOTATION = _AUTOSCALING + "metric"
TARGET_ANNOTATION = _AUTOSCALING + "target"
MIN_SCALE_ANNOTATION = _AUTOSCALING + "min-scale"
MAX_SCALE_ANNOTATION = _AUTOSCALING + "max-scale"

KPA_CLASS = "kpa.autoscaling.knative.dev"
HPA_CLASS = "hpa.autoscaling.knative.dev"

#: The conditions a Service reports; any of them False means the function cannot run.
SERVICE_CONDITIONS = ("Ready", "ConfigurationsReady", "RoutesReady")


def label_selector(controller: str) -> str:
    """The selector that lists every ksvc of one controller in a single call."""
    return f"{CONTROLLER_LABEL}={controller}"


def template_annotations(spec: FunctionSpec, stopped: bool = False) -> dict[str, str]:
    """The revision template's autoscaling annotations (kebab-case keys, as Knative
    documents them; Easegress omits ``metric`` for rps, so Knative then scales on
    concurrency: we always set it)."""
    cpu = spec.auto_scale_type is AutoScaleType.CPU
    out = {
        CLASS_ANNOTATION: HPA_CLASS if cpu else KPA_CLASS,
        METRIC_ANNOTATION: spec.auto_scale_type.value,
        TARGET_ANNOTATION: spec.auto_scale_value,
        MIN_SCALE_ANNOTATION: "0" if stopped else str(spec.min_replica),
    }
    if spec.max_replica:
        # maxReplica 0 (unbounded) writes no max-scale: the cluster's default applies,
        # and a cluster with max-scale-limit set would refuse an explicit "0"
        out[MAX_SCALE_ANNOTATION] = str(spec.max_replica)
    return out


def container(spec: FunctionSpec) -> dict[str, Any]:
    """The one container of the revision: image, port and resources as written."""
    out: dict[str, Any] = {"image": spec.image}
    env = dict(spec.env)
    if spec.env_process:
        env[FPROCESS_ENV] = spec.env_process  # what OpenFaaS's watchdog in the image runs
    if env:
        out["env"] = [{"name": key, "value": value} for key, value in sorted(env.items())]
    if spec.read_only_root_filesystem:
        out["securityContext"] = {"readOnlyRootFilesystem": True}
    if spec.secrets:
        out["volumeMounts"] = [{"name": SECRETS_VOLUME, "mountPath": SECRETS_PATH,
                                "readOnly": True}]
    if spec.port is not None:
        out["ports"] = [{"containerPort": spec.port}]
    resources: dict[str, dict[str, str]] = {}
    for kind, cpu, memory in (("limits", spec.limit_cpu, spec.limit_memory),
                              ("requests", spec.request_cpu, spec.request_memory)):
        values = {key: value for key, value in (("cpu", cpu), ("memory", memory)) if value}
        if values:
            resources[kind] = values
    if resources:
        out["resources"] = resources
    return out


def template(spec: FunctionSpec, stopped: bool = False) -> dict[str, Any]:
    metadata: dict[str, Any] = {"annotations": {**spec.annotations,
                                                **template_annotations(spec, stopped)}}
    if spec.labels:
        metadata["labels"] = dict(spec.labels)
    pod: dict[str, Any] = {
        "containers": [container(spec)],
        # the function's timeout, end to end: the gate answers 504 at it, and Knative's
        # queue-proxy gives up at the same moment instead of at its own default (300s)
        "timeoutSeconds": max(1, math.ceil(spec.timeout)),
    }
    if spec.secrets:
        # each secret is a Kubernetes Secret of that name (the provider writes it) with
        # one key, the name: files at /var/openfaas/secrets/<name>, as in OpenFaaS
        pod["volumes"] = [{"name": SECRETS_VOLUME, "projected": {"sources": [
            {"secret": {"name": name, "items": [{"key": name, "path": name}]}}
            for name in spec.secrets]}}]
    return {"metadata": metadata, "spec": pod}


def our_annotations(spec: FunctionSpec, stopped: bool) -> dict[str, str]:
    """The ksvc-level annotations that let ``observe`` say what is deployed. They live on
    the Service's metadata, so changing them alone never makes a new revision."""
    out = {DIGEST_ANNOTATION: spec.digest()}
    if stopped:
        out[STOPPED_ANNOTATION] = "true"
    return out


def build_ksvc(spec: FunctionSpec, controller: str, namespace: str,
               stopped: bool = False) -> dict[str, Any]:
    """The Knative Service a new function is created as."""
    return {
        "apiVersion": API_VERSION,
        "kind": "Service",
        "metadata": {
            "name": spec.name,
            "namespace": namespace,
            "labels": {**spec.labels, CONTROLLER_LABEL: controller},
            "annotations": {**spec.annotations, **our_annotations(spec, stopped)},
        },
        "spec": {"template": template(spec, stopped)},
    }


def rewrite_ksvc(current: Mapping[str, Any], spec: FunctionSpec, controller: str,
                 stopped: bool) -> dict[str, Any]:
    """``current`` with its template replaced as a whole by the spec's, for a PUT.

    Everything else is kept as read (including ``resourceVersion``, so a concurrent
    writer makes the PUT fail with 409 instead of being overwritten, and annotations
    such as Knative's immutable ``serving.knative.dev/creator``, which its webhook
    insists on seeing unchanged).
    """
    body = copy.deepcopy(dict(current))
    body.pop("status", None)
    metadata = body.setdefault("metadata", {})
    metadata.pop("managedFields", None)
    labels = dict(metadata.get("labels") or {})
    labels.update(spec.labels)
    labels[CONTROLLER_LABEL] = controller
    metadata["labels"] = labels
    annotations = {key: value for key, value in (metadata.get("annotations") or {}).items()
                   if key not in (DIGEST_ANNOTATION, STOPPED_ANNOTATION)}
    annotations.update(spec.annotations)
    annotations.update(our_annotations(spec, stopped))
    metadata["annotations"] = annotations
    body.setdefault("spec", {})["template"] = template(spec, stopped)
    return body


def is_ours(ksvc: Mapping[str, Any], controller: str) -> bool:
    labels = (ksvc.get("metadata") or {}).get("labels") or {}
    return labels.get(CONTROLLER_LABEL) == controller


def is_stopped(ksvc: Mapping[str, Any]) -> bool:
    annotations = (ksvc.get("metadata") or {}).get("annotations") or {}
    return annotations.get(STOPPED_ANNOTATION) == "true"


def _describe(condition: Mapping[str, Any]) -> str:
    reason = condition.get("reason") or ""
    message = condition.get("message") or ""
    if reason and message:
        return f"{reason}: {message}"
    return reason or message


def conditions_ext_data(status: Mapping[str, Any]) -> dict[str, str]:
    """Each condition as ``{type}.status``, ``{type}.reason``, ``{type}.message``
    (lastTransitionTime is left out so that an unchanged verdict writes nothing)."""
    out: dict[str, str] = {}
    for condition in status.get("conditions") or ():
        kind = condition.get("type")
        if not kind:
            continue
        out[f"{kind}.status"] = str(condition.get("status") or "Unknown")
        out[f"{kind}.reason"] = str(condition.get("reason") or "")
        out[f"{kind}.message"] = str(condition.get("message") or "")
    if status.get("url"):
        out["url"] = str(status["url"])
    return out


def conditions_event(ksvc: Mapping[str, Any]) -> tuple[Event | None, str, dict[str, str]]:
    """The FSM event Knative's status allows, with a message and the extData.

    The conditions are trusted only when ``observedGeneration == generation``: before
    that they describe an older spec (event None: nothing is concluded). Then any of
    Ready/ConfigurationsReady/RoutesReady False is an error; Ready True with the
    latest created revision also the latest ready one is ready; anything else pending.
    """
    metadata = ksvc.get("metadata") or {}
    status = ksvc.get("status") or {}
    generation = metadata.get("generation")
    observed = status.get("observedGeneration")
    ext_data = conditions_ext_data(status)
    if observed is None or observed != generation:
        return None, (f"waiting for Knative to observe generation {generation} "
                      f"(observed: {observed if observed is not None else 'none'})"), ext_data
    conditions = {c.get("type"): c for c in status.get("conditions") or () if c.get("type")}
    for kind in SERVICE_CONDITIONS:
        condition = conditions.get(kind)
        if condition is not None and condition.get("status") == "False":
            return Event.ERROR, f"{kind} is False: {_describe(condition)}", ext_data
    ready = conditions.get("Ready")
    created = status.get("latestCreatedRevisionName")
    serving = status.get("latestReadyRevisionName")
    if ready is not None and ready.get("status") == "True":
        if created and created == serving:
            return Event.READY, f"revision {serving} is ready", ext_data
        return Event.PENDING, (f"revision {created or '(none)'} is not ready yet "
                               f"(latest ready: {serving or 'none'})"), ext_data
    if ready is None:
        return Event.PENDING, "Knative has reported no Ready condition yet", ext_data
    detail = _describe(ready)
    return Event.PENDING, "Ready is Unknown" + (f": {detail}" if detail else ""), ext_data


def observe_ksvc(ksvc: Mapping[str, Any]) -> Observation:
    """What one ksvc says about its function."""
    metadata = ksvc.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    event, message, ext_data = conditions_event(ksvc)
    status = ksvc.get("status") or {}
    created = status.get("latestCreatedRevisionName")
    serving = status.get("latestReadyRevisionName")
    routes = [c for c in status.get("conditions") or () if c.get("type") == "RoutesReady"]
    previous = bool(serving and created and created != serving
                    and not any(c.get("status") == "False" for c in routes))
    return Observation(
        name=metadata.get("name", ""),
        digest=annotations.get(DIGEST_ANNOTATION, ""),
        stopped=is_stopped(ksvc),
        event=event,
        message=message,
        ext_data=ext_data,
        serving_previous=previous,
    )
