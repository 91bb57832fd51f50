"""The supervised child's kept ports and binary lookup (the process part is tested with
real etcd and nats-server children in tests/store and tests/queue)."""

from __future__ import annotations

import json
import socket

from twisted.logger import LogLevel, capturedLogs

from faastwist.util.ports import port_is_free
from faastwist.util.supervised import find_binary, persisted_ports

NAMES = ("client", "peer")


def test_ports_are_chosen_once_and_kept(tmp_path) -> None:
    path = tmp_path / "ports.json"
    first = persisted_ports(str(path), NAMES, "child")
    assert first[0] != first[1] and all(port_is_free(p) for p in first)
    assert json.loads(path.read_text()) == {"client": first[0], "peer": first[1]}
    assert persisted_ports(str(path), NAMES, "child") == first


def test_a_taken_port_is_replaced_and_said(tmp_path) -> None:
    path = tmp_path / "ports.json"
    client, peer = persisted_ports(str(path), NAMES, "embedded thing")
    with socket.socket() as squatter, capturedLogs() as events:
        squatter.bind(("127.0.0.1", client))
        squatter.listen(1)
        moved = persisted_ports(str(path), NAMES, "embedded thing")
    assert client not in moved and moved[0] != moved[1]
    assert json.loads(path.read_text()) == {"client": moved[0], "peer": moved[1]}
    warned = [e for e in events if e["log_level"] == LogLevel.warn]
    assert [(e["what"], e["first"], e["second"]) for e in warned] == [
        ("embedded thing", client, peer)]


def test_an_unreadable_or_equal_pair_is_replaced_silently(tmp_path) -> None:
    path = tmp_path / "ports.json"
    for text in ("not json", json.dumps({"client": "x"}), json.dumps([1, 2])):
        path.write_text(text)
        with capturedLogs() as events:
            client, peer = persisted_ports(str(path), NAMES, "child")
        assert client != peer and not events
    path.write_text(json.dumps({"client": client, "peer": client}))
    again = persisted_ports(str(path), NAMES, "child")
    assert again[0] != again[1]


def test_binary_from_path_first_then_the_candidates(tmp_path, monkeypatch) -> None:
    on_path = tmp_path / "bin" / "thing"
    candidate = tmp_path / "opt" / "thing"
    for tool in (on_path, candidate):
        tool.parent.mkdir()
        tool.write_text("#!/bin/sh\n")
    candidate.chmod(0o755)
    monkeypatch.setenv("PATH", str(on_path.parent))
    not_executable = tmp_path / "nope"
    not_executable.write_text("")
    assert find_binary("thing", (str(not_executable), str(candidate))) == str(candidate)
    on_path.chmod(0o755)
    assert find_binary("thing", (str(candidate),)) == str(on_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert find_binary("thing", (str(not_executable),)) is None
