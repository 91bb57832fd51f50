"""``faastwist new``, ``build``, ``up`` and ``remove``: OpenFaaS's template workflow
(``faas-cli new/build/up/remove``) on the process provider, without images."""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import click

from faastwist.cli.client import CliContext, CommandFailed, InputError
from faastwist.cli.token import NODE_CONFIG_ENV
from faastwist.model.spec import FunctionSpec, SpecError, check_name
from faastwist.templates import known, template_for
from faastwist.templates.build import (DEFAULT_UID_RANGE, BuildError, Builder, BuildResult,
                                       default_root, prune, remove_tree)
from faastwist.templates.stack import (Stack, StackError, StackFunction, add_function,
                                       deployment, load_stack)

LANG_ANNOTATION = "faastwist.io/lang"
DIGEST_ANNOTATION = "faastwist.io/digest"

_file_option = click.option("-f", "--yaml", "path", default="stack.yml", show_default=True,
                            metavar="FILE", help="The stack file (OpenFaaS's stack.yml).")
_filter_option = click.option("--filter", "only", metavar="NAME",
                              help="Only this function of the stack file.")
_dir_option = click.option("--build-dir", metavar="DIR", envvar="FAASTWIST_BUILD_DIR",
                           help="Where builds go [env FAASTWIST_BUILD_DIR; default: "
                                "/var/lib/faastwist/builds as root, else ./build beside "
                                "the stack file].")
_range_option = click.option("--uid-range", metavar="FIRST-LAST",
                             help="The node's process.uidRange: builds run as the uid the "
                                  "node gives the function [default: the node config's "
                                  "(--node-config / FAASTWIST_NODE_CONFIG), else "
                                  "200000-265535].")


@click.command()
@click.argument("name", metavar="NAME")
@click.option("--lang", required=True, metavar="LANG",
              help=f"The template: {known()}.")
@_file_option
@click.pass_obj
def new(obj: CliContext, name: str, lang: str, path: str) -> None:
    """Write a handler folder NAME (beside the stack file) from a template and add NAME
    to the stack file (made when missing)."""
    try:
        check_name(name, "NAME")
    except SpecError as exc:
        raise InputError(str(exc)) from None
    template = template_for(lang)
    if template is None:
        raise InputError(f"--lang {lang}: no such template (known: {known()})")
    folder = os.path.join(os.path.dirname(os.path.abspath(path)), name)
    if os.path.lexists(folder):
        raise InputError(f"{folder}: already exists")
    try:
        add_function(path, name, lang, obj.settings.gate_url)
    except StackError as exc:
        raise InputError(str(exc)) from None
    shutil.copytree(template.scaffold, folder)
    click.echo(f"function {name} ({lang}): handler in ./{name}/{template.handler_file}, "
               f"added to {path}")


def _stack(path: str, only: str | None) -> tuple[Stack, list[StackFunction]]:
    try:
        stack = load_stack(path)
    except StackError as exc:
        raise InputError(str(exc)) from None
    functions = [f for f in stack.functions if only is None or f.name == only]
    if not functions:
        raise InputError(f"--filter {only}: no such function in {path}")
    return stack, functions


def _uid_range(given: str | None) -> str:
    """``--uid-range``, else the node config's ``process.uidRange``, else the default."""
    if given:
        return given
    root = click.get_current_context().find_root()
    node_config = root.params.get("node_config") or os.environ.get(NODE_CONFIG_ENV)
    if node_config:
        from faastwist.config import ConfigError, load_config

        try:
            return load_config(node_config).process.uid_range
        except ConfigError as exc:
            raise InputError(f"--node-config {node_config}: {exc}") from None
    return DEFAULT_UID_RANGE


def _build_all(stack: Stack, functions: list[StackFunction], build_dir: str | None,
               uid_range: str | None) -> list[BuildResult]:
    try:
        builder = Builder(build_dir or default_root(stack.folder),
                          uid_range=_uid_range(uid_range),
                          say=lambda text: click.echo(text, err=True))
    except ValueError as exc:   # UserError of a bad range
        raise InputError(f"--uid-range: {exc}") from None
    results = []
    for function in functions:
        try:
            result = builder.build(stack, function)
        except BuildError as exc:
            raise CommandFailed(f"build {exc}") from None
        except OSError as exc:
            raise CommandFailed(f"build {function.name}: {exc}") from None
        if result.skipped:
            click.echo(f"{result.name}: unchanged (digest {result.digest[:12]})")
        else:
            click.echo(f"{result.name}: built {result.digest[:12]} ({result.lang}) in "
                       f"{result.seconds:.1f}s")
        results.append(result)
    return results


