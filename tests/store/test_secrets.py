"""OpenFaaS secrets: the node key file (created 0600, refused when anyone but its owner
may read or write it) and the encrypted secret store against a real etcd (what a copy of
etcd shows: names and ciphertext only)."""

from __future__ import annotations

import base64
import json
import os
import stat
import urllib.request

import pytest
import pytest_twisted
from cryptography.fernet import Fernet
from twisted.internet import reactor

from faastwist.store.base import StoreError
from faastwist.store.etcd import EtcdStore
from faastwist.store.secrets import (
    KeyFileError,
    SecretExists,
    SecretNotFound,
    SecretStore,
    load_key,
    reveal_deferred,
)
from faastwist.store.secrets import MAX_SECRET_SIZE
from tests.support.etcd import unique_prefix


# -- the key file --------------------------------------------------------------------------

def test_a_missing_key_file_is_made_0600_with_its_folders(tmp_path) -> None:
    path = tmp_path / "deep" / "er" / "node.key"
    box = load_key(str(path))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = path.read_bytes()
    assert key.endswith(b"\n") and len(key.strip()) == 44
    # read back: the same key (what another start of the node, or another node, reads)
    again = load_key(str(path))
    assert again.decrypt(box.encrypt(b"s3cret")) == b"s3cret"
    assert path.read_bytes() == key


def test_a_new_key_file_is_0600_whatever_the_umask(tmp_path) -> None:
    old = os.umask(0)
    try:
        load_key(str(tmp_path / "node.key"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "node.key").stat().st_mode) == 0o600


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o644, 0o660, 0o610, 0o601],
                         ids=oct)
def test_a_key_file_others_may_read_or_write_is_refused(tmp_path, mode) -> None:
    path = tmp_path / "node.key"
    path.write_bytes(Fernet.generate_key() + b"\n")
    path.chmod(mode)
    with pytest.raises(KeyFileError) as refused:
        load_key(str(path))
    message = str(refused.value)
    assert message.startswith(f"secrets.keyFile: {path} is readable by others")
    assert f"(mode {mode:o})" in message and "chmod 600" in message


@pytest.mark.parametrize("mode", [0o600, 0o400], ids=oct)
def test_a_key_file_only_its_owner_may_read_is_accepted(tmp_path, mode) -> None:
    path = tmp_path / "node.key"
    key = Fernet.generate_key()
    path.write_bytes(key + b"\n")
    path.chmod(mode)
    assert load_key(str(path)).decrypt(Fernet(key).encrypt(b"x")) == b"x"


def test_a_key_file_that_is_not_a_key_names_the_key(tmp_path) -> None:
    path = tmp_path / "node.key"
    path.write_bytes(b"not a fernet key\n")
    path.chmod(0o600)
    with pytest.raises(KeyFileError) as refused:
        load_key(str(path))
    assert str(refused.value).startswith(f"secrets.keyFile: {path}: ")


