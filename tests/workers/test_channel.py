"""The control channel: framing, bad lines, and request/reply calls with timeouts."""

from __future__ import annotations

import json

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from faastwist.workers.channel import (
    BadMessage,
    Calls,
    Channel,
    ChannelDown,
    decode,
    encode,
)
from tests.support.pipe import Pipe


def collecting(max_length: int = 1 << 20) -> tuple[Channel, list, list]:
    got: list = []
    lost: list = []
    channel = Channel(got.append, lost.append, max_length=max_length)
    channel.makeConnection(StringTransport())
    return channel, got, lost


def test_encode_is_one_compact_line_and_decodes_back() -> None:
    message = {"op": "counts", "counts": {"échos": {"s": 1}}}
    line = encode(message)
    assert line.endswith(b"\n") and line.count(b"\n") == 1 and b" " not in line
    assert line.startswith(b"{") and decode(line[:-1]) == message


@pytest.mark.parametrize("message, line", [
    ({"op": "acquire", "id": 7, "fn": "echo"}, b"A 7 echo"),
    ({"op": "reply", "id": 7, "lease": 3,
      "upstream": ["http", "127.0.0.1", 40001, "127.0.0.1:40001"]},
     b"L 7 3 http 127.0.0.1 40001 127.0.0.1:40001"),
    ({"op": "release", "lease": 3}, b"R 3"),
])
def test_the_per_request_messages_have_a_short_form(message: dict, line: bytes) -> None:
    assert encode(message) == line + b"\n"
    assert decode(line) == message


@pytest.mark.parametrize("message", [
    {"op": "acquire", "id": 7, "fn": "two words"},
    {"op": "acquire", "id": "7", "fn": "echo"},
    {"op": "reply", "id": 7, "message": "function echo is stopped", "retryAfter": 5},
    {"op": "reply", "id": 7, "lease": 3, "upstream": ["http", "::1", 1, "a b"]},
    {"op": "reply", "id": 7, "lease": True, "upstream": ["http", "::1", 1, "h"]},
    {"op": "release", "lease": 3, "extra": 1},
])
def test_other_shapes_go_as_json_and_come_back_the_same(message: dict) -> None:
    line = encode(message)
    assert line.startswith(b"{") and decode(line[:-1]) == message


@pytest.mark.parametrize("line", [b"not json", b"[1, 2]", b'{"id": 1}', b'{"op": 3}',
                                  b"\xff\xfe", b"", b"A x echo", b"A 1", b"A 1 ",
                                  b"L 1 2 http h", b"L 1 2 http h port hh", b"R", b"Z 1",
                                  b"R 1 2"])
def test_decode_refuses_what_is_not_a_message(line: bytes) -> None:
    with pytest.raises(BadMessage):
        decode(line)


def test_lines_split_and_joined_across_reads() -> None:
    channel, got, _ = collecting()
    data = encode({"op": "a", "n": 1}) + encode({"op": "b", "n": 2}) + encode({"op": "c"})
    for i in range(0, len(data), 3):  # three bytes at a time
        channel.dataReceived(data[i:i + 3])
    assert [m["op"] for m in got] == ["a", "b", "c"]
    channel.dataReceived(data)  # all at once
    assert [m["op"] for m in got] == ["a", "b", "c", "a", "b", "c"]


def test_a_bad_line_is_skipped_and_the_channel_stays_up() -> None:
    channel, got, lost = collecting()
    channel.dataReceived(b"garbage\n" + b'{"no": "op"}\n' + encode({"op": "ok"}))
    assert [m["op"] for m in got] == ["ok"]
    assert channel.bad_lines == 2 and channel.connected_ and lost == []


def test_a_handler_that_raises_does_not_stop_the_next_message() -> None:
    seen = []

    def handle(message):
        seen.append(message["op"])
        if message["op"] == "boom":
            raise RuntimeError("bug")

    channel = Channel(handle)
    channel.makeConnection(StringTransport())
    channel.dataReceived(encode({"op": "boom"}) + encode({"op": "next"}))
    assert seen == ["boom", "next"]


