"""The admin REST API through a real Site in memory (treq's StubTreq, no sockets).

The store is the in-memory MemoryStore, the spec check is the real knative check, the
kick records what it was asked; time is a task.Clock plus a fixed wall clock.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import attrs
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.web.server import Site
from treq.testing import StubTreq

from faastwist.admin.api import AdminAPI
from faastwist.model.fsm import Event, State, apply_event
from faastwist.providers.base import LogLine
from faastwist.model.spec import FunctionSpec
from faastwist.providers.registry import check_spec_for
from faastwist.store.base import FunctionRecord
from faastwist.store.memory import MemoryStore

CONTROLLER = "faascontroller"
BASE = f"http://admin.test/apis/v2/faas/{CONTROLLER}"
NOW = 1_700_000_000.0

# the seed's demo10 spec (Easegress's FaaSFunction example), as shipped in conf/
DEMO10 = (Path(__file__).resolve().parents[2] / "conf" / "function.yaml").read_bytes()


def knative_check(spec: FunctionSpec) -> None:
    check_spec_for("knative", spec)


def process_check(spec: FunctionSpec) -> None:
    check_spec_for("process", spec)


def spec_yaml(name: str, image: str = "dev.local/app:1", **extra: Any) -> bytes:
    return yaml.safe_dump({"name": name, "image": image, **extra}).encode()


def fired(d: Deferred) -> Any:
    """The result of a Deferred that must already have fired (everything here is in memory)."""
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the deferred has not fired"
    result = results[0]
    if hasattr(result, "raiseException"):
        result.raiseException()
    return result


def waiting(d: Deferred) -> bool:
    """True while ``d`` has no result (``called`` is already true when it waits on another)."""
    seen: list[Any] = []
    d.addBoth(lambda result: (seen.append(result), result)[1])
    return not seen


@attrs.frozen
class Reply:
    code: int
    headers: Any
    body: bytes

    @property
    def content_type(self) -> str:
        return (self.headers.getRawHeaders("content-type") or [""])[0]

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None

    @property
    def data(self) -> Any:
        if self.content_type == "application/json":
            return json.loads(self.body)
        assert self.content_type == "application/yaml", self.content_type
        return yaml.safe_load(self.body)


class FakeLogSource:
    """An in-memory LogSource (the real ones are tested with their providers)."""

    def __init__(self) -> None:
        self.lines: dict[str, list[LogLine]] = {}
        self.followers: dict[str, list[Callable[[LogLine], None]]] = {}
        self.hold_reads = False
        self.held: list[tuple[Deferred, list[LogLine]]] = []

    def append(self, name: str, timestamp: float, text: str, instance: str = "pod-1") -> LogLine:
        line = LogLine(name, instance, timestamp, text)
        self.lines.setdefault(name, []).append(line)
        for follower in list(self.followers.get(name, [])):
            follower(line)
        return line

    def read_logs(self, name: str, tail: int | None = None,
                  since: float | None = None) -> Deferred[list[LogLine]]:
        lines = [line for line in self.lines.get(name, [])
                 if since is None or line.timestamp >= since]
        if tail is not None:
            lines = lines[len(lines) - tail:] if tail else []
        if self.hold_reads:
            d: Deferred[list[LogLine]] = Deferred()
            self.held.append((d, lines))
            return d
        return succeed(lines)

    def follow_logs(self, name: str, on_line: Callable[[LogLine], None]) -> Callable[[], None]:
        self.followers.setdefault(name, []).append(on_line)

        def unsubscribe() -> None:
            if on_line in self.followers.get(name, []):
                self.followers[name].remove(on_line)
        return unsubscribe


class RacingStore(MemoryStore):
    """A MemoryStore where, once armed, another writer updates a function right after
    the admin API read it: the admin's compare-and-swap then loses."""

    race: str | None = None
    race_spec = False   # the other writer changes the spec too (else: the status only)

    def get(self, name: str) -> Deferred[FunctionRecord]:
        d = super().get(name)
        if self.race == name:
            self.race = None
            record = fired(super().get(name))
            spec = attrs.evolve(record.spec, port=8091) if self.race_spec else None
            fired(self.update(record, spec=spec,
                              status=attrs.evolve(record.status, message="racer")))
        return d


class HangingStore(MemoryStore):
    """Answers nothing to ``get``: a hung etcd."""

    def get(self, name: str) -> Deferred[FunctionRecord]:
        return Deferred()


class Admin:
    """One AdminAPI over a store, and a client for it."""

    def __init__(self, store: MemoryStore | None = None, log_source: Any = None,
                 max_body_size: int = 1 << 20,
                 check_spec: Callable[[FunctionSpec], None] = knative_check) -> None:
        self.clock = Clock()
        self.store = store if store is not None else MemoryStore(CONTROLLER)
        self.kicks: list[str] = []
        self.api = AdminAPI(self.store, CONTROLLER, check_spec, self.kicks.append, self.clock,
                            max_body_size=max_body_size, log_source=log_source,
                            wall_clock=lambda: NOW)
        self.http = StubTreq(self.api.resource())

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> Reply:
        url = path if path.startswith("http") else BASE + path
        d = self.http.request(method, url, data=body, headers=headers or {})
        self.http.flush()
        response = fired(d)
        content = self.http.content(response)
        self.http.flush()
        return Reply(response.code, response.headers, fired(content))

    def create(self, body: bytes = DEMO10, **kw: Any) -> Reply:
        return self.request("POST", "", body, **kw)

    def set_state(self, name: str, *events: Event) -> None:
        """Drive the FSM record the way the reconciler does (provider events)."""
        record = fired(self.store.get(name))
        status = record.status
        for event in events:
            status = apply_event(status, event, NOW)
        fired(self.store.update(record, status=status))

    def state(self, name: str) -> State:
        return fired(self.store.get(name)).status.state


@pytest.fixture
def admin() -> Admin:
    return Admin()


# -- the Easegress flow ----------------------------------------------------------------

