"""The node's queue service on one Clock over the in-memory JetStream (held to the real
nats-server by test_jetstream_contract.py): accepting calls (dedupe, maxQueued 429,
full queue 507, 503 while NATS is away), what the admin API shows (status, dead
letters, retry, purge), the queue gauges, start-up against a server that is down or
has a small max_payload."""

from __future__ import annotations

import nats.errors
import pytest
from twisted.internet.defer import ensureDeferred

from faastwist.gate.asynccall import QueueFull, QueueUnavailable
from faastwist.model.fsm import State
from faastwist.queue.messages import Outcome, call_headers, outcome_headers
from faastwist.queue.service import METRICS_INTERVAL
from faastwist.testing.jetstream import FakeNats
from tests.support.queue import QueueNode


@pytest.fixture
def node() -> QueueNode:
    made = QueueNode(max_queued=3).start(attach=False)
    return made


def accepted(node: QueueNode, fn: str = "fn") -> float:
    return node.gate.counter("faastwist_async_accepted_total", {"function_name": fn})


def refused(node: QueueNode, reason: str, fn: str = "fn") -> float:
    return node.gate.counter("faastwist_async_refused_total",
                             {"function_name": fn, "reason": reason})


def dead_letter(node: QueueNode, call_id: str, fn: str = "fn", reason: str = "why",
                status: int = 503, attempts: int = 5) -> None:
    call = node.call(call_id, fn=fn, callback="http://hook.example/x")
    headers = call_headers(call, dedup=False)
    headers.update(outcome_headers(Outcome(status, attempts, 0.5, reason=reason)))
    node.wait(node.bridge.call(node.queue.js.publish, node.queue.names.dead_subject(fn, call_id),
                               call.body, headers, 1.0))


# -- accepting -----------------------------------------------------------------------------

def test_a_call_is_stored_once_per_call_id_and_function(node) -> None:
    first = node.submit("c1")
    assert node.submit("c1") == first          # the client re-sent it: stored once
    assert node.submit("c1", fn="other") == first + 1   # another function's call
    assert node.subjects("calls") == ["faas.ctl.call.fn.c1", "faas.ctl.call.other.c1"]
    [stored] = node.stored("calls")[:1]
    assert stored.data == b"hello" and stored.headers["Nats-Msg-Id"] == "fn.c1"
    assert accepted(node) == 2


def test_a_function_at_its_max_queued_is_refused_with_429(node) -> None:
    node.add("fn", maxQueued=2)
    node.submit("c1")
    node.submit("c2")
    with pytest.raises(QueueFull) as full:
        node.submit("c3")
    assert (full.value.code, full.value.retry_after) == (429, 1)
    assert full.value.message == ("function fn has 2 calls queued, its limit (maxQueued in "
                                  "its spec, else queue.maxQueued); try again later")
    assert refused(node, "function-full") == 1
    assert node.subjects("calls") == ["faas.ctl.call.fn.c1", "faas.ctl.call.fn.c2"]


def test_without_a_spec_limit_queue_max_queued_applies(node) -> None:
    for index in range(3):
        node.submit(f"c{index}", fn="nospec")
    with pytest.raises(QueueFull, match="function nospec has 3 calls queued"):
        node.submit("c3", fn="nospec")


def test_the_count_is_asked_from_the_server_once_for_calls_arriving_together(node) -> None:
    for index in range(2):   # stored by another node: this one only knows from the server
        node.wait(node.bridge.call(node.queue.js.publish, node.queue.names.call_subject(
            "fn", f"x{index}"), b"", {}, 1.0))
    results = [node.queue.submit(node.call(f"c{index}")) for index in range(3)]
    node.settle()
    assert node.bridge.calls.count("queued") == 1
    outcomes = []
    for d in results:
        d.addBoth(outcomes.append)
    assert isinstance(outcomes[0], int)
    assert [o.value.code for o in outcomes[1:]] == [429, 429]
    # a second later the count is asked again (others may have taken calls off)
    node.run_for(1.0)
    with pytest.raises(QueueFull):
        node.submit("c9")
    assert node.bridge.calls.count("queued") == 2


def test_a_count_that_cannot_be_asked_is_503(node) -> None:
    node.queue.js.queued = _failing  # type: ignore[method-assign]
    with pytest.raises(QueueUnavailable) as unavailable:
        node.submit("c1")
    assert str(unavailable.value) == "cannot count the queued calls: gone"


async def _failing(function: str) -> int:
    raise ConnectionError("gone")


