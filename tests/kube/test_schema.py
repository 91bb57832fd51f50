"""The CRD's schema and the function spec never disagree; the shipped manifests are
the generator's output."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from faastwist.kube import schema
from faastwist.model.spec import FunctionSpec

ROOT = Path(__file__).resolve().parents[2]

#: a spec with every field set (nested ones too): what the apiserver must keep whole
FULL = {
    "name": "full", "image": "dev.local/fn:1", "port": 8080, "autoScaleType": "rps",
    "autoScaleValue": "7", "minReplica": 1, "maxReplica": 3, "limitCPU": "500m",
    "limitMemory": "256Mi", "requestCPU": "100m", "requestMemory": "64Mi",
    "requestAdaptor": {"host": "example.org", "method": "POST",
                       "path": {"replace": "/a", "addPrefix": "/b", "trimPrefix": "/c",
                                "regexpReplace": {"regexp": "^/x(.*)", "replace": "/y$1"}},
                       "header": {"del": ["X-A"], "set": {"X-B": "1"}, "add": {"X-C": "2"}},
                       "body": "{}"},
    "timeout": "30s", "command": ["python3", "app.py"], "env": {"A": "1"}, "mode": "fork",
    "readinessPath": "/ready", "envProcess": "cat", "labels": {"team": "a"},
    "annotations": {"note": "b"}, "constraints": ["x=y"], "secrets": ["s1"],
    "readOnlyRootFilesystem": True, "rateLimit": {"rps": 5, "burst": 10},
    "asyncConcurrency": 2, "maxAttempts": 3, "maxQueued": 50,
}


def _keys(document: Any, prefix: str = "") -> set[str]:
    """Dotted paths of every mapping key, maps of free keys (env, labels...) excepted."""
    out = set()
    if isinstance(document, dict):
        for key, value in document.items():
            out.add(prefix + key)
            out |= _keys(value, f"{prefix}{key}.")
    return out


def _schema_keys(node: dict[str, Any], prefix: str = "") -> set[str]:
    out = set()
    for key, child in (node.get("properties") or {}).items():
        out.add(prefix + key)
        out |= _schema_keys(child, f"{prefix}{key}.")
    return out


def _free_maps(node: dict[str, Any], prefix: str = "") -> set[str]:
    out = set()
    for key, child in (node.get("properties") or {}).items():
        if "additionalProperties" in child:
            out.add(prefix + key)
        out |= _free_maps(child, f"{prefix}{key}.")
    return out


def test_every_field_a_full_spec_writes_is_in_the_schema_and_back():
    spec = FunctionSpec.from_dict(FULL)
    written = spec.to_dict()
    written.pop("name")
    assert written == {k: v for k, v in FULL.items() if k != "name"}
    tree = schema.spec_schema()
    free = _free_maps(tree)
    keys = {k for k in _keys(written) if not any(k.startswith(f + ".") for f in free)}
    # both directions: nothing the spec writes is pruned, nothing in the schema is unknown
    assert keys == _schema_keys(tree)


def test_every_schema_property_is_a_field_the_spec_reads():
    """A key the schema names but the spec refused would pass the apiserver and then
    always be invalid; FULL has every one, and the spec takes each alone too."""
    for key in schema.spec_schema()["properties"]:
        FunctionSpec.from_dict({"name": "one", key: FULL[key]})


def test_types_follow_the_spec_fields():
    props = schema.spec_schema()["properties"]
    assert props["port"] == {"type": "integer"}
    assert props["readOnlyRootFilesystem"] == {"type": "boolean"}
    assert props["autoScaleType"] == {"type": "string", "enum": ["rps", "concurrency", "cpu"]}
    assert props["limitCPU"] == {"x-kubernetes-int-or-string": True}
    assert props["command"] == {"type": "array", "items": {"type": "string"}}
    assert props["env"] == {"type": "object", "additionalProperties": {"type": "string"}}
    assert props["rateLimit"]["properties"]["rps"] == {"type": "number"}
    assert "name" not in props   # metadata.name is the function's name


def test_a_new_field_of_unknown_type_fails_loudly():
    import attrs

    @attrs.frozen
    class Odd:
        when: complex = 0j

    with pytest.raises(TypeError, match="teach faastwist/kube/schema.py"):
        schema.record_schema(Odd)


def test_shipped_manifests_are_the_generators_output():
    shipped = ROOT / "deploy" / "kubernetes"
    assert (shipped / "crd.yaml").read_text() == schema.render([schema.crd_manifest()])
    assert (shipped / "rbac.yaml").read_text() == schema.render(schema.rbac_manifests())
    crd = yaml.safe_load((shipped / "crd.yaml").read_text())
    version = crd["spec"]["versions"][0]
    assert crd["spec"]["names"]["shortNames"] == ["fn"]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "State", "Replicas", "Age"]