def test_demo10_easegress_flow(admin: Admin) -> None:
    created = admin.create()
    assert created.code == 201
    assert created.header("location") == f"/apis/v2/faas/{CONTROLLER}/demo10"
    assert created.data["spec"]["limitCPU"] == "180m"
    assert created.data["spec"]["requestAdaptor"] == {"header": {"set": {"X-Func1": "func-demo-10"}}}
    assert created.data["status"]["state"] == "initial"

    got = admin.request("GET", "/demo10")
    assert got.code == 200
    assert got.data["status"]["state"] == "initial"
    assert got.data["spec"]["autoScaleType"] == "rps"
    assert got.data["spec"]["autoScaleValue"] == "111"

    again = admin.create()
    assert again.code == 409
    assert again.data == {"code": 409, "message": "function demo10 already exists"}

    stop = admin.request("PUT", "/demo10/stop")
    assert stop.code == 409
    assert stop.data == {"code": 409, "message": "invalid event: stop, current state: initial"}

    deleted = admin.request("DELETE", "/demo10")
    assert deleted.code == 200
    assert deleted.data["status"]["state"] == "destroyed"
    assert admin.request("GET", "/demo10").code == 404
    assert admin.kicks == ["demo10", "demo10"]  # the create and the delete, nothing else


def test_status_times_are_rfc3339_in_every_answer(admin: Admin) -> None:
    """``updated`` is RFC 3339 text (UTC, milliseconds) in YAML and JSON answers; the
    store keeps epoch seconds."""
    stamp = "2023-11-14T22:13:20.000Z"   # NOW
    created = admin.create()
    assert created.data["status"]["updated"] == stamp
    assert "updated: '2023-11-14T22:13:20.000Z'" in created.body.decode()  # text, not a YAML date
    as_json = admin.request("GET", "/demo10", headers={"Accept": "application/json"})
    assert json.loads(as_json.body)["status"]["updated"] == stamp
    assert admin.request("GET", "").data[0]["status"]["updated"] == stamp
    assert admin.request("GET", "/demo10/status").data["updated"] == stamp
    assert admin.request("PUT", "/demo10", DEMO10).data["status"]["updated"] == stamp
    assert fired(admin.store.get("demo10")).status.updated == NOW
    assert admin.request("DELETE", "/demo10").data["status"]["updated"] == stamp


def test_v1_alias_serves_the_same_api(admin: Admin) -> None:
    v1 = f"http://admin.test/apis/v1/faas/{CONTROLLER}"
    created = admin.request("POST", v1, DEMO10)
    assert created.code == 201
    assert created.header("location") == f"/apis/v1/faas/{CONTROLLER}/demo10"
    assert admin.request("GET", v1 + "/demo10").data["spec"]["name"] == "demo10"
    assert admin.request("GET", BASE + "/demo10").code == 200
    assert admin.request("GET", f"http://admin.test/apis/v3/faas/{CONTROLLER}/demo10").code == 404


def test_trailing_slash_is_accepted(admin: Admin) -> None:
    assert admin.request("POST", "/", DEMO10).code == 201
    assert [f["spec"]["name"] for f in admin.request("GET", "/").data] == ["demo10"]
    assert admin.request("GET", "/demo10/").code == 200


def test_list_is_sorted_and_carries_spec_and_status(admin: Admin) -> None:
    assert admin.request("GET", "").data == []
    for name in ("bravo", "alpha", "charlie"):
        assert admin.create(spec_yaml(name)).code == 201
    listed = admin.request("GET", "")
    assert listed.code == 200
    assert [f["spec"]["name"] for f in listed.data] == ["alpha", "bravo", "charlie"]
    assert all(f["status"]["state"] == "initial" for f in listed.data)


def test_list_pages_with_limit_and_continue_and_filters_by_prefix(admin: Admin) -> None:
    names = ["alpha", "beta-1", "beta-2", "beta-3", "gamma"]
    for name in reversed(names):
        assert admin.create(spec_yaml(name)).code == 201
    first = admin.request("GET", "?limit=2")
    assert first.code == 200
    assert [f["spec"]["name"] for f in first.data["items"]] == ["alpha", "beta-1"]
    meta = first.data["metadata"]
    assert meta["remainingItemCount"] == 3 and meta["continue"] and meta["resourceVersion"]
    second = admin.request("GET", "?limit=2&continue=" + meta["continue"])
    assert [f["spec"]["name"] for f in second.data["items"]] == ["beta-2", "beta-3"]
    third = admin.request("GET", "?limit=2&continue=" + second.data["metadata"]["continue"])
    assert [f["spec"]["name"] for f in third.data["items"]] == ["gamma"]
    assert third.data["metadata"] == {"continue": "", "remainingItemCount": 0,
                                      "resourceVersion": meta["resourceVersion"]}
    # a search: names that start with the prefix, paged the same way
    beta = admin.request("GET", "?prefix=beta&limit=2")
    assert [f["spec"]["name"] for f in beta.data["items"]] == ["beta-1", "beta-2"]
    rest = admin.request("GET", "?continue=" + beta.data["metadata"]["continue"])
    assert [f["spec"]["name"] for f in rest.data["items"]] == ["beta-3"]
    assert [f["spec"]["name"] for f in admin.request("GET", "?prefix=beta-").data] == [
        "beta-1", "beta-2", "beta-3"]                   # no limit: a plain list, filtered
    assert [f["spec"]["name"] for f in admin.request("GET", "").data] == names
    yaml_page = admin.request("GET", "?limit=1", headers={"Accept": "application/yaml"})
    assert yaml.safe_load(yaml_page.body)["items"][0]["spec"]["name"] == "alpha"


@pytest.mark.parametrize("query, field", [
    ("?limit=0", "limit"), ("?limit=1001", "limit"), ("?limit=x", "limit"),
    ("?limit=-1", "limit"), ("?continue=garbage", "continue"),
    ("?continue=eyJhIjoxfQ", "continue"), ("?prefix=" + "x" * 64, "prefix"),
    ("?page=2", "page"),
])
def test_list_paging_refuses_bad_parameters_naming_them(admin: Admin, query: str,
                                                        field: str) -> None:
    reply = admin.request("GET", query)
    assert reply.code == 400
    assert reply.data["message"].startswith(field), reply.data


def test_a_continue_token_keeps_its_prefix(admin: Admin) -> None:
    for name in ("a1", "a2", "b1"):
        admin.create(spec_yaml(name))
    token = admin.request("GET", "?prefix=a&limit=1").data["metadata"]["continue"]
    reply = admin.request("GET", f"?prefix=b&continue={token}")
    assert reply.code == 400 and reply.data["message"].startswith("prefix")


