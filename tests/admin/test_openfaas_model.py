"""FunctionDeployment -> FunctionSpec -> FunctionStatus, and the secret body."""

from __future__ import annotations

import base64

import pytest

from faastwist.admin.openfaas_model import (
    deployment_to_spec,
    function_status,
    read_secret,
)
from faastwist.model.fsm import FunctionStatus, State
from faastwist.model.spec import FunctionSpec, SpecError

NS = "openfaas-fn"
FULL = {
    "service": "fn1", "image": "reg/fn:1", "namespace": NS, "envProcess": "cat",
    "envVars": {"A": "1", "exec_timeout": "90s"},
    "labels": {"team": "x", "com.openfaas.scale.min": "2", "com.openfaas.scale.max": "5"},
    "annotations": {"note": "y"}, "constraints": ["node.os == linux"],
    "secrets": ["db-pass"], "limits": {"memory": "128Mi", "cpu": "500m"},
    "requests": {"memory": "64Mi", "cpu": "100m"}, "readOnlyRootFilesystem": True,
    "network": "func_functions",   # old faas-cli field: ignored, as OpenFaaS does
}


def test_every_field_round_trips_as_given() -> None:
    spec = deployment_to_spec(FULL, NS)
    assert (spec.min_replica, spec.max_replica) == (2, 5)
    assert spec.timeout == 91.0          # outlasts exec_timeout, so its 500 gets through
    status = function_status(spec, FunctionStatus("fn1", State.ACTIVE, created=1.5e9),
                             NS, 7.0, 2, 2)
    for key, value in FULL.items():
        if key not in ("service", "network", "labels"):
            assert status[key] == value, key
    # faas-netes's label on top of the deployment's own
    assert status["labels"] == {**FULL["labels"], "faas_function": "fn1"}
    assert status["name"] == "fn1"
    assert (status["replicas"], status["availableReplicas"], status["invocationCount"]) == (
        2, 2, 7)
    assert type(status["invocationCount"]) is int
    assert status["createdAt"] == "2017-07-14T02:40:00.000Z"
    # and through the store's encoding
    again = FunctionSpec.from_dict(spec.to_dict())
    assert again == spec


def test_defaults_and_scale_labels() -> None:
    spec = deployment_to_spec({"service": "f", "image": "i"}, NS)
    assert (spec.min_replica, spec.max_replica) == (1, 0)   # OpenFaaS's default minimum
    zero = deployment_to_spec({"service": "f", "labels": {"com.openfaas.scale.zero": "true"}},
                              NS)
    assert zero.min_replica == 0
    status = function_status(spec, FunctionStatus("f", State.INACTIVE), NS, 0, None, None)
    assert (status["replicas"], status["availableReplicas"]) == (0, 0)
    # both maps always, even when the deployment gave none
    assert status["labels"] == {"faas_function": "f"} and status["annotations"] == {}
    assert status["image"] == "i"


@pytest.mark.parametrize("state, pending, desired", [
    (State.INITIAL, False, 2), (State.FAILED, False, 2), (State.ACTIVE, False, 2),
    (State.INACTIVE, True, 2), (State.INACTIVE, False, 0), (State.DESTROYED, False, 0)])
def test_replicas_is_the_desired_count_from_the_deploy_on(state: State, pending: bool,
                                                          desired: int) -> None:
    """faas-netes reports a Deployment's desired count at once; clients check it right
    after the 202, before the provider observed anything."""
    spec = deployment_to_spec({"service": "f", "labels": {"com.openfaas.scale.min": "2"}}, NS)
    status = function_status(spec, FunctionStatus("f", state, start_pending=pending), NS, 0,
                             None, None)
    assert status["replicas"] == desired
    assert status["availableReplicas"] == (desired if state is State.ACTIVE else 0)
    zero = deployment_to_spec({"service": "f", "labels": {"com.openfaas.scale.zero": "true"}},
                              NS)
    status = function_status(zero, FunctionStatus("f", state, start_pending=pending), NS, 0,
                             None, None)
    assert status["replicas"] == min(desired, 1)   # starts at one, idles down later


def test_an_update_keeps_what_openfaas_cannot_name() -> None:
    base = FunctionSpec.from_dict({"name": "f", "command": ["python3", "app.py"], "port": 9000,
                                   "env": {"OLD": "1"}})
    spec = deployment_to_spec({"service": "f", "image": "new", "envVars": {"NEW": "2"}}, NS,
                              base)
    assert spec.command == ("python3", "app.py") and spec.port == 9000
    assert dict(spec.env) == {"NEW": "2"} and spec.image == "new"


