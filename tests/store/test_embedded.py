"""The embedded etcd: a real etcd child, supervised (restart on crash, clean stop)."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from typing import Iterator

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater

from tests.support.etcd import require_etcd
from faastwist.model.fsm import FunctionStatus
from faastwist.model.spec import FunctionSpec
from faastwist.store.embedded import (
    ETCD_MISSING_MESSAGE,
    EmbeddedEtcd,
    EmbeddedEtcdError,
    EtcdBinaryMissing,
    find_etcd_binary,
)
from faastwist.store.etcd import EtcdStore

pytestmark = pytest.mark.process  # starts real processes


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); it is gone for every practical purpose only when reaped
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][:1] != "Z"
    except OSError:
        return False


@inlineCallbacks
def wait_for(predicate, timeout: float = 10.0, what: str = "condition"):
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        yield deferLater(reactor, 0.05, lambda: None)


@pytest.fixture
def services() -> Iterator[list[EmbeddedEtcd]]:
    """Every EmbeddedEtcd a test starts; stopped (and their pids checked) at teardown."""
    started: list[EmbeddedEtcd] = []
    yield started
    for service in started:
        pid = service.pid
        if service.running:
            pytest_twisted.blockon(service.stopService())
        if pid is not None and alive(pid):
            os.kill(pid, signal.SIGKILL)
            raise AssertionError(f"process {pid} outlived its service")


def start(services: list[EmbeddedEtcd], data_dir: str, **kwargs) -> EmbeddedEtcd:
    service = EmbeddedEtcd(reactor, data_dir, **kwargs)
    services.append(service)
    service.startService()
    return service


def store_for(url: str) -> EtcdStore:
    return EtcdStore(reactor, [url], "/faas", "faascontroller", 5.0)


@pytest.mark.etcd
@pytest_twisted.inlineCallbacks
def test_embedded_serves_survives_kill_9_and_stops_cleanly(services, tmp_path):
    require_etcd()
    data_dir = str(tmp_path / "etcd")
    service = start(services, data_dir)
    url = yield service.ready()
    assert url.startswith("http://127.0.0.1:")
    with open(os.path.join(data_dir, "ports.json")) as f:
        ports = json.load(f)
    assert url == f"http://127.0.0.1:{ports['client']}"
    store = store_for(url)
    yield store.connect()
    record = yield store.create(FunctionSpec(name="demo", image="img:1"),
                                FunctionStatus.initial("demo", 1.0))
    first_pid = service.pid
    assert alive(first_pid)

    os.kill(first_pid, signal.SIGKILL)
    yield wait_for(lambda: service.pid not in (None, first_pid), what="a new etcd pid")
    assert service.restarts == 1
    assert (yield service.ready()) == url  # same ports after a restart
    assert (yield store.get("demo")) == record  # data intact
    yield store.close()

    pid = service.pid
    yield service.stopService()
    assert not alive(pid) and not alive(first_pid)
    assert service.pid is None
    assert not os.path.exists(os.path.join(data_dir, "etcd.pid"))
    with open(os.path.join(data_dir, "etcd.log"), "rb") as f:
        output = f.read()
    assert output.count(b"serving client traffic") == 2  # first start and the restart
    assert b"received signal; shutting down" in output  # the stop was a graceful SIGTERM


@pytest.mark.etcd
@pytest_twisted.inlineCallbacks
def test_a_new_service_reuses_the_ports_and_the_data(services, tmp_path):
    require_etcd()
    data_dir = str(tmp_path / "etcd")
    first = start(services, data_dir)
    url = yield first.ready()
    store = store_for(url)
    yield store.connect()
    record = yield store.create(FunctionSpec(name="demo", image="img:1"),
                                FunctionStatus.initial("demo", 1.0))
    yield store.close()
    yield first.stopService()

    second = start(services, data_dir)
    assert (yield second.ready()) == url
    store = store_for(url)
    assert (yield store.get("demo")) == record
    yield store.close()
    yield second.stopService()

    # someone took the client port meanwhile: new ports, same data
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT
        squatter.bind(("127.0.0.1", int(url.rsplit(":", 1)[1])))
        squatter.listen(1)
        third = start(services, data_dir)
        moved = yield third.ready()
        assert moved != url
        store = store_for(moved)
        assert (yield store.get("demo")).spec == record.spec
        yield store.close()
        yield third.stopService()


def test_missing_binary_gives_the_clear_message(tmp_path, monkeypatch):
    service = EmbeddedEtcd(reactor, str(tmp_path), etcd_binary=str(tmp_path / "no-etcd"))
    with pytest.raises(EtcdBinaryMissing, match="no-etcd is not an executable file") as info:
        service.startService()
    assert "apt-get install -y etcd-server" in str(info.value)
    assert "etcd.endpoints" in str(info.value)
    assert not service.running

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr("faastwist.store.embedded.ETCD_BINARY_CANDIDATES", ())
    assert find_etcd_binary() is None
    with pytest.raises(EtcdBinaryMissing) as info:
        EmbeddedEtcd(reactor, str(tmp_path)).startService()
    assert str(info.value) == ETCD_MISSING_MESSAGE


def _script(tmp_path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(0o755)
    return str(path)


@pytest_twisted.inlineCallbacks
def test_ready_times_out_with_a_clear_error_and_stop_escalates_to_sigkill(services, tmp_path):
    # an "etcd" that never answers /health and ignores SIGTERM (once it says so: on a
    # loaded machine a SIGTERM sent before the handler is in place would end it at once)
    ignoring = tmp_path / "ignoring"
    binary = _script(tmp_path, "stubborn", "import signal, time\n"
                                           "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                                           f"open({str(ignoring)!r}, 'w').close()\n"
                                           "time.sleep(60)\n")
    service = start(services, str(tmp_path / "data"), etcd_binary=binary,
                    startup_timeout=0.5, stop_grace=0.3)
    with pytest.raises(EmbeddedEtcdError, match=r"did not become healthy within 0.5s .*etcd.log"):
        yield service.ready()
    pid = service.pid
    assert alive(pid)
    yield wait_for(ignoring.exists, timeout=30, what="the stub ignoring SIGTERM")
    started = reactor.seconds()
    yield service.stopService()
    assert reactor.seconds() - started >= 0.3  # it needed the SIGKILL
    assert not alive(pid)
    with pytest.raises(EmbeddedEtcdError, match="stopped"):
        yield service.ready()


@pytest_twisted.inlineCallbacks
def test_an_orphan_from_a_dead_owner_is_stopped_before_starting(services, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    binary = _script(tmp_path, "sleeper", "import time\ntime.sleep(60)\n")
    # the orphan: a process whose command line names the data dir, owned by a dead pid
    orphan = yield _spawn_detached([sys.executable, binary, str(data_dir)])
    dead_owner = _dead_pid()
    (data_dir / "etcd.pid").write_text(json.dumps({"pid": orphan, "owner": dead_owner}))
    service = start(services, str(data_dir), etcd_binary=binary, startup_timeout=0.5)
    yield wait_for(lambda: not alive(orphan), what="the orphan stopped")
    yield wait_for(lambda: service.pid is not None, what="a new child")
    assert service.pid != orphan


@inlineCallbacks
def _spawn_detached(argv: list[str]):
    """Start a process that is not reaped by anyone in this test (like an orphan)."""
    import subprocess

    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    yield deferLater(reactor, 0.05, lambda: None)
    _reapers.append(process)
    return process.pid


_reapers: list = []


def _dead_pid() -> int:
    import subprocess

    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


@pytest.fixture(autouse=True)
def _reap_detached() -> Iterator[None]:
    yield
    while _reapers:
        process = _reapers.pop()
        if process.poll() is None:
            process.kill()
        process.wait()


_PARENT = """
import sys
from twisted.internet import reactor
from faastwist.store.embedded import EmbeddedEtcd
service = EmbeddedEtcd(reactor, sys.argv[1])
service.startService()
def report(url):
    print(service.pid, flush=True)
