"""Providers run functions: Knative (a Kubernetes cluster) or local processes."""

from faastwist.providers.base import (
    LogLine,
    NoCapacity,
    Observation,
    Provider,
    ProviderConflict,
    ProviderError,
    ProviderRejected,
    Upstream,
)

__all__ = ["LogLine", "NoCapacity", "Observation", "Provider", "ProviderConflict",
           "ProviderError", "ProviderRejected", "Upstream"]
