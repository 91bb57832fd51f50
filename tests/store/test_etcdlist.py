"""EtcdStore.list after the first: only what changed since the last listing, against a
real etcd. Every listing is compared with a fresh store's full read at the same
revision, so a change the short read misses fails the test."""

from __future__ import annotations

import json
import math
import random

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock, deferLater

import faastwist.store.etcdlist as etcdlist_module
from faastwist.model.fsm import FunctionStatus, State
from faastwist.model.keys import KeyEntry, KeySet
from faastwist.model.spec import FunctionSpec
from faastwist.store.base import encode_spec, encode_status
from faastwist.store.etcd import EtcdStore
from faastwist.util.slices import Slicer
from tests.support.etcd import EtcdProcess, unique_prefix
from tests.support.turns import turn

pytestmark = pytest.mark.etcd

CONTROLLER = "faascontroller"


def spec(name: str, image: str = "registry.local/fn:1") -> FunctionSpec:
    return FunctionSpec(name=name, image=image, port=8080)


def status(name: str, state: State = State.INITIAL, message: str = "") -> FunctionStatus:
    return FunctionStatus(name=name, state=state, message=message, updated=1.0)


def keys(*ids: str) -> KeySet:
    return KeySet(tuple(KeyEntry(i, "0" * 64, "2026-01-01T00:00:00Z") for i in ids))


@pytest.fixture
def stores(etcd_server: EtcdProcess, monkeypatch: pytest.MonkeyPatch):
    """``(store, fresh)``: the store under test and a factory of stores that have never
    listed (their list reads everything); pages of 8 functions."""
    monkeypatch.setattr(etcdlist_module, "LIST_PAGE", 8)
    prefix = unique_prefix("list")
    made: list[EtcdStore] = []

    def make() -> EtcdStore:
        store = EtcdStore(reactor, [etcd_server.client_url], prefix, CONTROLLER, 10.0)
        made.append(store)
        return store
    yield make(), make
    for store in made:
        pytest_twisted.blockon(store.close())


@inlineCallbacks
def same_as_a_full_read(store: EtcdStore, make):
    """List with ``store`` and with a store that reads everything: the same listing."""
    listing = yield store.list()
    fresh = make()
    full = yield fresh.list()
    assert fresh.lists.full_reads == 1
    assert full.revision == listing.revision
    assert listing.records == full.records
    assert listing.keys == full.keys
    return listing


@pytest_twisted.inlineCallbacks
def test_lists_after_the_first_read_what_changed_and_agree_with_a_full_read(stores):
    store, make = stores
    for i in range(20):
        yield store.create(spec(f"f{i:02d}"), status(f"f{i:02d}"))
    yield store.put_keys("f03", keys("k1"), 0)
    first = yield same_as_a_full_read(store, make)
    assert store.lists.full_reads == 1 and len(first.records) == 20
    assert first.keys == {"f03": keys("k1")}

    again = yield same_as_a_full_read(store, make)           # nothing changed
    assert store.lists.full_reads == 1 and again.records == first.records

    # status-only, spec-only and both; new functions; keys added and changed
    f01 = first.records["f01"]
    yield store.update(f01, status=status("f01", State.ACTIVE))
    f02 = first.records["f02"]
    yield store.update(f02, spec=spec("f02", "registry.local/fn:2"))
    f04 = first.records["f04"]
    yield store.update(f04, spec=spec("f04", "registry.local/fn:3"),
                       status=status("f04", State.FAILED, "boom"))
    for name in ("a-new", "z-new"):
        yield store.create(spec(name), status(name))
    _, revision = yield store.get_keys("f03")
    yield store.put_keys("f03", keys("k1", "k2"), revision)
    yield store.put_keys("z-new", keys("k3"), 0)
    changed = yield same_as_a_full_read(store, make)
    assert store.lists.full_reads == 1                        # still only what changed
    assert changed.records["f01"].status.state is State.ACTIVE
    assert changed.records["f02"].spec.image == "registry.local/fn:2"
    assert changed.records["f04"].status.message == "boom"
    assert changed.keys == {"f03": keys("k1", "k2"), "z-new": keys("k3")}

    # a caller changing its listing does not change the next one
    changed.records.clear()
    changed.keys.clear()
    yield same_as_a_full_read(store, make)
    assert store.lists.full_reads == 1