service.ready().addCallback(report)
reactor.run()
"""


@pytest.mark.etcd
@pytest.mark.setpriv   # deselected without setpriv (no parent-death signal)
def test_a_sigkilled_parent_leaves_no_etcd_behind(tmp_path):
    """The parent-death signal (setpriv) takes etcd down with a crashed faastwist."""
    import subprocess
    import time

    require_etcd()
    parent = subprocess.Popen([sys.executable, "-c", _PARENT, str(tmp_path / "etcd")],
                              stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    etcd_pid = None
    try:
        etcd_pid = int(parent.stdout.readline())
        assert alive(etcd_pid)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 10
        while alive(etcd_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(etcd_pid)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if etcd_pid is not None and alive(etcd_pid):
            os.kill(etcd_pid, signal.SIGKILL)


def test_tls_files_are_made_once_private_and_kept(tmp_path):
    from faastwist.store.etcdtls import ensure_tls

    tls = ensure_tls(str(tmp_path / "etcd"))
    folder = tmp_path / "etcd" / "tls"
    assert oct(folder.stat().st_mode & 0o777) == "0o700"
    for path in (tls.ca_file, tls.cert_file, tls.key_file, tls.client_cert, tls.client_key):
        assert oct(os.stat(path).st_mode & 0o777) == "0o600", path
    before = open(tls.ca_file).read()
    assert ensure_tls(str(tmp_path / "etcd")) == tls and open(tls.ca_file).read() == before
    os.remove(tls.client_key)          # one missing: a new set (the old CA is unusable alone)
    assert open(ensure_tls(str(tmp_path / "etcd")).ca_file).read() != before


def plain_put(url: str, cert: tuple[str, str] | None, ca: str) -> str:
    """A kv put from another client (a thread: blocking ssl); what happened."""
    import ssl
    import urllib.request

    context = ssl.create_default_context(cafile=ca)
    if cert is not None:
        context.load_cert_chain(*cert)
    body = json.dumps({"key": "L2ZhYXMveA==", "value": "eQ=="}).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url + "/v3/kv/put", body),
                                    timeout=5, context=context) as response:
            return f"status {response.status}"
    except Exception as exc:  # the refusal is what is measured
        return f"refused: {type(exc).__name__}: {exc}"


@pytest.mark.etcd
@pytest_twisted.inlineCallbacks
def test_with_tls_only_the_nodes_certificate_gets_in(services, tmp_path):
    from twisted.internet.threads import deferToThread

    from faastwist.store.etcdtls import ensure_tls

    require_etcd()
    data_dir = str(tmp_path / "etcd")
    tls = ensure_tls(data_dir)
    service = start(services, data_dir, tls=tls)
    url = yield service.ready()
    assert url.startswith("https://127.0.0.1:") and service.peer_url.startswith("https://")
    store = EtcdStore(reactor, [url], "/faas", "faascontroller", 5.0, tls=tls.policy())
    yield store.connect()
    yield store.create(FunctionSpec(name="demo", image="img:1"),
                       FunctionStatus.initial("demo", 1.0))
    records = yield store.list()
    assert list(records.records) == ["demo"]
    without = yield deferToThread(plain_put, url, None, tls.ca_file)
    assert without.startswith("refused: "), without   # the handshake fails (alert or EOF)
    # another CA's certificate is refused as well
    other = ensure_tls(str(tmp_path / "other"))
    foreign = yield deferToThread(plain_put, url, (other.client_cert, other.client_key),
                                  tls.ca_file)
    assert foreign.startswith("refused: "), foreign
    mine = yield deferToThread(plain_put, url, (tls.client_cert, tls.client_key), tls.ca_file)
    assert mine == "status 200", mine
    yield store.close()
