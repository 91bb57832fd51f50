"""Function objects to specs, records to status and to objects: pure, so easy to test.

Two shapes of object are read: faastwist's own (``faastwist.io/v1``: the spec's fields,
the function's name is ``metadata.name``) and OpenFaaS's (``openfaas.com/v1``: mapped as
the OpenFaaS API maps a FunctionDeployment, through ``deployment_to_spec``). A spec made
from an object carries the annotation ``faastwist.io/managed-by: Function ns/name``:
that is how the REST APIs and the watch know who owns a function.
"""

from __future__ import annotations

import enum
from typing import Any, Mapping

import attrs

from faastwist.admin.openfaas_model import deployment_to_spec, function_status
from faastwist.kube.schema import GROUP, KIND, PLURAL, VERSION
from faastwist.store.owned import MANAGED_BY
from faastwist.model.fsm import FunctionStatus, State
from faastwist.model.spec import FunctionSpec, SpecError, check_name
from faastwist.util.times import format_rfc3339


#: longest message written to an object's status (a provider's error can be long)
MAX_MESSAGE = 2048


class Flavour(str, enum.Enum):
    FAASTWIST = "faastwist"
    OPENFAAS = "openfaas"


@attrs.frozen
class Resource:
    """Where objects of one flavour live in the Kubernetes API."""

    flavour: Flavour
    group: str
    version: str
    plural: str
    kind: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


FAASTWIST = Resource(Flavour.FAASTWIST, GROUP, VERSION, PLURAL, KIND)
OPENFAAS = Resource(Flavour.OPENFAAS, "openfaas.com", "v1", "functions", "Function")
RESOURCES = (FAASTWIST, OPENFAAS)


@attrs.frozen
class ObjectRef:
    """One object: its flavour, namespace and name."""

    flavour: Flavour
    namespace: str
    name: str

    @property
    def owner(self) -> str:
        """The managed-by annotation's value (and the 409's wording)."""
        kind = "Function" if self.flavour is Flavour.FAASTWIST else "Function.openfaas.com"
        return f"{kind} {self.namespace}/{self.name}"

    @property
    def resource(self) -> Resource:
        return FAASTWIST if self.flavour is Flavour.FAASTWIST else OPENFAAS


def ref_of(resource: Resource, obj: Mapping[str, Any]) -> ObjectRef:
    metadata = obj.get("metadata") or {}
    return ObjectRef(resource.flavour, str(metadata.get("namespace") or ""),
                     str(metadata.get("name") or ""))


def owner_of(spec: FunctionSpec) -> str | None:
    """Who owns a function ("Function ns/name"), None for one made through an API."""
    return spec.annotations.get(MANAGED_BY)


def _prefixed(exc: SpecError, prefix: str) -> SpecError:
    return SpecError(f"{prefix}.{exc.path}" if exc.path else prefix.rstrip("."), exc.problem)


def spec_from_object(ref: ObjectRef, obj: Mapping[str, Any]) -> FunctionSpec:
    """The spec an object asks for, owned by it; SpecError names the object's field
    (``metadata.name``, ``spec.limitCPU``, ``spec.environment``...)."""
    try:
        check_name(ref.name, "metadata.name")
    except SpecError as exc:
        raise SpecError("metadata.name", exc.problem) from None
    body = obj.get("spec")
    if body is None:
        body = {}
    if not isinstance(body, Mapping):
        raise SpecError("spec", "must be a mapping")
    annotations = body.get("annotations")
    if isinstance(annotations, Mapping) and MANAGED_BY in annotations:
        raise SpecError(f"spec.annotations.{MANAGED_BY}", "is set by faastwist itself")
    if ref.flavour is Flavour.OPENFAAS:
        spec = _openfaas_spec(ref, body)
    else:
        if "name" in body:
            raise SpecError("spec.name", "is metadata.name: leave it out of the spec")
        try:
            spec = FunctionSpec.from_dict({"name": ref.name, **body})
        except SpecError as exc:
            raise _prefixed(exc, "spec") from None
    return attrs.evolve(spec, annotations={**spec.annotations, MANAGED_BY: ref.owner})


#: openfaas.com/v1 Function spec field -> FunctionDeployment field
_OPENFAAS_FIELDS = {"name": "service", "image": "image", "handler": "envProcess",
                    "environment": "envVars", "labels": "labels",
                    "annotations": "annotations", "constraints": "constraints",
                    "secrets": "secrets", "limits": "limits", "requests": "requests",
                    "readOnlyRootFilesystem": "readOnlyRootFilesystem"}
_DEPLOYMENT_FIELDS = {v: k for k, v in _OPENFAAS_FIELDS.items()}


