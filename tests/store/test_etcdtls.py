"""The embedded etcd's private CA (faastwist/store/etcdtls.py): made once with private
files, certificates that say what they are for, and a real TLS handshake in which only a
client with the node's certificate gets through."""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
import stat
import threading
from pathlib import Path

import attrs
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
import pytest_twisted
from twisted.internet import reactor
from twisted.web.client import Agent, readBody

from faastwist.store.etcdtls import FOLDER, VALID_DAYS, EtcdTLS, ensure_tls


@pytest.fixture
def made(tmp_path: Path) -> EtcdTLS:
    """Per test (P-256 keys take milliseconds): the mutation runner maps each line to
    the tests that ran it, and a shared fixture's lines would map to the first only."""
    return ensure_tls(str(tmp_path / "etcd"))


def load(path: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(Path(path).read_bytes())


def test_the_files_are_private_in_a_private_folder(made: EtcdTLS) -> None:
    folder = Path(made.ca_file).parent
    assert folder.name == FOLDER == "tls"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert [Path(p).name for p in attrs.astuple(made)] == [
        "ca.pem", "etcd.pem", "etcd-key.pem", "node.pem", "node-key.pem"]
    for path in attrs.astuple(made):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path


def test_the_ca_signs_only_and_the_others_are_signed_by_it(made: EtcdTLS) -> None:
    ca, server, client = load(made.ca_file), load(made.cert_file), load(made.client_cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value == x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
        encipher_only=False, decipher_only=False)
    for cert in (ca, server, client):
        assert cert.extensions.get_extension_for_class(x509.BasicConstraints).critical
    for leaf in (server, client):
        assert not leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).critical
        assert not leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).critical
        with pytest.raises(x509.ExtensionNotFound):
            leaf.extensions.get_extension_for_class(x509.KeyUsage)
    for leaf in (server, client):
        assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        assert leaf.issuer == ca.subject
        leaf.verify_directly_issued_by(ca)
    assert ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == \
        "faastwist embedded etcd CA"
    assert ca.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == \
        "faastwist"


def test_each_certificate_is_for_what_it_does(made: EtcdTLS) -> None:
    server, client = load(made.cert_file), load(made.client_cert)
    usages = {cert: set(cert.extensions.get_extension_for_class(
        x509.ExtendedKeyUsage).value) for cert in (server, client)}
    assert usages[server] == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert usages[client] == {ExtendedKeyUsageOID.CLIENT_AUTH}
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    for path, common in ((made.cert_file, "etcd"), (made.client_cert, "faastwist node")):
        assert load(path).subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == common


def test_they_are_valid_now_for_ten_years_on_p256_keys(made: EtcdTLS) -> None:
    now = datetime.datetime.now(datetime.timezone.utc)
    assert VALID_DAYS == 3650
    for path in (made.ca_file, made.cert_file, made.client_cert):
        cert = load(path)
        start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
        assert now - datetime.timedelta(minutes=6) < start <= now - datetime.timedelta(minutes=4)
        assert abs((end - start) - datetime.timedelta(days=VALID_DAYS, minutes=5)) < \
            datetime.timedelta(minutes=1)
        key = cert.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"


def test_they_are_made_once_and_again_when_one_is_missing(tmp_path: Path) -> None:
    first = ensure_tls(str(tmp_path))
    ca = Path(first.ca_file).read_bytes()
    assert ensure_tls(str(tmp_path)) == first
    assert Path(first.ca_file).read_bytes() == ca           # kept, not remade
    os.unlink(first.client_key)
    again = ensure_tls(str(tmp_path))
    assert Path(again.ca_file).read_bytes() != ca           # a new CA, all files anew
    assert os.path.exists(again.client_key)


def test_etcd_is_told_to_require_a_ca_signed_client_everywhere(made: EtcdTLS) -> None:
    assert made.server_args() == [
        "--cert-file", made.cert_file, "--key-file", made.key_file,
        "--client-cert-auth", "--trusted-ca-file", made.ca_file,
        "--peer-cert-file", made.cert_file, "--peer-key-file", made.key_file,
        "--peer-client-cert-auth", "--peer-trusted-ca-file", made.ca_file]


def handshake(made: EtcdTLS, client: ssl.SSLContext) -> str:
    """A TLS server as etcd is started (its cert, a client cert from the CA required) on
    127.0.0.1; the client connects; what happened."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(made.cert_file, made.key_file)
    server.load_verify_locations(made.ca_file)
    server.verify_mode = ssl.CERT_REQUIRED
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    outcome: list[str] = []

    def serve() -> None:
        conn, _ = listener.accept()
        conn.settimeout(5)
        try:
            with server.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"ok")
                outcome.append("served")
        except (ssl.SSLError, OSError) as exc:
            outcome.append(f"refused: {exc}")
    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with socket.create_connection(listener.getsockname(), timeout=5) as raw, \
                client.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            data = tls.recv(2)
        return "ok" if data == b"ok" else f"closed ({outcome})"
    except (ssl.SSLError, OSError) as exc:
        return f"client failed: {type(exc).__name__}"
    finally:
        thread.join(timeout=10)
        listener.close()


def test_only_the_nodes_certificate_gets_through(made: EtcdTLS) -> None:
    node = ssl.create_default_context(cafile=made.ca_file)
    node.load_cert_chain(made.client_cert, made.client_key)
    assert handshake(made, node) == "ok"
    anonymous = ssl.create_default_context(cafile=made.ca_file)   # a function's client
    assert handshake(made, anonymous) != "ok"


@pytest_twisted.ensureDeferred
async def test_the_nodes_http_client_gets_through_with_its_policy(made: EtcdTLS) -> None:
    """The policy the node's HTTP clients use (store/etcd.py): trusts only this CA and
    presents the node's certificate, against a server that requires one."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(made.cert_file, made.key_file)
    server.load_verify_locations(made.ca_file)
    server.verify_mode = ssl.CERT_REQUIRED
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)   # the thread ends even if the client never comes
    peers: list[str] = []

    def serve() -> None:
        conn, _ = listener.accept()
        conn.settimeout(10)
        with server.wrap_socket(conn, server_side=True) as tls:
            peer = tls.getpeercert() or {}
            peers.append(dict(x[0] for x in peer.get("subject", ()))["commonName"])
            head = b""
            while b"\r\n\r\n" not in head:
                head += tls.recv(4096)
            tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n"
                        b"\r\nok")
    thread = threading.Thread(target=serve)
    thread.start()
    try:
        port = listener.getsockname()[1]
        agent = Agent(reactor, contextFactory=made.policy())
        response = await agent.request(b"GET", f"https://127.0.0.1:{port}/".encode())
        assert response.code == 200 and await readBody(response) == b"ok"
        assert peers == ["faastwist node"]
    finally:
        thread.join(timeout=10)
        listener.close()
