"""OpenFaaS's FunctionDeployment and FunctionStatus, mapped onto our FunctionSpec.

A deployment becomes a spec through ``FunctionSpec.from_dict``, so the validation is
the one every function gets; its errors are renamed to the deployment's field names
(``limits.memory``, ``envVars.exec_timeout``, ``service``). Every field a client sends
is kept in the spec as given and returned as given. The scaling labels
``com.openfaas.scale.min``/``max``/``zero`` become minReplica/maxReplica (OpenFaaS's
default minimum is one replica; ``zero: true`` lets an idle function go to zero, after
starting at one), and ``.type``/``.target``/``.target-proportion`` autoScaleType and
autoScaleValue (``faastwist.model.scaling``).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Mapping

import attrs

from faastwist.model.fsm import FunctionStatus, State
from faastwist.model.scaling import scale_settings
from faastwist.model.spec import SECRET_NAME, FunctionSpec, SpecError
from faastwist.model.watchdogenv import read_settings
from faastwist.store.secrets import MAX_SECRET_SIZE
from faastwist.util.fields import FieldReader
from faastwist.util.times import format_rfc3339

SCALE_MIN = "com.openfaas.scale.min"
SCALE_MAX = "com.openfaas.scale.max"
SCALE_ZERO = "com.openfaas.scale.zero"
#: the label faas-netes puts on every function's pods and reports in FunctionStatus
FUNCTION_LABEL = "faas_function"
#: the margin by which the gate's timeout outlasts the watchdog's own, so the
#: watchdog's answer (its 500 naming exec_timeout) reaches the client
TIMEOUT_MARGIN = 1.0

#: our spec's field -> the deployment's, for error messages
_RENAMES = (("limitMemory", "limits.memory"), ("limitCPU", "limits.cpu"),
            ("requestMemory", "requests.memory"), ("requestCPU", "requests.cpu"),
            ("env", "envVars"), ("name", "service"),
            ("minReplica", f"labels.{SCALE_MIN}"), ("maxReplica", f"labels.{SCALE_MAX}"))


def _rename(error: SpecError) -> SpecError:
    path = error.path
    for ours, theirs in _RENAMES:
        if path == ours or path.startswith(ours + "."):
            return SpecError(theirs + path[len(ours):], error.problem)
    return error


def _replicas(labels: Mapping[str, str], key: str, default: int) -> int:
    raw = labels.get(key)
    if raw is None:
        return default
    text = raw.strip()
    if not text.isdigit() or int(text) > 1000:
        raise SpecError(f"labels.{key}", f"must be a whole number 0-1000, got {raw!r}")
    return int(text)


def _flag(labels: Mapping[str, str], key: str) -> bool:
    raw = labels.get(key)
    if raw is None:
        return False
    if raw.strip().lower() not in ("true", "false", "1", "0"):
        raise SpecError(f"labels.{key}", f"must be true or false, got {raw!r}")
    return raw.strip().lower() in ("true", "1")


def _resources(reader: FieldReader, key: str) -> dict[str, str]:
    def read(inner: FieldReader) -> dict[str, str]:
        out = {}
        for field in ("memory", "cpu"):
            value = inner.raw(field, "")
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise inner.fail(field, f"must be a quantity like 128Mi or 100m, got {value!r}")
            if str(value):
                out[field] = str(value)
        return out   # other keys (OpenFaaS has none) are ignored, as OpenFaaS does
    return reader.section(key, read) if reader.data.get(key) is not None else {}


def deployment_to_spec(document: Any, namespace: str,
                       base: FunctionSpec | None = None) -> FunctionSpec:
    """The spec for an OpenFaaS FunctionDeployment (SpecError names the field).

    ``base``: the function's current spec on an update; fields OpenFaaS has no name
    for (command, port, adaptor...) are kept from it, so a function created through
    the Easegress API stays what it was when faas-cli updates it.
    """
    reader = FieldReader(document, "", SpecError)
    service = reader.string("service")
    given_namespace = reader.string("namespace", "")
    if given_namespace and given_namespace != namespace:
        raise SpecError("namespace", f"this gate serves namespace {namespace} only, got "
                                     f"{given_namespace!r}")
    labels = reader.string_map("labels", {})
    limits = _resources(reader, "limits")
    requests = _resources(reader, "requests")
    env = reader.string_map("envVars", {})
    data: dict[str, Any] = dict(base.to_dict()) if base is not None else {}
    scale_type, scale_value = scale_settings(labels)
    for key in ("image", "envProcess", "labels", "annotations", "constraints", "secrets",
                "readOnlyRootFilesystem", "env", "limitMemory", "limitCPU",
                "requestMemory", "requestCPU", "minReplica", "maxReplica", "autoScaleType",
                "autoScaleValue"):
        data.pop(key, None)
    data["name"] = service
    data.update({
        "image": reader.string("image", ""),
        "envProcess": reader.string("envProcess", ""),
        "env": env,
        "labels": labels,
        "annotations": reader.string_map("annotations", {}),
        "constraints": list(reader.string_list("constraints", ())),
        "secrets": list(reader.string_list("secrets", ())),
        "readOnlyRootFilesystem": reader.boolean("readOnlyRootFilesystem", False),
        "minReplica": 0 if _flag(labels, SCALE_ZERO) else _replicas(labels, SCALE_MIN, 1),
        "maxReplica": _replicas(labels, SCALE_MAX, 0),
        # com.openfaas.scale.type/.target/.target-proportion (model/scaling.py)
        "autoScaleType": scale_type.value,
        "autoScaleValue": scale_value,
    })
    for ours, resources, field in (("limitMemory", limits, "memory"),
                                   ("limitCPU", limits, "cpu"),
                                   ("requestMemory", requests, "memory"),
                                   ("requestCPU", requests, "cpu")):
        if field in resources:
            data[ours] = resources[field]
    if data["maxReplica"] and data["minReplica"] > data["maxReplica"]:
        raise SpecError(f"labels.{SCALE_MIN}", f"must not exceed {SCALE_MAX} "
                                               f"({data['maxReplica']})")
    try:
        spec = FunctionSpec.from_dict(data)
        settings = read_settings(spec, classic=True, field="envVars")
    except SpecError as exc:
        raise _rename(exc) from None
    longest = max(settings.exec_timeout, settings.write_timeout)
    if longest and longest + TIMEOUT_MARGIN > spec.timeout:
        spec = attrs.evolve(spec, timeout=longest + TIMEOUT_MARGIN)
    return spec


def function_status(spec: FunctionSpec, status: FunctionStatus, namespace: str,
                    invocations: int, available: int | None,
                    desired: int | None) -> dict[str, Any]:
    """OpenFaaS's FunctionStatus: the deployment's fields as given, then the counts.

    ``labels`` and ``annotations`` are always there (clients dereference them), the
    labels with faas-netes's ``faas_function: <name>``. ``available``/``desired`` come
    from the provider when it knows them; otherwise a function that is meant to run
    counts its minReplica (at least one) from the moment it is deployed, as faas-netes
    reports a Deployment's desired count at once, and a stopped one zero.
    """
    out: dict[str, Any] = {"name": spec.name, "image": spec.image, "namespace": namespace}
    if spec.env_process:
        out["envProcess"] = spec.env_process
    if spec.env:
        out["envVars"] = dict(spec.env)
    if spec.constraints:
        out["constraints"] = list(spec.constraints)
    if spec.secrets:
        out["secrets"] = list(spec.secrets)
    out["labels"] = {FUNCTION_LABEL: spec.name, **spec.labels}
    out["annotations"] = dict(spec.annotations)
    for key, memory, cpu in (("limits", spec.limit_memory, spec.limit_cpu),
                             ("requests", spec.request_memory, spec.request_cpu)):
        resources = {k: v for k, v in (("memory", memory), ("cpu", cpu)) if v}
        if resources:
            out[key] = resources
    if spec.read_only_root_filesystem:
        out["readOnlyRootFilesystem"] = True
    stopped = status.state is State.DESTROYED or (status.state is State.INACTIVE
                                                   and not status.start_pending)
    if desired is None:
        desired = 0 if stopped else max(spec.min_replica, 1)
    if available is None or status.state is not State.ACTIVE:
        # only an active function gets traffic: a ready replica of one that is not
        # active yet is not available to a caller
        available = desired if status.state is State.ACTIVE else 0
    out["invocationCount"] = int(invocations)
    out["replicas"] = desired
    out["availableReplicas"] = available
    out["createdAt"] = format_rfc3339(status.created or status.updated)
    return out


def read_secret(document: Any, namespace: str) -> tuple[str, bytes]:
    """``(name, value)`` of an OpenFaaS Secret: ``rawValue`` (base64) when given, else
    ``value`` (text)."""
    reader = FieldReader(document, "", SpecError)
    name = reader.string("name")
    if not SECRET_NAME.match(name):
        raise SpecError("name", f"must be a secret name (letters, digits, '-', '_' and '.'), "
                                f"got {name!r}")
    given_namespace = reader.string("namespace", "")
    if given_namespace and given_namespace != namespace:
        raise SpecError("namespace", f"this gate serves namespace {namespace} only, got "
                                     f"{given_namespace!r}")
    value = reader.string("value", "")
    raw = reader.string("rawValue", "")
    if raw:   # faas-cli's --from-file sends both; faas-netes takes rawValue then
        try:
            data = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise SpecError("rawValue", "must be base64") from None
    else:
        data = value.encode()
    if not data:
        raise SpecError("value", "is required (or rawValue, base64)")
    if len(data) > MAX_SECRET_SIZE:
        raise SpecError("value", f"must be at most {MAX_SECRET_SIZE} bytes")
    return name, data
