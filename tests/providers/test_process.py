"""The process provider with real child processes on loopback.

Each test starts its own provider; the fixture stops it and checks by pid that no
child (nor a child's own workers) outlives the test.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any, Callable

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.task import deferLater

from faastwist.model.fsm import Event
from faastwist.providers.base import LogLine, NoCapacity
from faastwist.providers.orphans import GATE_PID_VAR, OWNER_VAR, find_orphans
from faastwist.providers.process import ProcessProvider
from faastwist.model.spec import SpecError
from tests.support.process import (
    PYTHON,
    REPO,
    alive,
    fast_tuning,
    function_pids,
    function_spec,
    group_members,
    make_provider,
    write_script,
)

pytestmark = pytest.mark.slow   # real child processes and sockets

ECHO = str(REPO / "conf" / "functions" / "echo.py")
WORDCOUNT = str(REPO / "conf" / "functions" / "wordcount.py")


@pytest.fixture
def providers(tmp_path: Path):
    made: list[ProcessProvider] = []
    seen: set[int] = set()

    def make(**kwargs: Any) -> ProcessProvider:
        provider = make_provider(reactor, tmp_path / "data", **kwargs)
        made.append(provider)
        return provider

    make.seen = seen  # type: ignore[attr-defined]
    yield make
    for provider in made:
        seen.update(provider.pids())
        if provider.running:
            pytest_twisted.blockon(provider.stopService())
    assert [pid for pid in seen if alive(pid)] == []


async def wait_for(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = reactor.seconds() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if reactor.seconds() > deadline:
            raise AssertionError("condition not met in time")
        await deferLater(reactor, 0.02, lambda: None)


async def logged_texts(provider: ProcessProvider, name: str, *wanted: str,
                       timeout: float = 10.0) -> list[str]:
    """The function's log lines once every wanted line is among them (or at the timeout):
    a replica's output is read from its pipe by the reactor, after its answer."""
    deadline = reactor.seconds() + timeout
    while True:
        texts = [line.text for line in await provider.read_logs(name)]
        if all(text in texts for text in wanted) or reactor.seconds() > deadline:
            return texts
        await deferLater(reactor, 0.02, lambda: None)


async def observed(provider: ProcessProvider, name: str):
    return (await provider.observe([name]))[name]


async def call(provider: ProcessProvider, spec, path: str = "/", body: bytes = b"",
               headers: dict | None = None) -> tuple[int, bytes, Any]:
    lease = await maybeDeferred(provider.acquire, spec)
    try:
        response = await treq.post(lease.upstream.origin.decode() + path, data=body,
                                   headers=headers or {})
        return response.code, await treq.content(response), response
    finally:
        lease.release()


def test_declares_its_optional_capabilities(tmp_path: Path) -> None:
    """The node wires on_change, the log endpoints and the secret store from what the
    registry's factory hands out typed with the provider (no probing of the object)."""
    from faastwist.config import ControllerConfig, ProcessConfig
    from faastwist.metrics import Metrics
    from faastwist.providers.registry import PROCESS, ProviderContext

    config = ControllerConfig(provider="process",
                              process=ProcessConfig(data_dir=str(tmp_path / "data")))
    parts = PROCESS.build(ProviderContext(config, reactor, Metrics()))
    assert isinstance(parts.provider, ProcessProvider)
    assert parts.changes is parts.provider and parts.logs is parts.provider
    assert parts.secrets is parts.provider


@pytest_twisted.ensureDeferred
async def test_deploy_ready_invoke_and_logs(providers):
    provider = providers()
    spec = function_spec(name="echo", command=[PYTHON, ECHO], minReplica=1,
                         readinessPath="/healthz")
    provider.check_spec(spec)
    changes: list[str] = []
    provider.on_change = changes.append
    await provider.deploy(spec)
    assert (await observed(provider, "echo")).event is None      # starting
    await wait_for(lambda: provider.runtimes["echo"].ready)
    await wait_for(lambda: changes == ["echo"])                 # ready: tell the reconciler
    observation = await observed(provider, "echo")
    assert observation.event is Event.READY and observation.digest == spec.digest()
    code, body, _ = await call(provider, spec, "/tomcat/job/api", b'{"megaease":"hi"}')
    assert (code, body) == (200, b'V3 Body is \n{"megaease":"hi"}')
    # stdout lines reach the ring, the file and the logs API
    replica = provider.runtimes["echo"].ready[0]
    await wait_for(lambda: any("POST /tomcat/job/api" in l.text for l in replica.ring))
    lines = await provider.read_logs("echo", tail=2)
    assert lines[-1].text == "POST /tomcat/job/api -> 200"
    assert lines[-1].instance == f"echo-{replica.pid}"
    log_file = Path(provider.config.data_dir) / "logs" / "echo.log"
    assert "echo listening on" in log_file.read_text()


