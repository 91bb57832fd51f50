"""Issue 21's attacks on the admin plane's and the gate's inputs, on a real ``twistd``
node (process provider, embedded etcd): each is refused cleanly and the node stays
responsive and small.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.node import FaasNodeProcess, http

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

JSON = {"Accept": "application/json"}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaasNodeProcess]:
    workdir = tmp_path_factory.mktemp("hostile-node")
    node = FaasNodeProcess(workdir, controller="hostile")
    node.start()
    try:
        yield node
    finally:
        node.stop()


def peak_rss(pid: int) -> int:
    """The process's peak resident size in bytes (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_a_900kib_alias_bomb_is_refused_promptly_without_growing_the_node(
        node: FaasNodeProcess) -> None:
    """Issue 21: a 900 KiB body of aliases to one long string was ~1.2 GiB of memory and
    froze the reactor 6-9 s; its expanded size is now counted in bytes and capped."""
    head = f"name: bomb\nimage: &anchor000 {'x' * 9000}\ncommand: [*anchor000"
    refs = (900 * 1024 - len(head) - 2) // len(",*anchor000")
    body = head + ",*anchor000" * refs + "]\n"
    assert 899 * 1024 < len(body) <= 900 * 1024 and refs < 100_000   # under the value cap
    assert node.process is not None
    before = peak_rss(node.process.pid)
    started = time.monotonic()
    status, _, data = http("POST", node.admin_url, body,
                           {**JSON, "Content-Type": "application/yaml"})
    elapsed = time.monotonic() - started
    assert status == 400, data
    assert json.loads(data)["message"] == (
        "body expands to more than 1048576 bytes, the limit for a spec (YAML aliases count "
        "at every use)")
    assert elapsed < 5, elapsed
    grown = peak_rss(node.process.pid) - before
    assert grown < 200 * 2**20, grown
    # the reactor is free: the gate and the admin port answer at once
    assert http("GET", node.gate_url + "/healthz", timeout=2)[0] == 200
    assert node.json("GET")[0] == 200


def test_adaptor_refusals_name_the_field(node: FaasNodeProcess) -> None:
    for adaptor, field in (
            ({"header": {"set": {"X-A": "a\u0000b"}}}, "requestAdaptor.header.set"),
            ({"header": {"add": {"X-A": "a\u000bb"}}}, "requestAdaptor.header.add"),
            ({"header": {"add": {"X-A": "a\u000cb"}}}, "requestAdaptor.header.add"),
            ({"path": {"regexpReplace": {"regexp": "^/(a)\\1$", "replace": "/"}}},
             "requestAdaptor.path.regexpReplace.regexp")):
        body = json.dumps({"name": "adapted", "command": ["true"], "requestAdaptor": adaptor})
        status, data = node.json("POST", "", body, content_type="application/json")
        assert status == 400, data
        assert data["message"].startswith(field + ": "), data
    assert node.json("GET", "/adapted")[0] == 404


def test_a_backtracking_path_regexp_answers_at_once(node: FaasNodeProcess,
                                                     tmp_path: Path) -> None:
    """Issue 21: one 33-byte path froze the gate 8 s through ``^/(a+)+$``."""
    import yaml

    from tests.support.cli import echo_spec, wait_for

    spec = yaml.safe_load(echo_spec(tmp_path, "regexfn", requestAdaptor={"path": {
        "regexpReplace": {"regexp": "^/(a+)+$", "replace": "/matched/$1"}}}).read_text())
    status, data = node.json("POST", "", json.dumps(spec), content_type="application/json")
    assert status == 201, data
    wait_for(lambda: http("GET", node.gate_url + "/function/regexfn/aa")[0] == 200, 60)
    try:
        path = "/" + "a" * 31 + "!"
        started = time.monotonic()
        status, _, body = http("GET", node.gate_url + "/function/regexfn" + path, timeout=5)
        assert time.monotonic() - started < 2
        assert status == 200 and json.loads(body)["path"] == path
        status, _, body = http("GET", node.gate_url + "/function/regexfn/aaa")
        assert json.loads(body)["path"] == "/matched/aaa"
    finally:
        node.json("PUT", "/regexfn/stop")
        node.json("DELETE", "/regexfn")


def test_cleartext_http2_request_line_is_505_then_close(node: FaasNodeProcess) -> None:
    """Issue 21: ``GET / HTTP/2.0`` in cleartext was served as HTTP/1."""
    import socket

    with socket.create_connection(("127.0.0.1", node.gate_port), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/2.0\r\nHost: 127.0.0.1\r\n\r\n"
                     b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        received = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    assert received.startswith(b"HTTP/1.1 505 HTTP Version Not Supported\r\n"), received
    assert received.count(b"HTTP/1.1 200") == 0     # closed: the next request unserved
    body = json.loads(received.partition(b"\r\n\r\n")[2])
    assert body["code"] == 505 and body["message"].startswith("HTTP/2.0 is not supported")


def test_a_call_id_with_spaces_cannot_forge_access_log_fields(node: FaasNodeProcess) -> None:
    """Issue 21: ``X-Call-Id`` with spaces forged fields in the text access log."""
    from tests.support.cli import wait_for

    forged = 'x 200 0.0001s 0B "forged'
    status, headers, _ = http("GET", node.gate_url + "/function/nosuch/probe-forge",
                              headers={"X-Call-Id": forged})
    assert status == 404
    assert {k.lower(): v for k, v in headers.items()}["x-call-id"] == forged   # as sent

    def line() -> str | None:
        for text in node.log_path.read_text(errors="replace").splitlines():
            if "[faastwist.access#info]" in text and "/function/nosuch/probe-forge" in text:
                return text
        return None

    logged = wait_for(line, 10)   # the access log is flushed every 0.5 s
    fields = logged.split("] ", 1)[1].split(" ")
    assert fields == ["GET", "/function/nosuch/probe-forge", "nosuch", "404", fields[4], fields[5],
                      "x\\x20200\\x200.0001s\\x200B\\x20\\x22forged"], logged
