"""Fixtures shared across test modules."""

from __future__ import annotations

from typing import Iterator

import pytest
from hypothesis import HealthCheck, settings

from tests.support.k8s import Envtest, envtest_unavailable

# Property tests check behaviour, not speed: no per-example deadline, so a loaded machine
# (CI, several suites at once) cannot turn a correct example into a failure.
settings.register_profile("faastwist", deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("faastwist")


@pytest.fixture(scope="session")
def envtest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Envtest]:
    """One real kube-apiserver (../shared/k8s, via FAASTWIST_ENVTEST) for the whole run:
    it takes ~10 s to start. Tests keep apart by controller and function names."""
    reason = envtest_unavailable()
    if reason:
        pytest.skip(reason)
    server = Envtest(tmp_path_factory.mktemp("envtest"))
    try:
        server.start()
        yield server
    finally:
        server.stop()
