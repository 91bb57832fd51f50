"""OpenFaaS secrets in etcd, encrypted with a key only the nodes hold.

Values are sealed with Fernet (AES-128-CBC + HMAC-SHA256, from ``cryptography``) under
the node key file (``secrets.keyFile``, created 0600 on first start; every node of a
cluster needs the same file), so a copy of etcd, a backup or a watch on its keys shows
names and ciphertext only. Keys: ``{prefix}/.secrets/{controller}/{name}`` (outside the
controller's function prefix, so listing or watching functions never reads them). A
value is never returned by the API: only the providers ``reveal`` it to the functions
that name it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generator, Iterable, Protocol

from cryptography.fernet import Fernet, InvalidToken
from twisted.internet.defer import Deferred, inlineCallbacks
from txaioetcd import CompCreated, CompVersion, KeySet, OpDel, OpGet, OpSet, Transaction
from txaioetcd import Failed

from faastwist.store.base import StoreError

if TYPE_CHECKING:
    from faastwist.store.memory import MemoryStore

MAX_SECRET_SIZE = 512 * 1024


class SecretNotFound(StoreError):
    def __init__(self, name: str) -> None:
        super().__init__(f"secret {name} not found")
        self.name = name


class SecretExists(StoreError):
    def __init__(self, name: str) -> None:
        super().__init__(f"secret {name} already exists; update it with PUT")
        self.name = name


class KeyFileError(Exception):
    """The key file cannot be read or created (the node does not start)."""


def load_key(path: str) -> Fernet:
    """The node key from ``path``; a new one (0600, created exclusively) if absent."""
    file = Path(path)
    try:
        if not file.exists():
            file.parent.mkdir(parents=True, exist_ok=True)
            key = Fernet.generate_key()
            try:
                fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:   # another node process made it meanwhile
                pass
            else:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(key + b"\n")
        mode = file.stat().st_mode & 0o777
        if mode & 0o077:
            raise KeyFileError(f"secrets.keyFile: {path} is readable by others (mode "
                               f"{mode:o}); chmod 600 it")
        return Fernet(file.read_bytes().strip())
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"secrets.keyFile: {path}: {exc}") from None


class Secrets(Protocol):
    """What the OpenFaaS API (/system/secrets) and the providers use of a secret store:
    the etcd one (``SecretStore``) or a memory store's (``MemorySecrets``);
    tests/store/test_secrets_contract.py holds both to it."""

    def names(self) -> Deferred[list[str]]:
        """Every secret's name, sorted."""

    def create(self, name: str, value: bytes) -> Deferred[None]:
        """SecretExists when it exists."""

    def replace(self, name: str, value: bytes) -> Deferred[None]:
        """SecretNotFound when it does not exist."""

    def delete(self, name: str) -> Deferred[None]:
        """SecretNotFound when it does not exist."""

    def revisions(self) -> Deferred[dict[str, int]]:
        """``{name: revision}``: a value changed when its revision did."""

    def reveal_revisions(self, names: Iterable[str]) -> Deferred[dict[str, tuple[bytes, int]]]:
        """``{name: (value, revision)}``; SecretNotFound for the first one missing."""

    def reveal(self, names: Iterable[str]) -> Deferred[dict[str, bytes]]:
        """``{name: value}``; SecretNotFound for the first one missing."""


def _unseal(box: Fernet, name: str, sealed: bytes) -> bytes:
    try:
        return box.decrypt(sealed)
    except InvalidToken:
        raise StoreError(f"secret {name} cannot be decrypted with this node's key "
                         f"(secrets.keyFile differs between nodes?)") from None


