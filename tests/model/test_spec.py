"""Function spec validation: every field, error paths, round trips."""

import json
from pathlib import Path

import attrs
import pytest
import yaml
from hypothesis import given, settings, strategies as st

from faastwist.model.spec import (
    loader_variable,
    AutoScaleType, FunctionSpec, HeaderAdaptor, PathAdaptor, ProcessMode, RateLimit,
    RegexpReplace, RequestAdaptor, SpecError, spec_from_yaml, spec_to_yaml,
)
from faastwist.providers.registry import check_spec_for
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
    check_spec_for("knative", spec)


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
        check_spec_for("knative", FunctionSpec.from_dict({"name": "f"}))
    with pytest.raises(SpecError, match="command: is required for the process provider"):
        check_spec_for("process", FunctionSpec.from_dict({"name": "f", "image": "i"}))
    # cpu: the process provider measures its replicas' process groups
    check_spec_for("process", FunctionSpec.from_dict({"name": "f", "command": ["x"],
                                                      "autoScaleType": "cpu"}))
    with pytest.raises(SpecError, match="command: is only for the process provider"):
        check_spec_for("knative", FunctionSpec.from_dict({"name": "f", "image": "i",
                                                          "command": ["x"]}))
    check_spec_for("process", FunctionSpec.from_dict({"name": "f", "command": ["x"]}))


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
                       ({"maxAttempts": "x"}, "maxAttempts"),
                       ({"maxQueued": -1}, "maxQueued: must be 0-10000000")):
        with pytest.raises(SpecError, match=path):
            FunctionSpec.from_dict({"name": "f", **data})


# -- every field, every default and every message, exactly ---------------------------------

#: every field set to a value that is not its default (one of each form the reader takes)
FULL = {
    "name": "full-1", "image": "img:2", "port": 8080, "autoScaleType": "rps",
    "autoScaleValue": " 2.5 ", "minReplica": 2, "maxReplica": 5, "limitCPU": "2",
    "limitMemory": "1Gi", "requestCPU": "500m", "requestMemory": "256Mi",
    "requestAdaptor": {
        "host": "a.example:8080", "method": "post", "body": "{}",
        "path": {"replace": "/r", "addPrefix": "/p", "trimPrefix": "/t",
                 "regexpReplace": {"regexp": "^/a(.*)$", "replace": "/b$1"}},
        "header": {"del": ["X-Old"], "set": {"X-S": "1"}, "add": {"X-A": "2"}}},
    "timeout": "1m30s", "command": ["python3", "app.py"], "env": {"A": "1", "B": 2},
    "mode": "fork", "readinessPath": "/healthz", "envProcess": "cat",
    "labels": {"team": "a"}, "annotations": {"note": "x"},
    "constraints": ["node.platform.os == linux"], "secrets": ["db-pass", "api.key_2"],
    "readOnlyRootFilesystem": True, "rateLimit": {"rps": 2.5, "burst": 7},
    "asyncConcurrency": 3, "maxAttempts": 9, "maxQueued": 50,
}