@pytest_twisted.inlineCallbacks
def test_a_key_gone_since_the_last_listing_makes_the_next_read_everything(stores):
    store, make = stores
    for i in range(12):
        yield store.create(spec(f"f{i:02d}"), status(f"f{i:02d}"))
    listing = yield same_as_a_full_read(store, make)
    assert store.lists.full_reads == 1

    yield store.delete(listing.records["f05"])
    after_delete = yield same_as_a_full_read(store, make)
    assert "f05" not in after_delete.records and store.lists.full_reads == 2

    # deleted and created again under the same name: as many keys as before, but
    # the old ones are gone (their create revision is older than the listing)
    yield store.delete(after_delete.records["f06"])
    yield store.create(spec("f06", "registry.local/fn:9"), status("f06"))
    recreated = yield same_as_a_full_read(store, make)
    assert recreated.records["f06"].spec.image == "registry.local/fn:9"
    assert store.lists.full_reads == 3

    # a function deleted and another created: the count is the same as before
    yield store.delete(recreated.records["f07"])
    yield store.create(spec("f99"), status("f99"))
    yield same_as_a_full_read(store, make)
    assert store.lists.full_reads == 4

    # invocation keys deleted on their own (by hand)
    yield store.put_keys("f01", keys("k1"), 0)
    yield same_as_a_full_read(store, make)
    assert store.lists.full_reads == 4
    yield store.delete_key(store.key("keys", "f01"))
    no_keys = yield same_as_a_full_read(store, make)
    assert no_keys.keys == {} and store.lists.full_reads == 5


@pytest_twisted.inlineCallbacks
def test_keys_written_by_hand_and_more_than_a_page_of_changes(stores):
    store, make = stores
    for i in range(10):
        yield store.create(spec(f"f{i:02d}"), status(f"f{i:02d}"))
    yield same_as_a_full_read(store, make)

    # a spec without its status (written by hand): whether it has one was not read
    yield store.put(store.key("spec", "hand"), encode_spec(spec("hand")))
    hand = yield same_as_a_full_read(store, make)
    assert hand.records["hand"].status_revision == 0 and store.lists.full_reads == 2
    # its status written later: a status created since
    yield store.put(store.key("status", "hand"), encode_status(status("hand", State.ACTIVE)))
    repaired = yield same_as_a_full_read(store, make)
    assert repaired.records["hand"].status.state is State.ACTIVE
    assert store.lists.full_reads == 2
    # a status without a spec is no function, and is not counted as one
    yield store.put(store.key("status", "orphan"), encode_status(status("orphan")))
    orphan = yield same_as_a_full_read(store, make)
    assert "orphan" not in orphan.records and store.lists.full_reads == 2
    # unreadable keys: left out, as a full read leaves them out
    yield store.put(store.key("keys", "f02"), b"not json")
    yield same_as_a_full_read(store, make)
    assert store.lists.full_reads == 2

    # more changes than a page (8): read everything
    current = yield store.list()
    for name in sorted(current.records)[:9]:
        yield store.update(current.records[name],
                           status=status(name, State.ACTIVE, "moved"))
    yield same_as_a_full_read(store, make)
    assert store.lists.full_reads == 3


@pytest_twisted.inlineCallbacks
def test_random_changes_between_lists(stores):
    store, make = stores
    rng = random.Random(20261129)
    for i in range(16):
        yield store.create(spec(f"f{i:02d}"), status(f"f{i:02d}"))
    yield same_as_a_full_read(store, make)
    serial = 100
    for _ in range(25):
        current = yield store.list()
        names = sorted(current.records)
        for _ in range(rng.randint(1, 4)):
            serial += 1
            choice = rng.random()
            name = rng.choice(names)
            record = current.records[name]
            if choice < 0.3:
                current.records[name] = yield store.update(
                    record, status=status(name, rng.choice(list(State)), str(serial)))
            elif choice < 0.5:
                current.records[name] = yield store.update(
                    record, spec=spec(name, f"registry.local/fn:{serial}"))
            elif choice < 0.7:
                fresh_name = f"n{serial}"
                current.records[fresh_name] = yield store.create(spec(fresh_name),
                                                                 status(fresh_name))
                names.append(fresh_name)
            elif choice < 0.85:
                _, revision = yield store.get_keys(name)
                yield store.put_keys(name, keys(f"k{serial}"), revision)
            elif len(names) > 4:
                yield store.delete(record)
                names.remove(name)
                del current.records[name]
        yield same_as_a_full_read(store, make)
    # most lists read only what changed (a deletion makes the next one read all)
    assert store.lists.full_reads < 25