def test_a_full_queue_is_507(node) -> None:
    small = QueueNode(max_bytes=2500).start(attach=False)
    small.submit("c1", body=b"b" * 1000)
    small.submit("c2", body=b"b" * 1000)
    with pytest.raises(QueueFull) as full:
        small.submit("c3", body=b"b" * 1000)
    assert (full.value.code, full.value.retry_after) == (507, 30)
    assert full.value.message == "the queue is full (queue.maxBytes); try again later"
    assert refused(small, "queue-full") == 1 and accepted(small) == 2


def test_while_nats_is_away_calls_are_refused_with_503(node) -> None:
    node.server.refusing["publish"] = lambda what: True
    with pytest.raises(QueueUnavailable) as unavailable:
        node.submit("c1")
    assert str(unavailable.value) == "nats: connection closed"
    del node.server.refusing["publish"]
    node.server.stop()
    with pytest.raises(QueueUnavailable) as unavailable:
        node.submit("c2")
    assert str(unavailable.value) == "NATS is not connected"
    with pytest.raises(QueueUnavailable) as unavailable:
        node.status("fn", "c1")
    assert str(unavailable.value) == "NATS is not connected"
    node.server.start()
    node.submit("c3")
    assert accepted(node) == 1


def test_callback_urls_are_checked_at_accept_time(node) -> None:
    with pytest.raises(ValueError, match="X-Callback-Url: .*admin"):
        node.queue.check_callback("http://127.0.0.1:2381/x")
    with pytest.raises(ValueError, match="metadata"):
        node.queue.check_callback("http://169.254.169.254/latest")
    node.queue.check_callback("http://hook.example/x")  # a name: checked when sent


# -- what the admin API shows --------------------------------------------------------------

def test_status_of_a_call_queued_recorded_dead_or_unknown(node) -> None:
    node.clock.advance(1000)
    node.submit("c1", enqueued=990.0)
    queued = node.status("fn", "c1")
    assert (queued["state"], queued["callId"], queued["enqueued"], queued["updated"]) == (
        "queued", "c1", 990.0, 1000.0)
    assert node.status("other", "c1") is None and node.status("fn", "nope") is None
    node.wait(node.bridge.call(node.queue.js.put_status, "fn", "c1",
                               {"callId": "c1", "function": "fn", "state": "running"}))
    assert node.status("fn", "c1")["state"] == "running"
    # a record under the key that names another function is not this call's
    node.wait(node.bridge.call(node.queue.js.put_status, "fn", "c2",
                               {"callId": "c2", "function": "other", "state": "running"}))
    assert node.status("fn", "c2") is None
    dead_letter(node, "c3", reason="no attempts left (5 of 5)")
    dead = node.status("fn", "c3")
    assert (dead["state"], dead["reason"], dead["attempts"], dead["lastStatus"]) == (
        "dead", "no attempts left (5 of 5)", 5, 503)
    assert dead["deadAt"] == 1000.0 and dead["callbackUrl"] == "http://hook.example/x"
    # a record saying dead gets the dead letter's details
    node.wait(node.bridge.call(node.queue.js.put_status, "fn", "c3",
                               {"callId": "c3", "function": "fn", "state": "dead"}))
    assert node.status("fn", "c3")["reason"] == "no attempts left (5 of 5)"


def test_dead_letters_are_listed_retried_and_purged(node) -> None:
    node.clock.advance(50)
    for call_id in ("d1", "d2", "d3"):
        dead_letter(node, call_id)
    dead_letter(node, "o1", fn="other")
    node.wait(node.bridge.call(node.queue.js.publish, node.queue.names.dead_subject("fn", "junk"),
                               b"", {}, 1.0))
    listed = node.wait(ensureDeferred(node.queue.dead_letters("fn")))
    assert [e["callId"] for e in listed] == ["d1", "d2", "d3"]    # the unreadable one left out
    assert [e["callId"] for e in node.wait(ensureDeferred(
        node.queue.dead_letters("fn", limit=2)))] == ["d1", "d2"]
    record = node.wait(ensureDeferred(node.queue.retry("fn", "d2")))
    assert (record["state"], record["attempts"], record["retried"]) == ("queued", 0, True)
    assert "reason" not in record and "lastStatus" not in record
    assert node.record("fn", "d2") == record
    assert node.subjects("calls") == ["faas.ctl.call.fn.d2"]
    assert "Nats-Msg-Id" not in node.stored("calls")[0].headers  # a new call, not a duplicate
    assert [e["callId"] for e in node.wait(ensureDeferred(node.queue.dead_letters("fn")))] == [
        "d1", "d3"]
    assert node.wait(ensureDeferred(node.queue.retry("fn", "d2"))) is None
    node.wait(ensureDeferred(node.queue.purge("fn")))
    assert node.subjects("dead") == ["faas.ctl.dead.other.o1"]