def test_every_field_is_read_from_its_own_key_and_written_back_to_it():
    """A misspelt key in the reader would leave that field's default; in to_dict, write
    the value under another name (the store and the providers keep to_dict's form)."""
    spec = FunctionSpec.from_dict(FULL)
    assert spec == FunctionSpec(
        name="full-1", image="img:2", port=8080, auto_scale_type=AutoScaleType.RPS,
        auto_scale_value="2.5", min_replica=2, max_replica=5, limit_cpu="2",
        limit_memory="1Gi", request_cpu="500m", request_memory="256Mi",
        request_adaptor=RequestAdaptor(
            host="a.example:8080", method="POST", body="{}",
            path=PathAdaptor(replace="/r", add_prefix="/p", trim_prefix="/t",
                             regexp_replace=RegexpReplace("^/a(.*)$", "/b$1")),
            header=HeaderAdaptor(delete=("X-Old",), set={"X-S": "1"}, add={"X-A": "2"})),
        timeout=90.0, command=("python3", "app.py"), env={"A": "1", "B": "2"},
        mode=ProcessMode.FORK, readiness_path="/healthz", env_process="cat",
        labels={"team": "a"}, annotations={"note": "x"},
        constraints=("node.platform.os == linux",), secrets=("db-pass", "api.key_2"),
        read_only_root_filesystem=True, rate_limit=RateLimit(2.5, 7), async_concurrency=3,
        max_attempts=9, max_queued=50)
    assert spec.to_dict() == {
        "name": "full-1", "image": "img:2", "port": 8080, "autoScaleType": "rps",
        "autoScaleValue": "2.5", "minReplica": 2, "maxReplica": 5, "limitCPU": "2",
        "limitMemory": "1Gi", "requestCPU": "500m", "requestMemory": "256Mi",
        "requestAdaptor": {
            "host": "a.example:8080", "method": "POST", "body": "{}",
            "path": {"replace": "/r", "addPrefix": "/p", "trimPrefix": "/t",
                     "regexpReplace": {"regexp": "^/a(.*)$", "replace": "/b$1"}},
            "header": {"del": ["X-Old"], "set": {"X-S": "1"}, "add": {"X-A": "2"}}},
        "timeout": "1m30s", "command": ["python3", "app.py"], "env": {"A": "1", "B": "2"},
        "mode": "fork", "readinessPath": "/healthz", "envProcess": "cat",
        "labels": {"team": "a"}, "annotations": {"note": "x"},
        "constraints": ["node.platform.os == linux"], "secrets": ["db-pass", "api.key_2"],
        "readOnlyRootFilesystem": True, "rateLimit": {"rps": 2.5, "burst": 7},
        "asyncConcurrency": 3, "maxAttempts": 9, "maxQueued": 50}
    assert FunctionSpec.from_dict(spec.to_dict()) == spec


#: what a spec of only a name is (README's defaults), every field written out
EMPTY_ADAPTOR = RequestAdaptor(
    host="", method="", body="",
    path=PathAdaptor(replace="", add_prefix="", trim_prefix="", regexp_replace=None),
    header=HeaderAdaptor(delete=(), set={}, add={}))
DEFAULTS = FunctionSpec(
    name="f", image="", port=None, auto_scale_type=AutoScaleType.CONCURRENCY,
    auto_scale_value="100", min_replica=0, max_replica=0, limit_cpu="", limit_memory="",
    request_cpu="", request_memory="", request_adaptor=EMPTY_ADAPTOR, timeout=60.0,
    command=(), env={}, mode=ProcessMode.HTTP, readiness_path="", env_process="", labels={},
    annotations={}, constraints=(), secrets=(), read_only_root_filesystem=False,
    rate_limit=None, async_concurrency=0, max_attempts=0, max_queued=0)


def test_every_default_exactly_from_a_document_and_in_code():
    """The gate and the watchdog build specs in code (FunctionSpec(name=..., timeout=...)):
    the record's own defaults must be the documented ones too."""
    assert FunctionSpec.from_dict({"name": "f"}) == DEFAULTS
    assert FunctionSpec(name="f") == DEFAULTS
    assert RequestAdaptor() == EMPTY_ADAPTOR and RequestAdaptor().is_empty
    assert FunctionSpec.from_dict({"name": "f"}).to_dict() == {
        "name": "f", "autoScaleType": "concurrency", "autoScaleValue": "100",
        "minReplica": 0, "maxReplica": 0, "timeout": "1m"}
    # a section that is present keeps its other fields' defaults
    adaptor = FunctionSpec.from_dict({"name": "f", "requestAdaptor": {"body": "x"}}
                                     ).request_adaptor
    assert adaptor == attrs.evolve(EMPTY_ADAPTOR, body="x") and not adaptor.is_empty
    assert adaptor.to_dict() == {"body": "x"}
    path = FunctionSpec.from_dict({"name": "f", "requestAdaptor": {
        "path": {"regexpReplace": {"regexp": "^/a"}}}}).request_adaptor.path
    assert path == PathAdaptor(regexp_replace=RegexpReplace("^/a", ""))
    assert path.to_dict() == {"regexpReplace": {"regexp": "^/a", "replace": ""}}


