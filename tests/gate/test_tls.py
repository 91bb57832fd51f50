"""The lean transport's TLS context (gate/tls.py): built from PEM files, TLS 1.2+ with
ALPN, rebuilt on reload; broken files are refused with both paths named, and the
context in use stays."""

from __future__ import annotations

import shutil
import ssl
from pathlib import Path

import pytest

from faastwist.gate.tls import ReloadableServerContext
from tests.support.tls import self_signed


def test_context_reload_and_broken_files(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path / "a", "first")
    tls = ReloadableServerContext(cert, key, [b"h2", b"http/1.1"])
    first = tls.context
    assert first.minimum_version is ssl.TLSVersion.TLSv1_2
    assert tls.protocols == ["h2", "http/1.1"]

    new_cert, new_key = self_signed(tmp_path / "b", "second")
    shutil.copy(new_cert, cert)
    shutil.copy(new_key, key)
    tls.reload()
    assert tls.context is not first

    current = tls.context
    Path(key).write_text("not a key")
    with pytest.raises(ValueError, match=f"{cert}.*{key}"):
        tls.reload()
    assert tls.context is current            # the certificate in use stays
    with pytest.raises(ValueError, match="cannot load the certificate"):
        ReloadableServerContext(cert, str(tmp_path / "missing.pem"))
