"""Large lists on the admin API: written a step per reactor turn, in the bytes one
``json.dumps`` per function always gave, paused by the transport, stopped when the
client goes away, cut (never finished) when a piece cannot be made.

Requests go through a real Site and HTTPChannel on a StringTransport; time is a
task.Clock whose turns run as a reactor runs them (tests/support/turns.py).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
import yaml
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

import faastwist.admin.api as api_module
from faastwist.admin.api import AdminAPI
from faastwist.admin.codec import record_document
from faastwist.admin.listbody import STEP, LineCache
from faastwist.model.fsm import FunctionStatus
from faastwist.model.spec import FunctionSpec
from faastwist.store.base import FunctionRecord
from faastwist.store.memory import MemoryStore
from faastwist.util.slices import Slicer
from tests.support.turns import turn

CONTROLLER = "faascontroller"
PATH = f"/apis/v2/faas/{CONTROLLER}"
COUNT = api_module.STREAM_THRESHOLD + 5 * STEP + 3


def filled(count: int = COUNT) -> MemoryStore:
    store = MemoryStore(CONTROLLER)
    for i in reversed(range(count)):
        spec = FunctionSpec.from_dict({"name": f"f{i:04d}", "image": "example/f"})
        store.create(spec, FunctionStatus.initial(spec.name, 1.7e9))
    return store


def records_of(store: MemoryStore) -> list[FunctionRecord]:
    listing = store.list()
    found: list[Any] = []
    listing.addCallback(found.append)
    return [found[0].records[name] for name in sorted(found[0].records)]


class Client:
    """One connection to ``api``'s Site; ``get`` sends a request, ``turn`` runs one."""

    def __init__(self, api: AdminAPI, clock: Clock) -> None:
        self.clock = clock
        self.channel = api.site().buildProtocol(None)
        self.transport = StringTransport()
        self.channel.makeConnection(self.transport)

    def get(self, path: str, accept: str = "application/json") -> None:
        self.channel.dataReceived(f"GET {path} HTTP/1.1\r\nHost: admin\r\nAccept: {accept}"
                                  f"\r\n\r\n".encode())

    def turn(self) -> None:
        turn(self.clock)

    def response(self) -> tuple[bytes, bytes, bool]:
        """(head, body so far, complete) of the chunked response written so far."""
        head, _, rest = self.transport.value().partition(b"\r\n\r\n")
        if not head:
            return b"", b"", False
        assert b"transfer-encoding: chunked" in head.lower(), head
        assert b"content-length" not in head.lower()
        body = b""
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                return head, body, True
            body, rest = body + rest[:size], rest[size + 2:]
        return head, body, False

    def run_to_the_end(self, limit: int = 10_000) -> tuple[bytes, bytes, int]:
        """Turns until the response is complete: (head, body, turns it took)."""
        turns = 0
        while not self.response()[2]:
            assert turns < limit, "the response never finished"
            self.turn()
            turns += 1
        head, body, _ = self.response()
        return head, body, turns


def expected_lines(records: list[FunctionRecord], **extra: Any) -> str:
    return ",\n".join(json.dumps(dict(record_document(r), **extra)) for r in records)