def _openfaas_spec(ref: ObjectRef, body: Mapping[str, Any]) -> FunctionSpec:
    name = body.get("name", ref.name)
    if name != ref.name:
        raise SpecError("spec.name", f"must be metadata.name ({ref.name}), got {name!r}")
    deployment: dict[str, Any] = {}
    for key, value in body.items():
        if key == "replicas":
            continue
        if key not in _OPENFAAS_FIELDS:
            raise SpecError(f"spec.{key}", "unknown field")
        deployment[_OPENFAAS_FIELDS[key]] = value
    deployment["service"] = ref.name
    try:
        spec = deployment_to_spec(deployment, "", None)
    except SpecError as exc:
        head, _, rest = exc.path.partition(".")
        path = _DEPLOYMENT_FIELDS.get(head, head) + (f".{rest}" if rest else "")
        raise SpecError(f"spec.{path}", exc.problem) from None
    replicas = body.get("replicas")
    if replicas is not None:
        if isinstance(replicas, bool) or not isinstance(replicas, int) or not (
                0 <= replicas <= 1000):
            raise SpecError("spec.replicas", f"must be a whole number 0-1000, got {replicas!r}")
        if "com.openfaas.scale.min" not in spec.labels:
            spec = attrs.evolve(spec, min_replica=replicas,
                                max_replica=max(spec.max_replica, replicas)
                                if spec.max_replica else 0)
    return spec


def replicas_of(spec: FunctionSpec, status: FunctionStatus,
                ext: Mapping[str, str] | None, stopped: bool = False) -> tuple[int, int]:
    """(ready, desired), as the OpenFaaS API reports them: from the provider's
    observation when it has one, else from the state and minReplica."""
    available = desired = None
    if ext is not None and stopped:
        available = desired = 0
    elif ext is not None:
        if str(ext.get("replicas", "")).isdigit():
            available = int(ext["replicas"])
        if str(ext.get("desired", "")).isdigit():
            desired = int(ext["desired"])
    counts = function_status(spec, status, "", 0, available, desired)
    return counts["availableReplicas"], counts["replicas"]


def ready_condition(status: str, reason: str, message: str,
                    previous: Mapping[str, Any] | None, now: float) -> dict[str, Any]:
    """The Ready condition; its transition time moves only when its status does."""
    since = format_rfc3339(now)
    for condition in (previous or {}).get("conditions") or ():
        if isinstance(condition, Mapping) and condition.get("type") == "Ready" and \
                condition.get("status") == status and condition.get("lastTransitionTime"):
            since = condition["lastTransitionTime"]
    return {"type": "Ready", "status": status, "reason": reason, "message": message,
            "lastTransitionTime": since}


def status_of_record(spec: FunctionSpec, status: FunctionStatus, generation: int,
                     ext: Mapping[str, str] | None, stopped: bool,
                     previous: Mapping[str, Any] | None, now: float) -> dict[str, Any]:
    """The object's status for the function it owns."""
    ready, desired = replicas_of(spec, status, ext, stopped)
    state = status.state
    status = attrs.evolve(status, message=status.message[:MAX_MESSAGE])
    if state is State.ACTIVE:
        condition = ready_condition("True", "Active", status.message, previous, now)
    elif state is State.FAILED:
        condition = ready_condition("False", "Failed", status.message, previous, now)
    else:
        reason = {State.INITIAL: "Deploying", State.INACTIVE: "Stopped"}.get(state, "Unknown")
        condition = ready_condition("False" if state is State.INACTIVE else "Unknown", reason,
                                    status.message, previous, now)
    return {"state": state.value, "replicas": f"{ready}/{desired}", "readyReplicas": ready,
            "desiredReplicas": desired, "message": status.message,
            "lastEvent": status.event.value if status.event else "",
            "observedGeneration": generation, "conditions": [condition]}


def status_of_problem(reason: str, message: str, generation: int,
                      previous: Mapping[str, Any] | None, now: float,
                      state: str = "invalid") -> dict[str, Any]:
    """The status of an object faastwist does not run (invalid spec, name taken)."""
    message = message[:MAX_MESSAGE]
    return {"state": state, "replicas": "0/0", "readyReplicas": 0, "desiredReplicas": 0,
            "message": message, "lastEvent": "", "observedGeneration": generation,
            "conditions": [ready_condition("False", reason, message, previous, now)]}


def same_status(current: Mapping[str, Any] | None, wanted: Mapping[str, Any]) -> bool:
    """Whether ``current`` already says what ``wanted`` does (extra keys aside)."""
    if not isinstance(current, Mapping):
        return False
    return patch_body(current) == patch_body(wanted) or all(
        current.get(key) in (None, "") if value in (None, "") else
        _without_empty(current.get(key)) == _without_empty(value)
        for key, value in wanted.items())


def _without_empty(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _without_empty(v) for k, v in value.items() if v not in (None, "")}
    if isinstance(value, list):
        return [_without_empty(v) for v in value]
    return value


def patch_body(status: Mapping[str, Any]) -> dict[str, Any]:
    """``status`` as a merge patch: an empty text removes the key (null), since the
    apiserver's JSON does not keep "" apart from null here."""
    return {key: (None if value == "" else _without_empty(value))
            for key, value in status.items()}


def export_object(spec: FunctionSpec, namespace: str) -> dict[str, Any]:
    """A faastwist.io/v1 Function for ``spec`` (the path from an API-made function to
    Git); the ownership annotation is left out, so applying it makes a new owner."""
    body = spec.to_dict()
    body.pop("name")
    annotations = {k: v for k, v in spec.annotations.items() if k != MANAGED_BY}
    if annotations:
        body["annotations"] = annotations
    else:
        body.pop("annotations", None)
    metadata: dict[str, Any] = {"name": spec.name}
    if namespace:
        metadata["namespace"] = namespace
    return {"apiVersion": FAASTWIST.api_version, "kind": KIND, "metadata": metadata,
            "spec": body}
