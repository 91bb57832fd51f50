"""The providers a node can run, and what each one declares about itself.

The rest of the node never compares provider names: it asks the chosen
``ProviderKind`` (by ``kind_of(config)``) whether functions run on every node, which
namespace OpenFaaS clients see, which data folder the node owns, how a gate worker gets
an upstream, and builds the provider through it. A provider's optional capabilities
(logs, change notices, secrets) come back typed in ``ProviderParts``, so nobody probes
the provider object with ``hasattr``/``isinstance``.

The entries are data: each names its implementation module by its import path and the
module is imported when a node builds the provider (the Knative one pulls in the
Kubernetes client; a gate worker on Knative needs only ``kourier``). The layout test
checks that every provider module of this package is listed here.
"""

from __future__ import annotations

import enum
import importlib
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any, Callable, Protocol

import attrs

from faastwist.model.spec import FunctionSpec, SpecError
from faastwist.providers.base import (
    ChangeNotifier,
    LogSource,
    Provider,
    SecretConsumer,
    ServiceProvider,
)

from faastwist.config import ConfigError

if TYPE_CHECKING:
    from faastwist.config import ControllerConfig
    from faastwist.metrics import Metrics
    from faastwist.util.reactor import IFullReactor

#: the namespace OpenFaaS clients see when the provider has none of its own
#: (OpenFaaS's default for functions)
OPENFAAS_NAMESPACE = "openfaas-fn"


class WorkerLeases(enum.Enum):
    """How a gate worker process (httpServer.workers > 1) gets an upstream."""

    #: from the node's main process over the worker's channel: the provider accounts
    #: every replica's load in one place (and starts replicas from zero there)
    FROM_NODE = "from-node"
    #: derived in the worker from the provider's settings alone (no accounting)
    LOCAL_ROUTING = "local-routing"


@attrs.frozen
class ProviderContext:
    """What a provider is built from."""

    config: ControllerConfig
    reactor: IFullReactor   # timers, threads and processes
    metrics: Metrics
    #: this node's own ports, read when a spec is checked (a function may not claim one)
    reserved_ports: Callable[[], Collection[int]] = frozenset


@attrs.frozen
class ProviderParts:
    """A built provider and its optional capabilities (None: it does not offer it)."""

    provider: ServiceProvider
    logs: LogSource | None = None
    changes: ChangeNotifier | None = None
    secrets: SecretConsumer | None = None


class _Factory(Protocol):
    def __call__(self, context: ProviderContext) -> ProviderParts: ...


@attrs.frozen
class ProviderKind:
    """One provider as the node sees it before it is built."""

    name: str                  # the config's ``provider:`` value
    section: str               # its settings: the config section (and attribute) of that name
    factory: str               # "module:function" building ProviderParts from a context
    node_local: bool           # functions run on every node (each converges its own)
    worker_leases: WorkerLeases
    #: "module:function" making a worker's lease source from the section's settings
    #: (a dict, as the worker's setup message carries it); only for LOCAL_ROUTING
    worker_routing: str | None = None
    #: the field of its section naming the namespace; None: OpenFaaS's default
    namespace_field: str | None = None
    #: the node holds the section's ``dataDir`` (a second node on it must not start)
    owns_data_dir: bool = False
    #: what a spec needs for this provider (raises SpecError naming the field)
    spec_rules: Callable[[FunctionSpec], None] = lambda spec: None

    @property
    def modules(self) -> list[str]:
        refs = [self.factory] + ([self.worker_routing] if self.worker_routing else [])
        return [ref.partition(":")[0] for ref in refs]

    def settings(self, config: ControllerConfig) -> Any:
        return getattr(config, self.section)

    def namespace(self, config: ControllerConfig) -> str:
        if self.namespace_field is None:
            return OPENFAAS_NAMESPACE
        return str(getattr(self.settings(config), self.namespace_field))

    def data_dir(self, config: ControllerConfig) -> tuple[str, str] | None:
        """(config key, folder) of the data folder this provider keeps on the node."""
        if not self.owns_data_dir:
            return None
        return f"{self.section}.dataDir", str(self.settings(config).data_dir)

    def build(self, context: ProviderContext) -> ProviderParts:
        factory: _Factory = _resolve(self.factory)
        return factory(context)

    def routing_for_worker(self, settings: Mapping[str, Any]) -> Provider:
        """A worker's lease source when the provider routes without the node."""
        if self.worker_routing is None:
            raise ValueError(f"the {self.name} provider's leases come from the node")
        make: Callable[[Mapping[str, Any]], Provider] = _resolve(self.worker_routing)
        return make(settings)

    def check_spec(self, spec: FunctionSpec) -> None:
        self.spec_rules(spec)


def _resolve(ref: str) -> Any:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def _knative_rules(spec: FunctionSpec) -> None:
    if not spec.image:
        raise SpecError("image", "is required for the knative provider")
    if spec.command:
        raise SpecError("command", "is only for the process provider")


def _process_rules(spec: FunctionSpec) -> None:
    if not spec.command and not spec.env_process:
        raise SpecError("command", "is required for the process provider when "
                                   "envProcess is not set: a deployment needs "
                                   "envProcess (run once per request, as OpenFaaS's "
                                   "watchdog does) or command (an argv list of an "
                                   "HTTP server, e.g. [python3, app.py]); the process "
                                   "provider runs commands and does not pull images")


KNATIVE = ProviderKind(
    name="knative", section="knative", factory="faastwist.providers.knative:build",
    node_local=False, worker_leases=WorkerLeases.LOCAL_ROUTING,
    worker_routing="faastwist.providers.kourier:routing_from_settings",
    namespace_field="namespace", spec_rules=_knative_rules)

PROCESS = ProviderKind(
    name="process", section="process", factory="faastwist.providers.process:build",
    node_local=True, worker_leases=WorkerLeases.FROM_NODE, owns_data_dir=True,
    spec_rules=_process_rules)

#: every provider, by its config name; the first is the default
KINDS: Mapping[str, ProviderKind] = {kind.name: kind for kind in (KNATIVE, PROCESS)}
DEFAULT = KNATIVE.name


def names() -> tuple[str, ...]:
    return tuple(KINDS)


def get(name: str) -> ProviderKind:
    """The provider called ``name``."""
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown provider {name!r}; known: {', '.join(KINDS)}") from None


def kind_of(config: ControllerConfig) -> ProviderKind:
    """The config's provider; an unknown one is the config's error, naming the key.
    (The config cannot check it itself: the providers import their config sections, so
    the config may not import them.)"""
    kind = KINDS.get(config.provider)
    if kind is None:
        raise ConfigError("provider", f"must be one of {', '.join(KINDS)}, "
                                      f"got {config.provider!r}")
    return kind


def check_spec_for(name: str, spec: FunctionSpec) -> None:
    """Refuse what provider ``name`` cannot run, naming the field."""
    get(name).check_spec(spec)


__all__ = ["DEFAULT", "KINDS", "KNATIVE", "OPENFAAS_NAMESPACE", "PROCESS", "ProviderContext",
           "ProviderKind", "ProviderParts", "WorkerLeases", "check_spec_for", "get",
           "kind_of", "names"]
