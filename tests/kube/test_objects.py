"""Objects to specs, records to status and objects: the pure half of the watch."""

from __future__ import annotations

import pytest

from faastwist.kube.objects import (
    Flavour,
    ObjectRef,
    export_object,
    owner_of,
    patch_body,
    same_status,
    spec_from_object,
    status_of_problem,
    status_of_record,
)
from faastwist.store.owned import MANAGED_BY
from faastwist.model.fsm import Event, FunctionStatus, apply_event
from faastwist.model.spec import FunctionSpec, SpecError

OURS = ObjectRef(Flavour.FAASTWIST, "team-a", "hello")
THEIRS = ObjectRef(Flavour.OPENFAAS, "team-a", "hello")


@pytest.mark.parametrize("ref,spec,path", [
    (OURS, {"limitCPU": "lots"}, "spec.limitCPU"),
    (OURS, {"name": "other"}, "spec.name"),
    (OURS, {"requestAdaptor": {"path": {"addPrefix": "x"}}}, "spec.requestAdaptor.path.addPrefix"),
    (OURS, {"env": {"LD_PRELOAD": "/x.so"}}, "spec.env.LD_PRELOAD"),
    (OURS, {"annotations": {MANAGED_BY: "Function x/y"}}, f"spec.annotations.{MANAGED_BY}"),
    (ObjectRef(Flavour.FAASTWIST, "a", "Bad_Name"), {}, "metadata.name"),
    (THEIRS, {"environment": {"LD_PRELOAD": "x"}}, "spec.environment.LD_PRELOAD"),
    (THEIRS, {"limits": {"memory": "lots"}}, "spec.limits.memory"),
    (THEIRS, {"image": "x", "replicas": -1}, "spec.replicas"),
    (THEIRS, {"image": "x", "name": "other"}, "spec.name"),
    (THEIRS, {"image": "x", "bogus": 1}, "spec.bogus"),
    (OURS, ["not", "a", "mapping"], "spec"),
])
def test_errors_name_the_objects_field(ref, spec, path):
    with pytest.raises(SpecError) as caught:
        spec_from_object(ref, {"spec": spec})
    assert caught.value.path == path, caught.value


def test_a_spec_from_an_object_is_owned_by_it():
    spec = spec_from_object(OURS, {"spec": {"image": "x", "annotations": {"a": "b"}}})
    assert spec.name == "hello"
    assert owner_of(spec) == "Function team-a/hello" and spec.annotations["a"] == "b"
    theirs = spec_from_object(THEIRS, {"spec": {"image": "x", "replicas": 3}})
    assert owner_of(theirs) == "Function.openfaas.com team-a/hello"
    assert theirs.min_replica == 3
    # OpenFaaS's default minimum is one replica, as for a FunctionDeployment
    assert spec_from_object(THEIRS, {"spec": {"image": "x"}}).min_replica == 1


def test_export_leaves_ownership_out_and_reads_back_the_same_spec():
    spec = spec_from_object(OURS, {"spec": {"image": "x", "port": 8080,
                                            "annotations": {"a": "b"}}})
    obj = export_object(spec, "team-b")
    assert obj["metadata"] == {"name": "hello", "namespace": "team-b"}
    assert obj["spec"]["annotations"] == {"a": "b"}
    again = FunctionSpec.from_dict({"name": "hello", **obj["spec"]})
    assert again.annotations == {"a": "b"} and again.port == 8080
    bare = export_object(FunctionSpec.from_dict({"name": "x", "image": "i"}), "")
    assert "annotations" not in bare["spec"] and bare["metadata"] == {"name": "x"}


def test_status_follows_the_state_and_keeps_its_transition_time():
    spec = FunctionSpec.from_dict({"name": "hello", "image": "x", "minReplica": 2})
    initial = FunctionStatus.initial("hello", 100.0)
    first = status_of_record(spec, initial, 1, None, False, None, 100.0)
    assert first["state"] == "initial" and first["replicas"] == "0/2"   # desired at once, as OpenFaaS reports it
    assert first["conditions"][0]["status"] == "Unknown"
    active = apply_event(initial, Event.READY, 110.0)
    second = status_of_record(spec, active, 1, None, False, first, 110.0)
    assert second["replicas"] == "2/2" and second["lastEvent"] == "ready"
    assert second["conditions"][0]["status"] == "True"
    since = second["conditions"][0]["lastTransitionTime"]
    third = status_of_record(spec, active, 1, {"replicas": "1", "desired": "2"}, False,
                             second, 200.0)
    assert third["replicas"] == "1/2"
    assert third["conditions"][0]["lastTransitionTime"] == since   # no transition
    assert not same_status(second, third) and same_status(third, dict(third))
    long = status_of_problem("InvalidSpec", "x" * 10000, 3, None, 1.0)
    assert len(long["message"]) == 2048 and long["observedGeneration"] == 3


def test_empty_texts_are_removed_by_the_patch_and_compare_as_absent():
    wanted = {"state": "active", "message": "", "conditions": [
        {"type": "Ready", "status": "True", "reason": "Active", "message": ""}]}
    body = patch_body(wanted)
    assert body["message"] is None and "message" not in body["conditions"][0]
    stored = {"state": "active", "conditions": [
        {"type": "Ready", "status": "True", "reason": "Active"}]}
    assert same_status(stored, wanted)
    assert not same_status({"state": "active", "message": "old", "conditions":
                            stored["conditions"]}, wanted)
