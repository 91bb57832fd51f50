"""The CLI's commands, each a module-level click command and a thin layer over one or two
admin API calls; ``faastwist.cli`` adds ``COMMANDS`` to its group."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import click
import yaml

from faastwist.cli.client import (API_PREFIX, CliContext, CommandFailed, HTTPClient, InputError,
                                  Reply, error_message, parse_seconds)
from faastwist.cli.output import (LIST_COLUMNS, Progress, describe_state, dump, human_age,
                                  list_rows, records_of, status_of, table)
from faastwist.util.units import format_duration

WAIT_STATES = ("active", "inactive", "failed", "initial", "deleted")
POLL_INTERVAL = 0.5


def _complete_names(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """Shell completion of function names: ask the server, stay silent on any problem."""
    from click.shell_completion import CompletionItem

    try:
        root = ctx.find_root()
        client = root.obj.client if root.obj is not None else None
        if client is None:
            from faastwist.cli.client import AdminClient, load_settings

            params = root.params
            client = AdminClient(load_settings(
                params.get("server"), params.get("controller"), params.get("token"),
                params.get("gate"), params.get("timeout")))
        records = records_of(client.call("GET", client.path()))
    except Exception:
        return []
    names = sorted(str((r.get("spec") or {}).get("name", "")) for r in records)
    return [CompletionItem(n) for n in names if n and n.startswith(incomplete)]


def _name_argument(multiple: bool = False) -> Callable[[Any], Any]:
    return click.argument("names" if multiple else "name", metavar="NAME..." if multiple else "NAME",
                          nargs=-1 if multiple else 1, required=True,
                          shell_complete=_complete_names)


def duration_option(ctx: click.Context, param: click.Parameter, value: Any) -> float | None:
    """click callback: a Go duration (``30s``) or seconds, as float seconds."""
    if value is None:
        return None
    try:
        return parse_seconds(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def read_spec_file(path: str) -> tuple[bytes, str]:
    """The file's bytes (``-`` is stdin) and the content type to send them with."""
    if path == "-":
        return sys.stdin.buffer.read(), "application/yaml"
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"-f {path}: cannot read it: {exc.strerror}") from None
    kind = "application/json" if path.lower().endswith(".json") else "application/yaml"
    return data, kind


def spec_name(body: bytes, path: str) -> str:
    """The ``name`` field of a spec file (update needs it for the URL)."""
    try:
        data = yaml.safe_load(body)
    except yaml.YAMLError as exc:
        raise InputError(f"-f {path}: not valid YAML or JSON: {exc}") from None
    name = data.get("name") if isinstance(data, dict) else None
    if not isinstance(name, str) or not name:
        raise InputError(f"-f {path}: has no name field; give the function's NAME as an argument")
    return name


def _summary(data: Any, fallback: str) -> tuple[str, str]:
    """The name and new state from a write's answer (the provider's message there is
    from before the write, so it is left to get/wait)."""
    status = status_of(data)
    name = str(status.get("name") or fallback)
    state = str(status.get("state") or "")
    if state and status.get("startPending"):
        state += ", start requested"
    return name, state


@click.command()
@click.option("-f", "--file", "path", required=True, metavar="FILE",
              help="Spec in YAML or JSON; - reads stdin.")
@click.pass_obj
def create(obj: CliContext, path: str) -> None:
    """Create a function from a spec file."""
    body, kind = read_spec_file(path)
    client = obj.client
    data = client.call("POST", client.path(), body, kind)
    name, state = _summary(data, "")
    click.echo(f"function {name} created" + (f" (state: {state})" if state else ""))

@click.command()
@click.argument("name", required=False, metavar="[NAME]", shell_complete=_complete_names)
@click.option("-f", "--file", "path", required=True, metavar="FILE",
              help="Spec in YAML or JSON; - reads stdin.")
@click.pass_obj
def update(obj: CliContext, name: str | None, path: str) -> None:
    """Replace a function's spec (NAME defaults to the spec's name); an active
    function keeps serving while the new version rolls out."""
    body, kind = read_spec_file(path)
    name = name or spec_name(body, path)
    client = obj.client
    data = client.call("PUT", client.path(name, "rollout"), body, kind)
    _, state = _summary(data, name)
    click.echo(f"function {name} updated" + (f" (state: {state})" if state else ""))

@click.command()
@_name_argument()
@click.option("-o", "--output", type=click.Choice(["yaml", "json"]), default="yaml", show_default=True)
@click.pass_obj
def get(obj: CliContext, name: str, output: str) -> None:
    """Show a function's spec and status."""
    client = obj.client
    click.echo(dump(client.call("GET", client.path(name)), output))

@click.command(name="list")
@click.option("-o", "--output", type=click.Choice(["table", "yaml", "json", "name"]),
              default="table", show_default=True)
