"""One contract for the queue's JetStream interface: the in-memory fake
(faastwist/testing/jetstream.py) and the real adapter over a real nats-server answer the
same cases the same way, so the worker's and the service's Clock-driven tests on the
fake say something about the real queue.

Time passes on the fake's Clock and on the real clock alike; "nothing came" is always
shown by a pull request that ended at its expiry (the server's own positive event).
"""

from __future__ import annotations

import time
from typing import Any, Callable

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import deferLater

import json

from nats.errors import ConnectionClosedError, Error as NatsError, MaxPayloadError, MsgAlreadyAckdError
from nats.js.errors import APIError

from faastwist.queue.bridge import AsyncioBridge
from faastwist.queue.jetstream import JetStream, Names, StreamLimits, is_full
from faastwist.testing.jetstream import FakeBridge, FakeNats, ThreadlessClock, settle
from tests.support.nats import nats_server  # noqa: F401 (fixture)

ACK_WAIT = 1.0
EXPIRES = 0.5


class Env:
    """A connected JetStream of either kind, and how time passes for it."""

    fake = False

    def __init__(self) -> None:
        self.made: list[Any] = []

    async def client(self, controller: str = "ctl", max_bytes: int = -1,
                     status_ttl: float = 3600.0) -> Any:
        js = self.make(controller, max_bytes, status_ttl)
        self.made.append(js)
        await self.do(js.connect, 2.0)
        return js

    async def do(self, function: Callable[..., Any], *args: Any, horizon: float = 0.0) -> Any:
        """Run one interface coroutine; ``horizon``: the time it may take."""
        return await self.bridge.call(function, *args, timeout=horizon + 5.0)

    async def eventually(self, expected: Any, function: Callable[..., Any],
                         *args: Any) -> None:
        """An acknowledgement is not confirmed (queue/jetstream.py: ``ack``, not
        ``ack_sync``): the server applies it shortly after; ask until it shows."""
        for _ in range(250):
            got = await self.do(function, *args)
            if got == expected:
                return
            await self.pause(0.02)
        assert got == expected


class FakeEnv(Env):
    fake = True

    def __init__(self) -> None:
        super().__init__()
        self.clock = ThreadlessClock()
        self.bridge = FakeBridge(self.clock)
        self.bridge.startService()
        self.server = FakeNats(self.clock)

    def make(self, controller: str, max_bytes: int, status_ttl: float) -> Any:
        return self.server.client(["nats://fake"], Names(controller), status_ttl,
                                  limits=StreamLimits(max_bytes=max_bytes))

    async def do(self, function: Callable[..., Any], *args: Any, horizon: float = 0.0) -> Any:
        d = self.bridge.call(function, *args, timeout=horizon + 5.0)
        settle(self.clock)
        end = self.clock.seconds() + horizon + 5.0
        while not d.called and self.clock.seconds() < end:
            self.clock.advance(0.05)
            settle(self.clock)
        assert d.called, f"{function.__name__} did not finish on the fake's clock"
        return await d

    def now(self) -> float:
        return self.clock.seconds()

    async def pause(self, seconds: float) -> None:
        end = self.clock.seconds() + seconds
        while self.clock.seconds() < end:
            self.clock.advance(min(0.05, end - self.clock.seconds()))
            settle(self.clock)

    async def close(self) -> None:
        pass


class RealEnv(Env):
    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self.bridge = AsyncioBridge(reactor, 5.0)
        self.bridge.startService()

    def make(self, controller: str, max_bytes: int, status_ttl: float) -> Any:
        return JetStream([self.url], Names(controller), status_ttl,
                         limits=StreamLimits(max_bytes=max_bytes))

    def now(self) -> float:
        return time.monotonic()

    async def pause(self, seconds: float) -> None:
        await deferLater(reactor, seconds, lambda: None)

    async def close(self) -> None:
        for js in self.made:
            await self.bridge.call(js.close)
        await self.bridge.stopService()


@pytest.fixture(params=["fake", pytest.param("nats", marks=pytest.mark.nats)])
def env(request: pytest.FixtureRequest):
    made = FakeEnv() if request.param == "fake" else RealEnv(
        request.getfixturevalue("nats_server").url)
    yield made
    pytest_twisted.blockon(ensureDeferred(made.close()))