# -- gauges --------------------------------------------------------------------------------

def test_the_gauges_show_the_backlog_and_the_oldest_call(node) -> None:
    node.clock.advance(100)
    node.queue.attach(node.gate.context)
    node.queue.worker.stop()    # the calls stay queued
    node.submit("c1", enqueued=70.0)
    node.submit("c2", enqueued=90.0)
    node.submit("o1", fn="other", enqueued=95.0)
    node.run_for(METRICS_INTERVAL + 0.1)
    gauge = node.gate.metrics.registry.get_sample_value
    assert gauge("faastwist_async_queued", {"function_name": "fn"}) == 2
    assert gauge("faastwist_async_oldest_seconds", {"function_name": "fn"}) == pytest.approx(35.0, abs=0.1)
    assert gauge("faastwist_async_queued", {"function_name": "other"}) == 1
    node.wait(ensureDeferred(node.queue.purge("fn")))   # (the dead letters: no change)
    node.wait(node.bridge.call(node.queue.js.purge, node.queue.names.calls,
                               node.queue.names.call_subject("fn")))
    node.run_for(METRICS_INTERVAL)
    assert gauge("faastwist_async_queued", {"function_name": "fn"}) == 0
    assert gauge("faastwist_async_oldest_seconds", {"function_name": "fn"}) == 0
    assert gauge("faastwist_async_queued", {"function_name": "other"}) == 1
    node.queue.stop_worker()
    node.run_for(METRICS_INTERVAL * 2)
    assert not node.queue._meter.running


# -- start and stop ------------------------------------------------------------------------

def test_a_small_max_payload_lowers_the_body_limit() -> None:
    node = QueueNode(max_body_size=2**20)
    node.server.max_payload = 512 * 1024
    node.start(attach=False)
    assert node.queue.max_body_size == 384 * 1024
    roomy = QueueNode(max_body_size=2**20)
    roomy.server.max_payload = 8 * 2**20
    roomy.start(attach=False)
    assert roomy.queue.max_body_size == 2**20


def test_an_external_nats_down_at_start_is_waited_for() -> None:
    node = QueueNode()
    node.server.stop()
    node.start()                      # the node starts anyway
    assert not node.queue.js.connected and not node.worker.running
    with pytest.raises(QueueUnavailable):
        node.submit("c1")
    node.run_for(5.0)
    node.server.start()
    node.run_for(2.5)                 # the next try (every 2 s) connects
    assert node.queue.js.connected and node.worker.running
    node.add("fn")
    node.submit("c1", target="/status/200")
    node.run_for(1.0)
    assert node.record("fn", "c1")["state"] == "succeeded"


def test_stop_closes_the_connection_and_the_bridge(node) -> None:
    js = node.queue.js
    node.wait(ensureDeferred(node.queue.stop()))
    assert node.queue.js is None and js.closed and not node.bridge.running
    with pytest.raises(QueueUnavailable):
        node.submit("c1")


def test_a_shared_server_serves_two_nodes() -> None:
    server_node = QueueNode().start()
    other = QueueNode(server=server_node.server, gate=server_node.gate).start(attach=False)
    server_node.add("fn", state=State.ACTIVE)
    other.submit("c1", fn="fn")   # the other node's call wakes this node's loop
    server_node.run_for(1.0)
    assert server_node.record("fn", "c1")["state"] == "succeeded"
    assert isinstance(server_node.server, FakeNats)


# -- the callback rules the service builds -------------------------------------------------

def test_local_addresses_are_what_the_host_name_resolves_to(monkeypatch) -> None:
    import socket

    from faastwist.queue import service

    expected = {str(info[4][0]) for info in socket.getaddrinfo(socket.gethostname(), None)}
    assert service.local_addresses() == frozenset(expected)

    def unresolvable(*args):
        raise socket.gaierror(socket.EAI_NONAME, "unknown")
    monkeypatch.setattr(service.socket, "getaddrinfo", unresolvable)
    assert service.local_addresses() == frozenset()


def test_callback_allow_and_the_node_s_ports_make_the_rules() -> None:
    node = QueueNode(callback_allow=("127.0.0.0/8",)).start(attach=False)
    node.queue.check_callback("http://127.0.0.1:8080/x")       # allowed by the list
    with pytest.raises(ValueError, match="own admin"):
        node.queue.check_callback("http://127.0.0.1:2381/x")   # the node's port: never
    with pytest.raises(ValueError, match="not in queue.callbackAllow"):
        node.queue.check_callback("http://203.0.113.9/x")
    assert node.queue.sender is node.receiver


