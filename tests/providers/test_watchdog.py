"""Fork-mode functions: the watchdog listener in the gate that runs the command once per
request (faastwist.providers.watchdog), with real child processes on loopback. The
fixtures are the process provider's (tests/providers/test_process.py): each test's
provider is stopped and its children checked gone by pid."""

from __future__ import annotations

import pytest
import pytest_twisted
import treq

from faastwist.model.fsm import Event
from tests.providers.test_process import WORDCOUNT, call, logged_texts, observed, wait_for
from tests.support.process import PYTHON, alive, function_spec

pytestmark = pytest.mark.slow   # real child processes and sockets


@pytest_twisted.ensureDeferred
async def test_fork_mode_stdin_stdout_and_headers(providers):
    provider = providers()
    script = (
        "import os, sys\n"
        "data = sys.stdin.read()\n"
        "print(data.upper())\n"
        "print(os.environ['Http_Method'], os.environ['Http_Path'], os.environ['Http_Query'])\n"
        "print(os.environ['Http_X_Custom_Header'], os.environ['GREETING'])\n"
        "sys.stderr.write('handled\\n')\n")
    spec = function_spec(name="upper", command=[PYTHON, "-c", script], mode="fork",
                         env={"GREETING": "hello"})
    await provider.deploy(spec)
    assert (await observed(provider, "upper")).event is Event.READY
    code, body, _ = await call(provider, spec, "/some/path?x=1", b"abc",
                               {"X-Custom-Header": "v1"})
    assert code == 200
    assert body.decode().splitlines() == ["ABC", "POST /some/path x=1", "v1 hello"]
    assert await logged_texts(provider, "upper", "handled") == ["handled"]
    # the example function from conf/
    wordcount = function_spec(name="wordcount", command=[PYTHON, WORDCOUNT], mode="fork")
    await provider.deploy(wordcount)
    code, body, response = await call(provider, wordcount, "/", b"one two\nthree\n")
    assert (code, body) == (200, b"2 3 14\n")
    assert response.headers.getRawHeaders("content-type") == ["text/plain; charset=utf-8"]
    assert provider.pids("wordcount") == []          # no process between requests


@pytest_twisted.ensureDeferred
async def test_fork_mode_failure_and_timeout(providers, monkeypatch):
    monkeypatch.setattr("faastwist.providers.watchdog.MAX_OUTPUT", 10_000)
    provider = providers()
    chatty = function_spec(name="chatty", mode="fork", command=[
        PYTHON, "-c", "import sys\nwhile True: sys.stdout.write('x' * 4096)"])
    await provider.deploy(chatty)
    code, body, _ = await call(provider, chatty)
    assert code == 500 and b"wrote more than 10000 bytes to stdout" in body
    failing = function_spec(name="failing", mode="fork", command=[
        PYTHON, "-c", "import sys; sys.stderr.write('bad input\\n'); sys.exit(4)"])
    await provider.deploy(failing)
    code, body, _ = await call(provider, failing)
    assert code == 500 and b"exit code 4" in body and b"bad input" in body
    slow = function_spec(name="slow", mode="fork", timeout="300ms",
                         command=[PYTHON, "-c", "import time; time.sleep(30)"])
    await provider.deploy(slow)
    lease = provider.acquire(slow)
    request = treq.get(lease.upstream.origin.decode() + "/")
    await wait_for(lambda: provider.pids("slow"))
    pid = provider.pids("slow")[0]
    response = await request
    assert response.code == 504
    assert b"timed out after 0.3s" in await treq.content(response)
    await wait_for(lambda: not alive(pid))


@pytest_twisted.ensureDeferred
async def test_fork_mode_listens_only_once_asked(providers):
    provider = providers()
    spec = function_spec(name="wc", mode="fork", command=["/usr/bin/wc", "-c"])
    await provider.deploy(spec)
    runtime = provider.runtimes["wc"]
    assert runtime.watchdog is None                   # deployed and ready, no socket yet
    (observation,) = (await provider.observe(["wc"])).values()
    assert observation.event is Event.READY
    lease = provider.acquire(spec)
    response = await treq.post(lease.upstream.origin.decode(), data=b"12345")
    assert (await treq.content(response)).strip() == b"5"
    assert runtime.watchdog is not None and provider.acquire(spec) is lease
    await provider.stop(spec)
    assert runtime.watchdog is None