def headers(call_id: str, enqueued: float = 1700000000.5, dedup: bool = True) -> dict[str, str]:
    h = {"Faas-Call-Id": call_id, "Faas-Enqueued": repr(enqueued)}
    if dedup:
        h["Nats-Msg-Id"] = f"fn.{call_id}"
    return h


async def publish(env: Env, js: Any, call_id: str, function: str = "fn", body: bytes = b"x",
                  **kw: Any) -> int:
    return await env.do(js.publish, js.names.call_subject(function, call_id), body,
                        headers(call_id, **kw), 2.0)


async def bind(env: Env, js: Any, function: str = "fn", max_ack_pending: int = 10,
               ack_wait: float = ACK_WAIT) -> str:
    n = js.names
    await env.do(js.bind, function, n.calls, n.consumer(function), n.call_subject(function),
                 max_ack_pending, ack_wait)
    return function


async def pull(env: Env, js: Any, key: str, batch: int,
               expires: float = EXPIRES) -> list[Any]:
    got: list[Any] = []
    count = await env.do(js.pull, key, batch, expires, got.append, horizon=expires + 1)
    assert count == len(got)
    return got


def ids(messages: list[Any]) -> list[str]:
    return [m.headers["Faas-Call-Id"] for m in messages]


# -- publishing ------------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_a_message_id_seen_before_is_stored_once_and_answers_its_sequence(env) -> None:
    js = await env.client()
    first = await publish(env, js, "c1")
    second = await publish(env, js, "c2")
    assert second == first + 1
    assert await publish(env, js, "c1") == first  # the duplicate: the first one's sequence
    again = await publish(env, js, "c1", dedup=False)  # no id: a new message
    assert again == second + 1
    stored = await env.do(js.list_messages, js.names.calls, js.names.call_subject("fn"), 10)
    assert ids(stored) == ["c1", "c2", "c1"]
    assert [m.seq for m in stored] == [first, second, again]
    assert stored[0].data == b"x" and stored[0].subject == "faas.ctl.call.fn.c1"


@pytest_twisted.ensureDeferred
async def test_a_duplicate_is_dropped_even_after_the_first_was_acknowledged(env) -> None:
    js = await env.client()
    await publish(env, js, "c1")
    key = await bind(env, js)
    [msg] = await pull(env, js, key, 1)
    await env.do(js.ack, msg)
    await env.eventually({}, js.backlog, js.names.calls, js.names.call_subject("*"))
    await publish(env, js, "c1")
    assert await pull(env, js, key, 1) == []   # expired: nothing came
    assert await env.do(js.backlog, js.names.calls, js.names.call_subject("*")) == {}


@pytest_twisted.ensureDeferred
async def test_a_full_stream_refuses_new_messages_and_the_dead_drop_their_oldest(env) -> None:
    js = await env.client("small", max_bytes=2500)
    n = js.names
    assert await env.do(js.stream_limits, n.calls) == (2500, "new")
    assert await env.do(js.stream_limits, n.dead) == (2500, "old")
    body = b"b" * 1000
    await publish(env, js, "c1", body=body)
    await publish(env, js, "c2", body=body)
    with pytest.raises(Exception) as refused:
        await publish(env, js, "c3", body=body)
    assert is_full(refused.value)
    for call_id in ("d1", "d2", "d3"):
        await env.do(js.publish, n.dead_subject("fn", call_id), body, headers(call_id), 2.0)
    assert ids(await env.do(js.list_messages, n.dead, n.dead_subject("fn"), 10)) == ["d2", "d3"]


# -- sending without waiting (queue.publisher: acks on one inbox) -----------------------------

class Acks:
    """An ack inbox's callback: what came on its reply subjects, in order."""

    def __init__(self) -> None:
        self.got: dict[str, tuple[bytes, dict[str, str] | None]] = {}

    async def on_ack(self, msg: Any) -> None:
        self.got[msg.subject] = (msg.data, dict(msg.headers) if msg.headers else None)

    async def wait(self, env: Env, count: int) -> None:
        """Until ``count`` answers came (each send is answered: a positive event)."""
        for _ in range(250):
            if len(self.got) >= count:
                break
            await env.pause(0.02)
        assert len(self.got) == count