class Embedded:
    """What the service asks of the embedded nats-server (queue/embedded.py)."""

    def __init__(self, ports: tuple[int, ...], fails: bool = False) -> None:
        self.ports = ports
        self.token = "the-token"
        self.fails = fails

    async def ready(self) -> str:
        return "nats://127.0.0.1:4222"


def test_the_embedded_server_s_url_token_and_ports() -> None:
    node = QueueNode()
    node.wait(ensureDeferred(node.queue.start(Embedded((4222, 8222, 0)))))
    js = node.queue.js
    assert (js.urls, js.token) == (["nats://127.0.0.1:4222"], "the-token")
    assert js.limits.max_bytes == node.config.max_bytes
    assert js.status_ttl == node.config.status_ttl
    # its ports are the node's own: no callback may reach them on this host
    for port in (4222, 8222, 2381):
        with pytest.raises(ValueError, match="own admin, etcd or NATS port"):
            node.queue.check_callback(f"http://127.0.0.1:{port}/x")
    assert node.queue.sender.rules is node.queue.rules
    assert node.queue.rules.node_ports == frozenset({4222, 8222, 2381})


def test_an_embedded_server_that_cannot_be_reached_stops_the_start() -> None:
    node = QueueNode()
    node.server.stop()
    # the fake client raises what nats-py does for a server that is gone
    with pytest.raises(nats.errors.ConnectionClosedError):
        node.wait(ensureDeferred(node.queue.start(Embedded((4222,)))))


def test_max_payload_leaves_128_kib_for_headers() -> None:
    exact = QueueNode(max_body_size=2**20)
    exact.server.max_payload = 2**20 + 128 * 1024
    exact.start(attach=False)
    assert exact.queue.max_body_size == 2**20
    tiny = QueueNode(max_body_size=2**20)
    tiny.server.max_payload = 64 * 1024
    tiny.start(attach=False)
    assert tiny.queue.max_body_size == 0


def test_the_connection_is_tried_again_every_two_seconds() -> None:
    node = QueueNode()
    node.server.stop()
    node.start()
    tries = node.bridge.calls.count("connect")
    node.run_for(1.9)
    assert node.bridge.calls.count("connect") == tries
    node.run_for(0.2)
    assert node.bridge.calls.count("connect") == tries + 1
    node.run_for(2.0)
    assert node.bridge.calls.count("connect") == tries + 2


def test_connection_changes_are_logged_on_the_reactor_thread(node) -> None:
    from twisted.logger import globalLogPublisher

    seen: list[dict] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        node.server.stop()
        node.server.start()
        node.settle()
    finally:
        globalLogPublisher.removeObserver(seen.append)
    states = [e.get("state") for e in seen if e.get("log_format") == "NATS connection {state}"]
    assert states == ["disconnected", "connected"]


def test_counts_not_asked_for_a_minute_are_forgotten(node) -> None:
    node.queue.attach(node.gate.context)
    node.submit("c1", fn="a")
    assert "a" in node.queue.counts._counts
    node.run_for(METRICS_INTERVAL + 0.5)
    assert "a" in node.queue.counts._counts    # measured, but not a minute old
    node.run_for(METRICS_INTERVAL * 11)
    assert "a" not in node.queue.counts._counts


def test_a_stale_count_is_asked_again_and_the_function_s_limit_holds(node) -> None:
    node.add("fn", maxQueued=1)
    node.submit("c1")
    with pytest.raises(QueueFull):
        node.submit("c2")
    # the call is taken off the queue by a worker elsewhere: a second later it is known
    node.wait(node.bridge.call(node.queue.js.purge, node.queue.names.calls,
                               node.queue.names.call_subject("fn")))
    node.run_for(0.5)
    with pytest.raises(QueueFull):
        node.submit("c3")          # the count is still fresh
    node.run_for(0.6)
    node.submit("c4")


def test_a_status_record_of_a_dead_call_keeps_its_fields(node) -> None:
    dead_letter(node, "c1", reason="gone", status=0, attempts=0)
    entry = node.status("fn", "c1")
    assert "lastStatus" not in entry and entry["attempts"] == 0
    assert node.wait(ensureDeferred(node.queue.dead_letters("nope"))) == []



# -- before start, after stop --------------------------------------------------------------

