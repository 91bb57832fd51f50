"""``POST /system/alert`` (faastwist/admin/alerts.py): AlertManager's webhook scales a
function the way OpenFaaS CE does, through the OpenFaaS API on a MemoryStore and a
FakeProvider. The real chain (Prometheus, AlertManager, a node) is in
tests/e2e/test_alert_autoscaling_e2e.py."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from twisted.internet.defer import Deferred

from faastwist.admin.alerts import ATTEMPTS, MAX_ALERTS, Alert, own_min, read_alerts
from faastwist.admin.codec import ApiError
from faastwist.model.fsm import Event, apply_event
from faastwist.model.scaling import AlertStatus
from faastwist.store.base import Conflict
from tests.admin.test_openfaas import World, fired


@pytest.fixture
def world() -> World:
    return World()


def alert(name: str, status: str) -> dict:
    return {"version": "4", "status": status, "receiver": "faastwist",
            "alerts": [{"status": status, "labels": {"alertname": "APIHighInvocationRate",
                                                     "function_name": name}}]}


def active(world: World, body: dict) -> None:
    assert world.request("POST", "/system/functions", body)[0] == 202
    record = fired(world.store.get(body["service"]))
    fired(world.store.update(record, status=apply_event(record.status, Event.READY, 1.7e9)))


def test_alerts_step_up_to_max_and_resolve_to_the_functions_own_min(world: World) -> None:
    active(world, {"service": "hot", "image": "img", "envProcess": "cat",
                   "labels": {"com.openfaas.scale.max": "4"}})
    steps = [world.request("POST", "/system/alert", alert("hot.openfaas-fn", "firing"))
             for _ in range(4)]
    assert [(code, body["alerts"][0]["to"]) for code, body in steps] == [
        (200, 2), (200, 3), (200, 4), (200, 4)]
    record = fired(world.store.get("hot"))
    # min raised, the function's own min kept where OpenFaaS reads it
    assert record.spec.min_replica == 4
    assert record.spec.labels["com.openfaas.scale.min"] == "1"
    code, got = world.request("GET", "/system/function/hot")
    assert got["replicas"] == 4
    code, body = world.request("POST", "/system/alert", alert("hot", "resolved"))
    assert code == 200 and body["alerts"][0] == {
        "function": "hot", "from": 4, "to": 1, "why": "alert resolved: back to min"}
    assert fired(world.store.get("hot")).spec.min_replica == 1


def test_an_alert_is_reapplied_after_a_racing_write(world: World) -> None:
    """A status write between the alert's read and its write: read again, apply again."""
    active(world, {"service": "race", "image": "img", "envProcess": "cat",
                   "labels": {"com.openfaas.scale.max": "10"}})
    store, real_get, raced, reads = world.store, world.store.get, [], []

    def get(name: str) -> Deferred:
        reads.append(name)
        record = fired(real_get(name))
        if not raced:   # another writer (the reconciler) wins once
            raced.append(True)
            fired(store.update(record, status=apply_event(record.status, Event.READY,
                                                           1.8e9)))
        from twisted.internet.defer import succeed
        return succeed(record)
    store.get = get
    code, body = world.request("POST", "/system/alert", alert("race", "firing"))
    assert code == 200 and body["alerts"][0]["to"] == 3 and raced == [True]
    assert reads == ["race", "race"]   # the stale write lost (409 inside), read again
    store.get = real_get
    assert fired(store.get("race")).spec.min_replica == 3


def test_alerts_for_stopped_or_unknown_functions_change_nothing(world: World) -> None:
    active(world, {"service": "idle", "image": "img", "envProcess": "cat"})
    record = fired(world.store.get("idle"))
    fired(world.store.update(record, status=apply_event(record.status, Event.STOP, 1.7e9)))
    code, body = world.request("POST", "/system/alert", alert("idle", "firing"))
    assert code == 200 and body["alerts"][0] == {"function": "idle",
                                                 "skipped": "function is inactive"}
    code, body = world.request("POST", "/system/alert", alert("", "firing"))
    assert body["alerts"][0] == {"function": "", "skipped": "no function_name label"}
    assert fired(world.store.get("idle")).spec.min_replica == 1
    assert world.kicks.count("idle") == 1   # the deploy's only