_MANAGED = ("Connection", "Keep-Alive", "Proxy-Connection", "TE", "Trailer",
            "Transfer-Encoding", "Upgrade", "Proxy-Authenticate", "Proxy-Authorization",
            "Content-Length", "Expect")


@pytest.mark.parametrize("name", _MANAGED)
def test_every_header_the_gate_manages_is_refused_in_each_list(name):
    for key, value in (("del", [name.lower()]), ("set", {name: "x"}), ("add", {name.upper(): "x"})):
        error = _error({"name": "f", "requestAdaptor": {"header": {key: value}}})
        shown = value[0] if key == "del" else next(iter(value))
        assert str(error) == (f"requestAdaptor.header.{key}: {shown!r} is managed by the gate "
                              f"and cannot be adapted")
    header = FunctionSpec.from_dict({"name": "f", "requestAdaptor": {"header": {
        "set": {f"X-{name}": "1"}}}}).request_adaptor.header
    assert header.set == {f"X-{name}": "1"}


_RPS = "must be a number of requests per second above 0 (at most 1000000), got"
_QUANTITY = "must be a Kubernetes quantity like 100m or 128Mi, got"
_DNS = ("must be a DNS-1123 label (lower-case letters, digits and '-', starting and ending "
        "with a letter or digit), got")


