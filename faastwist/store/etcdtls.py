"""Client-certificate TLS for the embedded etcd: only the node may talk to it.

The embedded etcd listens on loopback, where function processes can connect too; etcd
has no authentication by default, so a function could rewrite specs. The node makes a
private CA once (``{etcd.dataDir}/tls``, 0700, keys 0600, owned by the node's user) with
a server certificate for 127.0.0.1 and a client certificate for itself, and starts etcd
with ``--client-cert-auth`` and ``--peer-client-cert-auth`` on https URLs: a connection
without a certificate from that CA fails its TLS handshake before any request is read.
Functions run as another user and cannot read the folder, so they cannot present one.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

import attrs
from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

VALID_DAYS = 3650
FOLDER = "tls"


@attrs.frozen
class EtcdTLS:
    """The files of the embedded etcd's private CA (etcd's and the node's sides)."""

    ca_file: str
    cert_file: str     # etcd's server (and peer) certificate
    key_file: str
    client_cert: str   # the node's client certificate
    client_key: str

    def server_args(self) -> list[str]:
        """etcd's flags: TLS on client and peer URLs, a CA-signed client cert required."""
        return ["--cert-file", self.cert_file, "--key-file", self.key_file,
                "--client-cert-auth", "--trusted-ca-file", self.ca_file,
                "--peer-cert-file", self.cert_file, "--peer-key-file", self.key_file,
                "--peer-client-cert-auth", "--peer-trusted-ca-file", self.ca_file]

    def policy(self) -> IPolicyForHTTPS:
        """What the node's HTTP clients use: trust only this CA, present the node's cert."""
        return _ClientPolicy(self)


@implementer(IPolicyForHTTPS)
class _ClientPolicy:
    def __init__(self, tls: EtcdTLS) -> None:
        ca = Certificate.loadPEM(Path(tls.ca_file).read_bytes())
        client = PrivateCertificate.loadPEM(Path(tls.client_cert).read_bytes()
                                            + Path(tls.client_key).read_bytes())
        self._ca, self._client = ca, client

    def creatorForNetloc(self, hostname: bytes, port: int) -> IOpenSSLClientConnectionCreator:
        return optionsForClientTLS(hostname.decode("ascii"), trustRoot=self._ca,
                                   clientCertificate=self._client)


def ensure_tls(data_dir: str) -> EtcdTLS:
    """The CA and certificates under ``{data_dir}/tls``, made when any is missing."""
    folder = Path(data_dir) / FOLDER
    tls = EtcdTLS(*(str(folder / name) for name in
                    ("ca.pem", "etcd.pem", "etcd-key.pem", "node.pem", "node-key.pem")))
    if all(os.path.exists(path) for path in attrs.astuple(tls)):
        return tls
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    _make(tls)
    return tls


def _make(tls: EtcdTLS) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "faastwist"),
                          x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def build(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
              signer: ec.EllipticCurvePrivateKey, ca: bool,
              usages: list[x509.ObjectIdentifier]) -> x509.Certificate:
        builder = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(issuer)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), True))
        if ca:
            builder = builder.add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), True)
        else:
            builder = builder.add_extension(x509.ExtendedKeyUsage(usages), False)
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                 x509.DNSName("localhost")]), False)
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name("faastwist embedded etcd CA")
    ca = build("faastwist embedded etcd CA", ca_key, ca_name, ca_key, True, [])
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = build("etcd", server_key, ca_name, ca_key, False,
                   [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = build("faastwist node", client_key, ca_name, ca_key, False,
                   [ExtendedKeyUsageOID.CLIENT_AUTH])

    def write(path: str, data: bytes) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(path, 0o600)

    def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM,
                                 serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    pem = serialization.Encoding.PEM
    write(tls.ca_file, ca.public_bytes(pem))
    write(tls.cert_file, server.public_bytes(pem))
    write(tls.key_file, key_pem(server_key))
    write(tls.client_cert, client.public_bytes(pem))
    write(tls.client_key, key_pem(client_key))
