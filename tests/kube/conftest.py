"""The kube tests' ``world`` fixture (tests/kube/envtest_world.py): a controller on the
real kube-apiserver, for the test modules of this folder."""

from tests.kube.envtest_world import world  # noqa: F401 (fixture)
