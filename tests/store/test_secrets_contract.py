"""One contract for the secret store (store/secrets.py ``Secrets``): the etcd
``SecretStore`` on a real etcd and the ``MemorySecrets`` of a node on a ``MemoryStore``,
as /system/secrets and the providers use them: round trips, refusals, revisions that
move with a value, a value sealed at rest, another node's key refused, two nodes over
one store seeing each other's secrets.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from cryptography.fernet import Fernet
from twisted.internet import reactor

from faastwist.store.base import StoreError, StoreUnavailable
from faastwist.store.etcd import EtcdStore
from faastwist.store.memory import MemoryStore
from faastwist.store.secrets import (
    MemorySecrets,
    SecretExists,
    SecretNotFound,
    Secrets,
    SecretStore,
    reveal_deferred,
)
from tests.store.test_secrets import raw_values
from tests.support.etcd import unique_prefix


class Variant:
    """Secret stores over one backend (``make(box)``: another node's view of it) and
    what the backend holds for a name (``sealed``)."""

    def __init__(self, kind: str, request: pytest.FixtureRequest) -> None:
        self.kind = kind
        self.stores: list[EtcdStore] = []
        if kind == "memory":
            self.memory = MemoryStore("ctl")
        else:
            self.server = request.getfixturevalue("etcd_server")
            self.prefix = unique_prefix("secrets")
        self.box = Fernet(Fernet.generate_key())

    async def make(self, box: Fernet | None = None) -> Secrets:
        box = box if box is not None else self.box
        if self.kind == "memory":
            return MemorySecrets(self.memory, box)
        store = EtcdStore(reactor, [self.server.client_url], self.prefix, "ctl", 5.0)
        await store.connect()
        self.stores.append(store)
        return SecretStore(store, box)

    def sealed(self, secrets: Any, name: str) -> bytes:
        if self.kind == "memory":
            return bytes(self.memory.secrets[name][0])
        return raw_values(self.server.client_url, secrets.base)[secrets.base + name.encode()]


@pytest.fixture(params=["memory", pytest.param("etcd", marks=pytest.mark.etcd)])
def variant(request: pytest.FixtureRequest):
    made = Variant(request.param, request)
    yield made
    for store in made.stores:
        pytest_twisted.blockon(store.close())


@pytest_twisted.ensureDeferred
async def test_secrets_round_trip_sealed_at_rest(variant) -> None:
    secrets = await variant.make()
    await secrets.create("db", b"hunter2")
    await secrets.create("api", b"k\x00\xff")
    assert await secrets.names() == ["api", "db"]
    assert await secrets.reveal(["db", "api", "db"]) == {"db": b"hunter2", "api": b"k\x00\xff"}
    assert await secrets.reveal([]) == {}
    sealed = variant.sealed(secrets, "db")
    assert b"hunter2" not in sealed and variant.box.decrypt(sealed) == b"hunter2"


@pytest_twisted.ensureDeferred
async def test_refusals_name_the_secret(variant) -> None:
    secrets = await variant.make()
    with pytest.raises(SecretNotFound) as missing:
        await secrets.replace("db", b"x")
    assert (str(missing.value), missing.value.name) == ("secret db not found", "db")
    with pytest.raises(SecretNotFound):
        await secrets.delete("db")
    await secrets.create("db", b"one")
    with pytest.raises(SecretExists) as exists:
        await secrets.create("db", b"two")
    assert (str(exists.value), exists.value.name) == (
        "secret db already exists; update it with PUT", "db")
    assert await secrets.reveal(["db"]) == {"db": b"one"}   # the refused create wrote nothing
    with pytest.raises(SecretNotFound, match="secret nope not found"):
        await secrets.reveal(["db", "nope"])
    await secrets.delete("db")
    assert await secrets.names() == [] and await secrets.revisions() == {}
    with pytest.raises(SecretNotFound):
        await secrets.reveal(["db"])


@pytest_twisted.ensureDeferred
async def test_a_replaced_value_has_a_newer_revision(variant) -> None:
    secrets = await variant.make()
    await secrets.create("db", b"one")
    await secrets.create("other", b"x")
    before = await secrets.revisions()
    await secrets.replace("db", b"two")
    after = await secrets.revisions()
    assert after["db"] > before["db"] and after["other"] == before["other"]
    value, revision = (await secrets.reveal_revisions(["db"]))["db"]
    assert (value, revision) == (b"two", after["db"])
    assert await reveal_deferred(secrets, ["db"], revisions=True) == {"db": (b"two", revision)}


@pytest_twisted.ensureDeferred
async def test_two_nodes_share_secrets_and_another_key_is_refused(variant) -> None:
    first = await variant.make()
    second = await variant.make()
    await first.create("db", b"hunter2")
    assert await second.names() == ["db"]
    assert await second.reveal(["db"]) == {"db": b"hunter2"}
    await second.replace("db", b"new")
    assert await first.reveal(["db"]) == {"db": b"new"}
    stranger = await variant.make(Fernet(Fernet.generate_key()))
    assert await stranger.names() == ["db"]   # names are not sealed
    with pytest.raises(StoreError) as sealed:
        await stranger.reveal(["db"])
    assert str(sealed.value) == ("secret db cannot be decrypted with this node's key "
                                 "(secrets.keyFile differs between nodes?)")


def test_an_unavailable_memory_store_fails_every_call() -> None:
    store = MemoryStore("ctl")
    secrets = MemorySecrets(store, Fernet(Fernet.generate_key()))
    store.available = False
    failures: list[Any] = []
    for call in (secrets.names(), secrets.create("db", b"x"), secrets.replace("db", b"x"),
                 secrets.delete("db"), secrets.revisions(), secrets.reveal(["db"])):
        call.addErrback(failures.append)
    assert len(failures) == 6 and all(f.check(StoreUnavailable) for f in failures)
    store.available = True
    assert store.secrets == {}
