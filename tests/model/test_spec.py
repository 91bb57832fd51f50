"""Function spec validation: every field, error paths, round trips."""

import json
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings, strategies as st

from faastwist.model.spec import (
    AutoScaleType, FunctionSpec, ProcessMode, SpecError, spec_from_yaml, spec_to_yaml,
)
from tests.support.properties import examples

# the seed's demo10 spec (Easegress's FaaSFunction example), as shipped in conf/
DEMO10 = (Path(__file__).resolve().parents[2] / "conf" / "function.yaml").read_text()


def test_demo10_parses_with_every_field():
    spec = spec_from_yaml(DEMO10)
    assert spec.name == "demo10" and spec.image == "dev.local/colordeploy:17.0"
    assert spec.port == 8089 and spec.auto_scale_type is AutoScaleType.RPS
    assert spec.auto_scale_value == "111"
    assert (spec.min_replica, spec.max_replica) == (1, 3)
    assert (spec.limit_cpu, spec.limit_memory) == ("180m", "100Mi")
    assert (spec.request_cpu, spec.request_memory) == ("80m", "20Mi")
    assert spec.request_adaptor.header.set == {"X-Func1": "func-demo-10"}
    assert spec.timeout == 60.0
    spec.check_for_provider("knative")


def test_defaults():
    spec = FunctionSpec.from_dict({"name": "f"})
    assert spec.auto_scale_type is AutoScaleType.CONCURRENCY and spec.auto_scale_value == "100"
    assert (spec.min_replica, spec.max_replica, spec.port) == (0, 0, None)
    assert spec.mode is ProcessMode.HTTP and spec.command == ()


def _error(data) -> SpecError:
    with pytest.raises(SpecError) as info:
        FunctionSpec.from_dict(data)
    return info.value


@pytest.mark.parametrize("data, path, fragment", [
    ({}, "name", "is required"),
    ({"name": "Demo"}, "name", "DNS-1123"),
    ({"name": "a" * 64}, "name", "at most 63"),
    ({"name": "-a"}, "name", "DNS-1123"),
    ({"name": "f", "image": 3}, "image", "must be a string"),
    ({"name": "f", "port": 0}, "port", "1-65535"),
    ({"name": "f", "port": "http"}, "port", "integer"),
    ({"name": "f", "autoScaleType": "memory"}, "autoScaleType", "rps, concurrency, cpu"),
    ({"name": "f", "autoScaleValue": "0"}, "autoScaleValue", "positive"),
    ({"name": "f", "autoScaleValue": "lots"}, "autoScaleValue", "positive"),
    ({"name": "f", "minReplica": -1}, "minReplica", "0-1000"),
    ({"name": "f", "minReplica": 3, "maxReplica": 2}, "minReplica", "must not exceed maxReplica"),
    ({"name": "f", "limitCPU": "lots"}, "limitCPU", "quantity"),
    ({"name": "f", "limitMemory": "10 Mi"}, "limitMemory", "quantity"),
    ({"name": "f", "requestCPU": "2", "limitCPU": "1"}, "requestCPU", "must not exceed limitCPU"),
    ({"name": "f", "requestMemory": "2Gi", "limitMemory": "1Gi"}, "requestMemory", "limitMemory"),
    ({"name": "f", "limitedCPU": "1"}, "limitedCPU", "unknown field"),
    ({"name": "f", "requestAdaptor": {"methd": "GET"}}, "requestAdaptor.methd", "unknown field"),
    ({"name": "f", "requestAdaptor": {"method": "G ET"}}, "requestAdaptor.method", "HTTP method"),
    ({"name": "f", "requestAdaptor": {"path": {"addPrefix": "x"}}},
     "requestAdaptor.path.addPrefix", "start with '/'"),
    ({"name": "f", "requestAdaptor": {"path": {"regexpReplace": {"regexp": "(", "replace": ""}}}},
     "requestAdaptor.path.regexpReplace.regexp", "does not compile"),
    ({"name": "f", "requestAdaptor": {"header": {"set": {"Bad Name": "x"}}}},
     "requestAdaptor.header.set", "not a valid header name"),
    ({"name": "f", "requestAdaptor": {"header": {"add": {"X": "a\nb"}}}},
     "requestAdaptor.header.add", "line break"),
    ({"name": "f", "requestAdaptor": {"header": {"set": {"Host": "x"}}}},
     "requestAdaptor.header.set", "use requestAdaptor.host"),
    ({"name": "f", "requestAdaptor": {"header": {"add": {"Transfer-Encoding": "chunked"}}}},
     "requestAdaptor.header.add", "managed by the gate"),
    ({"name": "f", "requestAdaptor": {"header": {"del": ["content-length"]}}},
     "requestAdaptor.header.del", "managed by the gate"),
    ({"name": "f", "requestAdaptor": {"host": "a b.example.com"}},
     "requestAdaptor.host", "host name or address"),
    ({"name": "f", "requestAdaptor": {"host": "a.example.com\r\nX-Evil: 1"}},
     "requestAdaptor.host", "host name or address"),
    ({"name": "f", "requestAdaptor": {"header": {"del": "X"}}},
     "requestAdaptor.header.del", "list of strings"),
    ({"name": "f", "requestAdaptor": []}, "requestAdaptor", "must be a mapping"),
    ({"name": "f", "timeout": "forever"}, "timeout", "duration"),
    ({"name": "f", "timeout": "0s"}, "timeout", "at least"),
    ({"name": "f", "command": "python3 app.py"}, "command", "list of strings"),
    ({"name": "f", "command": ["python3", 1]}, "command[1]", "must be a string"),
    ({"name": "f", "env": {"A": [1]}}, "env.A", "must be a string"),
    ({"name": "f", "mode": "batch"}, "mode", "http, fork"),
    ({"name": "f", "readinessPath": "healthz"}, "readinessPath", "start with '/'"),
])
def test_each_error_names_its_field(data, path, fragment):
    error = _error(data)
    assert error.path == path
    assert fragment in error.problem
    assert str(error).startswith(f"{path}: ")


