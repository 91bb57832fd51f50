"""ReloadableTLS: a new context on reload, the old one kept when the files are bad."""

from __future__ import annotations

from pathlib import Path

import pytest
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator

from faastwist.util.tls import ReloadableTLS
from tests.support.tls import self_signed


def _subject(tls: ReloadableTLS) -> str:
    connection = tls.serverConnectionForTLS(None)
    assert isinstance(connection, SSL.Connection)
    return connection.get_certificate().get_subject().CN  # type: ignore[union-attr]


def test_reload_swaps_the_context_for_new_connections(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, "first")
    tls = ReloadableTLS(cert, key)
    assert IOpenSSLServerConnectionCreator.providedBy(tls)
    before = tls.serverConnectionForTLS(None)
    assert _subject(tls) == "first"
    self_signed(tmp_path, "second")          # same file names, new contents
    tls.reload()
    assert _subject(tls) == "second"
    assert before.get_certificate().get_subject().CN == "first"   # open ones keep theirs


def test_a_bad_file_raises_and_keeps_the_current_certificate(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, "first")
    tls = ReloadableTLS(cert, key)
    Path(cert).write_text("garbage\n")
    with pytest.raises(ValueError, match="no PEM certificate"):
        tls.reload()
    assert _subject(tls) == "first"
    with pytest.raises(FileNotFoundError):
        ReloadableTLS(str(tmp_path / "missing.pem"), key)