@pytest.mark.parametrize(("document", "message"), [
    ([], "body must be a JSON object (AlertManager's webhook payload)"),
    ({"version": "3", "alerts": []},
     "version: payload version '3' is not supported; AlertManager sends '4'"),
    ({"version": 4, "alerts": []},
     "version: payload version 4 is not supported; AlertManager sends '4'"),
    ({"version": "4"}, "alerts: must be a list of alerts"),
    ({"alerts": {"status": "firing"}}, "alerts: must be a list of alerts"),
    ({"alerts": [{"status": "firing"}] * (MAX_ALERTS + 1)},
     f"alerts: at most {MAX_ALERTS} per request, got {MAX_ALERTS + 1}"),
    ({"alerts": ["firing"]}, "alerts[0]: must be an object"),
    ({"alerts": [{"status": "firing"}, {"status": "pending"}]},
     "alerts[1].status: must be firing or resolved, got 'pending'"),
    ({"alerts": [{}]}, "alerts[0].status: must be firing or resolved, got None"),
    ({"alerts": [{"status": "firing", "labels": ["function_name"]}]},
     "alerts[0].labels: must be an object"),
    ({"alerts": [{"status": "resolved", "labels": {"function_name": 7}}]},
     "alerts[0].labels.function_name: must be text"),
])
def test_a_bad_payload_is_a_400_naming_the_field(document: Any, message: str) -> None:
    with pytest.raises(ApiError) as caught:
        read_alerts(document)
    assert (caught.value.code, caught.value.message) == (400, message)


def test_a_payload_reads_as_its_alerts_in_order() -> None:
    document = {"version": "4", "alerts": [
        {"status": "firing", "labels": {"function_name": "a.openfaas-fn"}},
        {"status": "resolved", "labels": {}},
        {"status": "firing"}]}
    assert read_alerts(document) == [Alert(AlertStatus.FIRING, "a.openfaas-fn"),
                                     Alert(AlertStatus.RESOLVED, ""),
                                     Alert(AlertStatus.FIRING, "")]
    assert read_alerts({"alerts": [{"status": "firing"}] * MAX_ALERTS})[0].function == ""
    assert read_alerts({"alerts": []}) == []   # the version may be left out
    assert MAX_ALERTS == 1000


def test_a_function_scaled_to_zero_steps_up_from_zero(world: World) -> None:
    active(world, {"service": "cold", "image": "img", "envProcess": "cat",
                   "labels": {"com.openfaas.scale.max": "10"}})
    assert world.request("POST", "/system/scale-function/cold", {"replicas": 0})[0] == 202
    code, body = world.request("POST", "/system/alert", alert("cold", "firing"))
    assert code == 200 and body["alerts"][0] == {
        "function": "cold", "from": 0, "to": 2, "why": "alert firing: +2 (20% of max 10)"}


@pytest.mark.parametrize(("labels", "minimum"), [
    ({}, 1),
    ({"com.openfaas.scale.min": "3"}, 3),
    ({"com.openfaas.scale.zero": "true"}, 0),
    ({"com.openfaas.scale.zero": "false"}, 1),
    ({"com.openfaas.scale.min": "2", "com.openfaas.scale.zero": "true"}, 2),
])
def test_the_functions_own_min_is_read_as_openfaas_reads_it(labels: dict[str, str],
                                                             minimum: int) -> None:
    assert own_min(labels) == minimum


def test_an_alert_for_another_namespace_or_a_bad_factor_is_skipped(world: World) -> None:
    active(world, {"service": "odd", "image": "img", "envProcess": "cat"})
    code, body = world.request("POST", "/system/alert", alert("odd.elsewhere", "firing"))
    assert code == 200 and body["alerts"][0] == {
        "function": "odd.elsewhere",
        "skipped": "namespace elsewhere is not this gate's (openfaas-fn)"}
    # a label the API would refuse, written before that check existed
    record = fired(world.store.get("odd"))
    labels = {**record.spec.labels, "com.openfaas.scale.factor": "150"}
    fired(world.store.update(record, spec=attrs.evolve(record.spec, labels=labels)))
    code, body = world.request("POST", "/system/alert", alert("odd", "firing"))
    assert body["alerts"][0]["function"] == "odd"
    assert body["alerts"][0]["skipped"].startswith(
        "labels.com.openfaas.scale.factor: must be a whole number 0-100")
    code, body = world.request("POST", "/system/alert", alert("ghost", "firing"))
    assert body["alerts"][0] == {"function": "ghost", "skipped": "no such function"}
    assert fired(world.store.get("odd")).spec.min_replica == 1