def test_a_continue_token_of_a_compacted_revision_is_gone_not_bad(admin: Admin) -> None:
    """410 (list again from the first page), not 400: the token was good, its revision
    is no longer in the store (the Kubernetes API's answer to an expired continue)."""
    for name in ("a1", "a2", "a3"):
        admin.create(spec_yaml(name))
    token = admin.request("GET", "?limit=1").data["metadata"]["continue"]
    assert admin.request("GET", f"?limit=1&continue={token}").code == 200
    admin.create(spec_yaml("a4"))
    admin.store.compact()
    reply = admin.request("GET", f"?limit=1&continue={token}")
    assert reply.code == 410, reply.data
    assert reply.data["message"].startswith("continue: the listing this token continues "
                                            "has expired")
    fresh = admin.request("GET", "?limit=1")                 # a new listing works
    assert fresh.code == 200 and fresh.data["items"][0]["spec"]["name"] == "a1"


def test_status_route_returns_the_status_record_only(admin: Admin) -> None:
    admin.create()
    status = admin.request("GET", "/demo10/status")
    assert status.code == 200
    assert status.data["name"] == "demo10"
    assert status.data["state"] == "initial"
    assert "spec" not in status.data and "image" not in status.data


# -- validation --------------------------------------------------------------------------

@pytest.mark.parametrize("body, field", [
    (DEMO10.replace(b"limitCPU: 180m", b"limitCPU: lots"), "limitCPU"),
    (DEMO10.replace(b"limitCPU: 180m", b"limitedCPU: 180m"), "limitedCPU"),
    (DEMO10.replace(b"port: 8089", b"port: 70000"), "port"),
    (DEMO10.replace(b"name: demo10", b"name: Demo_10"), "name"),
    (DEMO10.replace(b"requestCPU: 80m", b"requestCPU: 800m"), "requestCPU"),
    (DEMO10.replace(b"X-Func1", b"X Func1"), "requestAdaptor.header.set"),
    (DEMO10.replace(b"image: dev.local/colordeploy:17.0\n", b""), "image"),  # knative check
])
def test_bad_spec_is_400_naming_the_field(admin: Admin, body: bytes, field: str) -> None:
    reply = admin.create(body)
    assert reply.code == 400
    assert reply.data["code"] == 400
    assert reply.data["message"].startswith(field + ":"), reply.data["message"]
    assert admin.store.writes == 0
    assert admin.kicks == []


@pytest.mark.parametrize("body, words", [
    (b"name: [unclosed", "not valid YAML"),
    (b"", "empty"),
    (b"- just\n- a list\n", "must be a mapping"),
    (b"name: a\n---\nname: b\n", "not valid YAML"),
    (b"\xff\xfe\x00garbage", "UTF-8"),
    (b"a: &a [*a]\n", "expands to more than"),
    (b"[" * 200 + b"]" * 200, "nested deeper than"),
])
def test_malformed_body_is_400(admin: Admin, body: bytes, words: str) -> None:
    reply = admin.create(body)
    assert reply.code == 400, reply.body
    assert words in reply.data["message"]


def test_billion_laughs_is_refused_before_it_expands(admin: Admin) -> None:
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        levels.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    body = ("\n".join(levels) + "\nname: demo\nimage: i\nlimitCPU: *a8\n").encode()
    reply = admin.create(body)
    assert reply.code == 400
    assert "expands to more than" in reply.data["message"]


def alias_bomb(refs: int = 90_000, length: int = 9_000) -> bytes:
    """Issue 21's shape: one long string and tens of thousands of aliases to it; under
    100k values, but ~800 MB once written out (as the store and every listing would)."""
    return (f"name: bomb\nimage: &s {'x' * length}\ncommand: ["
            + ",".join(["*s"] * refs) + "]\n").encode()


def test_an_alias_bomb_is_refused_by_its_expanded_bytes() -> None:
    import tracemalloc

    admin = Admin(check_spec=process_check)
    body = alias_bomb()
    assert len(body) < 900 * 1024
    tracemalloc.start()
    try:
        reply = admin.create(body)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (reply.code, reply.data["message"]) == (400, (
        "body expands to more than 1048576 bytes, the limit for a spec (YAML aliases "
        "count at every use)"))
    assert peak < 64 * 2**20, peak     # the parse, not gigabytes of copies
    assert admin.store.writes == 0


def test_the_expansion_limit_is_the_larger_of_1mib_and_maxbodysize() -> None:
    body = alias_bomb(refs=200, length=9_000)     # 1.8 MB written out
    assert Admin(check_spec=process_check).create(body).code == 400
    bigger = Admin(max_body_size=4 << 20, check_spec=process_check)
    reply = bigger.create(body, headers={"Accept": "application/json"})
    assert reply.code == 201, reply.body


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=6)
    | st.dictionaries(st.text(max_size=10), inner, max_size=6),
    max_leaves=40))
def test_a_body_without_aliases_never_exceeds_its_own_size(document: Any) -> None:
    """The limit only refuses amplification: what a document counts is at most the
    bytes of the body it came from, in either YAML style or JSON."""
    from faastwist.admin.codec import check_expansion

    for text in (yaml.safe_dump(document, default_flow_style=None, allow_unicode=True),
                 yaml.safe_dump(document, default_flow_style=True, allow_unicode=True,
                                width=1 << 20)):
        check_expansion(yaml.safe_load(text), len(text.encode()))
    text = json.dumps(document, ensure_ascii=False)
    check_expansion(json.loads(text), len(text.encode()))


def test_json_body_errors_name_json(admin: Admin) -> None:
    reply = admin.create(b'{"name": "x",', headers={"Content-Type": "application/json"})
    assert reply.code == 400
    assert "not valid JSON" in reply.data["message"]


@pytest.mark.parametrize("content_type", [
    "application/x-www-form-urlencoded",  # multipart: see the Site test below
    "text/plain;charset=UTF-8"])
def test_form_types_are_never_read_as_specs(admin: Admin, content_type: str) -> None:
    # what an HTML form or another site's fetch can send without a CORS preflight
    reply = admin.create(DEMO10, headers={"Content-Type": content_type})
    assert reply.code == 415
    assert "application/yaml, " in reply.data["message"]
    assert "application/json" in reply.data["message"]
    assert admin.kicks == [] and fired(admin.store.list()).records == {}


@pytest.mark.parametrize("body, content_type, message", [
    (b"name: demo\nimage: i\ncommand: [a]\nimage: j\n", "application/yaml",
     "image: duplicate key (line 4, column 1); each key may appear once"),
    (b"name: demo\nimage: i\nrequestAdaptor:\n  header:\n    set: {A: x, A: y}\n",
     "application/yaml", "A: duplicate key (line 5, column 17); each key may appear once"),
    (b'{"name": "demo", "image": "i", "name": "other"}', "application/json",
     "name: duplicate key; each key may appear once"),
    (b'{"name": "demo", "image": "i", "env": {"A": "1", "A": "2"}}', "application/json",
     "A: duplicate key; each key may appear once"),
])
def test_a_duplicate_key_is_400_naming_it(admin: Admin, body: bytes, content_type: str,
                                          message: str) -> None:
    reply = admin.create(body, headers={"Content-Type": content_type})
    assert reply.code == 400, reply.body
    assert reply.data["message"] == message


