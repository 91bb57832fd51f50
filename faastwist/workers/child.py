"""A gate worker process: ``python -m faastwist.workers.child --parent PID --index N``.

Started by the node's ``WorkerPool`` with its control channel on fd 3. It waits for
the ``setup`` message, then runs one gate like the one-process node's: its own
reactor, route table (listed and watched from the node's etcd), upstream pool,
timeouts, limits and access log, listening on httpServer's port with SO_REUSEPORT.
The upstream comes from the main process over the channel (process provider), or is
derived locally (Knative: kourier's address and a Host header, no accounting).

Logs (events and access lines, in the node's --log-format) go to stdout, which the
main process writes into the node's log. SIGTERM or SIGINT drain it (stop accepting,
finish in-flight requests within shutdownTimeout), then it sends its last counts and
exits; so does the loss of its control channel (the node is gone). SIGHUP, or a
``reload`` message, loads the certificate files again.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import socket
import sys
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import LoopingCall
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    Logger,
    globalLogBeginner,
    textFileLogObserver,
)

from faastwist.providers import registry
from faastwist.providers.registry import WorkerLeases
from faastwist.util.reactor import IFullReactor
from faastwist.workers.channel import Calls, Channel, ChannelFactory, Message
from faastwist.workers.remote import RemoteProvider, RemoteQueue

log = Logger(namespace="faastwist.workers")

CONTROL_FD = 3
PR_SET_PDEATHSIG = 1
COUNTS_INTERVAL = 1.0


def die_with_parent(parent: int) -> None:
    """Ask the kernel for SIGTERM when the parent dies; exit now if it already has."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the channel's close still stops us
        pass
    if os.getppid() != parent:
        os._exit(0)