def test_an_alert_that_changes_nothing_writes_nothing(world: World) -> None:
    active(world, {"service": "calm", "image": "img", "envProcess": "cat",
                   "labels": {"com.openfaas.scale.min": "1"}})
    writes = world.store.writes
    code, body = world.request("POST", "/system/alert", alert("calm", "resolved"))
    assert code == 200 and body["alerts"][0] == {
        "function": "calm", "from": 1, "to": 1, "why": "alert resolved: back to min"}
    assert world.store.writes == writes and world.kicks == ["calm"]   # the deploy's kick


def test_the_providers_desired_count_is_where_a_step_starts(world: World) -> None:
    """The replicas the provider already wants (an autoscaler's, above min) are the
    start of a firing alert's step, not min."""
    active(world, {"service": "busy", "image": "img", "envProcess": "cat",
                   "labels": {"com.openfaas.scale.max": "10"}})
    fired(world.provider.deploy(fired(world.store.get("busy")).spec))
    world.provider.report("busy", Event.READY, ext_data={"desired": "5"})
    code, body = world.request("POST", "/system/alert", alert("busy", "firing"))
    assert code == 200 and body["alerts"][0] == {
        "function": "busy", "from": 5, "to": 7, "why": "alert firing: +2 (20% of max 10)"}
    world.provider.report("busy", Event.READY, ext_data={"desired": "many"})
    code, body = world.request("POST", "/system/alert", alert("busy", "firing"))
    assert body["alerts"][0]["from"] == 7      # not a number: min (now 7) is the start


def test_a_start_pending_function_is_scaled_a_stopped_one_is_not(world: World) -> None:
    active(world, {"service": "waking", "image": "img", "envProcess": "cat",
                   "labels": {"com.openfaas.scale.max": "4"}})
    record = fired(world.store.get("waking"))
    stopped = apply_event(record.status, Event.STOP, 1.7e9)
    fired(world.store.update(record, status=stopped))
    record = fired(world.store.get("waking"))
    fired(world.store.update(record, status=apply_event(record.status, Event.START, 1.7e9)))
    code, body = world.request("POST", "/system/alert", alert("waking", "firing"))
    assert code == 200 and body["alerts"][0]["to"] == 2


def racing_store(world: World, conflict: Conflict) -> list[str]:
    """Every write of the store loses to ``conflict``; returns the reads made."""
    reads: list[str] = []
    real_get = world.store.get

    def get(name: str) -> Deferred:
        reads.append(name)
        return real_get(name)

    def update(record: Any, **changes: Any) -> Deferred:
        raise conflict
    world.store.get = get          # type: ignore[method-assign]
    world.store.update = update    # type: ignore[method-assign]
    return reads


def test_a_function_rewritten_at_every_attempt_is_a_409_after_three_reads(
        world: World) -> None:
    active(world, {"service": "hot", "image": "img", "envProcess": "cat"})
    reads = racing_store(world, Conflict("hot"))
    code, body = world.request("POST", "/system/alert", alert("hot", "firing"))
    assert ATTEMPTS == 3 and reads == ["hot"] * ATTEMPTS
    assert (code, body["message"]) == (
        409, "function hot changed 3 times while the alert was applied; AlertManager will "
             "send it again")


def test_a_function_an_object_owns_is_refused_at_once(world: World) -> None:
    active(world, {"service": "owned", "image": "img", "envProcess": "cat"})
    refusal = Conflict("owned")
    refusal.retryable = False
    reads = racing_store(world, refusal)
    code, body = world.request("POST", "/system/alert", alert("owned", "firing"))
    assert code == 409 and reads == ["owned"]
    assert body["message"] == str(refusal)


def test_alerts_apply_in_order_and_answer_each(world: World) -> None:
    for name in ("one", "two"):
        active(world, {"service": name, "image": "img", "envProcess": "cat",
                       "labels": {"com.openfaas.scale.max": "4"}})
    document = {"version": "4", "alerts": [
        {"status": "firing", "labels": {"function_name": "one"}},
        {"status": "firing", "labels": {"function_name": "two"}},
        {"status": "resolved", "labels": {"function_name": "one"}}]}
    code, body = world.request("POST", "/system/alert", document)
    assert code == 200
    assert [(a["function"], a["to"]) for a in body["alerts"]] == [
        ("one", 2), ("two", 2), ("one", 1)]
    assert world.kicks == ["one", "two", "one", "two", "one"]