def test_a_key_file_that_cannot_be_made_names_the_key(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(KeyFileError, match="secrets.keyFile: .*file/node.key"):
        load_key(str(blocker / "node.key"))


def test_without_a_secret_store_only_no_names_can_be_revealed() -> None:
    done: list = []
    reveal_deferred(None, []).addCallback(done.append)
    assert done == [{}]
    reveal_deferred(None, ["db"]).addErrback(done.append)
    assert done[1].check(StoreError)
    assert done[1].getErrorMessage() == "secrets are not available on this node"


# -- the store, against a real etcd --------------------------------------------------------

@pytest.fixture
def secrets(etcd_server, tmp_path):
    store = EtcdStore(reactor, [etcd_server.client_url], unique_prefix("secrets"), "ctl", 5.0)
    pytest_twisted.blockon(store.connect())
    path = tmp_path / "node.key"
    made = SecretStore(store, load_key(str(path)))
    made.etcd_url = etcd_server.client_url  # type: ignore[attr-defined]
    yield made
    pytest_twisted.blockon(store.close())


def raw_values(url: str, prefix: bytes) -> dict[bytes, bytes]:
    """Every key under ``prefix`` as etcd holds it (what a backup would show)."""
    end = prefix[:-1] + bytes([prefix[-1] + 1])
    body = json.dumps({"key": base64.b64encode(prefix).decode(),
                       "range_end": base64.b64encode(end).decode()}).encode()
    with urllib.request.urlopen(urllib.request.Request(f"{url}/v3/kv/range", body),
                                timeout=5) as answer:
        kvs = json.loads(answer.read()).get("kvs", [])
    return {base64.b64decode(kv["key"]): base64.b64decode(kv["value"]) for kv in kvs}


@pytest.mark.etcd
@pytest_twisted.ensureDeferred
async def test_secrets_are_sealed_in_etcd_and_revealed_by_name(secrets) -> None:
    await secrets.create("db", b"hunter2")
    await secrets.create("api", b"k\x00\xff")
    assert await secrets.names() == ["api", "db"]
    assert await secrets.reveal(["db", "api", "db"]) == {"db": b"hunter2", "api": b"k\x00\xff"}
    stored = raw_values(secrets.etcd_url, secrets.base)
    assert sorted(stored) == [secrets.base + b"api", secrets.base + b"db"]
    assert b"hunter2" not in stored[secrets.base + b"db"]   # ciphertext only
    assert secrets.box.decrypt(stored[secrets.base + b"db"]) == b"hunter2"
    assert secrets.base.endswith(b"/.secrets/ctl/")


@pytest.mark.etcd
@pytest_twisted.ensureDeferred
async def test_create_replace_delete_and_what_is_missing(secrets) -> None:
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
    first = (await secrets.revisions())["db"]
    await secrets.replace("db", b"two")
    assert await secrets.reveal(["db"]) == {"db": b"two"}
    value, revision = (await secrets.reveal_revisions(["db"]))["db"]
    assert value == b"two" and revision > first
    assert (await secrets.revisions()) == {"db": revision}
    with pytest.raises(SecretNotFound, match="secret nope not found"):
        await secrets.reveal(["db", "nope"])
    assert await secrets.reveal([]) == {}
    await secrets.delete("db")
    assert await secrets.names() == [] and await secrets.revisions() == {}


@pytest.mark.etcd
@pytest_twisted.ensureDeferred
async def test_a_secret_sealed_with_another_key_says_so(secrets) -> None:
    await secrets.create("db", b"hunter2")
    other = SecretStore(secrets.store, Fernet(Fernet.generate_key()))
    with pytest.raises(StoreError) as sealed:
        await other.reveal(["db"])
    assert str(sealed.value) == ("secret db cannot be decrypted with this node's key "
                                 "(secrets.keyFile differs between nodes?)")
    assert await reveal_deferred(secrets, ["db"]) == {"db": b"hunter2"}
    assert await reveal_deferred(secrets, ["db"], revisions=True) == {
        "db": (b"hunter2", (await secrets.revisions())["db"])}


def test_a_secret_s_value_is_at_most_512_kib() -> None:
    assert MAX_SECRET_SIZE == 512 * 1024   # what the admin API accepts (OpenFaaS: 512 KiB)


@pytest.mark.etcd
@pytest_twisted.ensureDeferred
async def test_what_each_operation_asks_etcd(secrets) -> None:
    """Listing reads names only (never the sealed values); reads may be retried on
    another member, writes never (their fate may be unknown); each has its own name."""
    asked: list[tuple[str, bool, bool | None]] = []
    submit = secrets.store.submit

    def spy(op, txn, idempotent=False):
        keys_only = getattr(txn.success[0], "keys_only", None) if txn.success else None
        asked.append((op, idempotent, keys_only))
        return submit(op, txn, idempotent=idempotent)
    secrets.store.submit = spy
    await secrets.create("db", b"one")
    await secrets.delete("db")        # a secret written once can be deleted
    await secrets.create("db", b"one")
    await secrets.replace("db", b"two")
    await secrets.names()
    await secrets.revisions()
    await secrets.reveal(["db"])
    assert [(op, idem) for op, idem, _ in asked] == [
        ("secret_create", False), ("secret_delete", False), ("secret_create", False),
        ("secret_update", False), ("secret_list", True), ("secret_revisions", True),
        ("secret_get", True)]
    assert [keys for op, _, keys in asked if op in ("secret_list", "secret_revisions")] == [
        True, True]


@pytest.mark.etcd
@pytest_twisted.ensureDeferred
async def test_a_key_that_is_not_utf8_is_listed_with_a_replacement(secrets) -> None:
    key = secrets.base + b"bad\xff"
    body = json.dumps({"key": base64.b64encode(key).decode(),
                       "value": base64.b64encode(b"x").decode()}).encode()
    urllib.request.urlopen(urllib.request.Request(f"{secrets.etcd_url}/v3/kv/put", body),
                           timeout=5).read()
    assert await secrets.names() == ["bad\ufffd"]
    assert list(await secrets.revisions()) == ["bad\ufffd"]