def test_yaml_merge_keys_may_still_be_overridden(admin: Admin) -> None:
    reply = admin.create(b"name: demo\nimage: i\nrequestAdaptor:\n  header:\n"
                         b"    set: &s {A: x}\n    add: {<<: *s, A: y}\n")
    assert reply.code == 201, reply.body
    assert reply.data["spec"]["requestAdaptor"]["header"]["add"] == {"A": "y"}


# -- content types -------------------------------------------------------------------------

@pytest.mark.parametrize("content_type", [
    None, "application/yaml", "application/x-yaml", "text/yaml",
    "text/vnd.yaml; charset=utf-8",
])
def test_yaml_bodies_in_every_accepted_type(admin: Admin, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    reply = admin.create(DEMO10, headers=headers)
    assert reply.code == 201, reply.body
    assert reply.data["spec"]["port"] == 8089


def test_json_body(admin: Admin) -> None:
    body = json.dumps(yaml.safe_load(DEMO10)).encode()
    reply = admin.create(body, headers={"Content-Type": "application/json; charset=UTF-8"})
    assert reply.code == 201
    assert reply.data["spec"]["requestMemory"] == "20Mi"


@pytest.mark.parametrize("content_type, words", [
    ("text/plain", "Content-Type text/plain is not read as a spec"),
    ("application/xml", "Content-Type application/xml is not supported"),
    ("application/yaml; charset=latin-1", "charset latin-1"),
])
def test_unsupported_content_type_is_415(admin: Admin, content_type: str, words: str) -> None:
    reply = admin.create(DEMO10, headers={"Content-Type": content_type})
    assert reply.code == 415
    assert words in reply.data["message"]
    if "charset" not in words:
        assert "application/json" in reply.data["message"]
        assert "text/vnd.yaml" in reply.data["message"]
    assert admin.store.writes == 0


def test_responses_are_yaml_unless_json_is_accepted(admin: Admin) -> None:
    admin.create()
    assert admin.request("GET", "/demo10").content_type == "application/yaml"
    as_json = admin.request("GET", "/demo10", headers={"Accept": "application/json"})
    assert as_json.content_type == "application/json"
    assert json.loads(as_json.body)["spec"]["name"] == "demo10"
    mixed = admin.request("GET", "/demo10",
                          headers={"Accept": "application/json;q=0.2, application/yaml"})
    assert mixed.content_type == "application/yaml"
    browser = admin.request("GET", "/demo10",
                            headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert browser.content_type == "application/yaml"


def test_errors_follow_the_negotiated_format(admin: Admin) -> None:
    as_json = admin.request("GET", "/nope", headers={"Accept": "application/json"})
    assert as_json.code == 404
    assert as_json.content_type == "application/json"
    assert json.loads(as_json.body) == {"code": 404, "message": "function nope not found"}
    as_yaml = admin.request("GET", "/nope")
    assert as_yaml.content_type == "application/yaml"
    assert yaml.safe_load(as_yaml.body) == {"code": 404, "message": "function nope not found"}


# -- 404, 405, 413 ------------------------------------------------------------------------------

@pytest.mark.parametrize("method, path", [
    ("GET", "/ghost"), ("GET", "/ghost/status"), ("PUT", "/ghost/start"),
    ("PUT", "/ghost/stop"), ("DELETE", "/ghost"), ("GET", "/ghost/logs"),
])
def test_unknown_function_is_404(method: str, path: str) -> None:
    admin = Admin(log_source=FakeLogSource())
    reply = admin.request(method, path)
    assert reply.code == 404
    assert reply.data == {"code": 404, "message": "function ghost not found"}


def test_update_of_unknown_function_is_404(admin: Admin) -> None:
    reply = admin.request("PUT", "/ghost", spec_yaml("ghost"))
    assert reply.code == 404
    assert admin.kicks == []


CONTROLLER_ROUTES = [
    ("POST", ""), ("GET", ""), ("GET", "/demo10"), ("PUT", "/demo10"), ("DELETE", "/demo10"),
    ("PUT", "/demo10/start"), ("PUT", "/demo10/stop"), ("GET", "/demo10/status"),
    ("GET", "/demo10/logs"), ("PUT", "/demo10/rollout"), ("POST", "/demo10/keys"),
    ("GET", "/demo10/keys"), ("DELETE", "/demo10/keys/k1"),
    ("GET", "/demo10/async/c1"), ("POST", "/demo10/async/c1/retry"), ("GET", "/demo10/async"),
    ("DELETE", "/demo10/async"),
]


def test_the_controller_check_covers_every_api_route() -> None:
    """Each route under /apis/.../faas/<controller> is in CONTROLLER_ROUTES (so the test
    below covers it): a new route cannot skip the controller check unnoticed."""
    prefix = "/apis/<any(v1, v2):version>/faas/<controller>"
    routes = {(method, rule.rule[len(prefix):].replace("<fn>", "demo10")
               .replace("<key_id>", "k1").replace("<call_id>", "c1"))
              for rule in AdminAPI.app.url_map.iter_rules() if rule.rule.startswith(prefix)
              for method in rule.methods - {"HEAD", "OPTIONS"}}
    assert routes == set(CONTROLLER_ROUTES)


@pytest.mark.parametrize("method, path", CONTROLLER_ROUTES)
def test_unknown_controller_is_404(method: str, path: str) -> None:
    admin = Admin(log_source=FakeLogSource())
    admin.create()
    url = "http://admin.test/apis/v2/faas/othercontroller" + path
    reply = admin.request(method, url, DEMO10 if method in ("POST", "PUT") else None)
    assert reply.code == 404
    assert reply.data["message"].startswith("controller othercontroller not found")
    assert CONTROLLER in reply.data["message"]
    assert admin.state("demo10") is State.INITIAL
    assert admin.kicks == ["demo10"]


def test_unknown_route_and_wrong_method_answer_in_the_api_format(admin: Admin) -> None:
    missing = admin.request("GET", "http://admin.test/apis/v2/other",
                            headers={"Accept": "application/json"})
    assert missing.code == 404
    assert missing.content_type == "application/json"
    assert json.loads(missing.body)["message"] == "no such route: GET /apis/v2/other"

    wrong = admin.request("PATCH", "/demo10/stop")
    assert wrong.code == 405
    assert wrong.header("allow") == "PUT"
    assert wrong.data["message"].startswith("method PATCH is not allowed")

    delete_base = admin.request("DELETE", "")
    assert delete_base.code == 405
    assert delete_base.header("allow") == "GET, HEAD, POST"


def test_non_utf8_path_is_400_in_the_api_format(admin: Admin) -> None:
    reply = admin.request("GET", "/demo%FF")
    assert reply.code == 400
    assert reply.data == {"code": 400, "message": "the request path and Host must be UTF-8"}


def test_body_over_the_limit_is_413_and_at_the_limit_is_read() -> None:
    admin = Admin(max_body_size=len(DEMO10))
    assert admin.create(DEMO10 + b"#").code == 413
    assert admin.store.writes == 0
    assert admin.create(DEMO10).code == 201


def _raw_post(site: Site, body_chunks: list[bytes], declared: int | None = None,
              content_type: str | None = None) -> bytes:
    """POST through a real Site over a memory transport, optionally chunked (no length)."""
    proto = site.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    head = f"POST /apis/v2/faas/{CONTROLLER} HTTP/1.1\r\nHost: admin.test\r\n"
    if content_type:
        head += f"Content-Type: {content_type}\r\n"
    if declared is None:
        payload = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in body_chunks) + b"0\r\n\r\n"
        head += "Transfer-Encoding: chunked\r\n"
    else:
        payload = b"".join(body_chunks)
        head += f"Content-Length: {declared}\r\n"
    proto.dataReceived(head.encode() + b"\r\n" + payload)
    return transport.value()


def test_chunked_body_over_the_limit_is_413_by_its_actual_length() -> None:
    admin = Admin(max_body_size=len(DEMO10))
    plain_site = Site(admin.api.resource())  # no Content-Length to check: the read decides
    out = _raw_post(plain_site, [DEMO10, b"# one byte too many is still too many"])
    assert out.startswith(b"HTTP/1.1 413 ")
    assert b"larger than the limit" in out
    assert _raw_post(plain_site, [DEMO10[:40], DEMO10[40:]]).startswith(b"HTTP/1.1 201 ")


def test_site_drops_oversized_bodies_while_reading() -> None:
    admin = Admin(max_body_size=100)
    site = admin.api.site()
    big = [b"#" * 64] * 1000
    assert _raw_post(site, big).startswith(b"HTTP/1.1 413 ")
    assert _raw_post(site, [b"#" * 101], declared=101).startswith(b"HTTP/1.1 413 ")
    small = spec_yaml("small", "i")
    assert len(small) <= 100
    assert _raw_post(site, [small], declared=len(small)).startswith(b"HTTP/1.1 201 ")
    assert admin.kicks == ["small"]


def test_site_leaves_form_and_multipart_bodies_to_the_api() -> None:
    # a plain Site parses such bodies itself (and answers bad multipart with bare text)
    admin = Admin()
    site = admin.api.site()
    multipart = _raw_post(site, [DEMO10], declared=len(DEMO10),
                          content_type="multipart/form-data; boundary=x")
    assert multipart.startswith(b"HTTP/1.1 415 ")
    assert b"multipart/form-data is not read as a spec" in multipart
    form = _raw_post(site, [DEMO10], declared=len(DEMO10),
                     content_type="application/x-www-form-urlencoded")
    assert form.startswith(b"HTTP/1.1 415 ")


# -- FSM through the API -------------------------------------------------------------------

def test_start_stop_round_trip(admin: Admin) -> None:
    admin.create()
    admin.set_state("demo10", Event.READY)  # the reconciler saw the ksvc ready
    assert admin.state("demo10") is State.ACTIVE

    busy_delete = admin.request("DELETE", "/demo10")
    assert busy_delete.code == 409
    assert busy_delete.data["message"] == "invalid event: delete, current state: active"
    busy_start = admin.request("PUT", "/demo10/start")
    assert busy_start.code == 409
    assert busy_start.data["message"] == "invalid event: start, current state: active"

    stopped = admin.request("PUT", "/demo10/stop")
    assert stopped.code == 200
    assert stopped.data["status"]["state"] == "inactive"
    assert stopped.data["status"]["event"] == "stop"
    again = admin.request("PUT", "/demo10/stop")
    assert again.code == 409
    assert again.data["message"] == "invalid event: stop, current state: inactive"

    started = admin.request("PUT", "/demo10/start")
    assert started.code == 200
    assert started.data["status"]["state"] == "inactive"
    assert started.data["status"]["startPending"] is True
    assert fired(admin.store.get("demo10")).status.start_pending  # persisted, not in memory

    admin.set_state("demo10", Event.READY)  # the reconciler started it
    assert admin.state("demo10") is State.ACTIVE
    assert admin.request("PUT", "/demo10/stop").code == 200
    assert admin.request("DELETE", "/demo10").code == 200
    assert admin.kicks == ["demo10"] * 5  # create, stop, start, stop, delete


def test_update_replaces_the_spec_and_restarts_the_fsm(admin: Admin) -> None:
    admin.create()
    admin.set_state("demo10", Event.ERROR)
    assert admin.state("demo10") is State.FAILED
    new = DEMO10.replace(b"colordeploy:17.0", b"colordeploy:18.0")
    updated = admin.request("PUT", "/demo10", new)
    assert updated.code == 200
    assert updated.data["spec"]["image"] == "dev.local/colordeploy:18.0"
    assert updated.data["status"]["state"] == "initial"
    assert fired(admin.store.get("demo10")).spec.image == "dev.local/colordeploy:18.0"
    assert admin.kicks == ["demo10", "demo10"]


def test_update_without_a_name_takes_it_from_the_url(admin: Admin) -> None:
    admin.create()
    body = DEMO10.replace(b"name: demo10\n", b"").replace(b"port: 8089", b"port: 9000")
    reply = admin.request("PUT", "/demo10", body)
    assert reply.code == 200
    assert reply.data["spec"]["port"] == 9000


def test_update_refusals(admin: Admin) -> None:
    admin.create()
    renamed = admin.request("PUT", "/demo10", DEMO10.replace(b"name: demo10", b"name: demo11"))
    assert renamed.code == 409
    assert "demo11" in renamed.data["message"] and "demo10" in renamed.data["message"]
    assert renamed.data["message"].startswith("name:")

    bad = admin.request("PUT", "/demo10", DEMO10.replace(b"180m", b"180x"))
    assert bad.code == 400
    assert bad.data["message"].startswith("limitCPU:")

    admin.set_state("demo10", Event.READY)
    busy = admin.request("PUT", "/demo10", DEMO10)
    assert busy.code == 409
    assert busy.data["message"] == "invalid event: update, current state: active"
    assert fired(admin.store.get("demo10")).spec.port == 8089
    assert admin.kicks == ["demo10"]  # only the create


@pytest.mark.parametrize("method, path, body", [
    ("PUT", "/demo10", DEMO10.replace(b"8089", b"8090")),
    ("PUT", "/demo10/stop", None),
    ("DELETE", "/demo10", None),
])
def test_lost_compare_and_swap_is_409(method: str, path: str, body: bytes | None) -> None:
    admin = Admin(store=RacingStore(CONTROLLER))
    admin.create()
    if path.endswith("/stop"):
        admin.set_state("demo10", Event.READY)
    admin.store.race = "demo10"
    admin.store.race_spec = True
    reply = admin.request(method, path, body)
    assert reply.code == 409
    assert reply.data["message"] == ("function demo10 was changed concurrently; "
                                     "read it again and retry")
    record = fired(admin.store.get("demo10"))
    assert record.status.message == "racer"  # the other writer's change survived
    assert record.spec.port == 8091
    assert admin.kicks == ["demo10"]
    # a retry with fresh data goes through
    assert admin.request(method, path, body).code == 200


@pytest.mark.parametrize("method, path, body", [
    ("PUT", "/demo10", DEMO10.replace(b"8089", b"8090")),
    ("PUT", "/demo10/stop", None),
    ("DELETE", "/demo10", None),
])
def test_losing_to_a_status_only_write_is_retried(method: str, path: str,
                                                  body: bytes | None) -> None:
    """The leader recording readiness between the admin's read and write is not a
    conflict of intent: the operator's event is applied to the fresh record."""
    admin = Admin(store=RacingStore(CONTROLLER))
    admin.create()
    if path.endswith("/stop"):
        admin.set_state("demo10", Event.READY)
    admin.store.race = "demo10"
    reply = admin.request(method, path, body)
    assert reply.code == 200, reply.data
    assert admin.kicks == ["demo10", "demo10"]


def test_kick_only_after_successful_writes(admin: Admin) -> None:
    admin.create()
    admin.request("GET", "")
    admin.request("GET", "/demo10")
    admin.request("GET", "/demo10/status")
    admin.create()                                 # 409
    admin.request("PUT", "/demo10/start")          # 409
    admin.create(spec_yaml("bad", limitCPU="x"))   # 400
    assert admin.kicks == ["demo10"]
    admin.request("PUT", "/demo10", DEMO10)
    assert admin.kicks == ["demo10", "demo10"]


# -- store trouble and unexpected errors ------------------------------------------------------

def test_unavailable_store_is_503(admin: Admin) -> None:
    admin.create()
    admin.store.available = False
    for method, path, body in (("GET", "", None), ("GET", "/demo10", None),
                               ("POST", "", spec_yaml("other")), ("PUT", "/demo10/stop", None)):
        reply = admin.request(method, path, body)
        assert reply.code == 503, (method, path)
        assert reply.data["message"] == ("function store unavailable: "
                                         "memory store marked unavailable")
    assert admin.kicks == ["demo10"]


def test_hung_store_times_out_with_503() -> None:
    admin = Admin(store=HangingStore(CONTROLLER))
    d = admin.http.get(BASE + "/demo10")
    admin.http.flush()
    assert waiting(d)
    admin.clock.advance(10)
    admin.http.flush()
    response = fired(d)
    assert response.code == 503
    content = admin.http.content(response)
    admin.http.flush()
    assert yaml.safe_load(fired(content))["message"] == (
        "the function store did not answer within 10s")


def test_unexpected_error_is_500_without_a_traceback() -> None:
    def broken_check(spec: FunctionSpec) -> None:
        raise RuntimeError("provider check exploded")

    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        admin = Admin(check_spec=broken_check)
        reply = admin.create(headers={"Accept": "application/json"})
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert reply.code == 500
    assert reply.data == {"code": 500,
                          "message": "internal error; the node's log has the details"}
    assert b"Traceback" not in reply.body and b"exploded" not in reply.body
    failures = [e for e in events if "log_failure" in e]
    assert any(e["log_failure"].check(RuntimeError) for e in failures)
    assert admin.kicks == []


# -- logs ------------------------------------------------------------------------------------

def ndjson(body: bytes) -> list[dict]:
    return [json.loads(line) for line in body.splitlines()]


@pytest.fixture
def logs() -> tuple[Admin, FakeLogSource]:
    source = FakeLogSource()
    admin = Admin(log_source=source)
    admin.create()
    for i, age in enumerate((3600, 600, 120, 10)):
        source.append("demo10", NOW - age, f"line {i}")
    source.append("other", NOW, "not demo10's")
    return admin, source


def test_logs_all_tail_and_since(logs: tuple[Admin, FakeLogSource]) -> None:
    admin, _ = logs
    everything = admin.request("GET", "/demo10/logs")
    assert everything.code == 200
    assert everything.content_type == "application/x-ndjson"
    assert [line["text"] for line in ndjson(everything.body)] == [
        "line 0", "line 1", "line 2", "line 3"]
    first = ndjson(everything.body)[0]
    assert first == {"name": "demo10", "instance": "pod-1",
                     "timestamp": "2023-11-14T21:13:20Z", "text": "line 0"}

    tail = admin.request("GET", "/demo10/logs?tail=2")
    assert [line["text"] for line in ndjson(tail.body)] == ["line 2", "line 3"]
    assert admin.request("GET", "/demo10/logs?tail=0").body == b""

    recent = admin.request("GET", "/demo10/logs?since=5m")
    assert [line["text"] for line in ndjson(recent.body)] == ["line 2", "line 3"]
    stamp = "2023-11-14T22:03:20Z"  # NOW - 600
    since = admin.request("GET", f"/demo10/logs?since={stamp}")
    assert [line["text"] for line in ndjson(since.body)] == ["line 1", "line 2", "line 3"]
    offset = admin.request("GET", "/demo10/logs?since=2023-11-14T23:03:20%2B01:00&tail=1")
    assert [line["text"] for line in ndjson(offset.body)] == ["line 3"]


@pytest.mark.parametrize("query, field", [
    ("tail=-1", "tail"), ("tail=ten", "tail"), ("tail=99999999", "tail"),
    ("since=yesterday", "since"), ("since=2023-11-14T22:03:20", "since"),
    ("since=2023-02-30T00:00:00Z", "since"), ("follow=maybe", "follow"), ("tial=3", "tial"),
])
def test_bad_log_parameters_are_400_naming_them(logs: tuple[Admin, FakeLogSource],
                                                query: str, field: str) -> None:
    admin, _ = logs
    reply = admin.request("GET", f"/demo10/logs?{query}")
    assert reply.code == 400
    assert reply.data["message"].startswith(field + ":"), reply.data["message"]


def test_logs_without_a_log_source_are_501(admin: Admin) -> None:
    admin.create()
    reply = admin.request("GET", "/demo10/logs")
    assert reply.code == 501
    assert "no log source" in reply.data["message"]


def test_logs_of_a_function_that_never_ran_on_this_node_say_so(
        logs: tuple[Admin, FakeLogSource]) -> None:
    admin, source = logs
    source.runs_here = lambda name: name != "demo10"   # type: ignore[attr-defined]
    reply = admin.request("GET", "/demo10/logs")
    assert reply.code == 404
    assert "has not run on node" in reply.data["message"]


class StreamReader(Protocol):
    """Keeps what a streaming response delivered, and can hang up like a client."""

    def __init__(self) -> None:
        self.data = b""
        self.ended: Any = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any) -> None:
        self.ended = reason

    def hang_up(self) -> None:
        self.transport.stopProducing()


