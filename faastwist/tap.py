"""twistd faasgate: command-line options and the service tree."""

from __future__ import annotations

from twisted.python import usage

from faastwist.config import ConfigError, ControllerConfig, load_config


class Options(usage.Options):
    optParameters = [
        ["config", "c", None, "Path to controller.yaml (required)."],
        ["admin-port", None, None, "Override admin.port.", int],
        ["gate-port", None, None, "Override httpServer.port.", int],
    ]

    def postOptions(self) -> None:
        if not self["config"]:
            raise usage.UsageError("--config is required (e.g. --config conf/controller.yaml)")
        try:
            self.controller_config: ControllerConfig = load_config(self["config"])
        except ConfigError as exc:
            # one line naming the key, not twistd's usage dump: the operator fixes a file
            raise SystemExit(f"faasgate: config error: {exc}") from None


def makeService(options: Options):
    from twisted.application.service import MultiService

    return MultiService()