class SecretStore:
    """Encrypted secrets of one controller in the etcd store (``EtcdStore.submit``)."""

    def __init__(self, store: Any, box: Fernet) -> None:
        self.store = store
        self.box = box
        self.base = f"{store.prefix}/.secrets/{store.controller}/".encode()

    def _key(self, name: str) -> bytes:
        return self.base + name.encode()

    @inlineCallbacks
    def names(self) -> Generator[Deferred[Any], Any, list[str]]:
        txn = Transaction(success=[OpGet(KeySet(self.base, prefix=True), keys_only=True)])
        result = yield self.store.submit("secret_list", txn, idempotent=True)
        return sorted(kv.key[len(self.base):].decode("utf-8", "replace")
                      for kv in result.responses[0].kvs)

    def _seal(self, value: bytes) -> bytes:
        return self.box.encrypt(value)

    @inlineCallbacks
    def create(self, name: str, value: bytes) -> Generator[Deferred[Any], Any, None]:
        key = self._key(name)
        txn = Transaction(compare=[CompCreated(key, "==", 0)],
                          success=[OpSet(key, self._seal(value))])
        try:
            yield self.store.submit("secret_create", txn)
        except Failed:
            raise SecretExists(name) from None

    @inlineCallbacks
    def replace(self, name: str, value: bytes) -> Generator[Deferred[Any], Any, None]:
        key = self._key(name)
        txn = Transaction(compare=[CompVersion(key, ">", 0)],
                          success=[OpSet(key, self._seal(value))])
        try:
            yield self.store.submit("secret_update", txn)
        except Failed:
            raise SecretNotFound(name) from None

    @inlineCallbacks
    def delete(self, name: str) -> Generator[Deferred[Any], Any, None]:
        key = self._key(name)
        txn = Transaction(compare=[CompVersion(key, ">", 0)], success=[OpDel(key)])
        try:
            yield self.store.submit("secret_delete", txn)
        except Failed:
            raise SecretNotFound(name) from None

    @inlineCallbacks
    def revisions(self) -> Generator[Deferred[Any], Any, dict[str, int]]:
        """``{name: etcd mod revision}`` of every secret, values left out: what a node
        polls to notice that a secret it wrote into functions' folders changed."""
        txn = Transaction(success=[OpGet(KeySet(self.base, prefix=True), keys_only=True)])
        result = yield self.store.submit("secret_revisions", txn, idempotent=True)
        return {kv.key[len(self.base):].decode("utf-8", "replace"): int(kv.mod_revision or 0)
                for kv in result.responses[0].kvs}

    @inlineCallbacks
    def reveal_revisions(self, names: Iterable[str]
                         ) -> Generator[Deferred[Any], Any, dict[str, tuple[bytes, int]]]:
        """``{name: (value, mod revision)}`` for ``names``; SecretNotFound for the first
        one missing."""
        wanted = list(dict.fromkeys(names))
        if not wanted:
            return {}
        txn = Transaction(success=[OpGet(self._key(name)) for name in wanted])
        result = yield self.store.submit("secret_get", txn, idempotent=True)
        out: dict[str, tuple[bytes, int]] = {}
        for name, response in zip(wanted, result.responses):
            if not response.kvs:
                raise SecretNotFound(name)
            value = _unseal(self.box, name, response.kvs[0].value)
            out[name] = (value, int(response.kvs[0].mod_revision or 0))
        return out

    def reveal(self, names: Iterable[str]) -> Deferred[dict[str, bytes]]:
        """``{name: value}`` for ``names``; SecretNotFound for the first one missing."""
        return _values(self.reveal_revisions(names))


def _values(found: Deferred[dict[str, tuple[bytes, int]]]) -> Deferred[dict[str, bytes]]:
    return found.addCallback(lambda pairs: {name: value for name, (value, _) in pairs.items()})


class MemorySecrets:
    """The secrets of a node on a ``MemoryStore``, sealed with the same Fernet box as
    in etcd and kept on the store (``MemoryStore.secrets``): two of them over one store
    see each other's, and each write takes a store revision, as in etcd."""

    def __init__(self, store: MemoryStore, box: Fernet) -> None:
        self.store = store
        self.box = box

    def _run(self, step: Any, *args: Any) -> Deferred[Any]:
        from twisted.internet.defer import fail, succeed

        try:
            self.store._check()
            return succeed(step(*args))
        except Exception as exc:
            return fail(exc)

    def _write(self, name: str, value: bytes) -> None:
        self.store.revision += 1
        self.store.secrets[name] = (self.box.encrypt(value), self.store.revision)

    def names(self) -> Deferred[list[str]]:
        return self._run(lambda: sorted(self.store.secrets))

    def create(self, name: str, value: bytes) -> Deferred[None]:
        def create() -> None:
            if name in self.store.secrets:
                raise SecretExists(name)
            self._write(name, value)
        return self._run(create)

    def replace(self, name: str, value: bytes) -> Deferred[None]:
        def replace() -> None:
            if name not in self.store.secrets:
                raise SecretNotFound(name)
            self._write(name, value)
        return self._run(replace)

    def delete(self, name: str) -> Deferred[None]:
        def delete() -> None:
            if self.store.secrets.pop(name, None) is None:
                raise SecretNotFound(name)
            self.store.revision += 1
        return self._run(delete)

    def revisions(self) -> Deferred[dict[str, int]]:
        return self._run(lambda: {name: revision for name, (_, revision)
                                  in sorted(self.store.secrets.items())})

    def reveal_revisions(self, names: Iterable[str]) -> Deferred[dict[str, tuple[bytes, int]]]:
        def reveal() -> dict[str, tuple[bytes, int]]:
            out: dict[str, tuple[bytes, int]] = {}
            for name in dict.fromkeys(names):
                if name not in self.store.secrets:
                    raise SecretNotFound(name)
                sealed, revision = self.store.secrets[name]
                out[name] = (_unseal(self.box, name, sealed), revision)
            return out
        return self._run(reveal)

    def reveal(self, names: Iterable[str]) -> Deferred[dict[str, bytes]]:
        return _values(self.reveal_revisions(names))


def reveal_deferred(secrets: Secrets | None, names: Iterable[str],
                    revisions: bool = False) -> Deferred:
    """``reveal`` (or ``reveal_revisions``) that also works without a secret store (no
    names: nothing to do)."""
    from twisted.internet.defer import fail, succeed

    names = list(names)
    if not names:
        return succeed({})
    if secrets is None:
        return fail(StoreError("secrets are not available on this node"))
    return secrets.reveal_revisions(names) if revisions else secrets.reveal(names)