@pytest_twisted.ensureDeferred
async def test_logs_tail_since_and_follow(providers):
    provider = providers()
    spec = function_spec(name="talker", command=[
        PYTHON, "-u", "-c",
        "import sys, time\n"
        "for i in range(5): print('line', i)\n"
        "time.sleep(0.3)  # stdout and stderr are two pipes: keep their order clear\n"
        "sys.stderr.write('to stderr\\n'); sys.stderr.flush()\n"
        "for line in sys.stdin: print('got', line.strip())\n"], minReplica=1)
    followed: list[LogLine] = []
    stop_following = provider.follow_logs("talker", followed.append)
    await provider.deploy(spec)
    await wait_for(lambda: len(followed) >= 6)
    assert [l.text for l in followed[:6]] == [f"line {i}" for i in range(5)] + ["to stderr"]
    stop_following()
    everything = await provider.read_logs("talker")
    assert [l.text for l in everything] == [l.text for l in followed[:6]]
    tail = await provider.read_logs("talker", tail=2)
    assert [l.text for l in tail] == ["line 4", "to stderr"]
    since = await provider.read_logs("talker", since=followed[3].timestamp)
    assert [l.text for l in since][0] == "line 3"
    assert [l.to_dict()["name"] for l in tail] == ["talker", "talker"]
    assert tail[0].to_dict()["timestamp"].endswith("Z")


@pytest_twisted.ensureDeferred
async def test_scale_from_zero_holds_first_request_then_idles_to_zero(providers):
    provider = providers(tuning=fast_tuning(idle_timeout=0.5), scale_interval=0.1)
    spec = function_spec(name="echo", command=[PYTHON, ECHO], readinessPath="/healthz")
    await provider.deploy(spec)
    assert provider.pids() == []
    assert (await observed(provider, "echo")).event is Event.READY
    code, body, _ = await call(provider, spec, "/", b"cold")
    assert (code, body) == (200, b"V3 Body is \ncold")
    [pid] = provider.pids("echo")
    await wait_for(lambda: provider.pids("echo") == [], timeout=5)
    assert not alive(pid)
    assert (await observed(provider, "echo")).event is Event.READY
    code, _, _ = await call(provider, spec, "/", b"again")   # and cold-starts again
    assert code == 200 and provider.pids("echo") != [pid]


@pytest_twisted.ensureDeferred
async def test_fifty_concurrent_cold_requests_share_one_start(providers):
    provider = providers()
    spec = function_spec(name="echo", command=[PYTHON, ECHO], autoScaleValue="1000")
    await provider.deploy(spec)
    calls = [call(provider, spec, "/", str(i).encode()) for i in range(50)]
    answers = await DeferredList([Deferred.fromCoroutine(c) for c in calls],
                                 fireOnOneErrback=True, consumeErrors=True)
    assert [a[1][:2] for a in answers] == [(200, b"V3 Body is \n" + str(i).encode())
                                          for i in range(50)]
    assert len(provider.pids("echo")) == 1
    lines = await provider.read_logs("echo")
    assert sum(l.text.startswith("echo listening on") for l in lines) == 1


@pytest_twisted.ensureDeferred
async def test_cold_start_timeout_is_503_material_not_a_forward(providers):
    provider = providers(tuning=fast_tuning(cold_start_timeout=0.3))
    spec = function_spec(name="never", command=[PYTHON, "-c", "import time; time.sleep(30)"])
    await provider.deploy(spec)
    with pytest.raises(NoCapacity) as refused:
        await maybeDeferred(provider.acquire, spec)
    assert "did not become ready within 0.3s" in str(refused.value)
    assert refused.value.retry_after == 1  # ceil(0.3 / 6), at least 1