@pytest.mark.parametrize("data, message", [
    ({"name": None}, "name: is required"),
    ({"name": ""}, "name: is required"),
    ({"name": "a" * 64}, "name: must be at most 63 characters, got 64"),
    ({"name": "Demo"}, f"name: {_DNS} 'Demo'"),
    ({"requestAdaptor": {"path": {"regexpReplace": {"regexp": "("}}}},
     "requestAdaptor.path.regexpReplace.regexp: does not compile on RE2 (linear time, as "
     "Go's regexp): missing ): ("),
    # what only a backtracking engine runs: refused when the spec is read
    ({"requestAdaptor": {"path": {"regexpReplace": {"regexp": r"^/(a)\1$"}}}},
     "requestAdaptor.path.regexpReplace.regexp: does not compile on RE2 (linear time, as "
     "Go's regexp): invalid escape sequence: \\1"),
    ({"requestAdaptor": {"path": {"regexpReplace": {"regexp": "^/(?=a)"}}}},
     "requestAdaptor.path.regexpReplace.regexp: does not compile on RE2 (linear time, as "
     "Go's regexp): invalid perl operator: (?="),
    ({"requestAdaptor": {"path": {"replace": "r"}}},
     "requestAdaptor.path.replace: must start with '/', got 'r'"),
    ({"requestAdaptor": {"path": {"addPrefix": "p"}}},
     "requestAdaptor.path.addPrefix: must start with '/', got 'p'"),
    ({"requestAdaptor": {"path": {"trimPrefix": "t"}}},
     "requestAdaptor.path.trimPrefix: must start with '/', got 't'"),
    ({"requestAdaptor": {"header": {"del": ["Bad Name"]}}},
     "requestAdaptor.header.del: 'Bad Name' is not a valid header name"),
    ({"requestAdaptor": {"header": {"set": {"Host": "x"}}}},
     "requestAdaptor.header.set: 'Host' is managed by the gate and cannot be adapted; use "
     "requestAdaptor.host"),
    ({"requestAdaptor": {"header": {"add": {"host": "x"}}}},
     "requestAdaptor.header.add: 'host' is managed by the gate and cannot be adapted; use "
     "requestAdaptor.host"),
    ({"requestAdaptor": {"header": {"set": {"X": "a\rb"}}}},
     "requestAdaptor.header.set: value of 'X' must not contain a line break (no control "
     "characters in header values)"),
    ({"requestAdaptor": {"header": {"add": {"X": "a\nb"}}}},
     "requestAdaptor.header.add: value of 'X' must not contain a line break (no control "
     "characters in header values)"),
    ({"requestAdaptor": {"header": {"set": {"X": "a\x00b"}}}},
     "requestAdaptor.header.set: value of 'X' must not contain control character '\\x00' "
     "(no control characters in header values)"),
    ({"requestAdaptor": {"header": {"add": {"X": "a\x0bb"}}}},
     "requestAdaptor.header.add: value of 'X' must not contain control character '\\x0b' "
     "(no control characters in header values)"),
    ({"requestAdaptor": {"method": "G ET"}},
     "requestAdaptor.method: is not an HTTP method token, got 'G ET'"),
    ({"requestAdaptor": {"host": "a b"}},
     "requestAdaptor.host: must be a host name or address with an optional port, got 'a b'"),
    ({"limitCPU": True}, f"limitCPU: {_QUANTITY} True"),
    ({"requestMemory": [1]}, f"requestMemory: {_QUANTITY} [1]"),
    ({"autoScaleValue": True}, "autoScaleValue: must be a positive number, got True"),
    ({"autoScaleValue": [1]}, "autoScaleValue: must be a positive number, got [1]"),
    ({"autoScaleValue": "lots"}, "autoScaleValue: must be a positive number, got 'lots'"),
    ({"autoScaleValue": "0"}, "autoScaleValue: must be a positive number, got '0'"),
    ({"autoScaleValue": -2}, "autoScaleValue: must be a positive number, got -2"),
    ({"autoScaleValue": "NaN"}, "autoScaleValue: must be a positive number, got 'NaN'"),
    ({"autoScaleValue": "Infinity"}, "autoScaleValue: must be a positive number, got 'Infinity'"),
    ({"rateLimit": {"burst": 2}}, "rateLimit.rps: is required"),
    ({"rateLimit": {"rps": 0}}, f"rateLimit.rps: {_RPS} 0"),
    ({"rateLimit": {"rps": True}}, f"rateLimit.rps: {_RPS} True"),
    ({"rateLimit": {"rps": "5"}}, f"rateLimit.rps: {_RPS} '5'"),
    ({"rateLimit": {"rps": 1_000_001}}, f"rateLimit.rps: {_RPS} 1000001"),
    ({"rateLimit": {"rps": 5, "burst": 0}}, "rateLimit.burst: must be 1-1000000, got 0"),
    ({"rateLimit": {"rps": 5, "burst": 1_000_001}},
     "rateLimit.burst: must be 1-1000000, got 1000001"),
    ({"rateLimit": {"rps": 5, "bust": 2}}, "rateLimit.bust: unknown field"),
    ({"envProcess": " \t"}, "envProcess: must not be blank"),
    ({"secrets": ["ok", "bad name"]},
     "secrets[1]: must be a secret name (letters, digits, '-', '_' and '.'), got 'bad name'"),
    ({"minReplica": 3, "maxReplica": 2}, "minReplica: must not exceed maxReplica (2), got 3"),
    ({"requestCPU": "2", "limitCPU": "1"}, "requestCPU: must not exceed limitCPU (1), got 2"),
    ({"requestMemory": "2Gi", "limitMemory": "1Gi"},
     "requestMemory: must not exceed limitMemory (1Gi), got 2Gi"),
    ({"readinessPath": "healthz"}, "readinessPath: must start with '/', got 'healthz'"),
    ({"maxReplica": 1001}, "maxReplica: must be 0-1000, got 1001"),
    ({"asyncConcurrency": 10_001}, "asyncConcurrency: must be 0-10000, got 10001"),
    ({"maxAttempts": -1}, "maxAttempts: must be 0-100, got -1"),
    ({"readOnlyRootFilesystem": "yes"}, "readOnlyRootFilesystem: must be true or false, got a "
                                        "string"),
])
def test_each_error_message_exactly(data, message):
    """What an operator reads: the dotted key and the problem, word for word."""
    assert str(_error({"name": "f", **data})) == message


