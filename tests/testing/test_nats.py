"""The in-memory NATS server's own rules (faastwist/testing/nats.py): what the contract
suite (tests/queue/test_jetstream_contract.py) cannot show against a real server:
subject matching, sizes, the duplicate window on the Clock, refusals and outages."""

from __future__ import annotations

import pytest
from nats.errors import ConnectionClosedError
from nats.js.errors import APIError, NotFoundError
from twisted.internet.task import Clock

from faastwist.queue.jetstream import DUPLICATE_WINDOW
from faastwist.testing.nats import BYTES_EXCEEDED, Server, Stream, message_size, \
    subject_matches


@pytest.mark.parametrize(("pattern", "subject", "matches"), [
    ("a.b", "a.b", True), ("a.b", "a.c", False), ("a.*", "a.b", True),
    ("a.*", "a.b.c", False), ("a.*", "a", False), ("a.>", "a.b.c", True),
    ("a.>", "a", False), ("a.b.c", "a.b", False), ("*.b", "x.b", True),
])
def test_subjects_match_as_nats_matches_them(pattern: str, subject: str,
                                              matches: bool) -> None:
    assert subject_matches(pattern, subject) is matches


def test_a_message_counts_its_subject_headers_and_payload() -> None:
    assert message_size("s.t", None, b"12345") == 22 + 3 + 5 + 8
    assert message_size("s.t", {"ab": "cde"}, b"") == 22 + 3 + 12 + (2 + 3 + 4) + 8


def server() -> tuple[Clock, Server]:
    clock = Clock()
    made = Server(clock)
    made.streams["calls"] = Stream("calls", ["c.*"], True, True, 100)
    made.streams["dead"] = Stream("dead", ["d.*"], False, False, 100)
    return clock, made


def test_a_message_id_is_remembered_for_the_duplicate_window_only() -> None:
    clock, made = server()
    made.streams["calls"].max_bytes = -1   # no limit
    assert made.store("c.1", b"", {"Nats-Msg-Id": "m"}) == (1, False)
    clock.advance(DUPLICATE_WINDOW - 1)
    assert made.store("c.1", b"", {"Nats-Msg-Id": "m"}) == (1, True)
    clock.advance(1)
    assert made.store("c.1", b"", {"Nats-Msg-Id": "m"}) == (2, False)
    assert made.subjects("calls") == ["c.1", "c.1"]


def test_a_full_stream_refuses_or_drops_its_oldest_by_its_discard_policy() -> None:
    _, made = server()
    size = message_size("c.1", None, b"x" * 30)
    assert made.publish("c.1", b"x" * 30, None) == 1
    with pytest.raises(APIError) as full:
        made.publish("c.2", b"x" * (101 - size), None)
    assert full.value.err_code == BYTES_EXCEEDED
    for n in range(3):
        made.publish(f"d.{n}", b"x" * 10, None)
    assert made.subjects("dead") == ["d.1", "d.2"]


def test_a_subject_no_stream_takes_is_not_found() -> None:
    _, made = server()
    with pytest.raises(NotFoundError):
        made.publish("nowhere.1", b"", None)


def test_a_refused_operation_fails_as_a_lost_connection_and_is_not_journalled() -> None:
    _, made = server()
    made.refusing["publish"] = lambda subject: subject == "c.2"
    made.enter("publish", "c.1")
    with pytest.raises(ConnectionClosedError):
        made.enter("publish", "c.2")
    assert made.journal == [("publish", "c.1")]


def test_an_outage_refuses_everything_and_tells_the_connected_clients() -> None:
    _, made = server()

    class Client:
        is_connected = True
        flushed = 0

        def __init__(self) -> None:
            self.states: list[str] = []

        def on_state(self, state: str) -> None:
            self.states.append(state)

        def flush(self) -> None:
            self.flushed += 1

    client = Client()
    made.clients.append(client)
    made.stop()
    with pytest.raises(ConnectionClosedError):
        made.publish("c.1", b"", None)
    with pytest.raises(ConnectionClosedError):
        made.enter("ack", "c.1")
    made.start()
    assert client.states == ["disconnected", "connected"] and client.flushed == 1
    assert made.publish("c.1", b"", None) == 1