@pytest_twisted.ensureDeferred
async def test_crash_loop_fails_with_exit_code_and_stderr(providers):
    provider = providers()
    spec = function_spec(name="crasher", minReplica=1, command=[
        PYTHON, "-c", "import sys; print('starting'); sys.stderr.write('fatal: no config\\n');"
        " sys.exit(3)"])
    await provider.deploy(spec)

    async def error():
        observation = await observed(provider, "crasher")
        return observation if observation.event is Event.ERROR else None
    observation = None
    for _ in range(200):
        observation = await error()
        if observation:
            break
        await deferLater(reactor, 0.05, lambda: None)
    assert observation is not None
    assert observation.ext_data["exitCode"] == "3"
    assert "fatal: no config" in observation.ext_data["stderr"]
    assert "exited with code 3" in observation.message
    # update to a command that works: the same runtime recovers
    fixed = function_spec(name="crasher", minReplica=1, command=[PYTHON, ECHO])
    await provider.update(fixed)
    await wait_for(lambda: provider.runtimes["crasher"].ready)
    assert (await observed(provider, "crasher")).event is Event.READY


@pytest_twisted.ensureDeferred
async def test_stop_and_delete_leave_no_process_behind(providers):
    provider = providers()
    worker = write_script(Path(provider.config.data_dir).parent, "forking.py", """
        import os, subprocess, sys
        child = subprocess.Popen(["sleep", "300"])
        print("worker", child.pid, flush=True)
        os.execv(sys.executable, [sys.executable, sys.argv[1]])
    """)
    spec = function_spec(name="forker", minReplica=2, maxReplica=2,
                         command=[PYTHON, worker, ECHO])
    await provider.deploy(spec)
    await wait_for(lambda: len(provider.runtimes["forker"].ready) == 2)
    lines = await provider.read_logs("forker")
    assert len([l for l in lines if l.text.startswith("worker")]) == 2
    # the replicas and their sleeping children, as the host sees them (each replica
    # has a PID namespace of its own: the pids it logs are not these)
    workers = await wait_for(lambda: len(function_pids("forker")) == 4 and function_pids("forker"))
    pids = provider.pids("forker")
    assert len(pids) == 2
    assert all(alive(pid) for pid in workers + pids)
    await provider.stop(spec)
    assert (await observed(provider, "forker")).stopped
    assert [pid for pid in workers + pids if alive(pid)] == []
    assert all(group_members(pid) == [] for pid in pids)
    await provider.start(spec)
    await wait_for(lambda: len(provider.runtimes["forker"].ready) == 2)
    pids = provider.pids("forker")
    log_file = Path(provider.config.data_dir) / "logs" / "forker.log"
    assert log_file.exists()
    await provider.delete("forker")
    assert [pid for pid in pids if alive(pid)] == []
    assert not log_file.exists()
    assert await provider.observe() == {}
    await provider.delete("forker")                  # already gone is fine


@pytest_twisted.ensureDeferred
async def test_sigterm_ignored_means_sigkill_after_the_grace(providers):
    # without the sandbox: under bubblewrap its monitor dies of the SIGTERM and takes
    # the function with it at once (its parent-death signal), so no grace is spent
    # (this test passed there only while a stop also waited ~2 s for the zombies a
    # late-reaping init leaves; see test_replica.py)
    provider = providers(tuning=fast_tuning(stop_grace=0.3), sandbox=False)
    spec = function_spec(name="stubborn", minReplica=1, command=[
        PYTHON, "-c",
        "import signal, socket, os, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "s = socket.socket(); s.bind(('127.0.0.1', int(os.environ['PORT']))); s.listen()\n"
        "time.sleep(60)\n"])
    await provider.deploy(spec)
    await wait_for(lambda: provider.runtimes["stubborn"].ready)
    [pid] = provider.pids()
    started = reactor.seconds()
    await provider.stop(spec)
    assert not alive(pid) and reactor.seconds() - started >= 0.3