@pytest.mark.parametrize("data", [
    {"name": "a" * 63}, {"maxReplica": 0}, {"maxReplica": 1000}, {"minReplica": 4, "maxReplica": 4},
    {"requestCPU": "1", "limitCPU": "1000m"}, {"requestMemory": "1Gi", "limitMemory": "1Gi"},
    {"asyncConcurrency": 0}, {"asyncConcurrency": 10_000}, {"maxAttempts": 0},
    {"maxAttempts": 100}, {"rateLimit": {"rps": 1_000_000, "burst": 1_000_000}},
    {"rateLimit": {"rps": 0.001, "burst": 1}}, {"secrets": ["a", "A.b_c-9"]},
    {"envProcess": "cat", "readinessPath": "/"},
])
def test_the_bounds_themselves_are_accepted(data):
    """README's ranges are inclusive: each end is a valid spec and reads back as given."""
    spec = FunctionSpec.from_dict({"name": "f", **data})
    written = spec.to_dict()
    for key, value in data.items():
        if key == "name" or value:  # to_dict leaves out a field at its default (0)
            assert written[key] == value
    assert FunctionSpec.from_dict(written) == spec


def test_rate_limit_burst_defaults_to_one_second_of_rps():
    read = lambda limit: FunctionSpec.from_dict({"name": "f", "rateLimit": limit}).rate_limit
    assert read({"rps": 0.5}) == RateLimit(0.5, 1)
    assert read({"rps": 3.2}) == RateLimit(3.2, 4)
    assert read({"rps": 20}) == RateLimit(20.0, 20)
    assert read({}) is None and read(None) is None
    assert RateLimit(20.0, 20).to_dict() == {"rps": 20, "burst": 20}
    assert isinstance(RateLimit(20.0, 20).to_dict()["rps"], int)
    assert RateLimit(0.5, 1).to_dict() == {"rps": 0.5, "burst": 1}


def test_watchdog_means_envprocess_without_a_command():
    def watchdog(**fields) -> bool:
        return FunctionSpec.from_dict({"name": "f", **fields}).watchdog

    assert watchdog(envProcess="cat") is True
    assert watchdog(envProcess="cat", command=["python3", "app.py"]) is False
    assert watchdog(command=["python3", "app.py"]) is False
    assert watchdog() is False


def test_digest_is_stable_and_only_a_cache():
    """Providers label what they deployed with the digest: a new form of it after an
    upgrade would redeploy every function; the cache must not leak into copies,
    comparisons or repr."""
    assert spec_from_yaml(DEMO10).digest() == "6322f95dee3f17cf"
    # the same spec with its mappings in another order: the same digest
    a = FunctionSpec.from_dict({"name": "f", "env": {"A": "1", "B": "2"},
                                "labels": {"x": "1", "y": "2"}})
    b = FunctionSpec.from_dict({"name": "f", "env": {"B": "2", "A": "1"},
                                "labels": {"y": "2", "x": "1"}})
    text = repr(a)
    assert a.digest() == b.digest()
    assert repr(a) == text
    c = FunctionSpec.from_dict(a.to_dict())
    a.digest()
    assert a == c  # c never computed its digest
    scaled = attrs.evolve(a, min_replica=2)
    assert scaled.digest() != a.digest()
    assert scaled.digest() == FunctionSpec.from_dict(scaled.to_dict()).digest()
    with pytest.raises(TypeError):
        FunctionSpec(name="f", digest="0" * 16)  # type: ignore[call-arg]


def test_yaml_keeps_the_fields_in_the_documented_order():
    spec = FunctionSpec.from_dict({"name": "f", "image": "i", "labels": {"b": "1", "a": "2"}})
    assert spec_to_yaml(spec) == (
        "name: f\nimage: i\nautoScaleType: concurrency\nautoScaleValue: '100'\n"
        "minReplica: 0\nmaxReplica: 0\ntimeout: 1m\nlabels:\n  b: '1'\n  a: '2'\n")


