"""``faastwist export``: the functions as documents to keep in Git.

With ``--crd`` each function becomes a ``faastwist.io/v1`` Function object (the path
from functions made through the API to ``kubectl apply``); without it, the specs as
``create -f`` takes them. One YAML stream, in name order.
"""

from __future__ import annotations

import click
import yaml

from faastwist.cli.client import CliContext, CommandFailed
from faastwist.cli.output import records_of
from faastwist.kube.objects import export_object
from faastwist.model.spec import FunctionSpec, SpecError


@click.command()
@click.argument("names", nargs=-1, metavar="[NAME...]")
@click.option("--crd", is_flag=True,
              help="Print Function objects (faastwist.io/v1) for kubectl apply.")
@click.option("-n", "--namespace", default="", metavar="NS",
              help="With --crd: the objects' metadata.namespace (default: none, so "
                   "kubectl uses its own).")
@click.pass_obj
def export(obj: CliContext, names: tuple[str, ...], crd: bool, namespace: str) -> None:
    """Print every function (or the NAMEs) as YAML documents."""
    client = obj.client
    records = records_of(client.call("GET", client.path()))
    specs = {}
    for record in records:
        try:
            spec = FunctionSpec.from_dict(record.get("spec"))
        except SpecError as exc:
            raise CommandFailed(f"the server sent a spec this CLI cannot read: {exc}") from None
        specs[spec.name] = spec
    missing = [name for name in names if name not in specs]
    if missing:
        raise CommandFailed(f"no function named {', '.join(missing)} in controller "
                            f"{client.controller}", 404)
    chosen = [specs[name] for name in (names or sorted(specs))]
    documents = [export_object(spec, namespace) if crd else spec.to_dict() for spec in chosen]
    click.echo(yaml.safe_dump_all(documents, sort_keys=False), nl=False)
