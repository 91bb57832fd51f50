"""Asynchronous invocations end to end: real twistd nodes, each with its embedded
nats-server (or sharing one), real function processes, a real callback receiver."""

from __future__ import annotations

import json
import re
import shutil
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from tests.support.node import FaasNodeProcess, http
from tests.support.statehub import StateHub

pytestmark = [pytest.mark.slow, pytest.mark.nats]

ROOT = Path(__file__).resolve().parents[2]
PYTHON = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
# the callback receiver listens on loopback, refused unless listed
FAST_RETRIES = {"backoffBase": "50ms", "backoffMax": "200ms", "callbackAllow": ["127.0.0.1"]}


def wait_for(predicate, timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class Callbacks:
    """An HTTP server that records every callback it gets: call id -> [(headers, body)]."""

    def __init__(self) -> None:
        self.received: dict[str, list[tuple[dict[str, str], bytes]]] = {}
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with owner.lock:
                    got = owner.received.setdefault(self.headers.get("X-Call-Id", ""), [])
                    got.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    failing = self.path == "/flaky-hook" and len(got) <= 2
                self.send_response(503 if failing else 204)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def first(self, call_id: str, timeout: float = 30.0) -> tuple[dict[str, str], bytes]:
        return wait_for(lambda: (self.received.get(call_id) or [None])[0], timeout,
                        f"the callback of {call_id}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def callbacks() -> Iterator[Callbacks]:
    receiver = Callbacks()
    yield receiver
    receiver.close()


STATE_ROOT = Path("/nonexistent")
STATE_URL = "http://127.0.0.1:9/unset"


@pytest.fixture(autouse=True)
def state_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """Where the test functions' reports land (a function writes no host file: it
    reports to the state hub, which writes here)."""
    root = tmp_path / "state"
    root.mkdir()
    hub = StateHub(root)
    monkeypatch.setattr(sys.modules[__name__], "STATE_ROOT", root)
    monkeypatch.setattr(sys.modules[__name__], "STATE_URL", hub.url)
    yield root
    hub.close()


def function_spec(node: FaasNodeProcess, name: str, **extra: Any) -> str:
    (STATE_ROOT / name).mkdir(exist_ok=True)
    # in the node's config folder: staged into the function's own folder
    script = node.workdir / "fn" / "asyncfn.py"
    if not script.exists():
        script.parent.mkdir(exist_ok=True)
        shutil.copy(ROOT / "tests" / "support" / "asyncfn.py", script)
        script.chmod(0o644)
    return yaml.safe_dump({"name": name, "command": [PYTHON, str(script)],
                           "env": {"STATE_URL": f"{STATE_URL}/OP/{name}"},
                           "readinessPath": "/healthz",
                           "minReplica": 1, **extra})


def deploy(node: FaasNodeProcess, tmp_path: Path, name: str, **extra: Any) -> Path:
    created = node.json("POST", "", function_spec(node, name, **extra))
    assert created[0] == 201, created
    wait_for(lambda: node.json("GET", f"/{name}")[1]["status"]["state"] == "active",
             what=f"{name} active")
    return STATE_ROOT / name


def enqueue(node: FaasNodeProcess, path: str, body: bytes = b"", **headers: str) -> tuple[int, dict, bytes]:
    status, answer, data = http("POST", f"{node.gate_url}/async-function/{path}", body,
                                {k.replace("_", "-"): v for k, v in headers.items()})
    return status, {k.lower(): v for k, v in answer.items()}, data


def node_for(tmp_path: Path, name: str = "node", **queue: Any) -> FaasNodeProcess:
    return FaasNodeProcess(tmp_path / name, provider="process",
                           extra={"queue": {**FAST_RETRIES, **queue}})


def test_accept_run_callback_retry_and_dead_letters(tmp_path: Path, callbacks: Callbacks) -> None:
    node = node_for(tmp_path).start()
    try:
        state = deploy(node, tmp_path, "fn")
        # unknown function: 404, nothing queued
        status, _, body = enqueue(node, "nope/ok", b"x", X_Callback_Url=callbacks.url)
        assert status == 404, body
        # 202 with a call id, then the callback with the function's answer and headers
        status, headers, body = enqueue(node, "fn/ok", b"hello", X_Callback_Url=callbacks.url)
        assert status == 202, body
        call_id = headers["x-call-id"]
        assert json.loads(body)["callId"] == call_id
        got, payload = callbacks.first(call_id)
        assert payload == b"echo:hello"
        assert got["x-function-name"] == "fn" and got["x-function-status"] == "200"
        assert got["x-fn"] == "yes" and float(got["x-duration-seconds"]) >= 0
        assert got["x-faas-attempts"] == "1"
        # a callback answered 503 twice is sent again, without running the function again
        flaky_hook = callbacks.url.replace("/hook", "/flaky-hook")
        status, headers, _ = enqueue(node, "fn/ok", b"once", X_Callback_Url=flaky_hook)
        hooked = headers["x-call-id"]
        wait_for(lambda: len(callbacks.received.get(hooked, [])) == 3, what="3 callback tries")
        assert [b for _, b in callbacks.received[hooked]] == [b"echo:once"] * 3
        assert (state / "calls.log").read_text().split().count(hooked) == 1
        wait_for(lambda: node.json("GET", f"/fn/async/{hooked}")[1].get("callback"),
                 what="the callback result in the status")
        assert node.json("GET", f"/fn/async/{hooked}")[1]["callback"] == {
            "status": 204, "attempts": 3}
        # the header form, and a sync request through the same gate meanwhile
        status, headers, _ = http("POST", f"{node.gate_url}/ok", b"hdr",
                                  {"X-FaaS-Func-Name": "fn", "X-FaaS-Async": "true",
                                   "X-Callback-Url": callbacks.url})
        assert status == 202
        assert callbacks.first(headers["x-call-id"])[1] == b"echo:hdr"
        assert http("POST", f"{node.gate_url}/function/fn/ok", b"sync")[2] == b"echo:sync"
        # fails twice, then succeeds: one callback, 200, three attempts
        status, headers, _ = enqueue(node, "fn/flaky", b"", X_Callback_Url=callbacks.url)
        flaky = headers["x-call-id"]
        got, payload = callbacks.first(flaky)
        assert (got["x-function-status"], got["x-faas-attempts"], payload) == ("200", "3", b"try 3")
        status, record = node.json("GET", f"/fn/async/{flaky}")
        assert status == 200 and record["state"] == "succeeded" and record["attempts"] == 3
        # times as RFC 3339 text, as every time the API shows (README)
        for key in ("enqueued", "updated"):
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record[key]), record
        # always 500: five attempts, then a dead letter (and a callback saying so)
        status, headers, _ = enqueue(node, "fn/fail", b"payload", X_Callback_Url=callbacks.url)
        dead = headers["x-call-id"]
        got, _ = callbacks.first(dead)
        assert (got["x-function-status"], got["x-faas-attempts"]) == ("500", "5")
        status, listing = node.json("GET", "/fn/async")
        assert status == 200
        entry = next(e for e in listing["deadLetters"] if e["callId"] == dead)
        assert entry["attempts"] == 5 and entry["lastStatus"] == 500
        assert entry["deadAt"].endswith("Z") and entry["enqueued"].endswith("Z"), entry
        assert node.json("GET", f"/fn/async/{dead}")[1]["state"] == "dead"
        # retry re-queues it: five fresh attempts, dead again, a second callback
        status, record = node.json("POST", f"/fn/async/{dead}/retry")
        assert status == 202 and record["state"] == "queued"
        wait_for(lambda: len(callbacks.received.get(dead, [])) == 2, what="the second callback")
        assert node.json("POST", "/fn/async/no-such-call/retry")[0] == 404
        assert node.json("DELETE", "/fn/async")[0] == 200
        assert node.json("GET", "/fn/async")[1]["deadLetters"] == []
        # a callback to the node's own admin port is refused at once
        status, _, body = enqueue(node, "fn/ok", b"", X_Callback_Url=f"{node.admin_root}/x")
        assert status == 400 and b"admin" in body, body
        status, _, body = enqueue(node, "fn/ok", b"", X_Callback_Url="http://169.254.169.254/")
        assert status == 400, body
        # too large a body: 413
        status, _, _ = enqueue(node, "fn/ok", b"x" * (2**20 + 1))
        assert status == 413
    finally:
        assert node.stop() in (0, -signal.SIGTERM), node.log()


def test_concurrency_per_function_and_slow_function_does_not_starve(
        tmp_path: Path, callbacks: Callbacks) -> None:
    node = node_for(tmp_path).start()
    try:
        slow_state = deploy(node, tmp_path, "slow", asyncConcurrency=2)
        deploy(node, tmp_path, "quick")
        slow_ids = [enqueue(node, "slow/slow?ms=300", b"", X_Callback_Url=callbacks.url)[1]["x-call-id"]
                    for _ in range(10)]
        quick = enqueue(node, "quick/ok", b"q", X_Callback_Url=callbacks.url)[1]["x-call-id"]
        started = time.monotonic()
        callbacks.first(quick)
        assert time.monotonic() - started < 2.0, "the quick function waited for the slow one"
        for call_id in slow_ids:
            callbacks.first(call_id)
        assert int((slow_state / "max-concurrent").read_text()) == 2
    finally:
        assert node.stop() in (0, -signal.SIGTERM), node.log()


def test_stop_keeps_calls_queued_and_delete_dead_letters_them(
        tmp_path: Path, callbacks: Callbacks) -> None:
    node = node_for(tmp_path).start()
    try:
        deploy(node, tmp_path, "fn")
        assert node.json("PUT", "/fn/stop")[0] == 200
        wait_for(lambda: node.json("GET", "/fn")[1]["status"]["state"] == "inactive")
        call_id = enqueue(node, "fn/ok", b"later", X_Callback_Url=callbacks.url)[1]["x-call-id"]
        time.sleep(1.0)
        assert call_id not in callbacks.received
        assert node.json("GET", f"/fn/async/{call_id}")[1]["state"] == "queued"
        metric = 'faastwist_async_queued{function_name="fn"} 1.0'
        wait_for(lambda: metric in http("GET", f"{node.admin_root}/metrics")[2].decode(),
                 timeout=15, what="the queued gauge")
        assert node.json("PUT", "/fn/start")[0] == 200
        assert callbacks.first(call_id)[1] == b"echo:later"
        # stopped again, a call queued, then the function deleted: a dead letter
        assert node.json("PUT", "/fn/stop")[0] == 200
        wait_for(lambda: node.json("GET", "/fn")[1]["status"]["state"] == "inactive")
        orphan = enqueue(node, "fn/ok", b"orphan")[1]["x-call-id"]
        assert node.json("DELETE", "/fn")[0] == 200
        entry = wait_for(lambda: next((e for e in node.json("GET", "/fn/async")[1]["deadLetters"]
                                       if e["callId"] == orphan), None), what="dead letter")
        assert entry["reason"] == "function deleted"
    finally:
        assert node.stop() in (0, -signal.SIGTERM), node.log()


def enqueue_many(node: FaasNodeProcess, path: str, count: int, callback: str,
                 threads: int = 8) -> tuple[list[str], list[int]]:
    """``count`` async calls from ``threads`` clients: (call ids answered 202, other codes)."""
    accepted: list[str] = []
    refused: list[int] = []
    lock = threading.Lock()
    todo = iter(range(count))

    def client() -> None:
        while True:
            with lock:
                if next(todo, None) is None:
                    return
            try:
                status, headers, _ = enqueue(node, path, b"n", X_Callback_Url=callback)
            except OSError:
                status, headers = -1, {}
            with lock:
                (accepted.append(headers["x-call-id"]) if status == 202
                 else refused.append(status))

    workers = [threading.Thread(target=client) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    return accepted, refused


def test_kill_9_the_node_with_calls_queued_loses_none(tmp_path: Path, callbacks: Callbacks) -> None:
    node = node_for(tmp_path).start()
    try:
        deploy(node, tmp_path, "slow", asyncConcurrency=4, timeout="2s")
        accepted, refused = enqueue_many(node, "slow/slow?ms=100", 200, callbacks.url)
        assert len(accepted) == 200 and not refused
        wait_for(lambda: len(callbacks.received) >= 10, what="some calls done")
        node.process.send_signal(signal.SIGKILL)
        node.process.wait(10)
        node.stop()
    except BaseException:
        node.stop()
        raise
    done_before = len(callbacks.received)
    assert done_before < 200, "every call finished before the kill: the test proves nothing"
    again = node_for(tmp_path).start()
    try:
        missing = lambda: [c for c in accepted if c not in callbacks.received]
        wait_for(lambda: not missing(), timeout=90, what="every callback after the restart")
    finally:
        assert again.stop() in (0, -signal.SIGTERM), again.log()


def test_kill_9_nats_mid_run_loses_no_202(tmp_path: Path, callbacks: Callbacks) -> None:
    from tests.support.nats import NatsProcess

    nats = NatsProcess(str(tmp_path / "nats"))
    nats.start()
    node = node_for(tmp_path, natsURLs=[nats.url], timeout="1s")
    try:
        node.start()
        # a short timeout: messages delivered to a fetch that NATS's crash cut off are
        # redelivered after the ack wait (timeout + 10 s)
        deploy(node, tmp_path, "fn", timeout="3s")
        result: dict[str, Any] = {}
        sender = threading.Thread(target=lambda: result.update(
            zip(("accepted", "refused"), enqueue_many(node, "fn/ok", 600, callbacks.url, 4))))
        sender.start()
        wait_for(lambda: len(callbacks.received) >= 20, what="calls flowing")
        nats.kill()
        time.sleep(1.0)
        nats.start()
        sender.join(120)
        accepted, refused = result["accepted"], result["refused"]
        assert refused, "NATS was down and no call was refused: the test proves nothing"
        assert set(refused) <= {503}, refused
        missing = lambda: [c for c in accepted if c not in callbacks.received]
        try:
            wait_for(lambda: not missing(), timeout=45, what="a callback for every 202")
        except AssertionError:
            lost = missing()
            raise AssertionError(f"{len(lost)} of {len(accepted)} lost: " + repr(
                [node.json("GET", f"/fn/async/{c}") for c in lost[:5]])) from None
    finally:
        code = node.stop()
        nats.stop()
    assert code in (0, -signal.SIGTERM), node.log()


def test_two_nodes_share_the_queue_and_run_each_call_once(
        tmp_path: Path, callbacks: Callbacks) -> None:
    """Two nodes of one controller on one NATS: every call runs once, on either node.
    (Each node has its own embedded etcd with the same function: with one shared
    etcd, only the leader runs process-provider replicas today.)"""
    from tests.support.nats import NatsProcess

    nats = NatsProcess(str(tmp_path / "nats"))
    nats.start()
    nodes = [node_for(tmp_path, name, natsURLs=[nats.url]) for name in ("a", "b")]
    try:
        for node in nodes:
            node.start()
        for node in nodes:
            state = deploy(node, tmp_path, "fn")
        accepted = []
        for i in range(100):
            node = nodes[i % 2]
            status, headers, _ = enqueue(node, "fn/ok", b"x", X_Callback_Url=callbacks.url)
            assert status == 202
            accepted.append(headers["x-call-id"])
        wait_for(lambda: all(c in callbacks.received for c in accepted), timeout=60,
                 what="every callback")
        runs = (state / "calls.log").read_text().split()
        assert sorted(runs) == sorted(accepted), "a call ran twice, or not at all"
        assert all(len(callbacks.received[c]) == 1 for c in accepted)
        ids = set(accepted)
        ran_on = [sum(1 for line in node.log_path.read_text().splitlines()
                      if " fn 200 " in line and line.rsplit(" ", 1)[-1] in ids)
                  for node in nodes]
        assert all(ran_on), f"one node ran every call: {ran_on}"
    finally:
        codes = [node.stop() for node in nodes]
        nats.stop()
    assert all(code in (0, -signal.SIGTERM) for code in codes)


def test_cli_invoke_async_and_async_commands(tmp_path: Path, callbacks: Callbacks) -> None:
    from tests.support.cli import run_cli

    node = node_for(tmp_path).start()
    try:
        deploy(node, tmp_path, "fn")
        result = run_cli(node, "invoke", "fn", "--async", "--callback", callbacks.url,
                         "--path", "/ok", "-d", "via cli")
        assert result.returncode == 0, result.stderr
        call_id = result.stdout.split("call id ")[1].strip()
        assert callbacks.first(call_id)[1] == b"echo:via cli"
        got = run_cli(node, "async", "get", "fn", call_id, "-o", "json")
        assert got.returncode == 0 and json.loads(got.stdout)["state"] == "succeeded"
        failing = run_cli(node, "invoke", "fn", "--async", "--path", "/fail")
        dead = failing.stdout.split("call id ")[1].strip()
        wait_for(lambda: dead in run_cli(node, "async", "list", "fn").stdout, what="dead")
        listing = run_cli(node, "async", "list", "fn").stdout
        assert "CALL ID" in listing and "no attempts left" in listing
        assert run_cli(node, "async", "retry", "fn", dead).returncode == 0
        assert json.loads(run_cli(node, "async", "get", "fn", dead, "-o", "json").stdout)[
            "state"] in ("queued", "running", "dead")
        missing = run_cli(node, "async", "get", "fn", "nope")
        assert missing.returncode == 1 and "no call nope" in missing.stderr
        wait_for(lambda: dead in run_cli(node, "async", "list", "fn").stdout, what="dead again")
        assert run_cli(node, "async", "purge", "fn", "--yes").returncode == 0
        assert dead not in run_cli(node, "async", "list", "fn").stdout
        refused = run_cli(node, "invoke", "fn", "--callback", callbacks.url)
        assert refused.returncode == 2 and "needs --async" in refused.stderr
    finally:
        assert node.stop() in (0, -signal.SIGTERM), node.log()


def test_calls_for_an_inactive_function_expire_after_max_age(
        tmp_path: Path, callbacks: Callbacks) -> None:
    node = node_for(tmp_path, maxAge="2s").start()
    try:
        deploy(node, tmp_path, "fn")
        assert node.json("PUT", "/fn/stop")[0] == 200
        wait_for(lambda: node.json("GET", "/fn")[1]["status"]["state"] == "inactive")
        call_id = enqueue(node, "fn/ok", b"late", X_Callback_Url=callbacks.url)[1]["x-call-id"]
        entry = wait_for(lambda: next((e for e in node.json("GET", "/fn/async")[1]["deadLetters"]
                                       if e["callId"] == call_id), None), timeout=30,
                         what="the expired call in the dead letters")
        assert "was not active within queue.maxAge (state: inactive)" in entry["reason"]
        assert entry["attempts"] == 0
        assert node.json("GET", f"/fn/async/{call_id}")[1]["state"] == "dead"
        assert call_id not in callbacks.received  # it never ran: no callback
    finally:
        assert node.stop() in (0, -signal.SIGTERM), node.log()


def test_anonymous_calls_to_a_stopped_function_are_bounded(tmp_path: Path) -> None:
    """The issue's attack: anonymous 1 MiB calls to stopped functions. Each function
    keeps at most its maxQueued (429 after), the whole queue at most queue.maxBytes
    (507 after); every refusal says why with Retry-After, nothing refused is stored."""
    node = node_for(tmp_path, maxQueued=5, maxBytes="8Mi").start()
    try:
        for name in ("a", "b"):
            deploy(node, tmp_path, name)
            assert node.json("PUT", f"/{name}/stop")[0] == 200
            wait_for(lambda name=name: node.json("GET", f"/{name}")[1]["status"]["state"] == "inactive")
        body = b"x" * (2**20 - 1024)
        codes = [enqueue(node, "a/ok", body)[0] for _ in range(8)]
        assert codes == [202] * 5 + [429] * 3
        status, headers, answer = enqueue(node, "a/ok", body)
        assert (status, headers["retry-after"]) == (429, "1")
        assert json.loads(answer)["message"].startswith("function a has 5 calls queued")
        # b fills what is left of the 8 MiB stream: then the queue itself is full
        codes = [enqueue(node, "b/ok", body)[0] for _ in range(4)]
        assert codes[:2] == [202, 202] and codes[-1] == 507, codes
        status, headers, answer = enqueue(node, "b/ok", body)
        assert (status, headers["retry-after"]) == (507, "30")
        assert "queue.maxBytes" in json.loads(answer)["message"]
        metrics = http("GET", f"{node.admin_root}/metrics")[2].decode()
        assert 'faastwist_async_refused_total{function_name="a",reason="function-full"} 4.0' \
            in metrics
    finally:
        assert node.stop() in (0, -signal.SIGTERM), node.log()


def test_a_killed_nodes_calls_run_on_another_node_after_one_ack_wait(tmp_path: Path) -> None:
    """Node a runs every slot of a slow function when it is SIGKILLed: node b runs those
    calls again one queue.ackWait later (a's in-progress acknowledgements stopped), not
    after the function's timeout (the issue measured slots taken for ~70 s)."""
    from tests.support.nats import NatsProcess

    nats = NatsProcess(str(tmp_path / "nats"))
    nats.start()
    a = node_for(tmp_path, "a", natsURLs=[nats.url], ackWait="2s")
    b = node_for(tmp_path, "b", natsURLs=[nats.url], ackWait="2s")
    try:
        a.start()
        state = deploy(a, tmp_path, "slow", asyncConcurrency=4)
        ids = [enqueue(a, "slow/slow?ms=12000", b"")[1]["x-call-id"] for _ in range(4)]
        log = state / "calls.log"
        runs = lambda: log.read_text().split() if log.exists() else []
        wait_for(lambda: sorted(runs()) == sorted(ids), what="a runs all four")
        b.start()
        deploy(b, tmp_path, "slow", asyncConcurrency=4)
        # b's start and deploy take longer than ackWait: a kept its calls meanwhile with
        # in-progress acknowledgements (none was delivered again)
        assert sorted(runs()) == sorted(ids), "a call ran twice while its node lived"
        a.process.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        a.process.wait(10)
        wait_for(lambda: sorted(runs()) == sorted(ids * 2), timeout=30,
                 what="b runs a's four calls")
        assert time.monotonic() - killed < 2.0 + 3.0
    finally:
        codes = [node.stop() for node in (b, a)]
        nats.stop()
    assert codes[0] in (0, -signal.SIGTERM)


def test_a_call_in_its_backoff_does_not_hold_its_functions_slot(
        tmp_path: Path, callbacks: Callbacks) -> None:
    """asyncConcurrency 1 and a call that fails with a 10-20 s backoff: the function's
    next call runs at once (the failing one waits in the delayed stream, not in the
    consumer's only max_ack_pending slot), and the failing one is tried again later
    with its attempts counted."""
    node = node_for(tmp_path, backoffBase="10s", backoffMax="20s", maxAttempts=2).start()
    try:
        deploy(node, tmp_path, "one", asyncConcurrency=1)
        failing = enqueue(node, "one/fail", b"", X_Callback_Url=callbacks.url)[1]["x-call-id"]
        wait_for(lambda: node.json("GET", f"/one/async/{failing}")[1].get("attempts") == 1
                 and node.json("GET", f"/one/async/{failing}")[1]["state"] == "queued",
                 what="the first attempt failed")
        started = time.monotonic()
        quick = enqueue(node, "one/ok", b"q", X_Callback_Url=callbacks.url)[1]["x-call-id"]
        assert callbacks.first(quick)[1] == b"echo:q"
        assert time.monotonic() - started < 5.0, "the quick call waited for the backoff"
        got, _ = callbacks.first(failing)   # the second (last) attempt, then dead
        assert got["x-faas-attempts"] == "2"
        assert node.json("GET", f"/one/async/{failing}")[1]["state"] == "dead"
    finally:
        assert node.stop() in (0, -signal.SIGTERM), node.log()


def test_a_callback_in_its_backoff_does_not_hold_the_callback_slot(
        tmp_path: Path, callbacks: Callbacks) -> None:
    """callbackConcurrency 1 and a receiver that is down (10-20 s backoff): another
    call's callback is still delivered at once."""
    from faastwist.util.ports import free_port

    node = node_for(tmp_path, backoffBase="10s", backoffMax="20s",
                    callbackConcurrency=1).start()
    try:
        deploy(node, tmp_path, "fn")
        down = f"http://127.0.0.1:{free_port()}/nobody"
        lost = enqueue(node, "fn/ok", b"", X_Callback_Url=down)[1]["x-call-id"]
        retried = 'faastwist_async_callbacks_total{function_name="fn",result="retried"} 1.0'
        wait_for(lambda: retried in http("GET", f"{node.admin_root}/metrics")[2].decode(),
                 what="the first callback try failed")
        started = time.monotonic()
        quick = enqueue(node, "fn/ok", b"q", X_Callback_Url=callbacks.url)[1]["x-call-id"]
        assert callbacks.first(quick)[1] == b"echo:q"
        assert time.monotonic() - started < 5.0, "the callback waited for another's backoff"
        assert lost not in callbacks.received
    finally:
        assert node.stop() in (0, -signal.SIGTERM), node.log()