def test_too_deep_documents_are_refused_with_or_without_libyaml(monkeypatch):
    import faastwist.model.spec as module

    deep = "[" * 100_000
    if yaml.__with_libyaml__:  # libyaml's scanner stops at 1000 levels, in milliseconds
        assert str(_yaml_error(deep)).startswith(
            "body is not valid YAML or JSON: while increasing flow level\n"
            "exceeded maximum nesting depth")
    # PyYAML built without libyaml: the pure-Python loader recurses until Python stops it
    monkeypatch.setattr(module, "_SAFE_LOADER", yaml.SafeLoader)
    error = _yaml_error("[" * 1100)
    assert (error.path, str(error)) == ("", "body is nested too deeply")
    error = _yaml_error("name: [unclosed")
    assert error.path == "" and str(error).startswith("body is not valid YAML or JSON: ")


def _yaml_error(text: str) -> SpecError:
    with pytest.raises(SpecError) as info:
        spec_from_yaml(text)
    return info.value


def test_provider_messages_exactly():
    def problem(provider: str, **fields) -> str:
        with pytest.raises(SpecError) as info:
            check_spec_for(provider, FunctionSpec.from_dict({"name": "f", **fields}))
        return str(info.value)

    assert problem("process", image="i") == (
        "command: is required for the process provider when envProcess is not set: a "
        "deployment needs envProcess (run once per request, as OpenFaaS's watchdog does) or "
        "command (an argv list of an HTTP server, e.g. [python3, app.py]); the process "
        "provider runs commands and does not pull images")
    assert problem("knative") == "image: is required for the knative provider"
    assert problem("knative", image="i", command=["x"]) == (
        "command: is only for the process provider")
    check_spec_for("process", FunctionSpec.from_dict({"name": "f", "envProcess": "cat"}))


@pytest.mark.parametrize("key", ["LD_PRELOAD", "LD_LIBRARY_PATH", "ld_audit", "PYTHONPATH",
                                 "PYTHONSTARTUP", "BASH_ENV", "ENV", "BASH_FUNC_x%%",
                                 "PERL5OPT", "NODE_OPTIONS", "GLIBC_TUNABLES", "GCONV_PATH",
                                 "FAASTWIST_OWNER", "IFS", "JAVA_TOOL_OPTIONS", "RUBYOPT"])
def test_loader_variables_are_refused(key: str) -> None:
    assert loader_variable(key)
    with pytest.raises(SpecError) as raised:
        FunctionSpec.from_dict({"name": "f", "command": ["x"], "env": {key: "v"}})
    assert str(raised.value).startswith(f"env.{key}: is refused")


@pytest.mark.parametrize("key", ["NODE_ENV", "MALLOC_ARENA_MAX", "PATH", "LANG", "TZ",
                                 "HOME", "fprocess", "exec_timeout", "MY_LD_THING"])
def test_ordinary_variables_pass(key: str) -> None:
    assert not loader_variable(key)
    assert FunctionSpec.from_dict({"name": "f", "command": ["x"], "env": {key: "v"}}).env


@pytest.mark.parametrize("key", ["set", "add"])
@pytest.mark.parametrize("code", [*range(0x20), 0x7f, *range(0x80, 0xa0)])
def test_every_control_character_is_refused_in_adaptor_header_values(key, code):
    """Issue 21: NUL, VT and FF were accepted (only CR and LF were refused)."""
    error = _error({"name": "f", "requestAdaptor": {"header": {key: {"X-A": f"a{chr(code)}b"}}}})
    assert error.path == f"requestAdaptor.header.{key}"
    assert error.problem.startswith("value of 'X-A' must not contain ")


@pytest.mark.parametrize("value", ["plain", "with space", "caf\u00e9", "~!#$%&'*+-.^_`|",
                                   "\u00a0nbsp", "a=b; c=\"d\""])
def test_printable_adaptor_header_values_are_kept(value):
    spec = FunctionSpec.from_dict({"name": "f", "requestAdaptor": {"header": {
        "set": {"X-A": value}, "add": {"X-B": value}}}})
    assert spec.request_adaptor.header.set == {"X-A": value}
