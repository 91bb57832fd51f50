"""Fixtures shared across test modules."""

from __future__ import annotations

import os
import shutil
import signal
from typing import Iterator


import pytest
import pytest_twisted

from tests.support.facilities import (browser_unavailable, cgroups_unavailable,
                                      etcd_unavailable, golang_unavailable,
                                      installed_unavailable, local_index_unavailable,
                                      nats_unavailable, nodejs_unavailable, root_unavailable,
                                      sandbox_unavailable, setpriv_unavailable,
                                      systemd_unavailable)
from tests.support.k8s import ENV_VAR, Envtest, envtest_unavailable
from tests.support.properties import load_profile

# The fixtures of the support modules (real etcd, nats-server, a CLI node, a node
# cluster) for every test module that names one: registered once here, not imported
# into each module (an import a test's parameter then shadows: ruff's F811)
# (etcd first: cluster imports it, and a module imported before its registration is not
# assertion-rewritten)
pytest_plugins = (
    "tests.support.etcd",
    "tests.support.nats",
    "tests.support.cli",
    "tests.support.cluster",
)


#: what the ``monitoring`` tests run (``make monitoring-deps`` installs them)
MONITORING = ("prometheus", "prometheus-alertmanager")


def monitoring_missing() -> list[str]:
    return [name for name in MONITORING if shutil.which(name) is None]


#: marker -> why its facility is missing here (None: present); checked only when a
#: collected test carries the marker. ``cluster`` tests start an etcd cluster.
FACILITIES = (("nodejs", nodejs_unavailable), ("golang", golang_unavailable),
              ("localindex", local_index_unavailable), ("systemd", systemd_unavailable),
              ("etcd", etcd_unavailable), ("cluster", etcd_unavailable),
              ("nats", nats_unavailable), ("cgroups", cgroups_unavailable),
              ("browser", browser_unavailable), ("installed", installed_unavailable),
              ("setpriv", setpriv_unavailable), ("root", root_unavailable))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without FAASTWIST_ENVTEST the ``envtest`` tests are deselected (counted as such),
    not skipped: a skip would look like a test that ran and had nothing to check. The
    same for the ``sandbox`` tests where no sandbox can be made, the ``nodejs`` ones without
    Debian's nodejs/npm, the ``golang`` ones without Debian's golang-go, the ``localindex``
    ones without the local package index and the ``systemd`` ones without systemd-analyze
    (tests/support/facilities), the ``monitoring`` ones without Prometheus and
    AlertManager, and every other marker of FACILITIES without its facility. A test's
    helpers fail (never skip) when the facility is missing: the marker is missing."""
    missing = set()
    if not os.environ.get(ENV_VAR):
        missing.add("envtest")
    if any(item.get_closest_marker("sandbox") for item in items) and sandbox_unavailable():
        missing.add("sandbox")
    if monitoring_missing():
        missing.add("monitoring")
    if shutil.which("kubectl") is None:
        missing.add("kubectl")
    for marker, why in FACILITIES:
        if any(item.get_closest_marker(marker) for item in items) and why():
            missing.add(marker)
    deselected = [item for item in items
                  if any(item.get_closest_marker(marker) for marker in missing)]
    if deselected:
        dropped = {id(item) for item in deselected}
        items[:] = [item for item in items if id(item) not in dropped]
        config.hook.pytest_deselected(items=deselected)


def pytest_report_header(config: pytest.Config) -> list[str]:
    lines = [f"{ENV_VAR}={os.environ[ENV_VAR]}: the envtest tests run"
             if os.environ.get(ENV_VAR) else
             f"{ENV_VAR} is not set: the envtest tests are deselected"]
    reason = sandbox_unavailable()
    lines.append(f"the sandbox tests are deselected: {reason}" if reason
                 else "function sandboxes can be made: the sandbox tests run")
    for marker, why in FACILITIES:
        reason = why()
        if reason:
            lines.append(f"the {marker} tests are deselected: {reason}")
    if shutil.which("kubectl") is None:
        lines.append("no kubectl (Debian's kubernetes-client): the kubectl tests are deselected")
    missing = monitoring_missing()
    if missing:
        lines.append(f"no {' '.join(missing)} (make monitoring-deps): the monitoring tests "
                     f"are deselected")
    return lines

def reactor_stopped() -> str | None:
    """Why the test reactor (pytest-twisted's greenlet) is gone, or None while it runs.
    Every test, plain ones too, runs through that greenlet: once it is dead each test
    would fail alike, so the run ends at once instead, naming the cause."""
    greenlet = pytest_twisted._instances.gr_twisted
    if greenlet is None or not greenlet.dead:
        return None
    number = getattr(pytest_twisted._instances.reactor, "_exitSignal", None)
    if number is not None:
        return (f"the test reactor stopped on {signal.Signals(number).name}: someone "
                f"signalled the pytest process itself")
    return "the test reactor stopped (reactor.stop() or an exception out of its loop)"


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    reason = reactor_stopped()
    if reason:
        pytest.exit(f"{reason}; stopping before {item.nodeid}", returncode=3)


# Hypothesis: no per-example deadline (tests/support/properties.py says why); the
# mutation runner selects its own profile there
load_profile()


@pytest.fixture(scope="session")
def envtest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Envtest]:
    """One real kube-apiserver (../shared/k8s, via FAASTWIST_ENVTEST) for the whole run:
    it takes ~10 s to start. Tests keep apart by controller and function names."""
    reason = envtest_unavailable()
    if reason:  # only reached with FAASTWIST_ENVTEST set: a broken setup is a failure
        pytest.fail(reason)
    server = Envtest(tmp_path_factory.mktemp("envtest"))
    try:
        server.start()
        yield server
    finally:
        server.stop()
