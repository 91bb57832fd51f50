"""The one write policy (admin/writes.py) and its error table, through both APIs.

A store whose functions another writer changes right after each read stands in for
the leader writing a status while a node reports (a function serving traffic): the
write is read again and re-applied; a spec changed by another writer is a 409.
Measured on commit 15642f0: OpenFaaS's scale and update had no re-read (4 of 40 scale
calls under traffic answered 409), and the two APIs mapped errors differently.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import Clock
from treq.testing import StubTreq

from faastwist.admin import writes
from faastwist.admin.codec import ApiError
from faastwist.admin.openfaas import OpenFaaSAPI, Versions
from faastwist.admin.errors import ANSWERS, SecretInUse, answer
from faastwist.admin.writes import WRITE_ATTEMPTS
from faastwist.metrics import Metrics
from faastwist.model.fsm import Event, FunctionStatus, InvalidEvent, State, apply_event
from faastwist.model.spec import FunctionSpec, SpecError
from faastwist.providers.base import ProviderError
from faastwist.store.base import (
    AlreadyExists,
    Conflict,
    FunctionRecord,
    NotFound,
    OutcomeUnknown,
    StoreUnavailable,
)
from faastwist.store.memory import MemoryStore
from faastwist.store.secrets import SecretExists, SecretNotFound
from faastwist.testing.provider import FakeProvider


def fired(d: Any) -> Any:
    if not isinstance(d, Deferred):
        d = ensureDeferred(d)
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "not fired"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


class Busy(MemoryStore):
    """After each ``get`` (an API's read) and before its write, another writer writes
    the status (``races`` times), or the spec too (``spec_races``)."""

    races = 0
    spec_races = 0
    reports = 0

    racing = False

    def get(self, name: str) -> Deferred[FunctionRecord]:
        d = super().get(name)
        if (self.races or self.spec_races) and not self.racing:
            self.racing = True   # the other writer's own reads are not raced
            record = fired(super().get(name))
            spec = None
            if self.spec_races:
                self.spec_races -= 1
                spec = attrs.evolve(record.spec, port=(record.spec.port or 8000) + 1)
            else:
                self.races -= 1
            self.reports += 1
            fired(self.update(record, spec=spec, status=attrs.evolve(
                record.status, message=f"report {self.reports}")))
            self.racing = False
        return d


def create(store: MemoryStore, state: State = State.ACTIVE) -> FunctionRecord:
    spec = FunctionSpec.from_dict({"name": "fn", "image": "img", "port": 8080})
    return fired(store.create(spec, FunctionStatus("fn", state)))


def timed(d: Deferred[Any]) -> Deferred[Any]:
    return d


def stop(record: FunctionRecord) -> tuple[None, FunctionStatus]:
    return None, apply_event(record.status, Event.STOP, 5.0)


def test_a_write_that_loses_to_status_writes_is_reapplied_to_the_fresh_record() -> None:
    store = Busy()
    create(store)
    store.races = WRITE_ATTEMPTS - 1   # every attempt but the last loses
    record = fired(store.get("fn"))    # (the first race is right after this read)
    written = fired(writes.write(store, record, stop, timed))
    assert written.status.state is State.INACTIVE
    # the other writer's last status survives under the stop (it was re-applied to it)
    assert written.status.message == f"report {WRITE_ATTEMPTS - 1}"
    assert fired(store.get("fn")).status.state is State.INACTIVE


def test_a_write_losing_every_attempt_is_a_conflict() -> None:
    store = Busy()
    create(store)
    store.races = WRITE_ATTEMPTS + 1
    record = fired(store.get("fn"))
    with pytest.raises(Conflict):
        fired(writes.write(store, record, stop, timed))
    assert fired(store.get("fn")).status.state is State.ACTIVE


def test_a_spec_changed_by_another_writer_is_a_conflict_not_overwritten() -> None:
    store = Busy()
    create(store)
    store.spec_races = 1
    record = fired(store.get("fn"))     # the other writer changes the spec here
    new = attrs.evolve(record.spec, image="img:2")
    with pytest.raises(Conflict):
        fired(writes.write(store, record, lambda r: (new, None), timed))
    assert fired(store.get("fn")).spec.port == 8081   # theirs stays


def test_a_change_with_nothing_to_write_writes_nothing() -> None:
    store = MemoryStore()
    record = create(store)
    assert fired(writes.write(store, record, lambda r: None, timed)) is record
    assert fired(store.get("fn")).status_revision == record.status_revision


def test_a_fresh_state_that_refuses_the_event_is_the_fsms_409() -> None:
    store = Busy()
    record = create(store)
    fired(store.update(record, status=apply_event(record.status, Event.STOP, 1.0)))
    store.races = 1
    with pytest.raises(InvalidEvent):
        fired(writes.write(store, record, stop, timed))


def test_a_delete_rechecks_the_fresh_record() -> None:
    store = Busy()
    create(store, State.INACTIVE)
    store.races = 2
    record = fired(store.get("fn"))    # raced right after
    checked: list[State] = []
    deleted = fired(writes.delete(store, record, lambda r: checked.append(r.status.state),
                                  timed))
    assert deleted.status.message == "report 2" and len(checked) == 3
    with pytest.raises(NotFound):
        fired(store.get("fn"))


def test_one_table_answers_every_domain_error() -> None:
    cases = [
        (SpecError("port", "bad"), 400, "port: bad"),
        (NotFound("fn"), 404, "function fn not found"),
        (SecretNotFound("s"), 404, "secret s not found"),
        (AlreadyExists("fn"), 409, "function fn already exists"),
        (Conflict("fn"), 409, "function fn was changed concurrently; read it again and retry"),
        (InvalidEvent(Event.STOP, State.INACTIVE), 409,
         "invalid event: stop, current state: inactive"),
        (SecretExists("s"), 409, "secret s already exists; update it with PUT"),
        (SecretInUse("s", ["a", "b"]), 409,
         "secret s is used by function(s) a, b; remove it from their secrets (or delete "
         "them) first"),
        (OutcomeUnknown("no answer"), 503, "outcome unknown: no answer"),
        (StoreUnavailable("down"), 503, "function store unavailable: down"),
        (ProviderError("k8s down"), 502, "the provider could not be asked: k8s down"),
    ]
    for exc, code, message in cases:
        assert answer(exc) == (code, message, {}), exc
    assert answer(ApiError(429, "slow down", {"Retry-After": "1"})) == (
        429, "slow down", {"Retry-After": "1"})
    assert answer(ValueError("a bug")) is None
    assert {kind for kinds, _, _ in ANSWERS for kind in kinds} >= {
        type(exc) for exc, _, _ in cases}


class Failing(MemoryStore):
    error: Exception | None = None

    def update(self, *args: Any, **kwargs: Any) -> Deferred[FunctionRecord]:
        if self.error is not None:
            d: Deferred[FunctionRecord] = Deferred()
            d.errback(self.error)
            return d
        return super().update(*args, **kwargs)


def openfaas(store: MemoryStore) -> StubTreq:
    api = OpenFaaSAPI(store, FakeProvider(), lambda name: None, Metrics(), Clock(),
                      Versions("process", "abc"), "openfaas-fn", wall_clock=lambda: 1.7e9)
    return StubTreq(api.resource())


def scale(client: StubTreq, replicas: int) -> tuple[int, Any]:
    d = client.request("POST", "http://admin/system/scale-function/fn",
                       data=json.dumps({"replicas": replicas}))
    client.flush()
    response = fired(d)
    content = fired(response.content())
    return response.code, json.loads(content) if content else None


def test_openfaas_scale_and_update_reapply_after_status_races() -> None:
    store = Busy()
    create(store)
    client = openfaas(store)
    store.races = 3
    assert scale(client, 3) == (202, None)
    assert fired(store.get("fn")).spec.min_replica == 3
    store.races = 3
    d = client.request("PUT", "http://admin/system/functions", data=json.dumps(
        {"service": "fn", "image": "img:2"}))
    client.flush()
    assert fired(d).code == 202
    assert fired(store.get("fn")).spec.image == "img:2"
    store.spec_races = 1
    code, body = scale(client, 5)
    assert code == 409 and "changed concurrently" in body["message"]
    assert fired(store.get("fn")).spec.min_replica != 5


def test_openfaas_answers_from_the_same_table() -> None:
    store = Failing()
    create(store)
    client = openfaas(store)
    store.error = OutcomeUnknown("etcd did not answer")
    assert scale(client, 2) == (503, {"code": 503,
                                      "message": "outcome unknown: etcd did not answer"})
    store.error = ProviderError("the cluster is gone")
    assert scale(client, 2)[0] == 502
