"""Knative-style routing: every function behind one network layer, told apart by Host.

Knative's ingress (kourier) serves all functions on ``networkLayerURL`` and routes on
the Host header ``{name}.{namespace}.{hostSuffix}``. Finding the upstream needs no API
call, so ``acquire`` answers synchronously with a cached lease; the Knative provider
delegates its ``acquire`` here, and tests and the benchmark use it on its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from faastwist.config import KnativeConfig
from faastwist.providers.base import StaticLease, Upstream
from faastwist.model.spec import FunctionSpec


def parse_origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an http(s) URL; the port defaults by scheme."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"must be an http:// or https:// URL, got {url!r}")
    if not parts.hostname:
        raise ValueError(f"has no host: {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, parts.hostname, port


class KnativeRouting:
    """Leases on ``networkLayerURL`` with the Host kourier routes on.

    Leases are cached per function name and reused, so the gate's hot path can cache
    what it derives from a lease by identity. ``forget`` drops one (a spec changed).
    """

    def __init__(self, config: KnativeConfig) -> None:
        self.config = config
        self.scheme, self.host, self.port = parse_origin(config.network_layer_url)
        self._leases: dict[str, StaticLease] = {}

    def host_for(self, name: str) -> str:
        return f"{name}.{self.config.namespace}.{self.config.host_suffix}"

    def acquire(self, spec: FunctionSpec) -> StaticLease:
        lease = self._leases.get(spec.name)
        if lease is None:
            lease = StaticLease(Upstream(self.scheme, self.host, self.port,
                                         self.host_for(spec.name)))
            self._leases[spec.name] = lease
        return lease

    def forget(self, name: str) -> None:
        self._leases.pop(name, None)


def routing_from_settings(settings: Mapping[str, Any]) -> KnativeRouting:
    """A gate worker's lease source (registry.KNATIVE): the knative section's settings,
    as the worker's setup message carries them."""
    return KnativeRouting(KnativeConfig(**settings))
