"""The ``functions.faastwist.io`` CRD, its schema generated from ``FunctionSpec``.

The schema walks the attrs fields of the spec's records, so a field added to the spec
is in the CRD at once (a structural schema prunes fields it does not name: a spec
field missing here would be silently dropped by the apiserver). The wire name of a
field is its camelCase name unless ``_WIRE`` says otherwise; fields the spec reads as
a number or a string (quantities, durations, autoScaleValue) are int-or-string. The
tests pin both directions: every key ``to_dict`` writes is in the schema, and the
apiserver keeps a full spec unchanged.
"""

from __future__ import annotations

import collections.abc
import enum
import types
import typing
from typing import Any

import attrs
import yaml

from faastwist.model import spec as spec_model

GROUP = "faastwist.io"
VERSION = "v1"
KIND = "Function"
PLURAL = "functions"
SINGULAR = "function"
SHORT_NAMES = ("fn",)
FINALIZER = "faastwist.io/function"

#: attrs field name -> wire key, where it is not the plain camelCase
_WIRE = {"limit_cpu": "limitCPU", "limit_memory": "limitMemory",
         "request_cpu": "requestCPU", "request_memory": "requestMemory",
         "delete": "del"}
#: fields the spec reads from a number or a string
_INT_OR_STRING = frozenset({"auto_scale_value", "limit_cpu", "limit_memory", "request_cpu",
                            "request_memory", "timeout"})
#: top-level fields that are not in the object's spec (the name is metadata.name)
_NOT_IN_SPEC = frozenset({"name"})


def wire_name(field: str) -> str:
    if field in _WIRE:
        return _WIRE[field]
    head, *rest = field.split("_")
    return head + "".join(part.capitalize() for part in rest)


def _unwrap_optional(kind: Any) -> Any:
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return kind


def _type_schema(kind: Any, field: str) -> dict[str, Any]:
    if field in _INT_OR_STRING:
        return {"x-kubernetes-int-or-string": True}
    kind = _unwrap_optional(kind)
    origin = typing.get_origin(kind)
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return {"type": "string", "enum": [member.value for member in kind]}
    if kind is bool:
        return {"type": "boolean"}
    if kind is int:
        return {"type": "integer"}
    if kind is float:
        return {"type": "number"}
    if kind is str:
        return {"type": "string"}
    if origin is tuple and typing.get_args(kind)[:1] == (str,):
        return {"type": "array", "items": {"type": "string"}}
    if origin in (collections.abc.Mapping, dict):
        return {"type": "object", "additionalProperties": {"type": "string"}}
    if attrs.has(kind):
        return record_schema(kind)
    raise TypeError(f"no CRD schema for field {field} of type {kind!r}: teach "
                    f"faastwist/kube/schema.py this type")


def record_schema(cls: type, skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The structural schema of one attrs record (its public init fields)."""
    hints = typing.get_type_hints(cls, vars(spec_model))
    properties: dict[str, Any] = {}
    for field in attrs.fields(cls):
        if not field.init or field.name.startswith("_") or field.name in skip:
            continue
        properties[wire_name(field.name)] = _type_schema(hints[field.name], field.name)
    return {"type": "object", "properties": properties}


def spec_schema() -> dict[str, Any]:
    """The schema of a Function object's ``spec``: FunctionSpec's fields but the name."""
    return record_schema(spec_model.FunctionSpec, _NOT_IN_SPEC)


def status_schema() -> dict[str, Any]:
    condition = {"type": "object", "required": ["type", "status"], "properties": {
        "type": {"type": "string"}, "status": {"type": "string"},
        "reason": {"type": "string"}, "message": {"type": "string"},
        "lastTransitionTime": {"type": "string", "format": "date-time"}}}
    return {"type": "object", "properties": {
        "state": {"type": "string"},
        "replicas": {"type": "string"},
        "readyReplicas": {"type": "integer"},
        "desiredReplicas": {"type": "integer"},
        "message": {"type": "string"},
        "lastEvent": {"type": "string"},
        "observedGeneration": {"type": "integer"},
        "conditions": {"type": "array", "items": condition},
    }}


def crd_manifest() -> dict[str, Any]:
    """The CustomResourceDefinition (apiextensions.k8s.io/v1) of faastwist's Function."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": KIND, "listKind": f"{KIND}List", "plural": PLURAL,
                      "singular": SINGULAR, "shortNames": list(SHORT_NAMES)},
            "versions": [{
                "name": VERSION, "served": True, "storage": True,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "apiVersion": {"type": "string"}, "kind": {"type": "string"},
                    "metadata": {"type": "object"},
                    "spec": spec_schema(), "status": status_schema()}}},
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "State", "type": "string", "jsonPath": ".status.state"},
                    {"name": "Replicas", "type": "string", "jsonPath": ".status.replicas"},
                    {"name": "Age", "type": "date",
                     "jsonPath": ".metadata.creationTimestamp"}],
            }],
        },
    }


def rbac_manifests(namespace: str = "faastwist", account: str = "faastwist") -> list[dict]:
    """The node's Namespace and ServiceAccount (so that ``kubectl apply -f`` of the file
    works on a cluster that has neither) and the ClusterRole(Binding) it needs: the Function
    objects (watch, status, finalizers), OpenFaaS's when installed, Events, and what
    the Knative provider writes (Services, Secrets, pod logs)."""
    rules = [
        {"apiGroups": [GROUP], "resources": [PLURAL],
         "verbs": ["get", "list", "watch", "update", "patch"]},
        {"apiGroups": [GROUP], "resources": [f"{PLURAL}/status", f"{PLURAL}/finalizers"],
         "verbs": ["get", "update", "patch"]},
        {"apiGroups": ["openfaas.com"], "resources": ["functions"],
         "verbs": ["get", "list", "watch", "update", "patch"]},
        {"apiGroups": ["openfaas.com"], "resources": ["functions/status",
                                                      "functions/finalizers"],
         "verbs": ["get", "update", "patch"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
        {"apiGroups": ["serving.knative.dev"], "resources": ["services"],
         "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
        {"apiGroups": [""], "resources": ["secrets"],
         "verbs": ["get", "create", "update", "patch", "delete"]},
        {"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list"]},
    ]
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": account, "namespace": namespace}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": "faastwist-node"}, "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "faastwist-node"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": "faastwist-node"},
         "subjects": [{"kind": "ServiceAccount", "name": account,
                       "namespace": namespace}]},
    ]


_HEADER = ("# Generated by `python -m faastwist.kube.schema` from faastwist's function "
           "spec:\n# do not edit (a test compares it with the generator).\n")


def render(documents: list[dict]) -> str:
    return _HEADER + "---\n".join(yaml.safe_dump(doc, sort_keys=False) for doc in documents)


if __name__ == "__main__":  # pragma: no cover (writes the shipped manifests)
    import pathlib
    import sys

    out = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "deploy/kubernetes")
    (out / "crd.yaml").write_text(render([crd_manifest()]))
    (out / "rbac.yaml").write_text(render(rbac_manifests()))