class Worker:
    """One worker's life: setup, serve, drain."""

    def __init__(self, reactor: IFullReactor, index: int) -> None:
        self.reactor = reactor
        self.index = index
        self.channel = Channel(self.received, self.channel_lost)
        self.calls = Calls(self.channel, reactor)
        self.gate: Any = None
        self.store: Any = None
        self.routes: Any = None
        self.provider: Any = None
        self.remote: RemoteProvider | None = None   # the leases come from the node
        self.reporter: Any = None
        self.ticker: LoopingCall | None = None
        self.setup_done = False
        self.stopping = False
        self._stop_asked = False

    # -- messages ------------------------------------------------------------------------
    def received(self, message: Message) -> None:
        op = message["op"]
        if op == "setup":
            if not self.setup_done:
                self.setup_done = True
                ensureDeferred(self.start(message)).addErrback(self._start_failed)
        elif op == "reply":
            self.calls.answer(message)
        elif op == "lost":
            if self.remote is not None:
                self.remote.lost(message)
        elif op == "reload":
            self.reload()
        elif op == "reach":
            self.reach(message)
        elif op == "drain":
            if self.gate is not None:
                self.gate.begin_drain()
        else:
            log.warn("gate worker: unknown message {op}", op=op)

    def stop_reactor(self) -> None:
        """Begin the shutdown (draining) once, whatever asks for it how often."""
        if not self._stop_asked:
            self._stop_asked = True
            self.reactor.stop()

    def channel_lost(self, why: str) -> None:
        self.calls.fail_all("the control channel closed")
        if self.remote is not None:
            self.remote.channel_lost()
        if not self.stopping:
            log.warn("gate worker {index}: the node's main process is gone ({why}); "
                     "stopping", index=self.index, why=why)
            self.stop_reactor()

    # -- start ---------------------------------------------------------------------------
    async def start(self, message: Message) -> None:
        from faastwist.gate.assembly import build_gate, load_routes
        from faastwist.metrics import Metrics
        from faastwist.store.etcd import EtcdStore
        from faastwist.workers.counts import CountsReporter
        from faastwist.workers.listen import listen_reuseport
        from faastwist.workers.setup import WorkerSetup

        setup = WorkerSetup.from_message(message)
        sink = self._start_logging(setup.log_json)
        http = setup.http
        metrics = Metrics()
        etcd = setup.etcd
        self.store = EtcdStore(self.reactor, list(etcd.endpoints), etcd.prefix, setup.name,
                               etcd.timeout, metrics, start_index=self.index,
                               tls=etcd.tls.policy() if etcd.tls is not None else None)
        await self.store.connect()
        self.routes = await load_routes(self.store, self.reactor, metrics, etcd.timeout * 4)
        kind = registry.get(setup.provider)
        if kind.worker_leases is WorkerLeases.LOCAL_ROUTING:
            assert setup.routing is not None
            self.provider = kind.routing_for_worker(setup.routing)
        else:
            self.provider = self.remote = RemoteProvider(self.calls, setup.acquire_timeout)
        self.gate = build_gate(
            http, self.routes, self.provider, self.reactor, metrics, setup.system,
            sink=sink, json_lines=sink is not None and setup.log_json,
            listen=lambda factory: listen_reuseport(self.reactor, http.address, http.port,
                                                    factory))
        if setup.queue is not None:
            self.gate.context.queue = RemoteQueue.from_setup(self.calls, setup.queue)
        self.gate.startService()
        self.reporter = CountsReporter(metrics)
        self.ticker = LoopingCall(self.report)
        self.ticker.clock = self.reactor
        self.ticker.start(COUNTS_INTERVAL, now=False)
        self.reactor.addSystemEventTrigger("before", "shutdown", self.stop)
        self.channel.send({"op": "ready", "pid": os.getpid(), "port": self.gate.address()[1]})

    def _start_logging(self, json_lines: bool) -> Any:
        """The node's log format on stdout; the access log's sink writes there too."""
        from faastwist.logformat import json_file_observer

        stream = sys.stdout
        observer = json_file_observer(stream) if json_lines else textFileLogObserver(stream)
        globalLogBeginner.beginLoggingTo([FilteringLogObserver(
            observer, [LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)])],
            redirectStandardIO=False)

        def write(text: str) -> None:
            stream.write(text)
            stream.flush()
        return write

    def _start_failed(self, failure: Any) -> None:
        log.error("gate worker {index} cannot serve: {problem}", index=self.index,
                  problem=failure.getErrorMessage())
        self.channel.send({"op": "failed", "message": failure.getErrorMessage()})
        self.stopping = True
        self.channel.close().addBoth(lambda _: self.stop_reactor())

    # -- running -------------------------------------------------------------------------
    def report(self) -> None:
        delta = self.reporter.delta()
        if delta:
            self.channel.send({"op": "counts", "counts": delta})

    def reach(self, message: Message) -> None:
        """Answer ``reached`` once this worker's routes reflect the revision asked for
        (the node's API answer waits for it: read-your-writes)."""
        ident, revision = message.get("id"), message.get("revision")
        if not isinstance(revision, int) or isinstance(revision, bool):
            log.warn("gate worker: reach without a revision")
            return

        def answer(_: object) -> None:
            self.channel.send({"op": "reached", "id": ident})
        if self.routes is None:
            answer(None)
            return
        self.routes.reached(revision).addCallback(answer)

    def reload(self) -> None:
        if self.gate is None:
            return
        if self.gate.tls is None:
            return
        try:
            self.gate.reload_tls()
            log.info("gate worker {index}: the gate certificate was reloaded", index=self.index)
        except Exception as exc:
            log.error("gate worker {index}: the certificate was not reloaded, the previous "
                      "one stays: {error}", index=self.index, error=str(exc))

    # -- stop ----------------------------------------------------------------------------
    def stop(self) -> Deferred[None]:
        """Drain the gate, send the last counts, close the channel."""
        self.stopping = True
        if self.ticker is not None and self.ticker.running:
            self.ticker.stop()

        def drained(_: Any) -> Deferred[None]:
            if self.routes is not None:
                self.routes.stopService()
            self.report()
            closing = self.channel.close()
            closing.addTimeout(5.0, self.reactor)
            closing.addErrback(lambda _: None)
            if self.store is not None:
                closing.addBoth(lambda _: self.store.close())
            return closing

        stopping = self.gate.stopService() if self.gate is not None else Deferred()
        if self.gate is None:
            stopping.callback(None)
        return stopping.addBoth(drained).addErrback(lambda _: None)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="faastwist.workers.child")
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--index", type=int, default=0)
    args = parser.parse_args(argv)
    die_with_parent(args.parent)
    from faastwist.util.reactor import global_reactor
    reactor = global_reactor()

    worker = Worker(reactor, args.index)

    def on_sighup(signum: int, frame: object) -> None:
        reactor.callFromThread(worker.reload)

    def on_stop(signum: int, frame: object) -> None:
        # the node's SIGTERM and a terminal's or systemd's signal to the whole group may
        # both arrive: the first one drains, the others change nothing
        reactor.callFromThread(worker.stop_reactor)

    signal.signal(signal.SIGHUP, on_sighup)
    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    # declared to take a ServerFactory; any IProtocolFactory works (as for listenTCP)
    reactor.adoptStreamConnection(CONTROL_FD, socket.AF_UNIX,
                                  ChannelFactory(worker.channel))  # type: ignore[arg-type]
    os.close(CONTROL_FD)  # the reactor holds a duplicate
    def no_setup() -> None:
        if not worker.setup_done:
            sys.stderr.write("no setup message within 60s\n")
            worker.stop_reactor()

    reactor.callLater(60.0, no_setup)
    # the real reactor's run takes it; IReactorCore's declaration does not
    reactor.run(installSignalHandlers=False)  # type: ignore[call-arg]


if __name__ == "__main__":
    main()


__all__ = ["Worker", "main"]