def open_follow(admin: Admin, query: str) -> tuple[Any, StreamReader]:
    d = admin.http.get(BASE + "/demo10/logs?" + query)
    admin.http.flush()
    response = fired(d)
    reader = StreamReader()
    response.deliverBody(reader)
    admin.http.flush()
    return response, reader


def test_follow_streams_new_lines_until_the_client_leaves(
        logs: tuple[Admin, FakeLogSource]) -> None:
    admin, source = logs
    response, reader = open_follow(admin, "follow=true&tail=1")
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type") == ["application/x-ndjson"]
    assert [line["text"] for line in ndjson(reader.data)] == ["line 3"]
    assert len(source.followers["demo10"]) == 1

    source.append("demo10", NOW + 1, "fresh")
    source.append("other", NOW + 1, "someone else's")
    admin.http.flush()
    assert [line["text"] for line in ndjson(reader.data)] == ["line 3", "fresh"]
    assert reader.ended is None  # still open

    reader.hang_up()
    admin.http.flush()
    assert reader.ended is not None
    assert source.followers["demo10"] == []  # unsubscribed on disconnect
    source.append("demo10", NOW + 2, "nobody listens")  # must not write to a closed request
    admin.http.flush()


def test_follow_keeps_lines_that_arrive_while_history_is_read(
        logs: tuple[Admin, FakeLogSource]) -> None:
    admin, source = logs
    source.hold_reads = True
    d = admin.http.get(BASE + "/demo10/logs?follow&since=1m")
    admin.http.flush()
    assert waiting(d)  # history is still being read
    held, history = source.held.pop()
    during = source.append("demo10", NOW + 1, "during the read")
    held.callback(history + [during])  # the read saw it too: it must appear once
    source.append("demo10", NOW + 2, "after")
    admin.http.flush()
    response = fired(d)
    reader = StreamReader()
    response.deliverBody(reader)
    source.append("demo10", NOW + 3, "live")
    admin.http.flush()
    assert [line["text"] for line in ndjson(reader.data)] == [
        "line 3", "during the read", "after", "live"]
    reader.hang_up()
    admin.http.flush()
    assert source.followers["demo10"] == []