@pytest_twisted.ensureDeferred
async def test_concurrency_autoscale_grows_and_shrinks_real_replicas(providers):
    provider = providers(tuning=fast_tuning(scale_down_delay=0.0), scale_interval=0.1)
    spec = function_spec(name="echo", command=[PYTHON, ECHO], minReplica=1, maxReplica=3,
                         autoScaleValue="1")
    await provider.deploy(spec)
    runtime = provider.runtimes["echo"]
    await wait_for(lambda: runtime.ready)
    leases = [await maybeDeferred(provider.acquire, spec) for _ in range(3)]
    await wait_for(lambda: len(runtime.ready) == 3)
    assert len(provider.pids("echo")) == 3
    more = [await maybeDeferred(provider.acquire, spec) for _ in range(3)]
    assert len({lease.upstream.port for lease in more}) == 3      # round robin
    for lease in more:
        response = await treq.post(lease.upstream.origin.decode(), data=b"x")
        assert response.code == 200
        await treq.content(response)
    scaled = provider.pids("echo")
    for lease in leases + more:
        lease.release()
    await wait_for(lambda: len(provider.pids("echo")) == 1)
    await wait_for(lambda: sum(alive(pid) for pid in scaled) == 1)
    assert (await observed(provider, "echo")).event is Event.READY


@pytest_twisted.ensureDeferred
async def test_stop_service_ends_every_child_and_a_restart_redeploys(providers, tmp_path):
    provider = providers()
    http = function_spec(name="echo", command=[PYTHON, ECHO], minReplica=2)
    fork = function_spec(name="sleeper", mode="fork",
                         command=[PYTHON, "-c", "import time; time.sleep(30)"])
    await provider.deploy(http)
    await provider.deploy(fork)
    lease = provider.acquire(fork)
    pending = treq.get(lease.upstream.origin.decode())
    pending.addErrback(lambda f: None)
    await wait_for(lambda: len(provider.pids()) == 3)
    pids = provider.pids()
    await provider.stopService()
    assert [pid for pid in pids if alive(pid)] == []
    # after a restart the provider knows nothing: the reconciler deploys again
    again = providers()
    assert await again.observe() == {}
    await again.deploy(http)
    await wait_for(lambda: len(again.runtimes["echo"].ready) == 2)


@pytest_twisted.ensureDeferred
async def test_orphans_of_a_killed_gate_are_swept_at_start(providers, tmp_path):
    provider = providers()
    # a process carrying this provider's token and the pid of a gate that is gone
    dead_gate = _dead_pid()
    env = dict(os.environ, **{OWNER_VAR: provider.token, GATE_PID_VAR: str(dead_gate)})
    orphan = os.spawnve(os.P_NOWAIT, "/usr/bin/setsid",
                        ["setsid", PYTHON, "-c", "import time; time.sleep(60)"], env)
    try:
        await wait_for(lambda: orphan in find_orphans(provider.token))
        await provider.stopService()
        providers()                                   # its start-up sweeps
        await wait_for(lambda: _reaped(orphan))
    finally:
        if not _reaped(orphan):
            os.kill(orphan, signal.SIGKILL)
            os.waitpid(orphan, 0)


def _dead_pid() -> int:
    pid = os.spawnv(os.P_NOWAIT, "/bin/true", ["true"])
    os.waitpid(pid, 0)
    return pid


