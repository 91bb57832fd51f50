"""``faastwist key create|list|revoke FN``: a function's invocation keys.

A new key is printed once (on stdout alone, so ``KEY=$(faastwist key create fn)``
works; what to do with it goes to stderr); the node keeps only its SHA-256.
"""

from __future__ import annotations

from urllib.parse import quote

import click

from faastwist.cli.client import CliContext
from faastwist.cli.output import dump, table


@click.group(name="key")
def key() -> None:
    """Invocation keys: callers of a function with keys must send one
    (Authorization: Bearer KEY or X-API-Key: KEY), or get 401."""


@key.command(name="create")
@click.argument("name", metavar="FN")
@click.option("-o", "--output", type=click.Choice(["key", "yaml", "json"]), default="key",
              show_default=True, help="key: the key alone on stdout.")
@click.pass_obj
def create(obj: CliContext, name: str, output: str) -> None:
    """Create a key for FN; it is shown only now."""
    client = obj.client
    data = client.call("POST", client.path(name, "keys"))
    if output == "key":
        click.echo(data["key"])
        click.echo(f"key {data['id']} created for function {name}; it is shown only now: "
                   f"callers send it as 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                   err=True)
    else:
        click.echo(dump(data, output))


@key.command(name="list")
@click.argument("name", metavar="FN")
@click.option("-o", "--output", type=click.Choice(["table", "yaml", "json"]),
              default="table", show_default=True)
@click.pass_obj
def list_(obj: CliContext, name: str, output: str) -> None:
    """List FN's keys by id (the keys themselves are never shown again)."""
    client = obj.client
    data = client.call("GET", client.path(name, "keys"))
    if output != "table":
        click.echo(dump(data, output))
    elif not data:
        click.echo(f"function {name} has no keys: anyone may call it", err=True)
    else:
        click.echo(table([[e["id"], e["created"]] for e in data], ["ID", "CREATED"]))


@key.command(name="revoke")
@click.argument("name", metavar="FN")
@click.argument("key_id", metavar="ID")
@click.option("--open", "opening", is_flag=True,
              help="Allow revoking FN's last key, which opens FN to anyone.")
@click.pass_obj
def revoke(obj: CliContext, name: str, key_id: str, opening: bool) -> None:
    """Revoke FN's key ID at once (other keys stay valid). The last key is refused
    unless --open: without keys anyone may call FN."""
    client = obj.client
    path = client.path(name, "keys/" + quote(key_id, safe=""))
    data = client.call("DELETE", path + ("?open=true" if opening else ""))
    click.echo(f"key {key_id} of function {name} revoked")
    if data.get("open"):
        click.echo(f"function {name} has no keys now: anyone may call it", err=True)
