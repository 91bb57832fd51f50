"""The function spec: Easegress's FaaSFunction fields plus faastwist's own.

Validation is strict and every error names its field (``requestAdaptor.path.regexpReplace.regexp:
does not compile``). The same record serves the Knative and the process providers;
what only one of them requires is that provider's rule (``providers/registry.py``).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from decimal import Decimal
from enum import Enum
from typing import Any, Iterable, Mapping

import attrs
import yaml

from faastwist.util.fields import FieldError, FieldReader
from faastwist.util.linear import PatternError, compile_linear
from faastwist.util.units import UnitError, format_duration, parse_quantity


class SpecError(FieldError):
    """A function spec is invalid; the admin API answers it with 400."""


DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
SECRET_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,251}[A-Za-z0-9])?$")
HTTP_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
DEFAULT_TIMEOUT = 60.0


class AutoScaleType(str, Enum):
    RPS = "rps"
    CONCURRENCY = "concurrency"
    CPU = "cpu"


class ProcessMode(str, Enum):
    HTTP = "http"   # a long-running HTTP server
    FORK = "fork"   # one process per request, body on stdin, response on stdout


def check_name(value: str, path: str = "name") -> str:
    if not value:
        raise SpecError(path, "is required")
    if len(value) > 63:
        raise SpecError(path, f"must be at most 63 characters, got {len(value)}")
    if not DNS1123_LABEL.match(value):
        raise SpecError(path, f"must be a DNS-1123 label (lower-case letters, digits and '-', "
                              f"starting and ending with a letter or digit), got {value!r}")
    return value


@attrs.frozen
class RegexpReplace:
    regexp: str
    replace: str

    def to_dict(self) -> dict[str, Any]:
        return {"regexp": self.regexp, "replace": self.replace}


@attrs.frozen
class PathAdaptor:
    """Applied in this order: replace (wins outright), trimPrefix, addPrefix, regexpReplace."""

    replace: str = ""
    add_prefix: str = ""
    trim_prefix: str = ""
    regexp_replace: RegexpReplace | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.replace:
            out["replace"] = self.replace
        if self.add_prefix:
            out["addPrefix"] = self.add_prefix
        if self.trim_prefix:
            out["trimPrefix"] = self.trim_prefix
        if self.regexp_replace is not None:
            out["regexpReplace"] = self.regexp_replace.to_dict()
        return out


@attrs.frozen
class HeaderAdaptor:
    """Applied in this order: del, then set (replaces), then add (appends)."""

    delete: tuple[str, ...] = ()
    set: Mapping[str, str] = attrs.field(factory=dict)
    add: Mapping[str, str] = attrs.field(factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.delete:
            out["del"] = list(self.delete)
        if self.set:
            out["set"] = dict(self.set)
        if self.add:
            out["add"] = dict(self.add)
        return out


@attrs.frozen
class RequestAdaptor:
    """Rewrites a request before it is proxied; order: method, path, header, host, body."""

    host: str = ""
    method: str = ""
    path: PathAdaptor = PathAdaptor()
    header: HeaderAdaptor = HeaderAdaptor()
    body: str = ""

    @property
    def is_empty(self) -> bool:
        return self == _NO_ADAPTOR

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.host:
            out["host"] = self.host
        if self.method:
            out["method"] = self.method
        if self.path.to_dict():
            out["path"] = self.path.to_dict()
        if self.header.to_dict():
            out["header"] = self.header.to_dict()
        if self.body:
            out["body"] = self.body
        return out


def _read_path_adaptor(reader: FieldReader) -> PathAdaptor:
    def regexp_replace(inner: FieldReader) -> RegexpReplace | None:
        if not inner.data:
            return None
        pattern = inner.string("regexp")
        try:
            compile_linear(pattern)
        except PatternError as exc:
            raise inner.fail("regexp", str(exc)) from None
        return RegexpReplace(pattern, inner.string("replace", ""))

    adaptor = PathAdaptor(
        replace=reader.string("replace", ""),
        add_prefix=reader.string("addPrefix", ""),
        trim_prefix=reader.string("trimPrefix", ""),
        regexp_replace=reader.section("regexpReplace", regexp_replace),
    )
    for key, value in (("replace", adaptor.replace), ("addPrefix", adaptor.add_prefix),
                       ("trimPrefix", adaptor.trim_prefix)):
        if value and not value.startswith("/"):
            raise reader.fail(key, f"must start with '/', got {value!r}")
    return adaptor


#: Headers the gate frames or sets itself; an adaptor that touched them would break the
#: request (Host has its own adaptor field).
NOT_ADAPTABLE_HEADERS = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
    "upgrade", "proxy-authenticate", "proxy-authorization", "host", "content-length", "expect",
})
HOST = re.compile(r"^[A-Za-z0-9.\-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")


def _check_header_names(reader: FieldReader, key: str, names: Iterable[str]) -> None:
    for name in names:
        if not HTTP_TOKEN.match(name):
            raise reader.fail(key, f"{name!r} is not a valid header name")
        if name.lower() in NOT_ADAPTABLE_HEADERS:
            hint = "; use requestAdaptor.host" if name.lower() == "host" else ""
            raise reader.fail(key, f"{name!r} is managed by the gate and cannot be adapted{hint}")


def _read_header_adaptor(reader: FieldReader) -> HeaderAdaptor:
    adaptor = HeaderAdaptor(
        delete=reader.string_list("del", ()),
        set=reader.string_map("set", {}),
        add=reader.string_map("add", {}),
    )
    _check_header_names(reader, "del", adaptor.delete)
    _check_header_names(reader, "set", adaptor.set)
    _check_header_names(reader, "add", adaptor.add)
    for key, mapping in (("set", adaptor.set), ("add", adaptor.add)):
        for name, value in mapping.items():
            bad = control_character(value)
            if bad is not None:
                what = "a line break" if bad in "\r\n" else f"control character {bad!r}"
                raise reader.fail(key, f"value of {name!r} must not contain {what} (no "
                                       f"control characters in header values)")
    return adaptor


#: C0 controls (tab included), DEL and the C1 controls: never in an adapted header value
#: (NUL, CR, LF split or end a header in some parser; VT, FF and the rest are read
#: differently by different servers, which is how requests get smuggled)
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def control_character(value: str) -> str | None:
    """The first control character in ``value``, or None."""
    found = _CONTROL.search(value)
    return found.group() if found else None


def _read_request_adaptor(reader: FieldReader) -> RequestAdaptor:
    method = reader.string("method", "")
    if method and not HTTP_TOKEN.match(method):
        raise reader.fail("method", f"is not an HTTP method token, got {method!r}")
    host = reader.string("host", "")
    if host and not HOST.match(host):
        raise reader.fail("host", f"must be a host name or address with an optional port, "
                                  f"got {host!r}")
    return RequestAdaptor(
        host=host,
        method=method.upper(),
        path=reader.section("path", _read_path_adaptor),
        header=reader.section("header", _read_header_adaptor),
        body=reader.string("body", ""),
    )


def _read_quantity(reader: FieldReader, key: str) -> str:
    value = reader.raw(key, "")
    if value == "":
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise reader.fail(key, f"must be a Kubernetes quantity like 100m or 128Mi, got {value!r}")
    try:
        parse_quantity(value)
    except UnitError as exc:
        raise reader.fail(key, str(exc)) from None
    return str(value)


def _read_scale_value(reader: FieldReader) -> str:
    value = reader.raw("autoScaleValue", "100")
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise reader.fail("autoScaleValue", f"must be a positive number, got {value!r}")
    try:
        number = Decimal(str(value).strip())
    except ArithmeticError:
        raise reader.fail("autoScaleValue", f"must be a positive number, got {value!r}") from None
    if not number.is_finite() or number <= 0:
        raise reader.fail("autoScaleValue", f"must be a positive number, got {value!r}")
    return str(value).strip()


_SCALE_TYPES = tuple(t.value for t in AutoScaleType)
_NO_ADAPTOR = RequestAdaptor()
_MODES = tuple(m.value for m in ProcessMode)


@attrs.frozen
class RateLimit:
    """A token bucket per function per node: ``rps`` tokens a second, ``burst`` at most."""

    rps: float
    burst: int

    def to_dict(self) -> dict[str, Any]:
        rps: int | float = int(self.rps) if float(self.rps).is_integer() else self.rps
        return {"rps": rps, "burst": self.burst}


def _read_rate_limit(reader: FieldReader) -> RateLimit | None:
    if not reader.data:
        return None
    rps = reader.raw("rps")
    if isinstance(rps, bool) or not isinstance(rps, (int, float)) or not 0 < rps <= 1e6:
        raise reader.fail("rps", f"must be a number of requests per second above 0 (at most "
                                 f"1000000), got {rps!r}")
    burst = reader.integer("burst", max(1, math.ceil(rps)), 1, 1_000_000)
    return RateLimit(float(rps), burst)


#: Environment variables a spec may not set: they change what the dynamic loader, a
#: shell or an interpreter loads or runs before the function's own code (a function
#: would otherwise run a library of its own choosing in any helper that kept them), and
#: faastwist's own markers.
LOADER_PREFIXES = ("LD_", "PYTHON", "BASH_FUNC_", "FAASTWIST_", "PERL5")
LOADER_NAMES = frozenset({"BASH_ENV", "ENV", "SHELLOPTS", "BASHOPTS", "PS4", "IFS",
                          "PERLLIB", "PERLIO", "RUBYOPT", "RUBYLIB", "NODE_OPTIONS",
                          "NODE_PATH", "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "GLIBC_TUNABLES",
                          "GCONV_PATH", "HOSTALIASES", "LOCALDOMAIN", "RES_OPTIONS",
                          "NLSPATH", "LOCPATH", "GETCONF_DIR"})


def loader_variable(key: str) -> bool:
    """Whether ``key`` is one a spec's ``env`` may not set (case-insensitive)."""
    upper = key.upper()
    return upper in LOADER_NAMES or upper.startswith(LOADER_PREFIXES)