def test_document_must_be_a_mapping():
    assert "must be a mapping" in str(_error([1, 2]))
    with pytest.raises(SpecError, match="not valid YAML"):
        spec_from_yaml("name: [unclosed")
    with pytest.raises(SpecError):
        spec_from_yaml("[" * 100_000)


def test_provider_specific_checks():
    with pytest.raises(SpecError, match="image: is required for the knative provider"):
        FunctionSpec.from_dict({"name": "f"}).check_for_provider("knative")
    with pytest.raises(SpecError, match="command: is required for the process provider"):
        FunctionSpec.from_dict({"name": "f", "image": "i"}).check_for_provider("process")
    with pytest.raises(SpecError, match="autoScaleType: cpu is not supported"):
        FunctionSpec.from_dict({"name": "f", "command": ["x"], "autoScaleType": "cpu"}
                               ).check_for_provider("process")
    with pytest.raises(SpecError, match="command: is only for the process provider"):
        FunctionSpec.from_dict({"name": "f", "image": "i", "command": ["x"]}
                               ).check_for_provider("knative")
    FunctionSpec.from_dict({"name": "f", "command": ["x"]}).check_for_provider("process")


def test_digest_changes_with_the_spec_and_only_with_it():
    a = spec_from_yaml(DEMO10)
    assert a.digest() == spec_from_yaml(DEMO10).digest()
    assert a.digest() != spec_from_yaml(DEMO10.replace("17.0", "18.0")).digest()


def test_yaml_and_json_round_trip_demo10():
    spec = spec_from_yaml(DEMO10)
    assert spec_from_yaml(spec_to_yaml(spec)) == spec
    assert FunctionSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