def test_follow_client_leaving_during_the_history_read_unsubscribes(
        logs: tuple[Admin, FakeLogSource]) -> None:
    admin, source = logs
    source.hold_reads = True
    d = admin.http.get(BASE + "/demo10/logs?follow=1")
    admin.http.flush()
    assert len(source.followers["demo10"]) == 1
    d.cancel()  # the client gives up before the response began
    admin.http.flush()
    assert source.followers["demo10"] == []
    d.addErrback(lambda _: None)


# -- hostile bodies never make a 5xx ---------------------------------------------------------

SPEC_KEYS = ["name", "image", "port", "autoScaleType", "autoScaleValue", "minReplica",
             "maxReplica", "limitCPU", "limitMemory", "requestCPU", "requestMemory",
             "requestAdaptor", "timeout", "command", "env", "mode", "readinessPath", "header",
             "path", "set", "regexpReplace", "regexp", "replace"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                    st.text(max_size=20), st.sampled_from(["demo", "180m", "1Mi", "10s", "rps"]))
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(SPEC_KEYS), st.text(max_size=8)), inner,
                        max_size=6)),
    max_leaves=20)
content_types = st.sampled_from([None, "application/yaml", "application/json", "text/vnd.yaml",
                                 "application/x-www-form-urlencoded", "text/plain"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.binary(max_size=300), content_type=content_types)
def test_random_bytes_never_make_a_5xx(body: bytes, content_type: str | None) -> None:
    admin = Admin()
    headers = {"Content-Type": content_type} if content_type else {}
    reply = admin.request("POST", "", body, headers=headers)
    assert reply.code < 500, reply.body
    assert set(reply.data) == ({"code", "message"} if reply.code >= 400 else {"spec", "status"})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=documents, as_json=st.booleans(), put=st.booleans())