@pytest.mark.parametrize("body, field", [
    ({"image": "i"}, "service"),
    ({"service": "Not_Valid"}, "service"),
    ({"service": "f", "namespace": "other"}, "namespace"),
    ({"service": "f", "limits": {"memory": "lots"}}, "limits.memory"),
    ({"service": "f", "requests": {"cpu": True}}, "requests.cpu"),
    ({"service": "f", "envVars": {"write_timeout": "later"}}, "envVars.write_timeout"),
    ({"service": "f", "envVars": {"max_inflight": "-1"}}, "envVars.max_inflight"),
    ({"service": "f", "envVars": {"combine_output": "maybe"}}, "envVars.combine_output"),
    ({"service": "f", "labels": {"com.openfaas.scale.min": "many"}},
     "labels.com.openfaas.scale.min"),
    ({"service": "f", "labels": {"com.openfaas.scale.min": "3",
                                 "com.openfaas.scale.max": "2"}},
     "labels.com.openfaas.scale.min"),
    ({"service": "f", "secrets": ["a/b"]}, "secrets[0]"),
    ({"service": "f", "envProcess": "  "}, "envProcess"),
    ({"service": "f", "readOnlyRootFilesystem": "yes"}, "readOnlyRootFilesystem"),
    (["not", "an", "object"], "(document)"),
])
def test_errors_name_the_deployments_field(body: object, field: str) -> None:
    with pytest.raises(SpecError) as caught:
        deployment_to_spec(body, NS)
    assert str(caught.value).startswith(field + ":"), str(caught.value)


def test_secret_bodies() -> None:
    assert read_secret({"name": "a", "value": "v"}, NS) == ("a", b"v")
    raw = base64.b64encode(b"\x00\xff").decode()
    assert read_secret({"name": "a", "rawValue": raw, "namespace": NS}, NS) == ("a", b"\x00\xff")
    # faas-cli's `secret create --from-file` sends both: rawValue wins, as in faas-netes
    both = {"name": "a", "value": "\ufffd", "rawValue": raw}
    assert read_secret(both, NS) == ("a", b"\x00\xff")
    for body, field in (({"value": "v"}, "name"), ({"name": "../x", "value": "v"}, "name"),
                        ({"name": "a"}, "value"), ({"name": "a", "rawValue": "!!"}, "rawValue"),
                        ({"name": "a", "value": "v", "namespace": "x"}, "namespace")):
        with pytest.raises(SpecError) as caught:
            read_secret(body, NS)
        assert str(caught.value).startswith(field + ":")


RENAMED = [("limitMemory", "limits.memory"), ("limitCPU", "limits.cpu"),
           ("requestMemory", "requests.memory"), ("requestCPU", "requests.cpu"),
           ("env", "envVars"), ("name", "service"),
           ("minReplica", "labels.com.openfaas.scale.min"),
           ("maxReplica", "labels.com.openfaas.scale.max")]


@pytest.mark.parametrize("ours, theirs", RENAMED)
def test_a_spec_error_names_the_field_as_the_deployment_calls_it(ours: str,
                                                                  theirs: str) -> None:
    from faastwist.admin.openfaas_model import _rename

    assert str(_rename(SpecError(ours, "bad"))) == f"{theirs}: bad"
    assert str(_rename(SpecError(ours + ".inner", "bad"))) == f"{theirs}.inner: bad"
    assert str(_rename(SpecError(ours + "X", "bad"))) == f"{ours}X: bad"   # not a child
    assert str(_rename(SpecError("image", "bad"))) == "image: bad"


@pytest.mark.parametrize("value, replicas", [("0", 0), ("1000", 1000), (" 7 ", 7)])
def test_scale_labels_take_whole_numbers_up_to_1000(value: str, replicas: int) -> None:
    spec = deployment_to_spec({"service": "f", "image": "i", "labels": {
        "com.openfaas.scale.min": value, "com.openfaas.scale.max": "1000"}}, NS)
    assert spec.min_replica == replicas


@pytest.mark.parametrize("value", ["1001", "-1", "1.5", "many"])
def test_a_scale_label_out_of_range_is_named_with_its_value(value: str) -> None:
    with pytest.raises(SpecError) as caught:
        deployment_to_spec({"service": "f", "image": "i",
                            "labels": {"com.openfaas.scale.max": value}}, NS)
    assert str(caught.value) == (f"labels.com.openfaas.scale.max: must be a whole number "
                                 f"0-1000, got {value!r}")


@pytest.mark.parametrize("value, zero", [("true", True), ("1", True), ("TRUE ", True),
                                         ("false", False), ("0", False)])
def test_the_scale_to_zero_label_is_a_boolean(value: str, zero: bool) -> None:
    spec = deployment_to_spec({"service": "f", "image": "i", "labels": {
        "com.openfaas.scale.zero": value, "com.openfaas.scale.min": "2"}}, NS)
    assert spec.min_replica == (0 if zero else 2)


