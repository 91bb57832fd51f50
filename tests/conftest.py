"""Fixtures shared across test modules."""

from __future__ import annotations

import os
from typing import Iterator

import pytest

from tests.support.k8s import ENV_VAR, Envtest, envtest_unavailable
from tests.support.properties import load_profile


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without FAASTWIST_ENVTEST the ``envtest`` tests are deselected (counted as such),
    not skipped: a skip would look like a test that ran and had nothing to check."""
    if os.environ.get(ENV_VAR):
        return
    deselected = [item for item in items if item.get_closest_marker("envtest")]
    if deselected:
        items[:] = [item for item in items if not item.get_closest_marker("envtest")]
        config.hook.pytest_deselected(items=deselected)


def pytest_report_header(config: pytest.Config) -> str:
    if os.environ.get(ENV_VAR):
        return f"{ENV_VAR}={os.environ[ENV_VAR]}: the envtest tests run"
    return f"{ENV_VAR} is not set: the envtest tests are deselected"

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
