"""Server TLS from PEM files that can be swapped without dropping a connection.

``ReloadableTLS`` is what ``TLSMemoryBIOFactory`` asks for each new connection (an
``IOpenSSLServerConnectionCreator``): every connection gets an ``SSL.Connection`` on
the *current* context. ``reload()`` builds a new context from the files and swaps it
in; connections already open keep the context they started with (and their
certificate) until they close, new ones see the new certificate. A reload whose files
are broken raises and leaves the current context in place.
"""

from __future__ import annotations

from typing import Any, Sequence

from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from zope.interface import implementer

_MARKER = b"-----BEGIN CERTIFICATE-----"


def default_protocols() -> tuple[bytes, ...]:
    """ALPN: HTTP/2 first when the h2 package is installed, then HTTP/1.1."""
    try:
        import h2  # noqa: F401
    except ImportError:  # pragma: no cover
        return (b"http/1.1",)
    return (b"h2", b"http/1.1")


def tls_options(cert_file: str, key_file: str,
                protocols: Sequence[bytes] | None = None) -> ssl.CertificateOptions:
    """TLS options from PEM files; certificates after the leaf are sent as its chain."""
    with open(cert_file, "rb") as handle:
        chain = handle.read()
    with open(key_file, "rb") as handle:
        key = handle.read()
    certs = [_MARKER + part for part in chain.split(_MARKER)[1:]]
    if not certs:
        raise ValueError(f"{cert_file}: no PEM certificate found")
    leaf = ssl.PrivateCertificate.loadPEM(certs[0] + b"\n" + key)
    extra = [ssl.Certificate.loadPEM(c).original for c in certs[1:]]
    return ssl.CertificateOptions(
        privateKey=leaf.privateKey.original, certificate=leaf.original, extraCertChain=extra,
        acceptableProtocols=list(protocols if protocols is not None else default_protocols()))


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableTLS:
    """The current server context, rebuilt from ``cert_file``/``key_file`` on ``reload``."""

    def __init__(self, cert_file: str, key_file: str,
                 protocols: Sequence[bytes] | None = None) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self.protocols = protocols
        self._context: SSL.Context = self._build()

    def _build(self) -> SSL.Context:
        return tls_options(self.cert_file, self.key_file, self.protocols).getContext()

    def reload(self) -> None:
        """Read the files again; on any error raise and keep the current certificate."""
        self._context = self._build()

    def serverConnectionForTLS(self, protocol: Any) -> SSL.Connection:
        return SSL.Connection(self._context, None)
