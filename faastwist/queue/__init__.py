"""Asynchronous invocations on NATS JetStream.

Modules, lowest first: ``policy`` (pure retry, backoff and callback-target rules),
``bridge`` (the only asyncio module: a loop on a thread, results as Deferreds),
``jetstream`` (streams, consumers, key-value, as coroutines the bridge runs),
``messages`` (how calls and outcomes are laid out as messages), ``embedded`` (a
supervised local nats-server), ``replay`` (a queued call through a gate Exchange),
``callback`` (safe callback POSTs), ``steps`` (after a call ran: status, retries in the
delayed stream, dead letters, callbacks), ``worker`` (pull loops),
``service`` (the node's queue: accept, workers, visibility).
"""

__all__ = ["bridge", "callback", "embedded", "jetstream", "messages", "policy", "replay",
           "service", "steps", "worker"]