@pytest_twisted.inlineCallbacks
def test_records_are_decoded_a_step_per_turn_of_the_stores_slicer(etcd_server,
                                                                  monkeypatch):
    monkeypatch.setattr(etcdlist_module, "LIST_PAGE", 500)
    clock = Clock()
    prefix = unique_prefix("slices")
    writer = EtcdStore(reactor, [etcd_server.client_url], prefix, CONTROLLER, 10.0)
    store = EtcdStore(reactor, [etcd_server.client_url], prefix, CONTROLLER, 10.0,
                      slicer=Slicer(clock, budget=0))
    try:
        count = 3 * etcdlist_module.DECODE_STEP + 5
        ops = []
        for i in range(count):
            name = f"s{i:03d}"
            ops += [(writer.key("spec", name), encode_spec(spec(name))),
                    (writer.key("status", name), encode_status(status(name)))]
        yield writer.put_many(ops)
        done: list = []
        store.list().addBoth(done.append)
        turns = 0
        while not done:
            yield deferLater(reactor, 0.01, lambda: None)   # etcd answers on the reactor
            turns += turn(clock)
            assert turns < 100, "the list never finished"
        listing = done[0]
        assert sorted(listing.records) == [f"s{i:03d}" for i in range(count)]
        # one step per turn: the page's functions took several turns to decode
        assert turns >= math.ceil(count / etcdlist_module.DECODE_STEP)
        assert json.loads(encode_spec(listing.records["s000"].spec)) == spec("s000").to_dict()
    finally:
        yield writer.close()
        yield store.close()


@pytest_twisted.inlineCallbacks
def test_the_next_page_is_read_while_this_one_is_decoded(etcd_server,
                                                         monkeypatch):
    monkeypatch.setattr(etcdlist_module, "LIST_PAGE", 2 * etcdlist_module.DECODE_STEP)
    clock = Clock()
    prefix = unique_prefix("ahead")
    writer = EtcdStore(reactor, [etcd_server.client_url], prefix, CONTROLLER, 10.0)
    store = EtcdStore(reactor, [etcd_server.client_url], prefix, CONTROLLER, 10.0,
                      slicer=Slicer(clock, budget=0))
    events: list[str] = []
    txn, record = store.lists._txn, store.lists._record
    monkeypatch.setattr(store.lists, "_txn", lambda *a: (events.append("read"), txn(*a))[1])
    monkeypatch.setattr(store.lists, "_record",
                        lambda *a: (events.append("decoded"), record(*a))[1])
    try:
        count = 5 * etcdlist_module.DECODE_STEP
        for start in range(0, count, 32):   # etcd takes at most 128 operations a txn
            ops = []
            for i in range(start, min(start + 32, count)):
                name = f"a{i:03d}"
                ops += [(writer.key("spec", name), encode_spec(spec(name))),
                        (writer.key("status", name), encode_status(status(name)))]
            yield writer.put_many(ops)
        done: list = []
        store.list().addBoth(done.append)
        while not done:
            yield deferLater(reactor, 0.01, lambda: None)
            turn(clock)
        assert len(done[0].records) == count
        page = 2 * etcdlist_module.DECODE_STEP
        decoded = [i for i, e in enumerate(events) if e == "decoded"]
        reads = [i for i, e in enumerate(events) if e == "read"]
        pages = [decoded[k:k + page] for k in range(0, count, page)]
        assert len(pages) == 3 and len(reads) >= 3
        # each next page was asked for before this one's decoding ended
        for k in range(1, len(pages)):
            assert reads[k] < pages[k - 1][-1]
    finally:
        yield writer.close()
        yield store.close()
