"""EtcdWatch on a Clock with a scripted agent: framing, resume, backoff, gaps.

No sockets: the agent records each request and the test plays etcd's streamed
answers (newline-separated JSON, cut wherever the network may cut them).
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone

from faastwist.store.etcdwatch import Compacted, EtcdWatch, KeyEvent, StoreReset, WatchLost


class StreamTransport:
    def __init__(self) -> None:
        self.stopped = False

    def stopProducing(self) -> None:
        self.stopped = True


class StreamResponse:
    code = 200
    phrase = b"OK"

    def __init__(self) -> None:
        self.protocol: Any = None
        self.transport = StreamTransport()

    def deliverBody(self, protocol: Any) -> None:
        self.protocol = protocol
        protocol.makeConnection(self.transport)

    def send(self, *messages: dict, cut: int | None = None) -> None:
        data = b"".join(json.dumps(m).encode() + b"\n" for m in messages)
        if cut is None:
            self.protocol.dataReceived(data)
        else:
            self.protocol.dataReceived(data[:cut])
            self.protocol.dataReceived(data[cut:])

    def end(self) -> None:
        self.protocol.connectionLost(Failure(ResponseDone()))


class ScriptedAgent:
    """Each request waits for the test to answer it."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict, Deferred]] = []

    def request(self, method: bytes, uri: bytes, headers: Any = None, body: Any = None) -> Deferred:
        d: Deferred = Deferred()
        self.requests.append((uri.decode(), json.loads(body.body), d))
        return d

    def answer(self) -> StreamResponse:
        response = StreamResponse()
        self.requests[-1][2].callback(response)
        return response

    def refuse(self) -> None:
        self.requests[-1][2].errback(ConnectionRefusedError())

    def start_revision(self, index: int = -1) -> int:
        return self.requests[index][1]["create_request"]["start_revision"]


def header(revision: int) -> dict:
    return {"header": {"revision": str(revision)}}


def created(revision: int) -> dict:
    return {"result": {**header(revision), "created": True}}


def put(key: str, value: str, revision: int) -> dict:
    return {"kv": {"key": base64.b64encode(key.encode()).decode(),
                   "value": base64.b64encode(value.encode()).decode(),
                   "mod_revision": str(revision)}}


def delete(key: str, revision: int) -> dict:
    return {"type": "DELETE", "kv": {"key": base64.b64encode(key.encode()).decode(),
                                     "mod_revision": str(revision)}}


def events(revision: int, *evts: dict) -> dict:
    return {"result": {**header(revision), "events": list(evts)}}


class Harness:
    def __init__(self, after: int = 10, endpoints: tuple[str, ...] = ("http://e1",)) -> None:
        self.clock = Clock()
        self.agent = ScriptedAgent()
        self.batches: list[list[KeyEvent]] = []
        self.lost: list[Exception] = []
        self.reconnects = 0
        self.watch = EtcdWatch(self.clock, self.agent, list(endpoints), "/v3", b"/p/", b"/p0",
                               after, self.batches.append, self.lost.append,
                               connect_timeout=5.0, on_reconnect=self._reconnected,
                               min_backoff=0.1, max_backoff=1.0).start()

    def _reconnected(self) -> None:
        self.reconnects += 1


def test_create_request_asks_for_the_range_after_the_revision():
    h = Harness(after=10)
    ((url, body, _),) = h.agent.requests
    assert url == "http://e1/v3/watch"
    assert body["create_request"] == {
        "key": base64.b64encode(b"/p/").decode(), "range_end": base64.b64encode(b"/p0").decode(),
        "start_revision": 11, "progress_notify": True}


def test_a_message_cut_across_reads_is_delivered_whole_and_in_order():
    h = Harness()
    stream = h.agent.answer()
    stream.send(created(12), events(12, put("/p/spec/a", "x" * 300, 11), delete("/p/status/a", 12)),
                cut=150)
    assert h.batches == [[KeyEvent(b"/p/spec/a", b"x" * 300, 11), KeyEvent(b"/p/status/a", None, 12)]]
    assert h.watch.connected and h.watch.last_revision == 12


