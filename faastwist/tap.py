"""twistd faasgate: command-line options and the service tree."""

from __future__ import annotations

import os
import signal
import sys

import attrs
from twisted.application.service import IService, MultiService
from twisted.python import usage

from faastwist.config import ConfigError, ControllerConfig, load_config


def _port(value: str) -> int:
    port = int(value)
    if not 1 <= port <= 65535:
        raise ValueError(f"must be 1-65535, got {port}")
    return port


class Options(usage.Options):
    synopsis = "--config PATH [--admin-port N] [--gate-port N] [--log-format text|json]"
    optParameters = [
        ["config", "c", None, "Path to controller.yaml (required)."],
        ["log-format", None, "text",
         "text (twistd's) or json (one object per line with the event's fields)."],
        ["admin-port", None, None, "Override admin.port.", _port],
        ["gate-port", None, None, "Override httpServer.port.", _port],
    ]

    def postOptions(self) -> None:
        if not self["config"]:
            raise usage.UsageError("--config is required (e.g. --config conf/controller.yaml)")
        from faastwist.logformat import use_log_format

        use_log_format(self, self["log-format"])
        from faastwist.providers.registry import kind_of

        try:
            config = load_config(self["config"])
            kind_of(config)
        except ConfigError as exc:
            # one line naming the key, not twistd's usage dump: the operator fixes a file
            raise SystemExit(f"faasgate: config error: {exc}") from None
        if self["admin-port"]:
            config = attrs.evolve(config, admin=attrs.evolve(config.admin, port=self["admin-port"]))
        if self["gate-port"]:
            config = attrs.evolve(config, http_server=attrs.evolve(
                config.http_server, port=self["gate-port"]))
        if config.etcd.embedded:
            from faastwist.store.embedded import MISSING_ETCD_MESSAGE, find_etcd_binary

            if find_etcd_binary() is None:
                raise SystemExit(f"faasgate: {MISSING_ETCD_MESSAGE}")
        if config.queue.enabled and config.queue.embedded:
            from faastwist.queue.embedded import MISSING_NATS_MESSAGE, find_nats_binary

            if find_nats_binary() is None:
                raise SystemExit(f"faasgate: {MISSING_NATS_MESSAGE}")
        self.controller_config: ControllerConfig = config


def _exit_non_zero() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


def makeService(options: Options) -> IService:
    """The only place that touches the global reactor."""
    from faastwist.node import FaasNode
    from faastwist.util.reactor import global_reactor

    reactor = global_reactor()

    def on_fatal(message: str) -> None:
        sys.stderr.write(f"faasgate: {message}\n")
        # stop the services that did start (the embedded etcd among them), then exit 1:
        # twistd itself has no way to set a non-zero exit status
        reactor.addSystemEventTrigger("after", "shutdown", _exit_non_zero)
        if reactor.running:
            reactor.stop()
        else:
            # a start that fails before twistd runs the reactor (the data folder's lock,
            # an etcd that refuses at once): reactor.stop() would raise, and the node
            # hung without serving; stop as soon as it runs instead
            reactor.callWhenRunning(reactor.stop)

    top = MultiService()
    node = FaasNode(options.controller_config, reactor, on_fatal)
    node.setServiceParent(top)

    def on_sighup(signum: int, frame: object) -> None:
        reactor.callFromThread(node.reload)

    # SIGHUP reloads credentials and certificates (its default would end the process)
    signal.signal(signal.SIGHUP, on_sighup)
    return top