def answer(data: bytes) -> Any:
    """What queue.publisher makes of an answer: the sequence, or the error raised."""
    ack = json.loads(data)
    if ack.get("error"):
        try:
            APIError.from_error(ack["error"])
        except APIError as exc:
            return exc
    return int(ack["seq"])


@pytest_twisted.ensureDeferred
async def test_a_sent_message_is_acknowledged_on_its_reply_subject(env) -> None:
    js = await env.client()
    acks = Acks()
    prefix = await env.do(js.ack_inbox, acks.on_ack)
    n = js.names
    for token, call_id in (("1", "c1"), ("2", "c2"), ("3", "c1")):
        await env.do(js.send, n.call_subject("fn", call_id), b"x", headers(call_id),
                     prefix + token)
    await acks.wait(env, 3)
    first, second, again = (json.loads(acks.got[prefix + t][0]) for t in "123")
    assert {k: first[k] for k in ("stream", "seq")} == {"stream": n.calls, "seq": first["seq"]}
    assert second["seq"] == first["seq"] + 1 and not second.get("duplicate")
    assert again["seq"] == first["seq"] and again["duplicate"] is True   # stored once
    assert [answer(acks.got[prefix + t][0]) for t in "123"] == [
        first["seq"], first["seq"] + 1, first["seq"]]
    stored = await env.do(js.list_messages, n.calls, n.call_subject("fn"), 10)
    assert ids(stored) == ["c1", "c2"]


@pytest_twisted.ensureDeferred
async def test_a_full_stream_answers_a_sent_message_with_its_error(env) -> None:
    js = await env.client("small", max_bytes=2500)
    acks = Acks()
    prefix = await env.do(js.ack_inbox, acks.on_ack)
    body = b"b" * 1000
    for call_id in ("c1", "c2", "c3"):
        await env.do(js.send, js.names.call_subject("fn", call_id), body, headers(call_id),
                     prefix + call_id)
    await acks.wait(env, 3)
    results = [answer(acks.got[prefix + c][0]) for c in ("c1", "c2", "c3")]
    assert results[1] == results[0] + 1
    assert is_full(results[2]) and results[2].code == 503


@pytest_twisted.ensureDeferred
async def test_a_subject_no_stream_takes_is_answered_no_responders(env) -> None:
    js = await env.client()
    acks = Acks()
    prefix = await env.do(js.ack_inbox, acks.on_ack)
    await env.do(js.send, "faas.ctl.nowhere.c1", b"x", headers("c1"), prefix + "1")
    await acks.wait(env, 1)
    data, got = acks.got[prefix + "1"]
    assert data == b"" and got is not None and got.get("Status") == "503"


@pytest_twisted.ensureDeferred
async def test_acks_are_taken_by_a_coroutine_function_only(env) -> None:
    js = await env.client()
    with pytest.raises(NatsError):
        await env.do(js.ack_inbox, lambda msg: None)


@pytest_twisted.ensureDeferred
async def test_sending_on_a_closed_connection_or_too_large_a_body_fails_at_once(env) -> None:
    js = await env.client()
    acks = Acks()
    prefix = await env.do(js.ack_inbox, acks.on_ack)
    max_payload = await env.do(js.connect, 2.0)
    with pytest.raises(MaxPayloadError):
        await env.do(js.send, js.names.call_subject("fn", "big"), b"x" * (max_payload + 1),
                     headers("big"), prefix + "1")
    await env.do(js.close)
    with pytest.raises(ConnectionClosedError):
        await env.do(js.send, js.names.call_subject("fn", "c1"), b"x", headers("c1"),
                     prefix + "2")


# -- pull consumers --------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_a_pull_delivers_up_to_its_batch_and_ends_at_its_expiry(env) -> None:
    js = await env.client()
    for call_id in ("c1", "c2", "c3"):
        await publish(env, js, call_id)
    await publish(env, js, "o1", function="other")
    key = await bind(env, js, ack_wait=30.0)
    started = env.now()
    got = await pull(env, js, key, 2, expires=5.0)
    assert ids(got) == ["c1", "c2"]
    assert env.now() - started < 4.0   # a full batch ends the request at once
    assert [int(m.metadata.num_delivered) for m in got] == [1, 1]
    assert [m.subject for m in got] == ["faas.ctl.call.fn.c1", "faas.ctl.call.fn.c2"]
    assert ids(await pull(env, js, key, 5)) == ["c3"]  # ends at its expiry with one
    assert await pull(env, js, key, 5) == []
    assert await env.do(js.pull, "unbound", 5, EXPIRES, lambda m: None) == 0


