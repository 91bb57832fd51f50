"""Per-function invocation keys (faastwist/model/keys.py): a key is shown once, only its
SHA-256 is stored, several may be valid at once, and one is revoked by its id."""

from __future__ import annotations

import base64
import hashlib
import json
import string

from hypothesis import given
from hypothesis import strategies as st

from faastwist.model.keys import PREFIX, KeyEntry, KeySet, digest, new_key

CREATED = "2026-12-08T03:00:00Z"


def test_a_new_key_is_256_random_bits_shown_once_and_stored_as_its_hash() -> None:
    key, entry = new_key(CREATED)
    assert PREFIX == "fk_" and key.startswith("fk_")
    body = key[len(PREFIX):]
    assert len(body) == 43 and set(body) <= set(string.ascii_letters + string.digits + "-_")
    assert len(base64.urlsafe_b64decode(body + "=")) == 32
    assert entry.sha256 == hashlib.sha256(key.encode()).hexdigest()
    assert key not in json.dumps(entry.to_dict())
    assert len(entry.id) == 8 and int(entry.id, 16) >= 0
    assert entry.created == CREATED


def test_two_new_keys_differ_in_key_and_id() -> None:
    (one, first), (two, second) = new_key(CREATED), new_key(CREATED)
    assert one != two and first.id != second.id and first.sha256 != second.sha256


def test_digest_takes_text_or_bytes_alike() -> None:
    assert digest("fk_abc") == digest(b"fk_abc") == hashlib.sha256(b"fk_abc").hexdigest()


def test_a_listing_shows_id_and_date_never_the_hash() -> None:
    entry = KeyEntry("0a1b2c3d", "f" * 64, CREATED)
    assert entry.public() == {"id": "0a1b2c3d", "created": CREATED}
    assert entry.to_dict() == {"id": "0a1b2c3d", "sha256": "f" * 64, "created": CREATED}


def test_several_keys_are_valid_at_once_and_one_is_revoked_by_its_id() -> None:
    old_key, old = new_key(CREATED)
    new_key_text, new = new_key(CREATED)
    keys = KeySet().add(old).add(new)
    assert keys.digests() == {digest(old_key), digest(new_key_text)}
    assert keys.find(old.id) == old and keys.find("nope") is None
    rotated = keys.without(old.id)
    assert rotated.digests() == {digest(new_key_text)}
    assert rotated.find(old.id) is None
    assert keys.entries == (old, new)   # a KeySet is a value: the old one is unchanged
    assert keys.without("nope") == keys
    assert KeySet().digests() == frozenset()


def test_the_stored_form_is_sorted_json_of_the_entries() -> None:
    keys = KeySet((KeyEntry("b", "2" * 64, CREATED), KeyEntry("a", "1" * 64, CREATED)))
    assert json.loads(keys.encode()) == [
        {"created": CREATED, "id": "b", "sha256": "2" * 64},
        {"created": CREATED, "id": "a", "sha256": "1" * 64}]
    assert keys.encode().startswith(b'[{"created": ')
    assert KeySet().encode() == b"[]"


def test_decode_reads_non_string_fields_as_text() -> None:
    decoded = KeySet.decode(b'[{"id": 7, "sha256": "ab", "created": 1}]')
    assert decoded == KeySet((KeyEntry("7", "ab", "1"),))


@given(st.lists(st.tuples(st.text(min_size=1, max_size=8), st.text(max_size=64),
                          st.text(max_size=25)), max_size=5))
def test_encode_then_decode_is_the_same_set(rows: list[tuple[str, str, str]]) -> None:
    keys = KeySet(tuple(KeyEntry(*row) for row in rows))
    assert KeySet.decode(keys.encode()) == keys