def _reaped(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return done == pid


def test_check_spec_names_the_field(providers):
    provider = providers()
    with pytest.raises(SpecError, match="command.*required"):
        provider.check_spec(function_spec(command=[]))
    provider.check_spec(function_spec(autoScaleType="cpu"))   # measured per process group
    with pytest.raises(SpecError, match="command.*'no-such-program-x': no such executable"):
        provider.check_spec(function_spec(command=["no-such-program-x"]))
    with pytest.raises(SpecError, match="command.*no such executable relative to"):
        provider.check_spec(function_spec(command=["conf/functions/missing.sh"]))
    with pytest.raises(SpecError, match="port.*fixed port fits one replica"):
        provider.check_spec(function_spec(port=8080, maxReplica=2))
    provider.check_spec(function_spec(command=["python3", "conf/functions/echo.py"]))
    provider.check_spec(function_spec(command=[PYTHON, "x"], port=8080, maxReplica=1))


@pytest_twisted.ensureDeferred
async def test_http_readiness_probe_waits_for_a_2xx(providers):
    provider = providers()
    server = write_script(Path(provider.config.data_dir).parent, "warming.py", """
        import os
        from http.server import BaseHTTPRequestHandler, HTTPServer
        probes = []
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                probes.append(self.path)
                code = 503 if len(probes) <= 3 else 200
                print("probe", len(probes), self.path, code, flush=True)
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()
            def log_message(self, *args):
                pass
        HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
    """)
    spec = function_spec(name="warming", minReplica=1, readinessPath="/ready?deep=1",
                         command=[PYTHON, server])
    await provider.deploy(spec)
    runtime = provider.runtimes["warming"]
    await wait_for(lambda: runtime.ready)
    texts = [l.text for l in await provider.read_logs("warming")]
    assert texts[:4] == ["probe 1 /ready?deep=1 503", "probe 2 /ready?deep=1 503",
                         "probe 3 /ready?deep=1 503", "probe 4 /ready?deep=1 200"]


@pytest_twisted.ensureDeferred
async def test_a_request_before_the_first_deploy_deploys_the_function(providers):
    provider = providers(tuning=fast_tuning(cold_start_timeout=2.0))
    spec = function_spec(name="echo", command=[PYTHON, ECHO])
    early = provider.acquire(spec)                    # the node restarted: route known,
    assert isinstance(early, Deferred)                # function not deployed here yet
    assert "echo" in provider.runtimes                # ... so the gate's request deploys it
    lease = await early
    response = await treq.post(lease.upstream.origin.decode(), data=b"early")
    assert await treq.content(response) == b"V3 Body is \nearly"
    lease.release()
    # the reconciler's pass then finds it running: ready, nothing to deploy
    (observation,) = (await provider.observe(["echo"])).values()
    assert observation.event is Event.READY and not observation.stopped
    await provider.deploy(spec)                       # and a deploy anyway is harmless
    assert provider.pids("echo") and len(provider.runtimes) == 1


@pytest_twisted.ensureDeferred
async def test_envprocess_forks_run_as_the_function_user_never_root(providers):
    """The classic watchdog and every fprocess it forks run as the function's user:
    the privilege drop wraps the envProcess replica like any other (as root, the
    function's uid; else the node's own, which is not root either)."""
    provider = providers()
    spec = function_spec(name="wd-who", command=[], envProcess="sh -c 'id -u; id -g; id -G'",
                         minReplica=1)
    provider.check_spec(spec)
    await provider.deploy(spec)
    await wait_for(lambda: provider.runtimes["wd-who"].ready)
    code, body, _ = await call(provider, spec, "/", b"")
    assert code == 200, body
    uid, gid, groups = body.decode().split("\n")[:3]
    identity = provider.launcher.identity_of("wd-who")
    assert (int(uid), int(gid)) == (identity.uid, identity.gid)
    assert int(uid) != 0 and int(gid) != 0 and "0" not in groups.split()


@pytest_twisted.ensureDeferred
async def test_envprocess_replicas_are_watchdog_processes(providers):
    """An envProcess function without a command: each replica is a watchdog process
    that runs envProcess once per request (OpenFaaS's classic contract)."""
    provider = providers()
    spec = function_spec(name="wd", command=[], envProcess="tr a-z A-Z", minReplica=2,
                         env={"content_type": "text/x-upper", "write_debug": "true"})
    provider.check_spec(spec)
    await provider.deploy(spec)
    await wait_for(lambda: len(provider.runtimes["wd"].ready) == 2)
    assert len(provider.pids("wd")) == 2
    code, body, response = await call(provider, spec, "/", b"hello")
    assert (code, body) == (200, b"HELLO")
    assert response.headers.getRawHeaders("content-type") == ["text/x-upper"]
    # write_debug logs the output; it reaches the log through the replica's pipe, which
    # the node reads after the answer went out (under load, a moment later)
    texts = await logged_texts(provider, "wd", "Forking fprocess.", "HELLO")
    assert "Forking fprocess." in texts and "HELLO" in texts
    assert any(t.startswith("Wrote 5 Bytes - Duration: ") for t in texts)
    with pytest.raises(SpecError, match="envProcess.*no-such-tool"):
        provider.check_spec(function_spec(name="x", command=[], envProcess="no-such-tool -x"))
    with pytest.raises(SpecError, match="env.exec_timeout"):
        provider.check_spec(function_spec(name="x", command=[], envProcess="cat",
                                          env={"exec_timeout": "soon"}))
    with pytest.raises(SpecError, match="command: is required.*envProcess"):
        provider.check_spec(function_spec(name="x", command=[]))