names = st.from_regex(r"\A[a-z]([a-z0-9-]{0,20}[a-z0-9])?\Z")
quantities = st.sampled_from(["", "100m", "1", "250Mi", "2Gi", "0.5"])
header_names = st.from_regex(r"\AX-[A-Za-z0-9]{1,8}\Z")
header_values = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=12)
specs = st.builds(
    dict,
    name=names,
    image=st.sampled_from(["", "img:1", "registry.local/x/y:2"]),
    autoScaleType=st.sampled_from(["rps", "concurrency", "cpu"]),
    autoScaleValue=st.integers(1, 1000).map(str),
    minReplica=st.integers(0, 3),
    maxReplica=st.sampled_from([0, 3, 10]),
    limitCPU=quantities,
    requestMemory=quantities,
    timeout=st.sampled_from(["1s", "1m30s", "250ms", "2h"]),
    command=st.lists(st.text(min_size=1, max_size=8), max_size=3),
    env=st.dictionaries(st.from_regex(r"\A[A-Z_]{1,6}\Z"), st.text(max_size=6), max_size=3),
    mode=st.sampled_from(["http", "fork"]),
    requestAdaptor=st.fixed_dictionaries({}, optional={
        "method": st.sampled_from(["GET", "post", "PUT"]),
        "host": st.sampled_from(["", "a.example.com"]),
        "body": st.text(max_size=10),
        "path": st.fixed_dictionaries({}, optional={
            "replace": st.just("/r"), "addPrefix": st.just("/p"), "trimPrefix": st.just("/t"),
            "regexpReplace": st.just({"regexp": "^/a(.*)$", "replace": "/b$1"})}),
        "header": st.fixed_dictionaries({}, optional={
            "del": st.lists(header_names, max_size=2),
            "set": st.dictionaries(header_names, header_values, max_size=2),
            "add": st.dictionaries(header_names, header_values, max_size=2)}),
    }),
)


@settings(max_examples=examples(150))
@given(specs)
def test_valid_specs_round_trip_through_yaml(data):
    if data["minReplica"] > data["maxReplica"] and data["maxReplica"]:
        data["maxReplica"] = 0
    spec = FunctionSpec.from_dict(data)
    again = spec_from_yaml(spec_to_yaml(spec))
    assert again == spec
    assert again.digest() == spec.digest()


def _containers(inner: st.SearchStrategy) -> st.SearchStrategy:
    return st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    _containers, max_leaves=12)
field_names = st.sampled_from([
    "name", "image", "port", "autoScaleType", "autoScaleValue", "minReplica", "maxReplica",
    "limitCPU", "limitMemory", "requestCPU", "requestMemory", "requestAdaptor", "timeout",
    "command", "env", "mode", "readinessPath", "unknown"])


@settings(max_examples=examples(300))
@given(st.one_of(json_values, st.dictionaries(field_names, json_values, max_size=8)))
def test_any_mapping_is_a_spec_or_a_clean_spec_error(data):
    try:
        spec = FunctionSpec.from_dict(data)
    except SpecError as exc:
        assert str(exc)
    else:
        assert FunctionSpec.from_dict(spec.to_dict()) == spec


@settings(max_examples=examples(200))
@given(st.text(max_size=40) | st.binary(max_size=40))
def test_any_text_is_a_spec_or_a_clean_spec_error(text):
    try:
        spec_from_yaml(text)
    except SpecError:
        pass
    except UnicodeDecodeError:  # pragma: no cover - yaml decodes bytes itself
        pytest.fail("undecodable bytes must be a SpecError")


def test_async_fields_round_trip_and_are_checked():
    spec = FunctionSpec.from_dict({"name": "f", "asyncConcurrency": 3, "maxAttempts": 7})
    assert (spec.async_concurrency, spec.max_attempts) == (3, 7)
    assert FunctionSpec.from_dict(spec.to_dict()) == spec
    assert "asyncConcurrency" not in FunctionSpec.from_dict({"name": "f"}).to_dict()
    for data, path in (({"asyncConcurrency": -1}, "asyncConcurrency"),
                       ({"maxAttempts": 101}, "maxAttempts"),
                       ({"maxAttempts": "x"}, "maxAttempts")):
        with pytest.raises(SpecError, match=path):
            FunctionSpec.from_dict({"name": "f", **data})
