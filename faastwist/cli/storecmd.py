"""``faastwist store``: the node's function store (``GET /system/store``).

``list`` shows the catalogue; ``deploy NAME`` sends the FunctionDeployment faas-cli's
``store deploy`` would send to ``POST /system/functions``. An entry that cannot run on
this node (no ``fprocess``: it needs its image; or a program the node does not have) is
refused with the reason, and nothing is deployed.
"""

from __future__ import annotations

import json

import click

from faastwist.catalogue import CatalogueError, deployment, find
from faastwist.cli.client import CliContext, CommandFailed
from faastwist.cli.output import dump, table

STORE_PATH = "/system/store"


def _catalogue(obj: CliContext) -> dict:
    client = obj.client
    data = client.check(client.http.request("GET", STORE_PATH))
    if not isinstance(data, dict) or not isinstance(data.get("functions"), list):
        raise CommandFailed("the node's /system/store did not answer a catalogue")
    return data


@click.group(name="store")
def store_commands() -> None:
    """The function store: list its catalogue, deploy from it."""


@store_commands.command(name="list")
@click.option("-o", "--output", type=click.Choice(["table", "yaml", "json"]), default="table",
              show_default=True)
@click.pass_obj
def list_store(obj: CliContext, output: str) -> None:
    """List the functions the store offers."""
    catalogue = _catalogue(obj)
    if output != "table":
        click.echo(dump(catalogue, output))
        return
    rows = [[f.get("name", ""), f.get("fprocess", "") or "(image only)",
             f.get("description", "")] for f in catalogue["functions"]]
    click.echo(table(rows, ["NAME", "FPROCESS", "DESCRIPTION"]))


@store_commands.command(name="deploy")
@click.argument("entry", metavar="NAME")
@click.option("--name", "service", metavar="NAME",
              help="Deploy under this name instead of the store's.")
@click.option("--label", "-l", "labels", multiple=True, metavar="KEY=VALUE",
              help="Extra label (e.g. com.openfaas.scale.max=4); repeatable.")
@click.option("--env", "-e", "env", multiple=True, metavar="KEY=VALUE",
              help="Extra environment variable; repeatable.")
@click.pass_obj
def deploy_store(obj: CliContext, entry: str, service: str | None, labels: tuple[str, ...],
                 env: tuple[str, ...]) -> None:
    """Deploy a function from the store (by its name or title)."""
    found = find(_catalogue(obj), entry)
    if found is None:
        raise CommandFailed(f"the store has no function {entry} (faastwist store list)")
    try:
        body = deployment(found, service)
    except CatalogueError as exc:
        raise CommandFailed(f"cannot deploy {entry} here: {exc}") from None
    for option, pairs in (("labels", labels), ("envVars", env)):
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or not key:
                raise click.BadParameter(f"{pair!r} is not KEY=VALUE")
            body.setdefault(option, {})[key] = value
    client = obj.client
    reply = client.http.request("POST", "/system/functions", json.dumps(body).encode(),
                                {"Content-Type": "application/json"})
    if reply.status >= 400:
        try:
            client.check(reply)
        except CommandFailed as exc:
            raise CommandFailed(f"cannot deploy {entry} here: {exc.message}", exc.status,
                                exc.code) from None
    click.echo(f"{body['service']}: deploying from the store ({found.get('fprocess')})")
