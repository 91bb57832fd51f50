"""TLS on the admin port and the gate of a real node; SIGHUP swaps both certificates
without dropping a connection: an open keep-alive connection keeps working (on the
certificate it started with), a new connection gets the new certificate."""

from __future__ import annotations

import http.client as httpc
import json
import shutil
import signal
import ssl
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.cli import run_cli, wait_for
from tests.support.node import FaasNodeProcess, http
from tests.support.tls import common_name, self_signed

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


@pytest.fixture
def tls_node(tmp_path: Path) -> Iterator[FaasNodeProcess]:
    cert, key = self_signed(tmp_path / "certs", "first")
    node = FaasNodeProcess(tmp_path / "node", controller="tlsctl", extra={
        "admin": {"https": True, "certFile": cert, "keyFile": key},
        "httpServer": {"https": True, "certFile": cert, "keyFile": key}})
    node.start()
    try:
        yield node
    finally:
        node.stop()


def connect(port: int) -> httpc.HTTPSConnection:
    connection = httpc.HTTPSConnection("127.0.0.1", port, timeout=10,
                                             context=ssl._create_unverified_context())
    connection.connect()
    return connection


def get(connection: httpc.HTTPSConnection, path: str,
        headers: dict[str, str] | None = None) -> int:
    connection.request("GET", path, headers=headers or {})
    response = connection.getresponse()
    response.read()
    assert not response.will_close, "the server closed a keep-alive connection"
    return response.status


def peer_name(connection: httpc.HTTPSConnection) -> str:
    assert connection.sock is not None
    return common_name(connection.sock.getpeercert(binary_form=True))


def test_sighup_swaps_certificates_without_dropping_connections(
        tls_node: FaasNodeProcess, tmp_path: Path) -> None:
    node = tls_node
    # the CLI trusts the node's self-signed certificate through FAASTWIST_CACERT
    cert = str(node.workdir.parent / "certs" / "cert.pem")
    listed = run_cli(node, "list", "-o", "json", env={"FAASTWIST_CACERT": cert})
    assert listed.returncode == 0 and json.loads(listed.stdout) == [], listed.stderr
    untrusted = run_cli(node, "list")
    assert untrusted.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr
    auth = {"Authorization": f"Bearer {node.token}"}
    admin = connect(node.admin_port)
    gate = connect(node.gate_port)
    assert get(admin, "/healthz") == 200
    assert get(admin, f"/apis/v2/faas/{node.controller}", auth) == 200
    assert get(gate, "/", {"X-FaaS-Func-Name": "nosuchfn"}) == 404
    assert peer_name(admin) == peer_name(gate) == "first"
    sockets = admin.sock, gate.sock

    # new files in place of the old ones, then SIGHUP
    new_cert, new_key = self_signed(tmp_path / "new", "second")
    cert_path = node.workdir.parent / "certs"
    shutil.copy(new_cert, cert_path / "cert.pem")
    shutil.copy(new_key, cert_path / "key.pem")
    assert node.process is not None
    node.process.send_signal(signal.SIGHUP)
    wait_for(lambda: node.log().count("certificate was reloaded") >= 2, 10)

    # the open connections go on, on their first certificate
    assert get(admin, "/healthz") == 200
    assert get(admin, f"/apis/v2/faas/{node.controller}", auth) == 200
    assert get(gate, "/", {"X-FaaS-Func-Name": "nosuchfn"}) == 404
    assert (admin.sock, gate.sock) == sockets
    assert peer_name(admin) == peer_name(gate) == "first"
    # new connections see the new certificate
    fresh_admin, fresh_gate = connect(node.admin_port), connect(node.gate_port)
    assert peer_name(fresh_admin) == peer_name(fresh_gate) == "second"
    assert get(fresh_admin, "/healthz") == 200
    for connection in (admin, gate, fresh_admin, fresh_gate):
        connection.close()


def test_a_broken_certificate_on_sighup_keeps_the_old_one(
        tls_node: FaasNodeProcess) -> None:
    node = tls_node
    (node.workdir.parent / "certs" / "cert.pem").write_text("not a certificate\n")
    assert node.process is not None
    node.process.send_signal(signal.SIGHUP)
    wait_for(lambda: node.log().count("was not reloaded") >= 2, 10)
    fresh = connect(node.admin_port)
    assert peer_name(fresh) == "first"
    assert get(fresh, "/healthz") == 200
    fresh.close()
    assert http("GET", f"{node.gate_url}/", headers={"X-FaaS-Func-Name": "x"})[0] == 404
