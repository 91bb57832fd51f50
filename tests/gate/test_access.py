"""Invocation keys and the token bucket, with exact values."""

from __future__ import annotations

import hashlib

import pytest

from faastwist.gate.access import TokenBucket, key_allowed, presented_key, retry_after
from faastwist.model.keys import KeySet, digest, new_key


def test_the_presented_key_comes_from_x_api_key_or_a_bearer_token() -> None:
    assert presented_key([(b"x-api-key", b" k1 ")]) == (b"k1", b"x-api-key")
    assert presented_key([(b"authorization", b"Bearer k2")]) == (b"k2", b"authorization")
    assert presented_key([(b"authorization", b"bearer k3")]) == (b"k3", b"authorization")
    assert presented_key([(b"authorization", b"Basic dTpw")]) == (None, None)
    assert presented_key([(b"host", b"x")]) == (None, None)


def test_keys_are_checked_by_their_sha256() -> None:
    digests = frozenset({hashlib.sha256(b"one").hexdigest().encode(),
                         hashlib.sha256(b"two").hexdigest().encode()})
    assert key_allowed(b"one", digests) and key_allowed(b"two", digests)
    assert not key_allowed(b"three", digests)
    assert not key_allowed(b"", digests) and not key_allowed(None, digests)
    assert not key_allowed(b"0" * 64, frozenset({b"0" * 64}))   # a digest is not a key


def test_new_keys_are_shown_once_and_stored_hashed() -> None:
    key, entry = new_key("2026-01-01T00:00:00Z")
    assert key.startswith("fk_") and len(key) == 46
    assert entry.sha256 == digest(key) == hashlib.sha256(key.encode()).hexdigest()
    assert key not in KeySet((entry,)).encode().decode()
    assert entry.public() == {"id": entry.id, "created": "2026-01-01T00:00:00Z"}
    assert KeySet.decode(KeySet((entry,)).encode()) == KeySet((entry,))


def test_token_bucket_exact_values() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=100.0)
    assert [bucket.take(100.0) for _ in range(3)] == [0.0, 0.0, 0.0]   # the burst
    assert bucket.take(100.0) == pytest.approx(0.5)                    # 1 token / 2 rps
    assert bucket.take(100.25) == pytest.approx(0.25)                  # half a token back
    assert bucket.take(100.5) == 0.0                                   # one token: passes
    assert bucket.take(100.5) == pytest.approx(0.5)
    assert bucket.take(110.0) == 0.0                                   # refilled, capped
    assert [bucket.take(110.0) for _ in range(3)] == [0.0, 0.0, pytest.approx(0.5)]
    slow = TokenBucket(rate=0.1, burst=1, now=0.0)
    assert slow.take(0.0) == 0.0
    assert slow.take(2.0) == pytest.approx(8.0)


def test_retry_after_rounds_up_and_is_never_zero() -> None:
    assert [retry_after(w) for w in (0.01, 0.5, 1.0, 1.2, 8.0)] == [1, 1, 1, 2, 8]
    # a nanosecond over a whole second is float noise (rps of 1/3 ...), more is not
    assert [retry_after(w) for w in (2.0 + 0.9e-9, 2.0 + 1.5e-9)] == [2, 3]