@click.pass_obj
def list_(obj: CliContext, output: str) -> None:
    """List the functions: name, state, last event, replicas, image, age.

    REPLICAS is min..max from the spec, after "running/" when the provider reports
    a count (1/0..4); AGE is the time since the function's last state change.
    """
    client = obj.client
    data = client.call("GET", client.path())
    records = records_of(data)
    if output == "table":
        if not records:
            click.echo(f"no functions in controller {client.controller}", err=True)
            return
        click.echo(table(list_rows(records, time.time()), LIST_COLUMNS))
    elif output == "name":
        for row in list_rows(records, time.time()):
            click.echo(row[0])
    else:
        click.echo(dump(data, output))

def _lifecycle(verb: str, method: str, action: str, past: str) -> click.Command:
    """start, stop and delete: the same loop over NAME... with a different call."""
    @click.command(name=verb, help=f"{verb.capitalize()} one or more functions.")
    @_name_argument(multiple=True)
    @click.pass_obj
    def command(obj: CliContext, names: tuple[str, ...]) -> None:
        client = obj.client
        failed = []
        for name in names:
            try:
                data = client.call(method, client.path(name, action))
            except CommandFailed as exc:
                if len(names) == 1:
                    raise
                click.echo(f"Error: {name}: {exc.format_message()}", err=True)
                failed.append(name)
                continue
            _, state = _summary(data, name)
            shown = state and action != ""      # a deleted function has no state to show
            click.echo(f"function {name} {past}" + (f" (state: {state})" if shown else ""))
        if failed:
            raise click.exceptions.Exit(1)
    return command


start = _lifecycle("start", "PUT", "start", "started")
stop = _lifecycle("stop", "PUT", "stop", "stopped")
delete = _lifecycle("delete", "DELETE", "", "deleted")

@click.command()
@_name_argument()
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines (Ctrl-C ends).")
@click.option("--tail", type=click.IntRange(min=0), metavar="N",
              help="Only the last N lines.")
@click.option("--since", metavar="DURATION|TIME",
              help="Only lines newer than this: a duration (10m) or an RFC3339 time.")
@click.option("-o", "--output", type=click.Choice(["text", "raw", "json"]), default="text",
              show_default=True, help="text: time, instance, line; raw: the line only; "
                                      "json: the API's NDJSON.")
@click.pass_obj
def logs(obj: CliContext, name: str, follow: bool, tail: int | None, since: str | None,
         output: str) -> None:
    """Print a function's log lines."""
    client = obj.client
    query: dict[str, Any] = {"tail": tail, "since": since}
    if follow:
        query["follow"] = "true"
    try:
        for raw in client.stream_lines(client.path(name, "logs", query), follow):
            _print_log_line(raw, output)
    except KeyboardInterrupt:
        click.echo("", err=True)

@click.command()
@_name_argument()
@click.option("-d", "--data", metavar="DATA|@FILE|-",
              help="Request body: a literal, @file, or - for stdin.")
@click.option("-H", "--header", "headers", multiple=True, metavar="K:V",
              help="A request header (repeatable).")
@click.option("-X", "--method", metavar="METHOD",
              help="HTTP method [default: POST with --data, else GET].")
@click.option("--path", default="/", show_default=True, help="Path sent to the function.")
@click.option("-i", "--include", is_flag=True, help="Print the status line and headers.")
@click.option("-v", "--verbose", is_flag=True, help="Print status and timing to stderr.")
@click.option("--async", "queued", is_flag=True,
              help="Queue the call (202 and its call id); see `faastwist async`.")
@click.option("--callback", metavar="URL", help="With --async: POST the answer here.")
@click.pass_obj
def invoke(obj: CliContext, name: str, data: str | None, headers: tuple[str, ...],
           method: str | None, path: str, include: bool, verbose: bool, queued: bool,
           callback: str | None) -> None:
    """Call a function through the gate (X-FaaS-Func-Name routing)."""
    body = _read_data(data)
    sent = {"X-FaaS-Func-Name": name}
    if callback and not queued:
        raise click.BadParameter("needs --async", param_hint="--callback")
    if queued:
        sent["X-FaaS-Async"] = "true"
    if callback:
        sent["X-Callback-Url"] = callback
    for header in headers:
        key, sep, value = header.partition(":")
        if not sep or not key.strip():
            raise click.BadParameter(f"{header!r} is not K:V", param_hint="--header")
        sent[key.strip()] = value.strip()
    if not path.startswith("/"):
        path = "/" + path
    method = (method or ("POST" if body is not None else "GET")).upper()
    settings = obj.settings
    gate = HTTPClient(settings.gate_url, settings.timeout, what="gate", cafile=settings.cacert)
    reply = gate.request(method, path, body, sent)
    if verbose:
        click.echo(f"{method} {settings.gate_url}{path}: HTTP {reply.status}, "
                   f"{len(reply.body)} bytes in {reply.elapsed * 1000:.1f} ms", err=True)
    if include:
        reason = _reason_phrase(reply)
        click.echo(f"HTTP/1.1 {reply.status} {reason}".rstrip())
        for key, value in reply.headers.items():
            click.echo(f"{key}: {value}")
        click.echo("")
    if reply.status >= 400 and not include:
        message, _ = error_message(reply)
        raise CommandFailed(f"HTTP {reply.status} from {name}: {message}", reply.status)
    if queued and not include:
        click.echo(f"queued: call id {reply.headers.get('x-call-id', '?')}")
        return
    sys.stdout.buffer.write(reply.body)
    if reply.body and not reply.body.endswith(b"\n") and sys.stdout.isatty():
        sys.stdout.buffer.write(b"\n")
    sys.stdout.flush()
    if reply.status >= 400:
        raise click.exceptions.Exit(1)

