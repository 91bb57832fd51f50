"""spec -> Knative Service, and Knative status -> FSM event, on tables of real objects."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from faastwist.model.fsm import Event
from faastwist.providers import ksvc
from faastwist.model.spec import FunctionSpec

DEMO10 = {
    "name": "demo10", "image": "dev.local/colordeploy:17.0", "port": 8089,
    "autoScaleType": "rps", "autoScaleValue": "111", "minReplica": 1, "maxReplica": 3,
    "limitCPU": "180m", "limitMemory": "100Mi", "requestCPU": "80m", "requestMemory": "20Mi",
    "requestAdaptor": {"header": {"set": {"X-Func1": "func-demo-10"}}},
}


def demo10(**changes: Any) -> FunctionSpec:
    return FunctionSpec.from_dict({**DEMO10, **changes})


def test_demo10_becomes_exactly_this_ksvc() -> None:
    spec = demo10()
    assert ksvc.build_ksvc(spec, "faascontroller", "default") == {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {
            "name": "demo10",
            "namespace": "default",
            "labels": {"faastwist.io/controller": "faascontroller"},
            "annotations": {"faastwist.io/spec-digest": spec.digest()},
        },
        "spec": {"template": {
            "metadata": {"annotations": {
                "autoscaling.knative.dev/class": "kpa.autoscaling.knative.dev",
                "autoscaling.knative.dev/metric": "rps",
                "autoscaling.knative.dev/target": "111",
                "autoscaling.knative.dev/min-scale": "1",
                "autoscaling.knative.dev/max-scale": "3",
            }},
            "spec": {"containers": [{
                "image": "dev.local/colordeploy:17.0",
                "ports": [{"containerPort": 8089}],
                "resources": {"limits": {"cpu": "180m", "memory": "100Mi"},
                              "requests": {"cpu": "80m", "memory": "20Mi"}},
            }], "timeoutSeconds": 60},
        }},
    }


def test_the_functions_timeout_is_the_revisions_timeout() -> None:
    assert ksvc.template(demo10(timeout="1m30s"))["spec"]["timeoutSeconds"] == 90
    assert ksvc.template(demo10(timeout="250ms"))["spec"]["timeoutSeconds"] == 1


@pytest.mark.parametrize("scale_type, scale_class", [
    ("rps", "kpa.autoscaling.knative.dev"),
    ("concurrency", "kpa.autoscaling.knative.dev"),
    ("cpu", "hpa.autoscaling.knative.dev"),
])
def test_every_autoscale_type_sets_class_metric_and_target(scale_type: str,
                                                           scale_class: str) -> None:
    spec = demo10(autoScaleType=scale_type, autoScaleValue=70)
    annotations = ksvc.build_ksvc(spec, "c", "ns")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["autoscaling.knative.dev/class"] == scale_class
    assert annotations["autoscaling.knative.dev/metric"] == scale_type
    assert annotations["autoscaling.knative.dev/target"] == "70"
    # kebab-case keys only: Knative's deprecated camelCase keys are never written
    assert not any("Scale" in key for key in annotations)


def test_minimal_spec_has_no_port_nor_resources_nor_max_scale() -> None:
    spec = FunctionSpec.from_dict({"name": "tiny", "image": "example/tiny"})
    body = ksvc.build_ksvc(spec, "c", "ns")
    template = body["spec"]["template"]
    assert template["spec"]["containers"] == [{"image": "example/tiny"}]
    annotations = template["metadata"]["annotations"]
    assert annotations["autoscaling.knative.dev/min-scale"] == "0"
    assert "autoscaling.knative.dev/max-scale" not in annotations   # 0 = no bound of ours
    assert annotations["autoscaling.knative.dev/metric"] == "concurrency"
    assert annotations["autoscaling.knative.dev/target"] == "100"
    assert body["metadata"]["namespace"] == "ns"


def test_only_the_resources_given_are_written() -> None:
    spec = FunctionSpec.from_dict({"name": "f", "image": "i", "limitMemory": "1Gi",
                                   "requestCPU": "250m"})
    container = ksvc.container(spec)
    assert container["resources"] == {"limits": {"memory": "1Gi"},
                                      "requests": {"cpu": "250m"}}


def test_stopped_ksvc_has_min_scale_zero_and_the_marker() -> None:
    body = ksvc.build_ksvc(demo10(), "c", "ns", stopped=True)
    assert body["spec"]["template"]["metadata"]["annotations"][
        "autoscaling.knative.dev/min-scale"] == "0"
    assert body["metadata"]["annotations"]["faastwist.io/stopped"] == "true"
    assert ksvc.is_stopped(body)
    assert not ksvc.is_stopped(ksvc.build_ksvc(demo10(), "c", "ns"))


def _as_read_back(body: dict[str, Any]) -> dict[str, Any]:
    """What the API server and Knative's webhook return for a created ksvc."""
    obj = copy.deepcopy(body)
    obj["metadata"].update(resourceVersion="4711", generation=1, uid="u-1",
                           managedFields=[{"manager": "x"}])
    obj["metadata"]["annotations"]["serving.knative.dev/creator"] = "admin"
    obj["metadata"]["labels"]["team"] = "blue"
    obj["spec"]["traffic"] = [{"latestRevision": True, "percent": 100}]
    obj["spec"]["template"]["metadata"]["annotations"]["stale.example/key"] = "x"
    obj["status"] = {"observedGeneration": 1}
    return obj


