"""``faastwist async``: a queued call's status, a function's dead letters, retry, purge.

(``faastwist invoke --async [--callback URL]`` queues a call; see commands.py.)
"""

from __future__ import annotations

import time
import click

from faastwist.cli.client import CliContext
from faastwist.cli.output import dump, human_age, table
from faastwist.util.times import parse_rfc3339


@click.group(name="async")
def async_commands() -> None:
    """Asynchronous calls: status, dead letters, retry, purge."""


def _seconds(value: object, default: float) -> float:
    """Epoch seconds of a record's time: RFC 3339 text (what the API shows), or a number
    (an older node)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            found = parse_rfc3339(value)
        except ValueError:
            found = None
        if found is not None:
            return found
    return default


@async_commands.command(name="get")
@click.argument("name", metavar="FUNCTION")
@click.argument("call_id", metavar="CALL_ID")
@click.option("-o", "--output", type=click.Choice(["yaml", "json"]), default="yaml",
              show_default=True)
@click.pass_obj
def get(obj: CliContext, name: str, call_id: str, output: str) -> None:
    """Show a call's state (queued, running, succeeded, failed, dead), attempts and
    last status."""
    client = obj.client
    click.echo(dump(client.call("GET", client.path(name, f"async/{call_id}")), output))


@async_commands.command(name="list")
@click.argument("name", metavar="FUNCTION")
@click.option("-o", "--output", type=click.Choice(["table", "yaml", "json"]), default="table",
              show_default=True)
@click.option("--limit", type=click.IntRange(1, 10000), default=1000, show_default=True)
@click.pass_obj
def list_dead(obj: CliContext, name: str, output: str, limit: int) -> None:
    """List a function's dead letters."""
    client = obj.client
    data = client.call("GET", client.path(name, "async", {"limit": limit}))
    if output != "table":
        click.echo(dump(data, output))
        return
    now = time.time()
    rows = [[e.get("callId", ""), str(e.get("attempts", "")),
             str(e.get("lastStatus", "-")), human_age(now - _seconds(e.get("deadAt"), now)),
             e.get("reason", "")] for e in data.get("deadLetters", [])]
    click.echo(table(rows, ["CALL ID", "ATTEMPTS", "LAST", "AGE", "REASON"]))


@async_commands.command(name="retry")
@click.argument("name", metavar="FUNCTION")
@click.argument("call_ids", metavar="CALL_ID...", nargs=-1, required=True)
@click.pass_obj
def retry(obj: CliContext, name: str, call_ids: tuple[str, ...]) -> None:
    """Queue dead letters again, with fresh attempts."""
    client = obj.client
    for call_id in call_ids:
        client.call("POST", client.path(name, f"async/{call_id}/retry"))
        click.echo(f"call {call_id} of {name} queued again")


@async_commands.command(name="purge")
@click.argument("name", metavar="FUNCTION")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def purge(obj: CliContext, name: str, yes: bool) -> None:
    """Delete all of a function's dead letters."""
    if not yes:
        click.confirm(f"delete every dead letter of {name}?", abort=True)
    client = obj.client
    client.call("DELETE", client.path(name, "async"))
    click.echo(f"dead letters of {name} purged")
