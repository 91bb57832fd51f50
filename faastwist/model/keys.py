"""Per-function invocation keys: only their SHA-256 is ever stored.

A key is shown once, when it is created (``fk_`` and 43 URL-safe characters: 256 bits);
the store keeps ``{id, sha256, created}`` per key under ``{prefix}/{controller}/keys/{fn}``.
Several keys can be valid at once, so a key is rotated by creating the new one, moving
the callers, then revoking the old one by its id.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from typing import Any

import attrs

PREFIX = "fk_"


def digest(key: str | bytes) -> str:
    raw = key.encode() if isinstance(key, str) else key
    return hashlib.sha256(raw).hexdigest()


@attrs.frozen
class KeyEntry:
    id: str
    sha256: str
    created: str   # RFC 3339

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "sha256": self.sha256, "created": self.created}

    def public(self) -> dict[str, str]:
        """What a listing shows: never the hash."""
        return {"id": self.id, "created": self.created}


@attrs.frozen
class KeySet:
    entries: tuple[KeyEntry, ...] = ()

    def digests(self) -> frozenset[str]:
        return frozenset(entry.sha256 for entry in self.entries)

    def add(self, entry: KeyEntry) -> "KeySet":
        return KeySet((*self.entries, entry))

    def without(self, key_id: str) -> "KeySet":
        return KeySet(tuple(e for e in self.entries if e.id != key_id))

    def find(self, key_id: str) -> KeyEntry | None:
        return next((e for e in self.entries if e.id == key_id), None)

    def encode(self) -> bytes:
        return json.dumps([e.to_dict() for e in self.entries], sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> "KeySet":
        raw: Any = json.loads(data)
        return cls(tuple(KeyEntry(str(e["id"]), str(e["sha256"]), str(e["created"]))
                         for e in raw))


def new_key(created: str) -> tuple[str, KeyEntry]:
    """A fresh key (shown once) and its stored entry."""
    key = PREFIX + secrets.token_urlsafe(32)
    return key, KeyEntry(secrets.token_hex(4), digest(key), created)