def test_rewrite_replaces_the_template_and_keeps_the_rest() -> None:
    current = _as_read_back(ksvc.build_ksvc(demo10(), "c", "ns"))
    newer = demo10(image="dev.local/colordeploy:18.0", minReplica=2)
    body = ksvc.rewrite_ksvc(current, newer, "c", stopped=False)
    assert body["spec"]["template"] == ksvc.template(newer)       # replaced as a whole
    assert body["spec"]["traffic"] == current["spec"]["traffic"]
    assert body["metadata"]["resourceVersion"] == "4711"          # optimistic concurrency
    assert body["metadata"]["annotations"] == {
        "serving.knative.dev/creator": "admin", "faastwist.io/spec-digest": newer.digest()}
    assert body["metadata"]["labels"] == {"faastwist.io/controller": "c", "team": "blue"}
    assert "status" not in body and "managedFields" not in body["metadata"]
    assert current["metadata"]["annotations"]["faastwist.io/spec-digest"] != newer.digest()


def test_rewrite_stop_and_start() -> None:
    current = _as_read_back(ksvc.build_ksvc(demo10(), "c", "ns"))
    stopped = ksvc.rewrite_ksvc(current, demo10(), "c", stopped=True)
    assert ksvc.is_stopped(stopped)
    assert stopped["spec"]["template"]["metadata"]["annotations"][
        "autoscaling.knative.dev/min-scale"] == "0"
    started = ksvc.rewrite_ksvc(_as_read_back(stopped), demo10(), "c", stopped=False)
    assert not ksvc.is_stopped(started)
    assert started["spec"]["template"]["metadata"]["annotations"][
        "autoscaling.knative.dev/min-scale"] == "1"


def test_ownership_is_the_controller_label() -> None:
    body = ksvc.build_ksvc(demo10(), "c1", "ns")
    assert ksvc.is_ours(body, "c1")
    assert not ksvc.is_ours(body, "c2")
    assert not ksvc.is_ours({"metadata": {"name": "x"}}, "c1")
    assert ksvc.label_selector("c1") == "faastwist.io/controller=c1"


# -- conditions -> event -----------------------------------------------------------------

def cond(kind: str, status: str, reason: str = "", message: str = "") -> dict[str, str]:
    out = {"type": kind, "status": status, "lastTransitionTime": "2024-05-01T10:00:00Z"}
    if reason:
        out["reason"] = reason
    if message:
        out["message"] = message
    return out


def service(generation: int, status: dict[str, Any] | None) -> dict[str, Any]:
    obj = ksvc.build_ksvc(demo10(), "c", "default")
    obj["metadata"]["generation"] = generation
    if status is not None:
        obj["status"] = status
    return obj


REVISION_FAILED = ('Revision "demo10-00001" failed with message: Unable to fetch image '
                   '"dev.local/colordeploy:17.0": failed to resolve image to digest: '
                   'GET https://dev.local/v2/: dial tcp: lookup dev.local: no such host.')