def test_after_a_lost_stream_it_resumes_from_the_next_revision_with_backoff():
    h = Harness(after=10, endpoints=("http://e1", "http://e2"))
    stream = h.agent.answer()
    stream.send(created(11), events(11, put("/p/spec/a", "1", 11)))
    stream.end()
    assert not h.watch.connected and h.reconnects == 1
    assert len(h.agent.requests) == 1
    h.clock.advance(0.1)
    assert len(h.agent.requests) == 2
    assert h.agent.requests[1][0] == "http://e2/v3/watch"  # the next endpoint
    assert h.agent.start_revision() == 12
    # refused twice more: the delay doubles, endpoints alternate
    h.agent.refuse()
    h.clock.advance(0.19)
    assert len(h.agent.requests) == 2
    h.clock.advance(0.01)
    assert len(h.agent.requests) == 3 and h.agent.requests[2][0] == "http://e1/v3/watch"
    h.agent.refuse()
    h.clock.advance(0.4)
    assert len(h.agent.requests) == 4
    for _ in range(5):
        h.agent.refuse()
        h.clock.advance(1.0)  # capped at max_backoff
    assert len(h.agent.requests) == 9
    stream = h.agent.answer()
    stream.send(created(13), events(13, put("/p/spec/b", "2", 13)))
    assert [e.mod_revision for batch in h.batches for e in batch] == [11, 13]
    assert h.reconnects == 8 and h.lost == []
    # a success resets the backoff
    stream.end()
    h.clock.advance(0.1)
    assert len(h.agent.requests) == 10 and h.agent.start_revision() == 14


def test_duplicates_are_dropped_and_progress_notifications_advance_the_revision():
    h = Harness(after=10)
    stream = h.agent.answer()
    stream.send(created(20), events(11, put("/p/a", "1", 11)), events(11, put("/p/a", "1", 11)))
    assert len(h.batches) == 1
    stream.send({"result": header(25)})  # progress: nothing in the range up to 25
    assert h.watch.last_revision == 25
    stream.end()
    h.clock.advance(0.1)
    assert h.agent.start_revision() == 26


def test_compaction_calls_on_lost_once_and_stops():
    h = Harness(after=10)
    stream = h.agent.answer()
    stream.send(created(50), {"result": {**header(50), "canceled": True, "compact_revision": "40"}})
    assert len(h.lost) == 1 and isinstance(h.lost[0], Compacted)
    assert "compacted its history up to revision 40" in str(h.lost[0])
    assert stream.transport.stopped
    stream.end()
    h.clock.advance(10)
    assert len(h.agent.requests) == 1 and len(h.lost) == 1


def test_other_cancellations_and_a_store_going_back_in_time_are_gaps_too():
    h = Harness(after=10)
    h.agent.answer().send({"result": {**header(5), "canceled": True,
                                      "cancel_reason": "permission denied"}})
    assert isinstance(h.lost[0], WatchLost) and "permission denied" in str(h.lost[0])

    h = Harness(after=100)
    h.agent.answer().send(created(3))
    assert isinstance(h.lost[0], StoreReset)
    assert "went back from 100 to 3" in str(h.lost[0])


def test_a_stream_error_reconnects():
    h = Harness(after=10)
    stream = h.agent.answer()
    stream.send(created(10), {"error": {"grpc_code": 14, "message": "etcdserver: no leader"}})
    assert stream.transport.stopped
    stream.end()
    h.clock.advance(0.1)
    assert len(h.agent.requests) == 2 and h.lost == []


def test_cancel_stops_everything_and_never_calls_on_lost():
    h = Harness()
    h.agent.refuse()
    h.watch.cancel()
    h.clock.advance(10)
    assert len(h.agent.requests) == 1
    h = Harness()
    stream = h.agent.answer()
    stream.send(created(10))
    h.watch.cancel()
    h.watch.cancel()
    assert stream.transport.stopped
    stream.end()
    h.clock.advance(10)
    assert len(h.agent.requests) == 1 and h.lost == []


def test_a_consumer_error_does_not_end_the_watch():
    h = Harness()
    calls = []

    def broken(batch: list[KeyEvent]) -> None:
        calls.append(batch)
        raise RuntimeError("consumer bug")
    h.watch.on_events = broken
    stream = h.agent.answer()
    stream.send(created(10), events(11, put("/p/a", "1", 11)), events(12, put("/p/a", "2", 12)))
    assert len(calls) == 2 and h.watch.connected
    assert h.watch.last_revision == 12


@pytest.mark.parametrize("code", [404, 503])
def test_a_non_200_answer_is_retried(code):
    h = Harness()
    response = StreamResponse()
    response.code = code
    body: list = []

    def deliver(protocol: Any) -> None:
        protocol.makeConnection(StreamTransport())
        protocol.dataReceived(b"nope")
        protocol.connectionLost(Failure(ResponseDone()))
        body.append(True)
    response.deliverBody = deliver  # type: ignore[method-assign]
    h.agent.requests[-1][2].callback(response)
    assert body and h.reconnects == 1
    h.clock.advance(0.1)
    assert len(h.agent.requests) == 2
