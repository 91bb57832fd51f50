"""Fakes that ship with faastwist, as treq ships ``treq.testing``: the tests and the
benchmarks share them. Nothing in the node imports this package."""

from faastwist.testing.provider import FakeProvider

__all__ = ["FakeProvider"]