@pytest_twisted.ensureDeferred
async def test_max_ack_pending_bounds_what_is_unacknowledged(env) -> None:
    js = await env.client()
    for index in range(5):
        await publish(env, js, f"c{index}")
    key = await bind(env, js, max_ack_pending=2, ack_wait=30.0)
    got = await pull(env, js, key, 5)
    assert ids(got) == ["c0", "c1"]
    assert await env.do(js.pending, js.names.calls, "call-fn") == (3, 2, 1700000000.5)
    assert await env.do(js.queued, "fn") == 5
    await env.do(js.ack, got[0])
    assert ids(await pull(env, js, key, 5)) == ["c2"]
    # a new setting for the consumer in use: more may run
    await bind(env, js, max_ack_pending=4, ack_wait=30.0)
    assert ids(await pull(env, js, key, 5)) == ["c3", "c4"]
    assert await env.do(js.pending, js.names.calls, "call-fn") == (0, 4, 1700000000.5)


@pytest_twisted.ensureDeferred
async def test_acknowledged_messages_leave_the_work_queue(env) -> None:
    js = await env.client()
    n = js.names
    for call_id in ("c1", "c2"):
        await publish(env, js, call_id)
    key = await bind(env, js)
    got = await pull(env, js, key, 2)
    await env.do(js.ack, got[0])
    with pytest.raises(MsgAlreadyAckdError):  # the client knows: nothing is sent
        await env.do(js.ack, got[0])
    await env.eventually({"faas.ctl.call.fn.c2": 1}, js.backlog, n.calls, n.call_subject("*"))
    assert await env.do(js.pending, n.calls, "call-fn") == (0, 1, 1700000000.5)
    await env.do(js.ack, got[1])
    await env.eventually((0, 0, None), js.pending, n.calls, "call-fn")
    assert await env.do(js.queued, "fn") == 0


@pytest_twisted.ensureDeferred
async def test_a_negative_acknowledgement_brings_the_message_back(env) -> None:
    js = await env.client()
    await publish(env, js, "c1")
    key = await bind(env, js, ack_wait=30.0)
    [first] = await pull(env, js, key, 1)
    await env.do(js.nak, first, 0)
    [again] = await pull(env, js, key, 1)
    assert ids([again]) == ["c1"] and int(again.metadata.num_delivered) == 2
    assert int(again.metadata.sequence.stream) == int(first.metadata.sequence.stream)
    # with a delay: not before it (the request expires empty), then again
    await env.do(js.nak, again, 1.5)
    assert await pull(env, js, key, 1, expires=0.5) == []
    [third] = await pull(env, js, key, 1, expires=3.0)
    assert int(third.metadata.num_delivered) == 3


@pytest_twisted.ensureDeferred
async def test_an_unacknowledged_message_comes_back_after_the_ack_wait(env) -> None:
    js = await env.client()
    await publish(env, js, "c1")
    key = await bind(env, js, ack_wait=ACK_WAIT)
    [first] = await pull(env, js, key, 1)
    started = env.now()
    [again] = await pull(env, js, key, 1, expires=ACK_WAIT + 2)
    assert env.now() - started >= ACK_WAIT * 0.8
    assert int(again.metadata.num_delivered) == 2


@pytest_twisted.ensureDeferred
async def test_in_progress_acknowledgements_keep_a_message(env) -> None:
    js = await env.client()
    await publish(env, js, "c1")
    await publish(env, js, "c2")
    key = await bind(env, js, max_ack_pending=1, ack_wait=ACK_WAIT)
    [msg] = await pull(env, js, key, 1)
    for _ in range(5):  # 2.5 ack waits, told every half
        assert await pull(env, js, key, 1, expires=ACK_WAIT / 2) == []
        await env.do(js.progress, msg)
    await env.do(js.ack, msg)
    [nxt] = await pull(env, js, key, 1)
    assert ids([nxt]) == ["c2"] and int(nxt.metadata.num_delivered) == 1


