"""A real cluster for end-to-end tests: a 3-member etcd cluster and 3 ``twistd faasgate``
nodes on loopback, every process started and stopped by pid.

Usage::

    # the fixture is registered for every module in tests/conftest.py

    @pytest.mark.cluster
    def test_x(cluster):
        cluster.nodes[0].gate_url, cluster.etcd.members[1].kill(), cluster.leader()

Ports come from the OS and are checked free; each member keeps its ports across a
restart so the nodes' endpoint lists stay valid.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.support.etcd import EtcdProcess, require_etcd
from tests.support.node import FaasNodeProcess, http


#: fast elections: the tests kill members and wait for a new etcd leader
ELECTION_ARGS = ("--initial-cluster-token", "faastwist-test",
                 "--heartbeat-interval", "50", "--election-timeout", "500")


class EtcdCluster:
    """A static etcd cluster of ``size`` members (``EtcdProcess``), ``m0``.. on loopback."""

    def __init__(self, workdir: Path, size: int = 3) -> None:
        binary = require_etcd()
        self.members = [EtcdProcess(str(workdir / f"m{i}"), binary, f"m{i}", ELECTION_ARGS)
                        for i in range(size)]
        # each member asked the OS for free ports on its own, and a port given back is
        # soon given again: two members once shared a peer port ("initial cluster ...
        # has duplicate url", the cluster never formed). Every port distinct:
        taken: set[int] = set()
        for member in self.members:
            while {member.client_port, member.peer_port} & taken:
                member._choose_ports()
            taken |= {member.client_port, member.peer_port}
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for member in self.members:
            member.initial_cluster = initial

    @property
    def endpoints(self) -> list[str]:
        return [m.client_url for m in self.members]

    def start(self, timeout: float = 30.0) -> None:
        for member in self.members:
            if not member.alive:
                member.spawn()
        self.wait_healthy(timeout)

    def wait_healthy(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            alive = [m for m in self.members if m.alive]
            if alive and all(m.healthy() for m in alive):
                for member in alive:  # a restart now joins the cluster it formed
                    member.started_once = True
                return
            time.sleep(0.05)
        raise RuntimeError("etcd cluster not healthy within %ss; logs in %s"
                           % (timeout, Path(self.members[0].data_dir).parent))

    def restart(self, member: EtcdProcess) -> None:
        member.spawn()

    def stop(self) -> None:
        for member in self.members:
            member.stop()

    def range_one(self, key: str) -> dict | None:
        """The key's record as the first live member answers it (None: absent)."""
        import base64
        for member in self.members:
            if not member.alive:
                continue
            body = json.dumps({"key": base64.b64encode(key.encode()).decode()}).encode()
            request = urllib.request.Request(member.client_url + "/v3/kv/range", body,
                                             {"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=3) as response:
                    kvs = json.loads(response.read()).get("kvs") or []
            except OSError:
                continue
            return kvs[0] if kvs else None
        raise RuntimeError("no etcd member answered")


class Cluster:
    """3 etcd members and 3 faasgate nodes ``n0``..``n2`` with provider ``process``."""

    def __init__(self, workdir: Path, size: int = 3, lease_ttl: str = "3s",
                 extra: dict[str, Any] | None = None) -> None:
        self.workdir = workdir
        self.etcd = EtcdCluster(workdir / "etcd", 3)
        self._shared: Path | None = None
        self.nodes = []
        for i in range(size):
            config: dict[str, Any] = {"nodeId": f"n{i}",
                                      "etcd": {"leaseTTL": lease_ttl, "timeout": "2s"},
                                      "process": {"coldStartTimeout": "20s"}}
            for key, value in (extra or {}).items():
                if isinstance(value, dict) and isinstance(config.get(key), dict):
                    config[key].update(value)
                else:
                    config[key] = value
            self.nodes.append(FaasNodeProcess(workdir / f"n{i}", provider="process",
                                              etcd_endpoints=self.etcd.endpoints, extra=config))

    @property
    def shared_dir(self) -> Path:
        """A folder the function user may read (functions never run as root, and pytest's
        tmp folders are closed to other users); removed by ``stop``."""
        if self._shared is None:
            import tempfile

            self._shared = Path(tempfile.mkdtemp(prefix="faastwist-cluster-"))
            self._shared.chmod(0o755)
        return self._shared

    def start(self) -> "Cluster":
        self.etcd.start()
        # spawned together, then waited for: their start-ups overlap (one after another
        # was most of each cluster test's set-up)
        for node in self.nodes:
            node.spawn()
        for node in self.nodes:
            node.wait_ready()
        self.wait_formed()
        return self

    def wait_formed(self, timeout: float = 30.0) -> None:
        """Until every node lists every node as live (its session joined): a node's
        admin API answers before its lease is granted, and on a loaded machine a test
        that began at once saw a function made active with two of three nodes."""
        ids = [f"n{i}" for i in range(len(self.nodes))]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._formed(ids):
                return
            time.sleep(0.05)
        raise RuntimeError(f"the nodes did not all see each other within {timeout}s")

    def _formed(self, ids: list[str]) -> bool:
        try:
            return all(sorted(n["id"] for n in self.info(node)["nodes"]) == ids
                       for node in self.nodes)
        except (OSError, AssertionError, KeyError, ValueError):  # a node not answering yet
            return False

    def stop(self) -> None:
        for node in self.nodes:
            try:
                if node.process is not None:
                    try:  # a SIGSTOPped node must be able to handle its SIGTERM
                        os.kill(node.process.pid, signal.SIGCONT)
                    except ProcessLookupError:
                        pass
                node.stop(grace=15)
            except Exception:
                pass
        self.etcd.stop()
        if self._shared is not None:
            import shutil

            shutil.rmtree(self._shared, ignore_errors=True)

    def kill9(self, node: FaasNodeProcess) -> None:
        """SIGKILL the node by pid (a crash); its replicas die of their parent-death
        signal, and any straggler is killed by pid here."""
        assert node.process is not None
        pid = node.process.pid
        children = descendants(pid)
        os.kill(pid, signal.SIGKILL)
        node.process.wait()
        node.process = None
        deadline = time.monotonic() + 5
        for child in children:
            while _alive(child) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(child):
                try:
                    os.kill(child, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def metric(self, node: FaasNodeProcess, line_start: str) -> float:
        """The sum of the /metrics samples whose line starts with ``line_start``."""
        status, _, body = http("GET", f"{node.admin_root}/metrics", timeout=5)
        assert status == 200
        return sum(float(line.rsplit(" ", 1)[1]) for line in body.decode().splitlines()
                   if line.startswith(line_start))

    def node(self, node_id: str) -> FaasNodeProcess:
        return self.nodes[int(node_id[1:])]

    def info(self, node: FaasNodeProcess) -> dict:
        status, _, body = http("GET", f"{node.admin_root}/apis/v2/faas/info",
                               headers={"Accept": "application/json"}, timeout=5)
        assert status == 200, body
        return json.loads(body)

    def leader(self, among: list[FaasNodeProcess] | None = None, timeout: float = 15.0,
               exclude: str | None = None) -> FaasNodeProcess:
        """The node whose info says it leads (waits for one, and not ``exclude``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for node in among or self.nodes:
                if node.process is None:
                    continue
                try:
                    info = self.info(node)
                except (OSError, AssertionError):
                    continue
                if info.get("leader") is True and info.get("node") != exclude:
                    return node
            time.sleep(0.05)
        raise AssertionError("no leader within %ss" % timeout)

    def followers(self) -> list[FaasNodeProcess]:
        leader = self.leader()
        return [n for n in self.nodes if n is not leader]


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (by parent pid, transitively)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields is not None and fields[0] != "Z":
                parents[int(entry)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        for child, parent in parents.items():
            if parent == current:
                found.append(child)
                frontier.append(child)
    return found


class Load:
    """Threads sending GETs to ``urls`` in a loop; every outcome is counted."""

    def __init__(self, urls: list[str], threads: int = 4, timeout: float = 10.0) -> None:
        import threading

        self.urls = urls
        self.timeout = timeout
        self.outcomes: dict[Any, int] = {}
        self.failures: list[tuple[float, str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                         for i in range(threads)]

    def start(self) -> "Load":
        for thread in self._threads:
            thread.start()
        return self

    def _run(self, index: int) -> None:
        i = index
        while not self._stop.is_set():
            url = self.urls[i % len(self.urls)]
            i += 1
            try:
                status, _, _ = http("GET", url, timeout=self.timeout)
                outcome: Any = status
            except Exception as exc:  # connection reset, timeout: a failure too
                outcome = type(exc).__name__
            with self._lock:
                self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
                if outcome != 200:
                    self.failures.append((time.monotonic(), url, outcome))

    def stop(self) -> dict[Any, int]:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 5)
        return dict(self.outcomes)


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.02,
             what: str = "condition") -> float:
    """Poll until ``predicate()`` is truthy; the seconds it took (AssertionError on timeout)."""
    start = time.monotonic()
    while True:
        try:
            if predicate():
                return time.monotonic() - start
        except OSError:
            pass
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what} not reached within {timeout}s")
        time.sleep(interval)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    require_etcd()
    running = Cluster(tmp_path)
    try:
        running.start()
        yield running
    finally:
        running.stop()
