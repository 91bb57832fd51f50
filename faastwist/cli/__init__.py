"""``faastwist``: the operator's command line for a faasgate node.

Talks to the admin REST API (and, for ``invoke``, to the gate) so nobody has to
hand-write curl calls with YAML content types. Exit codes: 0 ok, 1 the server refused
or could not be reached (its ``{code, message}`` is printed), 2 usage.
"""

from __future__ import annotations

import os
import sys
import click

from faastwist.cli.client import CliContext, CommandFailed, InputError
from faastwist.cli.asynccmd import async_commands
from faastwist.cli.commands import COMMANDS, duration_option
from faastwist.cli.export import export as export_command
from faastwist.cli.token import token as token_commands
from faastwist.cli.keys import key as key_commands
from faastwist.cli.templatecmd import TEMPLATE_COMMANDS
from faastwist.cli.storecmd import store_commands

__all__ = ["main", "cli", "CliContext", "CommandFailed", "InputError"]

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(context_settings=CONTEXT)
@click.option("--server", "-s", metavar="URL",
              help="Admin API URL [env FAASTWIST_SERVER; default http://127.0.0.1:2381].")
@click.option("--controller", "-c", metavar="NAME",
              help="Controller name [env FAASTWIST_CONTROLLER; default: the server's].")
@click.option("--token", metavar="TOKEN",
              help="Bearer token for the admin API [env FAASTWIST_TOKEN].")
@click.option("--node-config", metavar="PATH",
              help="The node's controller.yaml: without a token, use the admin token the node "
                   "wrote beside its tokens file [env FAASTWIST_NODE_CONFIG].")
@click.option("--gate", metavar="URL",
              help="Gate URL for invoke [env FAASTWIST_GATE; default: the server's host, "
                   "port 10083].")
@click.option("--request-timeout", "timeout", metavar="DURATION", callback=duration_option,
              help="Timeout of each HTTP request, e.g. 10s [env FAASTWIST_TIMEOUT; default 30s].")
@click.version_option(package_name="faastwist", prog_name="faastwist",
                      message="%(prog)s %(version)s")
@click.pass_context
def cli(ctx: click.Context, server: str | None, controller: str | None, token: str | None,
        node_config: str | None, gate: str | None, timeout: float | None) -> None:
    """Manage the functions of a faastwist controller.

    Settings come from the flags, then FAASTWIST_SERVER / FAASTWIST_CONTROLLER /
    FAASTWIST_TOKEN / FAASTWIST_GATE, then ~/.config/faastwist/config.yaml (keys server,
    controller, token, gate, timeout; FAASTWIST_CONFIG names another file). Without a
    token, the one the node wrote beside its tokens file is used when --node-config /
    FAASTWIST_NODE_CONFIG (the node's controller.yaml) or FAASTWIST_TOKENS_FILE says
    where that is.

    Exit status: 0 ok, 1 the server refused or could not be reached, 2 usage.
    """
    if token is None and node_config:
        from faastwist.cli.token import NODE_CONFIG_ENV, token_from_node

        token = token_from_node({NODE_CONFIG_ENV: node_config}) or None
    ctx.obj = CliContext({"server": server, "controller": controller, "token": token,
                          "gate": gate, "timeout": timeout})


for _command in COMMANDS:
    cli.add_command(_command)
cli.add_command(export_command)
cli.add_command(token_commands)
cli.add_command(async_commands)
cli.add_command(key_commands)
for _command in TEMPLATE_COMMANDS:
    cli.add_command(_command)
cli.add_command(store_commands)


def main(argv: list[str] | None = None) -> int:
    """The console-script entry point (``faastwist = faastwist.cli:main``)."""
    try:
        return cli.main(args=argv, prog_name="faastwist", standalone_mode=True) or 0
    except SystemExit as exit_:
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except BrokenPipeError:
        # the reader went away (`faastwist logs f | head`): not an error worth a traceback
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # python -m faastwist.cli
    sys.exit(main())
