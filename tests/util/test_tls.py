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


def test_alpn_offers_h2_then_http11_unless_told_otherwise(tmp_path: Path) -> None:
    from faastwist.util.tls import default_protocols, tls_options

    assert default_protocols() == (b"h2", b"http/1.1")          # h2 is a dependency
    cert, key = self_signed(tmp_path, "alpn")
    assert tls_options(cert, key)._acceptableProtocols == [b"h2", b"http/1.1"]
    assert ReloadableTLS(cert, key, [b"http/1.1"]).protocols == [b"http/1.1"]
    assert tls_options(cert, key, [b"http/1.1"])._acceptableProtocols == [b"http/1.1"]


def test_certificates_after_the_leaf_are_its_chain(tmp_path: Path) -> None:
    from faastwist.util.tls import tls_options

    cert, key = self_signed(tmp_path, "leaf")
    middle, _ = self_signed(tmp_path, "middle", stem="middle")
    root, _ = self_signed(tmp_path, "root", stem="root")
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(Path(cert).read_bytes() + Path(middle).read_bytes()
                       + Path(root).read_bytes())
    options = tls_options(str(bundle), key)
    assert [c.get_subject().CN for c in options.extraCertChain] == ["middle", "root"]
    assert tls_options(cert, key).extraCertChain == []


def test_a_file_without_a_certificate_is_named(tmp_path: Path) -> None:
    from faastwist.util.tls import tls_options

    cert, key = self_signed(tmp_path, "x")
    empty = tmp_path / "empty.pem"
    empty.write_text("no certificate here\n")
    with pytest.raises(ValueError) as caught:
        tls_options(str(empty), key)
    assert str(caught.value) == f"{empty}: no PEM certificate found"