@click.command()
@_file_option
@_filter_option
@_dir_option
@_range_option
def build(path: str, only: str | None, build_dir: str | None, uid_range: str | None) -> None:
    """Build the stack file's functions: runner, handler and dependencies."""
    stack, functions = _stack(path, only)
    _build_all(stack, functions, build_dir, uid_range)


def spec_for(stack: Stack, function: StackFunction, result: BuildResult) -> dict[str, Any]:
    """The function's spec: the stack entry as OpenFaaS would deploy it, the runner as
    its command, and the template and digest as annotations."""
    try:
        document = deployment(stack, function)
        annotations = dict(document.get("annotations") or {})
        annotations.update({LANG_ANNOTATION: result.lang, DIGEST_ANNOTATION: result.digest})
        document["annotations"] = annotations
        from faastwist.admin.openfaas_model import deployment_to_spec

        base = FunctionSpec(function.name, command=result.command)
        namespace = str(function.document.get("namespace") or "")
        spec = deployment_to_spec(document, namespace, base)
    except (SpecError, StackError) as exc:
        raise InputError(f"{stack.path}: functions.{function.name}: {exc}") from None
    data = spec.to_dict()
    if not data.get("image"):
        data.pop("image", None)
    return data


@click.command()
@_file_option
@_filter_option
@_dir_option
@_range_option
@click.pass_obj
def up(obj: CliContext, path: str, only: str | None, build_dir: str | None,
       uid_range: str | None) -> None:
    """Build, then create each function or roll out its new version."""
    stack, functions = _stack(path, only)
    for function in functions:   # a bad entry fails before any build
        spec_for(stack, function, BuildResult(function.name, function.lang, "0" * 64, "/",
                                              ("/usr/bin/true",), True))
    results = _build_all(stack, functions, build_dir, uid_range)
    client = obj.client
    for function, result in zip(functions, results):
        spec = spec_for(stack, function, result)
        body = json.dumps(spec).encode()
        try:
            current = client.call("GET", client.path(function.name))
        except CommandFailed as exc:
            if exc.status != 404:
                raise
            current = None
        if current is None:
            client.call("POST", client.path(), body, "application/json")
            click.echo(f"function {function.name} created")
            continue
        old = (current.get("spec") or {}) if isinstance(current, dict) else {}
        if _same(old, spec):
            click.echo(f"function {function.name} unchanged")
            continue
        client.call("PUT", client.path(function.name, "rollout"), body, "application/json")
        click.echo(f"function {function.name} updated")
        previous = (old.get("annotations") or {}).get(DIGEST_ANNOTATION, "")
        keep = [result.folder] + ([os.path.join(os.path.dirname(result.folder),
                                                previous[:24])] if previous else [])
        prune(os.path.dirname(os.path.dirname(result.folder)), function.name, keep)


def _same(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether the stored spec already is ``new`` (after the server's own defaults)."""
    try:
        return FunctionSpec.from_dict(old).to_dict() == FunctionSpec.from_dict(new).to_dict()
    except SpecError:
        return False


@click.command()
@_file_option
@_filter_option
@_dir_option
@click.pass_obj
def remove(obj: CliContext, path: str, only: str | None, build_dir: str | None) -> None:
    """Stop and delete the stack file's functions, and their builds."""
    stack, functions = _stack(path, only)
    root = build_dir or default_root(stack.folder)
    client = obj.client
    missing = 0
    for function in functions:
        try:
            current = client.call("GET", client.path(function.name))
        except CommandFailed as exc:
            if exc.status != 404:
                raise
            click.echo(f"function {function.name}: not found")
            missing += 1
            continue
        state = ((current.get("status") or {}).get("state")
                 if isinstance(current, dict) else None)
        if state == "active":
            client.call("PUT", client.path(function.name, "stop"))
        client.call("DELETE", client.path(function.name))
        remove_tree(os.path.join(os.path.abspath(root), function.name))
        click.echo(f"function {function.name} removed")
    if missing == len(functions):
        raise click.exceptions.Exit(1)


TEMPLATE_COMMANDS = (new, build, up, remove)
