"""What a gate worker is told at its start: one typed record, sent as its first message.

The main process builds it from its config and what it started (the etcd endpoints it
uses, the admin relay, the queue's callback rules); the worker reads it back with
``WorkerSetup.from_message``, so a field that the two sides disagree on fails at once
(KeyError/TypeError: the worker reports a failed start) instead of deep in a request.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs

from faastwist.config import ControllerConfig, HTTPServerConfig
from faastwist.gate.assembly import SystemRelay
from faastwist.providers.registry import WorkerLeases, kind_of
from faastwist.store.etcdtls import EtcdTLS
from faastwist.workers.channel import Message

if TYPE_CHECKING:   # the worker itself runs no queue (nats-py is not imported there)
    from faastwist.queue.service import QueueService


@attrs.frozen
class EtcdAccess:
    """How the worker reaches the node's etcd (its own client, the node's prefix)."""

    endpoints: tuple[str, ...]
    prefix: str
    timeout: float
    #: the embedded etcd's files: the worker runs as the node's user and presents the
    #: node's client certificate
    tls: EtcdTLS | None = None


@attrs.frozen
class QueueAccess:
    """The async queue as a worker checks and submits to it (through the main process)."""

    max_body_size: int
    timeout: float
    callback_allow: tuple[str, ...]
    node_ports: tuple[int, ...]
    local_addresses: tuple[str, ...]


@attrs.frozen
class WorkerSetup:
    name: str                      # the controller
    http: HTTPServerConfig
    etcd: EtcdAccess
    provider: str                  # the registry's name (providers/registry.py)
    #: the provider's settings when the worker routes by itself (LOCAL_ROUTING)
    routing: Mapping[str, Any] | None
    acquire_timeout: float         # a lease from the main process (FROM_NODE)
    system: SystemRelay
    log_json: bool
    queue: QueueAccess | None = None

    def to_message(self) -> Message:
        return {"op": "setup", **attrs.asdict(self)}

    @classmethod
    def from_message(cls, message: Message) -> WorkerSetup:
        etcd, queue = message["etcd"], message["queue"]
        return cls(
            name=str(message["name"]), http=HTTPServerConfig(**message["http"]),
            etcd=EtcdAccess(tuple(etcd["endpoints"]), str(etcd["prefix"]),
                            float(etcd["timeout"]),
                            EtcdTLS(**etcd["tls"]) if etcd["tls"] else None),
            provider=str(message["provider"]), routing=message["routing"],
            acquire_timeout=float(message["acquire_timeout"]),
            system=SystemRelay(**message["system"]), log_json=bool(message["log_json"]),
            queue=None if queue is None else QueueAccess(
                int(queue["max_body_size"]), float(queue["timeout"]),
                tuple(queue["callback_allow"]), tuple(int(p) for p in queue["node_ports"]),
                tuple(queue["local_addresses"])))


def worker_setup(config: ControllerConfig, etcd_endpoints: list[str], system: SystemRelay,
                 queue: QueueService | None, log_json: bool, etcd_tls: EtcdTLS | None = None) -> WorkerSetup:
    """Everything a worker needs (minus its index). ``queue``: the node's QueueService
    or None."""
    kind = kind_of(config)
    access = None
    if queue is not None:
        rules = queue.rules
        access = QueueAccess(queue.max_body_size, config.queue.timeout + 5.0,
                             tuple(str(n) for n in rules.allow), tuple(sorted(rules.node_ports)),
                             tuple(sorted(rules.local_addresses)))
    return WorkerSetup(
        name=config.name, http=config.http_server,
        etcd=EtcdAccess(tuple(etcd_endpoints), config.etcd.prefix, config.etcd.timeout,
                        etcd_tls),
        provider=kind.name,
        routing=(attrs.asdict(kind.settings(config))
                 if kind.worker_leases is WorkerLeases.LOCAL_ROUTING else None),
        acquire_timeout=config.process.cold_start_timeout + 10.0,
        system=system, log_json=log_json, queue=access)


__all__ = ["EtcdAccess", "QueueAccess", "WorkerSetup", "worker_setup"]