def test_random_documents_never_make_a_5xx(document: Any, as_json: bool, put: bool) -> None:
    admin = Admin()
    admin.create()
    if as_json:
        body = json.dumps(document).encode()
        headers = {"Content-Type": "application/json"}
    else:
        body = yaml.safe_dump(document).encode()
        headers = {"Content-Type": "application/yaml"}
    reply = admin.request("PUT" if put else "POST", "/demo10" if put else "", body,
                          headers=headers)
    assert reply.code < 500, reply.body


def test_rollout_keeps_an_active_function_active_and_updates_others_as_update(
        admin: Admin) -> None:
    admin.create()
    admin.set_state("demo10", Event.READY)
    assert admin.state("demo10") is State.ACTIVE
    new = DEMO10.replace(b"colordeploy:17.0", b"colordeploy:18.0")
    assert admin.request("PUT", "/demo10", new).code == 409   # the FSM table still refuses
    rolled = admin.request("PUT", "/demo10/rollout", new)
    assert rolled.code == 200
    assert rolled.data["status"]["state"] == "active"
    assert rolled.data["status"]["extData"]["rollout"] == "in progress"
    assert fired(admin.store.get("demo10")).spec.image == "dev.local/colordeploy:18.0"
    assert admin.kicks[-1] == "demo10"
    same = admin.request("PUT", "/demo10/rollout", new)   # nothing to roll: no write
    assert same.code == 200 and same.data["status"]["state"] == "active"
    admin.set_state("demo10", Event.STOP)
    stopped = admin.request("PUT", "/demo10/rollout", DEMO10)
    assert stopped.data["status"]["state"] == "initial"
    assert admin.request("PUT", "/ghost/rollout", spec_yaml("ghost")).code == 404
    assert admin.request("PUT", "/demo10/rollout", spec_yaml("other")).code == 409
    assert admin.request("PUT", "/demo10/rollout", b"port: -1").code == 400


