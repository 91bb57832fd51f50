"""The process provider tests' fixture (a provider per kind on a temporary folder), shared
with the isolation and limits tests."""

from tests.providers.test_process import providers  # noqa: F401 (fixture)