def test_an_unchanged_list_is_not_encoded_again_and_a_change_costs_its_function(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import attrs

    import faastwist.admin.listbody as listbody

    encoded: list[str] = []
    document = listbody.record_document

    def counted(record: FunctionRecord) -> dict:
        encoded.append(record.name)
        return document(record)
    monkeypatch.setattr(listbody, "record_document", counted)
    records = {r.name: attrs.evolve(r, spec_revision=i + 1, status_revision=i + 1)
               for i, r in enumerate(records_of(filled(3 * STEP + 5)))}
    names = sorted(records)
    cache = LineCache()

    def body() -> bytes:
        return b"".join(listbody.list_pieces(records, names, cache))
    first = body()
    assert first == ("[\n" + expected_lines([records[n] for n in names]) + "\n]\n").encode()
    assert sorted(encoded) == names
    encoded.clear()
    assert body() == first and encoded == []         # the same records: no encoding
    name = names[STEP + 3]                           # a new status: only it is encoded
    records[name] = attrs.evolve(records[name], status_revision=999,
                                 status=attrs.evolve(records[name].status, message="moved"))
    records[names[0]] = attrs.evolve(records[names[0]])   # a copy: known by its revisions
    changed = body()
    assert encoded == [name]
    assert changed == ("[\n" + expected_lines([records[n] for n in names]) + "\n]\n").encode()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.mark.parametrize("accept, content_type", [("application/json", b"application/json"),
                                                  ("application/yaml", b"application/yaml")])
def test_a_large_list_takes_a_step_per_turn_and_keeps_its_bytes(
        clock: Clock, accept: str, content_type: bytes) -> None:
    store = filled()
    api = AdminAPI(store, CONTROLLER, lambda s: None, lambda n: None, clock,
                   slicer=Slicer(clock, budget=0))
    client = Client(api, clock)
    client.get(PATH, accept)
    assert client.transport.value() == b""        # nothing is encoded in the request's turn
    head, body, turns = client.run_to_the_end()
    assert turns >= COUNT // STEP                  # a step (STEP functions) per turn
    assert b"200 OK" in head.split(b"\r\n")[0]
    assert f"content-type: {content_type.decode()}".encode() in head.lower()
    assert body == ("[\n" + expected_lines(records_of(store)) + "\n]\n").encode()
    assert yaml.safe_load(body) == json.loads(body)   # flow style: JSON is YAML


def test_a_large_page_is_items_and_metadata_in_the_same_form(clock: Clock) -> None:
    store = filled()
    api = AdminAPI(store, CONTROLLER, lambda s: None, lambda n: None, clock,
                   slicer=Slicer(clock, budget=0))
    client = Client(api, clock)
    client.get(PATH + "?limit=1000")
    _, body, _ = client.run_to_the_end()
    metadata = {"continue": "", "remainingItemCount": 0,
                "resourceVersion": str(json.loads(body)["metadata"]["resourceVersion"])}
    assert body == ('{"items": [\n' + expected_lines(records_of(store)) + '\n], "metadata": '
                    + json.dumps(metadata) + "}\n").encode()


def test_a_stale_large_list_is_marked_and_written_the_same_way(clock: Clock) -> None:
    store = filled()
    cached = {r.name: FunctionRecord(r.spec, r.status) for r in records_of(store)}
    api = AdminAPI(store, CONTROLLER, lambda s: None, lambda n: None, clock,
                   cache=lambda: cached, slicer=Slicer(clock, budget=0))
    store.available = False                          # no quorum: the watch cache answers
    client = Client(api, clock)
    client.get(PATH, "application/yaml")
    head, body, turns = client.run_to_the_end()
    assert b"x-faas-stale: true" in head.lower() and turns >= COUNT // STEP
    ordered = [cached[name] for name in sorted(cached)]
    assert body == ("[\n" + expected_lines(ordered, stale=True) + "\n]\n").encode()


def test_the_transports_back_pressure_pauses_the_work(clock: Clock) -> None:
    api = AdminAPI(filled(), CONTROLLER, lambda s: None, lambda n: None, clock,
                   slicer=Slicer(clock, budget=0))
    client = Client(api, clock)
    client.get(PATH)
    for _ in range(3):
        client.turn()
    client.transport.producer.pauseProducing()       # what a full transport buffer does
    written = client.transport.value()
    for _ in range(20):
        client.turn()
    assert client.transport.value() == written      # paused: nothing more encoded
    client.transport.producer.resumeProducing()
    _, body, _ = client.run_to_the_end()
    assert len(json.loads(body)) == COUNT


def test_a_client_that_goes_away_stops_the_work(clock: Clock,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    encoded: list[str] = []
    line = LineCache.line

    def counted(self: LineCache, record: FunctionRecord, stale: bool = False) -> str:
        encoded.append(record.name)
        return line(self, record, stale)
    monkeypatch.setattr(LineCache, "line", counted)
    api = AdminAPI(filled(), CONTROLLER, lambda s: None, lambda n: None, clock,
                   slicer=Slicer(clock, budget=0))
    client = Client(api, clock)
    client.get(PATH)
    for _ in range(4):
        client.turn()
    assert 0 < len(encoded) < COUNT
    client.channel.connectionLost(Failure(ConnectionDone()))
    so_far = len(encoded)
    for _ in range(COUNT):
        client.turn()
    assert len(encoded) == so_far                  # no more functions encoded
    assert not client.response()[2]
    assert clock.getDelayedCalls() == []           # and nothing left scheduled


def test_a_piece_that_cannot_be_made_cuts_the_response(clock: Clock,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    line = LineCache.line

    def failing(self: LineCache, record: FunctionRecord, stale: bool = False) -> str:
        calls.append(record.name)
        if len(calls) > 2 * STEP:
            raise ValueError("cannot encode")
        return line(self, record, stale)
    monkeypatch.setattr(LineCache, "line", failing)
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        api = AdminAPI(filled(), CONTROLLER, lambda s: None, lambda n: None, clock,
                       slicer=Slicer(clock, budget=0))
        client = Client(api, clock)
        client.get(PATH)
        for _ in range(10):
            client.turn()
        assert client.transport.disconnecting      # aborted, not finished
        client.channel.connectionLost(Failure(ConnectionDone()))
        for _ in range(3):
            client.turn()
    finally:
        globalLogPublisher.removeObserver(events)  # type: ignore[arg-type]
    assert not client.response()[2]                # the body has no end: the client knows
    failures = [e for e in events if e.get("log_failure") is not None]
    assert any("writing a list" in e["log_format"] and e["log_failure"].check(ValueError)
               for e in failures)
    assert all(e["log_failure"].check(ValueError) for e in failures)   # nothing else broke


def test_a_list_being_written_when_the_node_stops_is_cut(clock: Clock) -> None:
    api = AdminAPI(filled(), CONTROLLER, lambda s: None, lambda n: None, clock,
                   slicer=Slicer(clock, budget=0))
    client = Client(api, clock)
    client.get(PATH)
    for _ in range(3):
        client.turn()
    api.close()
    client.turn()
    assert client.transport.disconnecting          # aborted: the body has no end
    client.channel.connectionLost(Failure(ConnectionDone()))
    client.turn()
    assert not client.response()[2]


def test_lists_under_the_threshold_keep_their_content_length(clock: Clock) -> None:
    api = AdminAPI(filled(5), CONTROLLER, lambda s: None, lambda n: None, clock)
    client = Client(api, clock)
    client.get(PATH)
    head, _, body = client.transport.value().partition(b"\r\n\r\n")
    assert b"content-length: %d" % len(body) in head.lower()
    assert [item["spec"]["name"] for item in json.loads(body)] == [f"f{i:04d}" for i in range(5)]


@pytest_twisted.ensureDeferred
async def test_a_slow_full_list_is_not_stale_over_a_real_connection() -> None:
    """On the real reactor and a socket: a list slower than ``read_timeout`` is the
    store's (only the quick check decides staleness), and it arrives whole."""
    import treq
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    store = filled()
    api = AdminAPI(store, CONTROLLER, lambda s: None, lambda n: None, reactor,
                   cache=lambda: {}, read_timeout=0.2)
    listing = store.list

    def slow_list() -> Any:
        return deferLater(reactor, 0.6, listing)
    store.list = slow_list  # type: ignore[method-assign]
    port = reactor.listenTCP(0, api.site(), interface="127.0.0.1")
    try:
        url = f"http://127.0.0.1:{port.getHost().port}{PATH}"
        response = await treq.get(url, headers={"Accept": "application/json"})
        items = json.loads(await treq.content(response))
    finally:
        await port.stopListening()
        api.close()
    assert response.code == 200
    assert response.headers.getRawHeaders(api_module.STALE_HEADER) is None
    assert [item["spec"]["name"] for item in items] == [f"f{i:04d}" for i in range(COUNT)]