# (case, generation, status, expected event, expected message fragment)
CONDITION_TABLE = [
    ("no status yet", 1, None, None, "observe generation 1"),
    ("first deploy, Unknown/OutOfDate", 1, {
        "observedGeneration": 1,
        "conditions": [
            cond("ConfigurationsReady", "Unknown", "OutOfDate",
                 "The Configuration is still working to reflect the latest desired "
                 "specification."),
            cond("Ready", "Unknown", "OutOfDate",
                 "The Configuration is still working to reflect the latest desired "
                 "specification."),
            cond("RoutesReady", "Unknown")],
        "latestCreatedRevisionName": "demo10-00001"},
     Event.PENDING, "Ready is Unknown: OutOfDate"),
    ("RevisionMissing", 1, {
        "observedGeneration": 1,
        "conditions": [
            cond("ConfigurationsReady", "True"),
            cond("Ready", "Unknown", "RevisionMissing",
                 'Configuration "demo10" is waiting for a Revision to become ready.'),
            cond("RoutesReady", "Unknown", "RevisionMissing",
                 'Configuration "demo10" is waiting for a Revision to become ready.')],
        "latestCreatedRevisionName": "demo10-00001",
        "latestReadyRevisionName": "demo10-00001"},
     Event.PENDING, "RevisionMissing"),
    ("ContainerMissing", 1, {
        "observedGeneration": 1,
        "conditions": [
            cond("ConfigurationsReady", "False", "ContainerMissing", REVISION_FAILED),
            cond("Ready", "Unknown", "RevisionMissing",
                 'Configuration "demo10" is waiting for a Revision to become ready.'),
            cond("RoutesReady", "Unknown", "RevisionMissing")],
        "latestCreatedRevisionName": "demo10-00001"},
     Event.ERROR, "ConfigurationsReady is False: ContainerMissing: Revision \"demo10-00001\""),
    ("RevisionFailed with message", 2, {
        "observedGeneration": 2,
        "conditions": [
            cond("ConfigurationsReady", "False", "RevisionFailed", REVISION_FAILED),
            cond("Ready", "False", "RevisionFailed", REVISION_FAILED),
            cond("RoutesReady", "True")],
        "latestCreatedRevisionName": "demo10-00002",
        "latestReadyRevisionName": "demo10-00001"},
     Event.ERROR, "Ready is False: RevisionFailed: " + REVISION_FAILED),
    ("ProgressDeadlineExceeded", 1, {
        "observedGeneration": 1,
        "conditions": [
            cond("ConfigurationsReady", "False", "ProgressDeadlineExceeded",
                 'Revision "demo10-00001" failed with message: Initial scale was never '
                 'achieved.'),
            cond("Ready", "False", "ProgressDeadlineExceeded",
                 'Revision "demo10-00001" failed with message: Initial scale was never '
                 'achieved.'),
            cond("RoutesReady", "False", "RevisionMissing",
                 'Configuration "demo10" does not have any ready Revision.')],
        "latestCreatedRevisionName": "demo10-00001"},
     Event.ERROR, "Ready is False: ProgressDeadlineExceeded: Revision"),
    ("RoutesReady False alone", 1, {
        "observedGeneration": 1,
        "conditions": [cond("ConfigurationsReady", "True"),
                       cond("Ready", "Unknown"),
                       cond("RoutesReady", "False", "DomainMappingFailed", "no domain")],
        "latestCreatedRevisionName": "demo10-00001",
        "latestReadyRevisionName": "demo10-00001"},
     Event.ERROR, "RoutesReady is False: DomainMappingFailed: no domain"),
    ("Ready=True, stale observedGeneration", 3, {
        "observedGeneration": 2,
        "conditions": [cond("ConfigurationsReady", "True"), cond("Ready", "True"),
                       cond("RoutesReady", "True")],
        "latestCreatedRevisionName": "demo10-00002",
        "latestReadyRevisionName": "demo10-00002"},
     None, "observe generation 3 (observed: 2)"),
    ("Ready=True, latestCreated != latestReady", 2, {
        "observedGeneration": 2,
        "conditions": [cond("ConfigurationsReady", "True"), cond("Ready", "True"),
                       cond("RoutesReady", "True")],
        "latestCreatedRevisionName": "demo10-00002",
        "latestReadyRevisionName": "demo10-00001"},
     Event.PENDING, "revision demo10-00002 is not ready yet (latest ready: demo10-00001)"),
    ("ready", 2, {
        "observedGeneration": 2,
        "conditions": [cond("ConfigurationsReady", "True"), cond("Ready", "True"),
                       cond("RoutesReady", "True")],
        "latestCreatedRevisionName": "demo10-00002",
        "latestReadyRevisionName": "demo10-00002",
        "url": "http://demo10.default.example.com"},
     Event.READY, "revision demo10-00002 is ready"),
    ("observed but no conditions", 1, {"observedGeneration": 1}, Event.PENDING,
     "no Ready condition"),
]


@pytest.mark.parametrize("case, generation, status, event, message", CONDITION_TABLE,
                         ids=[row[0] for row in CONDITION_TABLE])
def test_conditions_to_event(case: str, generation: int, status: dict[str, Any] | None,
                             event: Event | None, message: str) -> None:
    got_event, got_message, _ = ksvc.conditions_event(service(generation, status))
    assert got_event is event
    assert message in got_message


def test_ext_data_holds_each_condition() -> None:
    obj = service(2, CONDITION_TABLE[4][2])
    _, _, ext_data = ksvc.conditions_event(obj)
    assert ext_data == {
        "ConfigurationsReady.status": "False",
        "ConfigurationsReady.reason": "RevisionFailed",
        "ConfigurationsReady.message": REVISION_FAILED,
        "Ready.status": "False",
        "Ready.reason": "RevisionFailed",
        "Ready.message": REVISION_FAILED,
        "RoutesReady.status": "True",
        "RoutesReady.reason": "",
        "RoutesReady.message": "",
    }


def test_ext_data_ignores_transition_times() -> None:
    first = service(2, copy.deepcopy(CONDITION_TABLE[-2][2]))
    later = copy.deepcopy(first)
    for condition in later["status"]["conditions"]:
        condition["lastTransitionTime"] = "2024-06-01T00:00:00Z"
    assert ksvc.conditions_event(first) == ksvc.conditions_event(later)


def test_observation_reports_digest_stopped_and_verdict() -> None:
    spec = demo10()
    obj = ksvc.build_ksvc(spec, "c", "default", stopped=True)
    obj["metadata"]["generation"] = 2
    obj["status"] = copy.deepcopy(CONDITION_TABLE[-2][2])
    observation = ksvc.observe_ksvc(obj)
    assert observation.name == "demo10"
    assert observation.digest == spec.digest()
    assert observation.stopped
    assert observation.event is Event.READY
    assert observation.ext_data["url"] == "http://demo10.default.example.com"