def test_a_line_past_the_limit_drops_the_connection() -> None:
    channel, got, _ = collecting(max_length=100)
    channel.dataReceived(encode({"op": "small"}))
    channel.dataReceived(b"x" * 101)  # no newline in sight: cannot resynchronise
    assert channel.transport.disconnecting or channel.transport.disconnected
    assert [m["op"] for m in got] == ["small"]


def test_a_large_line_arriving_in_pieces_is_read_once() -> None:
    channel, got, _ = collecting(max_length=8 << 20)
    line = encode({"op": "enqueue", "body": "a" * (4 << 20)})
    for i in range(0, len(line), 65536):
        channel.dataReceived(line[i:i + 65536])
    assert len(got) == 1 and len(got[0]["body"]) == 4 << 20


def test_send_reports_a_closed_channel() -> None:
    channel, _, lost = collecting()
    assert channel.send({"op": "x"})
    channel.connectionLost(None)
    assert not channel.send({"op": "y"})
    assert lost == ["closed"]
    assert json.loads(channel.transport.value()) == {"op": "x"}


class Calling:
    """A caller's Calls and an answering side joined by a Pipe."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.inbox: list = []
        self.caller = Channel(lambda m: self.calls.answer(m))
        self.other = Channel(self.inbox.append)
        self.calls = Calls(self.caller, self.clock)
        self.pipe = Pipe(self.caller, self.other)


def test_a_call_fires_with_its_reply_by_id() -> None:
    c = Calling()
    first = c.calls.call("acquire", 5.0, fn="a")
    second = c.calls.call("acquire", 5.0, fn="b")
    c.pipe.pump()
    assert [(m["op"], m["id"], m["fn"]) for m in c.inbox] == [("acquire", 1, "a"),
                                                                ("acquire", 2, "b")]
    got = []
    second.addCallback(got.append)
    first.addCallback(got.append)
    c.other.send({"op": "reply", "id": 2, "lease": 9})
    c.other.send({"op": "reply", "id": 1, "lease": 8})
    c.other.send({"op": "reply", "id": 99})  # unknown (late) id: ignored
    c.pipe.pump()
    assert [m["lease"] for m in got] == [9, 8]
    assert c.calls.pending == {}


def test_a_call_without_an_answer_times_out_and_says_cancel() -> None:
    c = Calling()
    failures = []
    c.calls.call("acquire", 3.0, fn="a").addErrback(failures.append)
    c.clock.advance(2.9)
    assert failures == []
    c.clock.advance(0.2)
    assert failures[0].check(ChannelDown) and "3s" in failures[0].getErrorMessage()
    c.pipe.pump()
    assert c.inbox[-1] == {"op": "cancel", "id": 1}
    c.other.send({"op": "reply", "id": 1, "lease": 1})  # too late: nobody waits
    c.pipe.pump()
    assert c.calls.pending == {}


def test_calls_fail_at_once_when_the_channel_is_down() -> None:
    c = Calling()
    failures = []
    c.calls.call("acquire", 30.0).addErrback(failures.append)
    c.pipe.close()
    c.calls.fail_all("closed")
    assert failures[0].check(ChannelDown)
    c.calls.call("acquire", 30.0).addErrback(failures.append)  # after: no wait at all
    assert len(failures) == 2 and failures[1].check(ChannelDown)
    assert c.clock.getDelayedCalls() == []


def test_cancelling_a_call_tells_the_other_side() -> None:
    c = Calling()
    d = c.calls.call("acquire", 30.0)
    d.addErrback(lambda f: None)
    d.cancel()
    c.pipe.pump()
    assert c.inbox[-1] == {"op": "cancel", "id": 1}
    assert c.calls.pending == {} and c.clock.getDelayedCalls() == []