@attrs.frozen
class FunctionSpec:
    """One function, as the operator wrote it (after validation and defaults)."""

    name: str
    image: str = ""
    port: int | None = None
    auto_scale_type: AutoScaleType = AutoScaleType.CONCURRENCY
    auto_scale_value: str = "100"
    min_replica: int = 0
    max_replica: int = 0  # 0 = unbounded
    limit_cpu: str = ""
    limit_memory: str = ""
    request_cpu: str = ""
    request_memory: str = ""
    request_adaptor: RequestAdaptor = RequestAdaptor()
    timeout: float = DEFAULT_TIMEOUT
    # process provider
    command: tuple[str, ...] = ()
    env: Mapping[str, str] = attrs.field(factory=dict)
    mode: ProcessMode = ProcessMode.HTTP
    readiness_path: str = ""
    # OpenFaaS FunctionDeployment fields, kept as given so they round-trip
    env_process: str = ""       # the watchdog's fprocess: run once per request
    labels: Mapping[str, str] = attrs.field(factory=dict)
    annotations: Mapping[str, str] = attrs.field(factory=dict)
    constraints: tuple[str, ...] = ()
    secrets: tuple[str, ...] = ()
    read_only_root_filesystem: bool = False
    rate_limit: RateLimit | None = None
    # asynchronous invocations (0: the controller's queue.concurrency / maxAttempts)
    async_concurrency: int = 0
    max_attempts: int = 0
    #: calls of this function that may wait in the queue (0: queue.maxQueued)
    max_queued: int = 0
    #: ``digest()``, computed once (the reconciler compares it for every function on
    #: every pass); not a field of the spec: no init, no comparison, no repr
    _digest: str | None = attrs.field(default=None, init=False, eq=False, repr=False)

    @classmethod
    def from_dict(cls, data: object) -> "FunctionSpec":
        reader = FieldReader(data, "", SpecError)
        spec = cls(
            name=check_name(reader.string("name")),
            image=reader.string("image", ""),
            port=reader.integer("port", None, 1, 65535),
            auto_scale_type=AutoScaleType(reader.choice(
                "autoScaleType", _SCALE_TYPES, "concurrency")),
            auto_scale_value=_read_scale_value(reader),
            min_replica=reader.integer("minReplica", 0, 0, 1000),
            max_replica=reader.integer("maxReplica", 0, 0, 1000),
            limit_cpu=_read_quantity(reader, "limitCPU"),
            limit_memory=_read_quantity(reader, "limitMemory"),
            request_cpu=_read_quantity(reader, "requestCPU"),
            request_memory=_read_quantity(reader, "requestMemory"),
            request_adaptor=reader.section("requestAdaptor", _read_request_adaptor,
                                           _NO_ADAPTOR),
            timeout=reader.duration("timeout", DEFAULT_TIMEOUT, minimum=0.001),
            command=reader.string_list("command", ()),
            env=reader.string_map("env", {}),
            mode=ProcessMode(reader.choice("mode", _MODES, "http")),
            readiness_path=reader.string("readinessPath", ""),
            env_process=reader.string("envProcess", ""),
            labels=reader.string_map("labels", {}),
            annotations=reader.string_map("annotations", {}),
            constraints=reader.string_list("constraints", ()),
            secrets=reader.string_list("secrets", ()),
            read_only_root_filesystem=reader.boolean("readOnlyRootFilesystem", False),
            rate_limit=reader.section("rateLimit", _read_rate_limit),
            async_concurrency=reader.integer("asyncConcurrency", 0, 0, 10000),
            max_attempts=reader.integer("maxAttempts", 0, 0, 100),
            max_queued=reader.integer("maxQueued", 0, 0, 10_000_000),
        )
        reader.finish()
        for key in spec.env:
            if loader_variable(key):
                raise SpecError(f"env.{key}", "is refused: it changes how programs load or "
                                              "start (LD_*, PYTHON*, ...: see README, "
                                              "Function isolation)")
        if spec.env_process and not spec.env_process.strip():
            raise SpecError("envProcess", "must not be blank")
        for index, secret in enumerate(spec.secrets):
            if not SECRET_NAME.match(secret):
                raise SpecError(f"secrets[{index}]", f"must be a secret name (letters, digits, "
                                                     f"'-', '_' and '.'), got {secret!r}")
        if spec.max_replica and spec.min_replica > spec.max_replica:
            raise SpecError("minReplica", f"must not exceed maxReplica ({spec.max_replica}), "
                                          f"got {spec.min_replica}")
        for request_key, limit_key, request, limit in (
                ("requestCPU", "limitCPU", spec.request_cpu, spec.limit_cpu),
                ("requestMemory", "limitMemory", spec.request_memory, spec.limit_memory)):
            if request and limit and parse_quantity(request) > parse_quantity(limit):
                raise SpecError(request_key, f"must not exceed {limit_key} ({limit}), got {request}")
        if spec.readiness_path and not spec.readiness_path.startswith("/"):
            raise SpecError("readinessPath", f"must start with '/', got {spec.readiness_path!r}")
        return spec

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.image:
            out["image"] = self.image
        if self.port is not None:
            out["port"] = self.port
        out.update({
            "autoScaleType": self.auto_scale_type.value,
            "autoScaleValue": self.auto_scale_value,
            "minReplica": self.min_replica,
            "maxReplica": self.max_replica,
        })
        for key, value in (("limitCPU", self.limit_cpu), ("limitMemory", self.limit_memory),
                           ("requestCPU", self.request_cpu),
                           ("requestMemory", self.request_memory)):
            if value:
                out[key] = value
        if not self.request_adaptor.is_empty:
            out["requestAdaptor"] = self.request_adaptor.to_dict()
        out["timeout"] = format_duration(self.timeout)
        if self.command:
            out["command"] = list(self.command)
        if self.env:
            out["env"] = dict(self.env)
        if self.mode is not ProcessMode.HTTP:
            out["mode"] = self.mode.value
        if self.readiness_path:
            out["readinessPath"] = self.readiness_path
        if self.env_process:
            out["envProcess"] = self.env_process
        for key, mapping in (("labels", self.labels), ("annotations", self.annotations)):
            if mapping:
                out[key] = dict(mapping)
        if self.constraints:
            out["constraints"] = list(self.constraints)
        if self.secrets:
            out["secrets"] = list(self.secrets)
        if self.read_only_root_filesystem:
            out["readOnlyRootFilesystem"] = True
        if self.rate_limit is not None:
            out["rateLimit"] = self.rate_limit.to_dict()
        if self.async_concurrency:
            out["asyncConcurrency"] = self.async_concurrency
        if self.max_attempts:
            out["maxAttempts"] = self.max_attempts
        if self.max_queued:
            out["maxQueued"] = self.max_queued
        return out

    @property
    def watchdog(self) -> bool:
        """An envProcess function without a command of its own: each replica is a
        watchdog that runs envProcess once per request (OpenFaaS's classic contract)."""
        return bool(self.env_process) and not self.command

    def digest(self) -> str:
        """A short stable hash of the spec; providers label what they deployed with it."""
        digest = self._digest
        if digest is None:
            canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
            digest = hashlib.sha256(canonical.encode()).hexdigest()[:16]
            object.__setattr__(self, "_digest", digest)  # frozen: a cache, not a change
        return digest


