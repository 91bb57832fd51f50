"""How calls, outcomes and status records are laid out (faastwist/queue/messages.py):
the body travels unchanged, everything else in ``Faas-*`` headers that read back
exactly, and what faastwist did not write is refused by name."""

from __future__ import annotations

import json

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from faastwist.gate.asynccall import QueuedCall
from faastwist.queue.messages import (
    BadMessage,
    Outcome,
    call_headers,
    outcome_headers,
    read_call,
    read_outcome,
    status_record,
)

CALL = QueuedCall(function="echo", call_id="c-1", method="POST", target="/path?q=1",
                  headers=(("content-type", "text/plain"), ("x-n\xe9", "v\xe9")),
                  client_ip="127.0.0.1", body=b"\x00body", callback="http://127.0.0.1:9/cb",
                  enqueued=1.7e9 + 0.123456789)


def test_a_call_is_laid_out_in_faas_headers_with_a_dedupe_id() -> None:
    headers = call_headers(CALL)
    assert headers == {
        "Faas-Function": "echo", "Faas-Call-Id": "c-1", "Faas-Method": "POST",
        "Faas-Target": "/path?q=1", "Faas-Client": "127.0.0.1",
        "Faas-Enqueued": repr(CALL.enqueued),
        "Faas-Headers": json.dumps([["content-type", "text/plain"], ["x-n\xe9", "v\xe9"]]),
        "Faas-Callback": "http://127.0.0.1:9/cb",
        "Nats-Msg-Id": "echo.c-1"}


def test_a_redelivery_publish_carries_no_dedupe_id_and_no_callback_is_no_header() -> None:
    plain = attrs.evolve(CALL, callback=None)
    headers = call_headers(plain, dedup=False)
    assert "Nats-Msg-Id" not in headers and "Faas-Callback" not in headers


def test_a_call_reads_back_exactly_with_its_body() -> None:
    assert read_call(call_headers(CALL), CALL.body) == CALL


def test_an_absent_body_client_or_empty_callback_reads_as_empty() -> None:
    headers = call_headers(CALL)
    del headers["Faas-Client"]
    headers["Faas-Callback"] = ""
    call = read_call(headers, None)
    assert (call.body, call.client_ip, call.callback) == (b"", "", None)


@pytest.mark.parametrize(("change", "problem"), [
    ({"Faas-Function": None}, "'Faas-Function'"),
    ({"Faas-Call-Id": None}, "'Faas-Call-Id'"),
    ({"Faas-Method": None}, "'Faas-Method'"),
    ({"Faas-Target": None}, "'Faas-Target'"),
    ({"Faas-Enqueued": None}, "'Faas-Enqueued'"),
    ({"Faas-Headers": None}, "'Faas-Headers'"),
    ({"Faas-Enqueued": "yesterday"}, "could not convert string to float"),
    ({"Faas-Headers": "[not json"}, "Expecting value"),
    ({"Faas-Headers": "[[1, 2, 3]]"}, "too many values to unpack"),
    ({"Faas-Headers": "7"}, "not iterable"),
])
def test_a_message_faastwist_did_not_write_is_refused_by_name(change: dict[str, str | None],
                                                              problem: str) -> None:
    headers = call_headers(CALL)
    for name, value in change.items():
        if value is None:
            del headers[name]
        else:
            headers[name] = value
    with pytest.raises(BadMessage) as caught:
        read_call(headers, b"")
    assert str(caught.value).startswith("not a faastwist call message: ")
    assert problem in str(caught.value)


def test_no_headers_at_all_is_a_bad_message() -> None:
    with pytest.raises(BadMessage):
        read_call(None, b"x")


def test_an_outcome_is_laid_out_and_read_back() -> None:
    outcome = Outcome(status=502, attempts=3, duration=1.25, headers=(("retry-after", "2"),),
                      reason="upstream refused")
    headers = outcome_headers(outcome)
    assert headers == {"Faas-Status": "502", "Faas-Attempts": "3",
                       "Faas-Duration": "1.250000",
                       "Faas-Response-Headers": '[["retry-after", "2"]]',
                       "Faas-Reason": "upstream refused"}
    assert read_outcome(headers) == outcome


def test_an_outcome_without_headers_reads_as_nothing_happened() -> None:
    assert read_outcome(None) == Outcome(0, 0, 0.0, (), "")
    assert read_outcome({}) == Outcome(0, 0, 0.0, (), "")
    assert Outcome(200, 1, 0.5).headers == () and Outcome(200, 1, 0.5).reason == ""


@pytest.mark.parametrize("headers", [
    {"Faas-Status": "OK"}, {"Faas-Attempts": "1.5"}, {"Faas-Duration": "soon"},
    {"Faas-Response-Headers": "{"}, {"Faas-Response-Headers": "[[1]]"},
    {"Faas-Response-Headers": "5"},
])
def test_a_bad_outcome_is_refused_by_name(headers: dict[str, str]) -> None:
    with pytest.raises(BadMessage) as caught:
        read_outcome(headers)
    assert str(caught.value).startswith("not a faastwist outcome: ")


def test_a_status_record_shows_what_is_known_and_nothing_else() -> None:
    assert status_record(CALL, "queued", 1.8e9) == {
        "callId": "c-1", "function": "echo", "state": "queued", "attempts": 0,
        "enqueued": CALL.enqueued, "updated": 1.8e9, "callbackUrl": "http://127.0.0.1:9/cb"}

    record = status_record(attrs.evolve(CALL, callback=None), "failed", 1.9e9, attempts=4,
                           last_status=0, reason="timed out", node="n1")
    assert record == {"callId": "c-1", "function": "echo", "state": "failed", "attempts": 4,
                      "enqueued": CALL.enqueued, "updated": 1.9e9, "lastStatus": 0,
                      "reason": "timed out", "node": "n1"}


latin1 = st.text(alphabet=st.characters(max_codepoint=255), max_size=20)


@given(function=st.text(min_size=1, max_size=10), call_id=latin1, method=latin1,
       target=latin1, headers=st.lists(st.tuples(latin1, latin1), max_size=4),
       body=st.binary(max_size=64), enqueued=st.floats(allow_nan=False, allow_infinity=False),
       callback=st.none() | st.text(min_size=1, max_size=20))
def test_any_call_reads_back_as_written(function: str, call_id: str, method: str,
                                        target: str, headers: list[tuple[str, str]],
                                        body: bytes, enqueued: float,
                                        callback: str | None) -> None:
    call = QueuedCall(function=function, call_id=call_id, method=method, target=target,
                      headers=tuple(headers), client_ip="127.0.0.1", body=body,
                      callback=callback, enqueued=enqueued)
    assert read_call(call_headers(call), body) == call