# -- invocation keys -----------------------------------------------------------------------

def test_keys_are_created_shown_once_listed_by_id_and_revoked(admin: Admin) -> None:
    from faastwist.model.keys import digest

    admin.create()
    accept = {"Accept": "application/json"}
    first = admin.request("POST", "/demo10/keys", headers=accept)
    assert first.code == 201, first.body
    key = first.data["key"]
    assert key.startswith("fk_") and "shown only now" in first.data["message"]
    assert first.header("Location").endswith(f"/faascontroller/demo10/keys/{first.data['id']}")
    second = admin.request("POST", "/demo10/keys", headers=accept)
    stored, _ = fired(admin.store.get_keys("demo10"))
    assert [e.sha256 for e in stored.entries] == [digest(key), digest(second.data["key"])]
    listing = admin.request("GET", "/demo10/keys", headers=accept)
    assert listing.code == 200
    assert listing.data == [{"id": first.data["id"], "created": first.data["created"]},
                            {"id": second.data["id"], "created": second.data["created"]}]
    assert key not in listing.body.decode() and digest(key) not in listing.body.decode()
    revoked = admin.request("DELETE", f"/demo10/keys/{first.data['id']}", headers=accept)
    assert (revoked.code, revoked.data["revoked"]) == (200, True)
    again = admin.request("DELETE", f"/demo10/keys/{first.data['id']}", headers=accept)
    assert again.code == 404 and first.data["id"] in again.data["message"]
    assert admin.request("GET", "/demo10/keys", headers=accept).data == [
        {"id": second.data["id"], "created": second.data["created"]}]
    assert admin.request("POST", "/nope/keys", headers=accept).code == 404
    assert admin.request("GET", "/nope/keys", headers=accept).code == 404


def test_the_last_key_is_revoked_only_with_open_true(admin: Admin) -> None:
    """Issue 21: revoking the last key opened the function (200 without a key). A revoke
    is meant to shut someone out, so the last key goes only when the operator says
    the function is to be open."""
    admin.create()
    accept = {"Accept": "application/json"}
    only = admin.request("POST", "/demo10/keys", headers=accept).data
    refused = admin.request("DELETE", f"/demo10/keys/{only['id']}", headers=accept)
    assert (refused.code, refused.data["message"]) == (409, (
        f"key {only['id']} is the last key of function demo10: revoking it would open "
        f"demo10 to anyone; create its replacement first, or revoke with open=true to "
        f"open demo10 on purpose"))
    stored, _ = fired(admin.store.get_keys("demo10"))
    assert [e.id for e in stored.entries] == [only["id"]]          # still closed
    for value in ("false", "0", "no"):
        assert admin.request("DELETE", f"/demo10/keys/{only['id']}?open={value}").code == 409
    bad = admin.request("DELETE", f"/demo10/keys/{only['id']}?open=maybe", headers=accept)
    assert (bad.code, bad.data["message"]) == (400, "open: must be true or false, got 'maybe'")
    # rotation: the replacement first, then the old key goes (the function stays closed)
    second = admin.request("POST", "/demo10/keys", headers=accept).data
    revoked = admin.request("DELETE", f"/demo10/keys/{only['id']}", headers=accept)
    assert (revoked.code, revoked.data["revoked"], revoked.data["open"]) == (200, True, False)
    # on purpose: open=true (a bare ?open too) lets the last one go
    opened = admin.request("DELETE", f"/demo10/keys/{second['id']}?open", headers=accept)
    assert (opened.code, opened.data["open"]) == (200, True)
    assert fired(admin.store.get_keys("demo10"))[0].entries == ()
    # a wrong id is still 404, whatever open says
    assert admin.request("DELETE", "/demo10/keys/nope?open=true").code == 404


def test_two_racing_revokes_cannot_both_take_the_last_two_keys(admin: Admin) -> None:
    """The check and the write are one compare-and-swap: of two revokes that each saw
    two keys, the loser re-reads, finds the last key and is refused."""
    admin.create()
    ids = [admin.request("POST", "/demo10/keys", headers={"Accept": "application/json"})
           .data["id"] for _ in range(2)]
    store = admin.store
    real_get = store.get_keys
    seen: list[Any] = []

    def stale_once(name: str) -> Any:
        d = real_get(name)
        if not seen:   # the first read is the state before the other revoke wrote
            seen.append(fired(d))
            # the other revoke wins in between
            keys, revision = seen[0]
            fired(store.put_keys(name, keys.without(ids[1]), revision))
            return succeed(seen[0])
        return d

    store.get_keys = stale_once   # type: ignore[method-assign]
    answer = admin.request("DELETE", f"/demo10/keys/{ids[0]}",
                           headers={"Accept": "application/json"})
    assert answer.code == 409 and "is the last key" in answer.data["message"], answer.body
    assert [e.id for e in fired(real_get("demo10"))[0].entries] == [ids[0]]


def test_at_most_ten_keys(admin: Admin) -> None:
    admin.create()
    for _ in range(10):
        assert admin.request("POST", "/demo10/keys").code == 201
    refused = admin.request("POST", "/demo10/keys", headers={"Accept": "application/json"})
    assert refused.code == 409 and "revoke one first" in refused.data["message"]


def test_the_async_call_routes_are_registered_with_the_api_itself(admin: Admin) -> None:
    """admin/api.py registers them (no import elsewhere adds them; the controller check
    covers them: CONTROLLER_ROUTES): without a queue 503, a bad call id 400 naming it."""
    reply = admin.request("GET", "/demo10/async", headers={"Accept": "application/json"})
    assert (reply.code, reply.data) == (503, {
        "code": 503, "message": "asynchronous invocations are not enabled on this node"})
    reply = admin.request("GET", "/demo10/async/bad%20id", headers={"Accept": "application/json"})
    assert reply.code == 400 and reply.data["message"].startswith("callId:")