#: libyaml's safe loader and dumper where PyYAML was built with it: tens of times faster,
#: and libyaml refuses nesting past 1000 levels in the scanner (the pure-Python loader
#: takes seconds of CPU to reach its RecursionError on a 10 KB "[[[[..." document)
#: libyaml's loader and dumper when PyYAML was built with it (several times faster)
_SAFE_LOADER: type[yaml.SafeLoader] | type[yaml.CSafeLoader] = getattr(
    yaml, "CSafeLoader", yaml.SafeLoader)
_SAFE_DUMPER: type[yaml.SafeDumper] | type[yaml.CSafeDumper] = getattr(
    yaml, "CSafeDumper", yaml.SafeDumper)


def spec_from_yaml(text: str | bytes) -> FunctionSpec:
    """Parse YAML (which includes JSON) into a spec, as SpecError on any problem."""
    try:
        data = yaml.load(text, Loader=_SAFE_LOADER)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        raise SpecError("", f"body is not valid YAML or JSON: {exc}") from None
    except RecursionError:
        raise SpecError("", "body is nested too deeply") from None
    return FunctionSpec.from_dict(data)


def spec_to_yaml(spec: FunctionSpec) -> str:
    return yaml.dump(spec.to_dict(), Dumper=_SAFE_DUMPER, sort_keys=False)
