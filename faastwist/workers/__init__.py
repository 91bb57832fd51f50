"""Gate worker processes: ``httpServer.workers: N`` serves the gate port from N
processes (SO_REUSEPORT), with the control plane in the node's main process.

- ``channel``: the line-per-message JSON control channel and its request/reply calls;
- ``listen``: the SO_REUSEPORT listener and the port check;
- ``counts``: a worker's gate counts as deltas, added into the node's metrics;
- ``remote``: a worker's provider and queue, served by the main process;
- ``link``: the main process's side of one worker's channel;
- ``setup``: the typed record a worker is started with (its first message);
- ``supervisor``: the ``WorkerPool`` that starts, restarts and drains the workers;
- ``child``: the worker process itself (``python -m faastwist.workers.child``).
"""

from faastwist.workers.setup import WorkerSetup, worker_setup
from faastwist.workers.supervisor import WorkerPool, WorkerStartError

__all__ = ["WorkerPool", "WorkerSetup", "WorkerStartError", "worker_setup"]