@click.command()
@_name_argument()
@click.option("--for", "target", type=click.Choice(WAIT_STATES), default="active",
              show_default=True, help="The state to wait for (deleted: until it is gone).")
@click.option("--timeout", callback=duration_option, default="60s", show_default=True,
              metavar="DURATION")
@click.pass_obj
def wait(obj: CliContext, name: str, target: str, timeout: float) -> None:
    """Wait until a function reaches a state; exit 1 on timeout."""
    client = obj.client
    progress = Progress()
    deadline = time.monotonic() + timeout
    current = "unknown"
    try:
        while True:
            reply = client.http.request("GET", client.path(name, "status"))
            if reply.status == 404 and target == "deleted":
                progress.done()
                click.echo(f"function {name} is deleted")
                return
            status = status_of(client.check(reply))
            current = describe_state(status)
            if status.get("state") == target and not (
                    target == "inactive" and status.get("startPending")):
                progress.done()
                click.echo(f"function {name} is {target}")
                return
            if time.monotonic() >= deadline:
                break
            progress.update(f"waiting for {name} to be {target}: {current}")
            time.sleep(min(POLL_INTERVAL, max(0.0, deadline - time.monotonic())))
    finally:
        progress.done()
    raise CommandFailed(f"timed out after {format_duration(timeout)} waiting for {name} to be {target};"
                   f" it is {current}")

@click.command()
@click.option("-o", "--output", type=click.Choice(["text", "yaml", "json"]), default="text",
              show_default=True)
@click.pass_obj
def status(obj: CliContext, output: str) -> None:
    """Show the server's version, provider, controller, uptime, leadership and health."""
    client = obj.client
    info_reply = client.http.request("GET", f"{API_PREFIX}/info")
    info = client.check(info_reply)
    report: dict[str, Any] = {"server": obj.settings.server}
    report.update(info if isinstance(info, dict) else {"info": info})
    healthy = True
    if "uptimeSeconds" in report and "uptime" not in report:
        report["uptime"] = report.pop("uptimeSeconds")
    for check in ("healthz", "readyz"):
        reply = client.http.request("GET", f"/{check}")
        ok = reply.status == 200
        healthy = healthy and ok
        message, _ = error_message(reply)
        report[check] = "ok" if ok else f"failing (HTTP {reply.status}): {message}"
    if output == "text":
        width = max(len(key) for key in report) + 1
        for key, value in report.items():
            click.echo(f"{key + ':':<{width}}  {_show(key, value)}")
    else:
        click.echo(dump(report, output))
    if not healthy:
        raise click.exceptions.Exit(1)

@click.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print a shell completion script: eval "$(faastwist completion bash)"."""
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    assert cls is not None  # the Choice lists only shells click supports
    root = ctx.find_root().command
    click.echo(cls(root, {}, "faastwist", "_FAASTWIST_COMPLETE").source())


#: every command, in the order ``--help`` lists them (alphabetical)
COMMANDS: tuple[click.Command, ...] = (
    completion, create, delete, get, invoke, list_, logs, start, status, stop, update, wait)


def _show(key: str, value: Any) -> str:
    if key == "uptime" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return human_age(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if key == "leaderNode" and isinstance(value, dict):
        return f"{value.get('id')} (admin {value.get('admin') or 'unknown'})"
    if key == "leaderNode" and value is None:
        return "none (no leader elected right now)"
    if key == "nodes" and isinstance(value, list):
        return ", ".join(f"{n.get('id')} (admin {n.get('admin')}, gate {n.get('gate')})"
                         for n in value if isinstance(n, dict)) or "none"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def _reason_phrase(reply: Reply) -> str:
    import http.client

    return http.client.responses.get(reply.status, "")


def _read_data(data: str | None) -> bytes | None:
    if data is None:
        return None
    if data == "-":
        return sys.stdin.buffer.read()
    if data.startswith("@"):
        try:
            return Path(data[1:]).read_bytes()
        except OSError as exc:
            raise InputError(f"--data {data}: cannot read it: {exc.strerror}") from None
    return data.encode("utf-8")


def _print_log_line(raw: bytes, output: str) -> None:
    line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
    if not line:
        return
    if output == "json":
        click.echo(line)
        return
    try:
        entry = json.loads(line)
    except ValueError:
        click.echo(line)
        return
    if not isinstance(entry, dict):
        click.echo(line)
        return
    text = str(entry.get("text", ""))
    if output == "raw":
        click.echo(text)
    else:
        click.echo(f"{entry.get('timestamp', '')} {entry.get('instance', '')} {text}".strip())
