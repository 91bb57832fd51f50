"""The gate integration tests' fixtures (a real upstream process, a gate of each kind),
shared with the hardening tests."""

from tests.gate.test_gate_integration import make_gate, upstream  # noqa: F401 (fixtures)