def test_a_scale_to_zero_label_of_another_word_is_named() -> None:
    with pytest.raises(SpecError) as caught:
        deployment_to_spec({"service": "f", "image": "i",
                            "labels": {"com.openfaas.scale.zero": "yes"}}, NS)
    assert str(caught.value) == "labels.com.openfaas.scale.zero: must be true or false, got 'yes'"


def test_an_update_drops_the_resources_the_deployment_no_longer_names() -> None:
    base = FunctionSpec.from_dict({"name": "f", "image": "i", "limitMemory": "128Mi",
                                   "limitCPU": "500m", "requestMemory": "64Mi",
                                   "requestCPU": "100m", "readOnlyRootFilesystem": True})
    spec = deployment_to_spec({"service": "f", "image": "i"}, NS, base)
    assert (spec.limit_memory, spec.limit_cpu, spec.request_memory, spec.request_cpu) == (
        "", "", "", "")
    assert spec.read_only_root_filesystem is False      # not given: false, as OpenFaaS


def test_what_a_deployment_leaves_out_is_empty() -> None:
    spec = deployment_to_spec({"service": "f", "envProcess": "cat"}, NS)
    assert spec.image == ""
    spec = deployment_to_spec({"service": "f", "image": "i"}, NS)
    assert spec.env_process == ""


def test_min_may_equal_max_but_not_exceed_it() -> None:
    labels = {"com.openfaas.scale.min": "3", "com.openfaas.scale.max": "3"}
    spec = deployment_to_spec({"service": "f", "image": "i", "labels": labels}, NS)
    assert (spec.min_replica, spec.max_replica) == (3, 3)
    labels["com.openfaas.scale.max"] = "2"
    with pytest.raises(SpecError) as caught:
        deployment_to_spec({"service": "f", "image": "i", "labels": labels}, NS)
    assert str(caught.value) == ("labels.com.openfaas.scale.min: must not exceed "
                                 "com.openfaas.scale.max (2)")


def test_the_gate_outlasts_the_watchdogs_own_timeouts_by_a_second() -> None:
    base = FunctionSpec.from_dict({"name": "f", "image": "i", "timeout": "100500ms"})
    env = {"exec_timeout": "100s"}
    spec = deployment_to_spec({"service": "f", "image": "i", "envVars": env}, NS, base)
    assert spec.timeout == 101.0
    env = {"write_timeout": "20s"}
    spec = deployment_to_spec({"service": "f", "image": "i", "envVars": env}, NS, base)
    assert spec.timeout == 100.5                          # already longer: kept


def test_another_namespace_is_refused_naming_ours() -> None:
    with pytest.raises(SpecError) as caught:
        deployment_to_spec({"service": "f", "image": "i", "namespace": "other"}, NS)
    assert str(caught.value) == "namespace: this gate serves namespace openfaas-fn only, got 'other'"
    with pytest.raises(SpecError) as caught:
        read_secret({"name": "s", "value": "v", "namespace": "other"}, NS)
    assert str(caught.value) == "namespace: this gate serves namespace openfaas-fn only, got 'other'"


def test_secret_refusals_are_exact_and_the_size_limit_is_inclusive() -> None:
    from faastwist.store.secrets import MAX_SECRET_SIZE

    cases = [({"name": "a/b", "value": "v"},
              "name: must be a secret name (letters, digits, '-', '_' and '.'), got 'a/b'"),
             ({"name": "s", "rawValue": "!!"}, "rawValue: must be base64"),
             ({"name": "s"}, "value: is required (or rawValue, base64)"),
             ({"name": "s", "value": "x" * (MAX_SECRET_SIZE + 1)},
              f"value: must be at most {MAX_SECRET_SIZE} bytes")]
    for body, message in cases:
        with pytest.raises(SpecError) as caught:
            read_secret(body, NS)
        assert str(caught.value) == message
    assert read_secret({"name": "s", "value": "x" * MAX_SECRET_SIZE}, NS) == (
        "s", b"x" * MAX_SECRET_SIZE)


def test_an_active_functions_available_count_is_the_gates_own() -> None:
    from faastwist.providers.registry import OPENFAAS_NAMESPACE

    assert OPENFAAS_NAMESPACE == "openfaas-fn"              # faas-cli's default
    spec = deployment_to_spec({"service": "f", "image": "i"}, NS)
    active = function_status(spec, FunctionStatus("f", State.ACTIVE), NS, 0, 1, 3)
    assert (active["replicas"], active["availableReplicas"]) == (3, 1)
    starting = function_status(spec, FunctionStatus("f", State.INITIAL), NS, 0, 2, 3)
    assert starting["availableReplicas"] == 0                # not active: no traffic


def test_a_resource_that_is_not_a_quantity_is_named() -> None:
    with pytest.raises(SpecError) as caught:
        deployment_to_spec({"service": "f", "image": "i", "limits": {"memory": [1]}}, NS)
    assert str(caught.value) == "limits.memory: must be a quantity like 128Mi or 100m, got [1]"