def test_a_service_not_started_refuses_and_stops_cleanly() -> None:
    from faastwist.queue.callback import CallbackSender
    from faastwist.queue.service import QueueService

    node = QueueNode()
    queue = QueueService(node.config, "ctl", node.clock, node.gate.metrics, node.gate.routes,
                         {2381}, bridge=node.bridge, jetstream=node.server.client)
    assert isinstance(queue.sender, CallbackSender)
    assert (queue.sender.rules, queue.sender.timeout) == (queue.rules,
                                                          node.config.callback_timeout)
    failed: list = []
    queue.submit(node.call("c1")).addErrback(failed.append)
    assert failed[0].check(QueueUnavailable)
    with pytest.raises(QueueUnavailable):
        node.wait(ensureDeferred(queue.status("fn", "c1")))
    queue.stop_worker()   # nothing attached: nothing to stop
    assert node.wait(queue._measure()) is None   # no connection: nothing measured


def test_attach_makes_the_gate_accept_through_the_queue_and_starts_the_meter_later() -> None:
    node = QueueNode().start(attach=False)
    backlog = node.bridge.calls.count("backlog")
    node.queue.attach(node.gate.context)
    node.settle()
    assert node.gate.context.queue is node.queue
    assert node.bridge.calls.count("backlog") == backlog + 1   # the worker's sweep only
    node.run_for(METRICS_INTERVAL + 0.1)
    assert node.bridge.calls.count("backlog") == backlog + 3   # then the meter's too
    node.queue.stop_worker()
    assert not node.queue.worker.running and not node.queue._meter.running


def test_an_external_nats_back_before_attach_is_not_an_error() -> None:
    from twisted.logger import globalLogPublisher

    seen: list[dict] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        node = QueueNode()
        node.server.stop()
        node.start(attach=False)
        node.server.start()
        node.run_for(2.5)
        assert node.queue.js.connected and node.queue.js.token is None
    finally:
        globalLogPublisher.removeObserver(seen.append)
    assert [e for e in seen if e.get("log_failure") is not None] == []
    node.queue.attach(node.gate.context)
    assert node.queue.worker.running


async def _hang(*args, **kwargs) -> None:
    from twisted.internet.defer import Deferred

    await Deferred()


def test_a_connect_that_hangs_is_given_up_after_three_timeouts() -> None:
    node = QueueNode(timeout=1.0)
    original = node.server.client

    def hanging(*args, **kwargs):
        js = original(*args, **kwargs)
        js.connect = _hang
        return js
    node.queue._jetstream = hanging
    d = ensureDeferred(node.queue.start())
    node.run_for(2.9)
    assert not d.called
    node.run_for(0.2)
    assert d.called      # external URLs: the node starts, the connection is tried later


def test_stop_gives_up_on_a_close_that_hangs_after_five_seconds(node) -> None:
    node.queue.js.close = _hang
    d = ensureDeferred(node.queue.stop())
    node.run_for(4.9)
    assert not d.called
    node.run_for(0.2)
    assert d.called and node.queue.js is None


def test_listing_dead_letters_is_bounded_in_time_and_count(node) -> None:
    node.clock.advance(10)
    for index in range(1001):
        dead_letter(node, f"d{index:04d}")
    listed = node.wait(ensureDeferred(node.queue.dead_letters("fn")))
    assert len(listed) == 1000 and listed[-1]["callId"] == "d0999"
    node.queue.js.list_messages = _hang
    d = ensureDeferred(node.queue.dead_letters("fn"))
    node.run_for(5.9)
    assert not d.called
    node.run_for(0.2)
    failures: list = []
    d.addErrback(failures.append)
    assert failures and "did not finish within 6s" in failures[0].getErrorMessage()


def test_the_oldest_gauge_is_exact_and_zero_without_an_enqueue_time(node) -> None:
    node.clock.advance(100)
    node.queue.attach(node.gate.context)
    node.queue.worker.stop()
    node.submit("c1", enqueued=104.5)        # half a second before the meter's first round
    node.wait(node.bridge.call(node.queue.js.publish, node.queue.names.call_subject("bare", "x"),
                               b"", {}, 1.0))
    node.run_for(METRICS_INTERVAL + 0.01)
    gauge = node.gate.metrics.registry.get_sample_value
    assert gauge("faastwist_async_oldest_seconds", {"function_name": "fn"}) == pytest.approx(
        0.5, abs=0.06)
    assert gauge("faastwist_async_oldest_seconds", {"function_name": "bare"}) == 0
    assert gauge("faastwist_async_queued", {"function_name": "bare"}) == 1