@pytest_twisted.ensureDeferred
async def test_consumers_are_listed_and_unbound(env) -> None:
    js = await env.client()
    n = js.names
    await publish(env, js, "c1")
    await publish(env, js, "c2", function="other")
    assert await env.do(js.queued, "fn") == 1   # no consumer yet: the stream's count
    await bind(env, js)
    await bind(env, js, "other")
    assert sorted(await env.do(js.consumer_names, n.calls)) == ["call-fn", "call-other"]
    await env.do(js.unbind, "other", n.calls, "call-other")
    await env.do(js.unbind, "other", n.calls, "call-other")  # gone already: fine
    assert await env.do(js.consumer_names, n.calls) == ["call-fn"]
    assert await env.do(js.pull, "other", 1, EXPIRES, lambda m: None) == 0
    assert await env.do(js.queued, "other") == 1


@pytest_twisted.ensureDeferred
async def test_published_calls_are_announced(env) -> None:
    js = await env.client()
    heard: list[str] = []
    await env.do(js.watch_calls, heard.append)
    await publish(env, js, "c1", function="alpha")
    await env.do(js.publish, js.names.callback_subject("beta", "c2"), b"", headers("c2"), 2.0)
    await publish(env, js, "c3", function="gamma")
    for _ in range(100):
        if len(heard) == 2:
            break
        await env.pause(0.02)
    assert heard == ["alpha", "gamma"]


# -- lookups ---------------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_lookups_of_stored_messages(env) -> None:
    js = await env.client()
    n = js.names
    assert await env.do(js.oldest, n.calls, n.call_subject("fn")) is None
    assert await env.do(js.last_message, n.calls, n.call_subject("fn", "c1")) is None
    await publish(env, js, "c1", enqueued=10.5)
    await publish(env, js, "c2", enqueued=20.5)
    await publish(env, js, "c1", enqueued=30.5, dedup=False)
    await publish(env, js, "o1", function="other", enqueued=5.5)
    assert await env.do(js.oldest, n.calls, n.call_subject("fn")) == 10.5
    last = await env.do(js.last_message, n.calls, n.call_subject("fn", "c1"))
    assert last.headers["Faas-Enqueued"] == "30.5" and last.time is not None
    assert ids(await env.do(js.list_messages, n.calls, n.call_subject("fn"), 2)) == ["c1", "c2"]
    assert await env.do(js.backlog, n.calls, n.call_subject("*")) == {
        "faas.ctl.call.fn.c1": 2, "faas.ctl.call.fn.c2": 1, "faas.ctl.call.other.o1": 1}
    await env.do(js.delete_message, n.calls, int(last.seq))
    await env.do(js.delete_message, n.calls, int(last.seq))  # gone already: fine
    assert ids(await env.do(js.list_messages, n.calls, n.call_subject(">"), 10)) == [
        "c1", "c2", "o1"]
    assert await env.do(js.purge, n.calls, n.call_subject("fn")) is True
    assert ids(await env.do(js.list_messages, n.calls, n.call_subject(">"), 10)) == ["o1"]


# -- status records --------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_status_records_are_kept_per_function_and_expire(env) -> None:
    js = await env.client("kv", status_ttl=1.0)
    assert await env.do(js.get_status, "fn", "c1") is None
    await env.do(js.put_status, "fn", "c1", {"state": "queued", "attempts": 0})
    await env.do(js.put_status, "fn", "c1", {"state": "running", "attempts": 1})
    assert await env.do(js.get_status, "fn", "c1") == {"state": "running", "attempts": 1}
    assert await env.do(js.get_status, "other", "c1") is None
    written = env.now()
    gone = None
    while gone is None and env.now() - written < 10.0:
        await env.pause(0.1)
        if await env.do(js.get_status, "fn", "c1") is None:
            gone = env.now() - written
    assert gone is not None and gone >= 0.9


@pytest_twisted.ensureDeferred
async def test_limits_of_streams_made_before_are_brought_to_the_configured_ones(env) -> None:
    first = await env.client("lim", max_bytes=-1)
    assert await env.do(first.stream_limits, first.names.calls) == (-1, "new")
    second = await env.client("lim", max_bytes=4096)
    assert await env.do(second.stream_limits, second.names.calls) == (4096, "new")
    assert await env.do(second.stream_limits, second.names.dead) == (4096, "old")
