"""``faastwist token create|list|revoke``: the node's admin tokens file, edited in place.

These commands work on the file, not through the API: they are for the operator on the
node's machine (who can read the file), and they work while the node is down. The node
picks a change up within a couple of seconds (it polls the file) or at once on SIGHUP.
The file is found from ``--tokens-file``, or from the node's controller.yaml
(``--config``, ``admin.auth.tokensFile``); ``FAASTWIST_TOKENS_FILE`` and
``FAASTWIST_NODE_CONFIG`` stand in for the flags.
"""

from __future__ import annotations

import json
import os
from typing import Mapping

import click

from faastwist.auth.tokens import (
    Role,
    TokenFileError,
    add_token,
    read_admin_token,
    read_tokens,
    revoke_token,
)

NODE_CONFIG_ENV = "FAASTWIST_NODE_CONFIG"
TOKENS_FILE_ENV = "FAASTWIST_TOKENS_FILE"


def tokens_file_of(node_config: str) -> str:
    """``admin.auth.tokensFile`` of a controller.yaml, resolved like the node does."""
    from faastwist.config import ConfigError, load_config

    try:
        return load_config(node_config).admin.auth.tokens_file
    except ConfigError as exc:
        raise click.UsageError(f"--config {node_config}: {exc}") from None


def token_from_node(env: Mapping[str, str] = os.environ) -> str:
    """The admin token the node left beside its tokens file, found through
    FAASTWIST_TOKENS_FILE or FAASTWIST_NODE_CONFIG; "" when neither leads to one."""
    path = env.get(TOKENS_FILE_ENV, "")
    if not path and env.get(NODE_CONFIG_ENV):
        path = tokens_file_of(env[NODE_CONFIG_ENV])
    return (read_admin_token(path) or "") if path else ""


def _resolve(node_config: str | None, tokens_file: str | None) -> str:
    if tokens_file:
        return tokens_file
    if node_config:
        return tokens_file_of(node_config)
    raise click.UsageError("say which tokens file: --config conf/controller.yaml (the node's "
                           "config) or --tokens-file PATH")


class _Files:
    def __init__(self, node_config: str | None, tokens_file: str | None) -> None:
        self.node_config = node_config
        self.tokens_file = tokens_file

    @property
    def path(self) -> str:
        return _resolve(self.node_config, self.tokens_file)


def _fail(exc: Exception) -> click.ClickException:
    return click.ClickException(str(exc))  # exit status 1


@click.group("token")
@click.option("--config", "node_config", metavar="PATH", envvar=NODE_CONFIG_ENV,
              help=f"The node's controller.yaml; its admin.auth.tokensFile is managed "
                   f"[env {NODE_CONFIG_ENV}].")
@click.option("--tokens-file", metavar="PATH", envvar=TOKENS_FILE_ENV,
              help=f"The tokens file itself [env {TOKENS_FILE_ENV}].")
@click.pass_context
def token(ctx: click.Context, node_config: str | None, tokens_file: str | None) -> None:
    """Manage the node's admin tokens (run on the node's machine)."""
    ctx.obj = _Files(node_config, tokens_file)


@token.command("create")
@click.option("--role", type=click.Choice([r.value for r in Role]), required=True,
              help="admin: everything; read: GET/HEAD only.")
@click.pass_obj
def create(files: _Files, role: str) -> None:
    """Make a token; it is printed once (only its hash is kept)."""
    try:
        secret, entry = add_token(files.path, Role(role))
    except (TokenFileError, OSError) as exc:
        raise _fail(exc) from None
    click.echo(secret)
    click.echo(f"token {entry.id} ({role}) added to {files.path}; it is shown only now",
               err=True)


@token.command("list")
@click.option("--output", "-o", type=click.Choice(["table", "json"]), default="table")
@click.pass_obj
def list_(files: _Files, output: str) -> None:
    """The tokens by id (a prefix of their hash) and role."""
    try:
        entries = read_tokens(files.path)
    except TokenFileError as exc:
        raise _fail(exc) from None
    if output == "json":
        click.echo(json.dumps([{"id": e.id, "role": e.role.value} for e in entries], indent=2))
        return
    click.echo(f"{'ID':<14}ROLE")
    for entry in entries:
        click.echo(f"{entry.id:<14}{entry.role.value}")


@token.command("revoke")
@click.argument("token_id", metavar="ID")
@click.pass_obj
def revoke(files: _Files, token_id: str) -> None:
    """Remove a token by id; the node stops accepting it within seconds (or on SIGHUP)."""
    try:
        gone = revoke_token(files.path, token_id)
    except (TokenFileError, OSError) as exc:
        raise _fail(exc) from None
    click.echo(f"token {gone.id} ({gone.role.value}) revoked")
