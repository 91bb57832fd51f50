"""OpenFaaS's ``stack.yml`` (faas-cli's format), read and written here.

Shape (faas-cli's go-sdk ``stack`` types): ``version``, ``provider: {name, gateway}``,
``functions: NAME: {lang, handler, image, fprocess, environment, environment_file,
secrets, labels, annotations, limits: {memory, cpu}, requests, constraints,
readonly_root_filesystem, namespace, skip_build, build_args, build_options, platforms,
build_secrets}``, ``configuration``. Keys faas-cli knows but a process-provider build has
no use for (image, build options, platforms) are accepted and ignored, so the same file
keeps working with faas-cli; any other key is an error naming it.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import attrs
import yaml

from faastwist.model.spec import SpecError, check_name
from faastwist.templates import known, template_for

FUNCTION_KEYS = {"lang", "handler", "image", "fprocess", "environment", "environment_file",
                 "secrets", "labels", "annotations", "limits", "requests", "constraints",
                 "readonly_root_filesystem", "namespace", "skip_build", "build_args",
                 "build_options", "platforms", "build_secrets"}
TOP_KEYS = {"version", "provider", "functions", "configuration"}


class StackError(ValueError):
    """A stack file problem, naming the file and the key."""


@attrs.frozen
class StackFunction:
    name: str
    lang: str
    handler: str             # absolute path of the handler folder
    document: Mapping[str, Any]   # the entry as written (for the deployment)


@attrs.frozen
class Stack:
    path: str
    functions: tuple[StackFunction, ...]

    @property
    def folder(self) -> str:
        return os.path.dirname(os.path.abspath(self.path))


def _fail(path: str, key: str, problem: str) -> StackError:
    return StackError(f"{path}: {key}: {problem}")


def load_stack(path: str) -> Stack:
    """The stack file's functions, checked (StackError naming file and key)."""
    try:
        with open(path, "rb") as file:
            data = yaml.safe_load(file.read(4 * 2**20 + 1))
    except OSError as exc:
        raise StackError(f"{path}: cannot read it: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise StackError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise _fail(path, "(top)", "must be a mapping with version, provider, functions")
    for key in data:
        if key not in TOP_KEYS:
            raise _fail(path, str(key), f"unknown key (known: {', '.join(sorted(TOP_KEYS))})")
    functions = data.get("functions")
    if not isinstance(functions, dict) or not functions:
        raise _fail(path, "functions", "must map function names to their settings")
    folder = os.path.dirname(os.path.abspath(path))
    out = []
    for name, entry in functions.items():
        key = f"functions.{name}"
        try:
            check_name(str(name))
        except SpecError as exc:
            raise _fail(path, key, exc.problem) from None
        if not isinstance(entry, dict):
            raise _fail(path, key, "must be a mapping (lang, handler, ...)")
        for field in entry:
            if field not in FUNCTION_KEYS:
                raise _fail(path, f"{key}.{field}", "unknown key")
        lang = entry.get("lang")
        if not isinstance(lang, str) or template_for(lang) is None:
            raise _fail(path, f"{key}.lang", f"{lang!r} is not a template faastwist "
                                             f"builds (known: {known()})")
        handler = entry.get("handler")
        if not isinstance(handler, str) or not handler:
            raise _fail(path, f"{key}.handler", "must name the handler folder, e.g. ./"
                                                f"{name}")
        out.append(StackFunction(str(name), lang, os.path.normpath(
            os.path.join(folder, handler)), dict(entry)))
    return Stack(path, tuple(out))


def environment(stack: Stack, function: StackFunction) -> dict[str, str]:
    """``environment`` merged over its ``environment_file`` files (faas-cli's order:
    the files first, then the entry's own)."""
    env: dict[str, str] = {}
    files = function.document.get("environment_file") or []
    key = f"functions.{function.name}.environment_file"
    if not isinstance(files, list):
        raise _fail(stack.path, key, "must be a list of YAML files")
    for item in files:
        path = os.path.join(stack.folder, str(item))
        try:
            with open(path, "rb") as file:
                data = yaml.safe_load(file.read(2**20)) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise _fail(stack.path, key, f"{item}: cannot read it: {exc}") from None
        values = data.get("environment") if isinstance(data, dict) else None
        if not isinstance(values, dict):
            raise _fail(stack.path, key, f"{item}: must hold an environment: mapping")
        env.update({str(k): _text(v) for k, v in values.items()})
    own = function.document.get("environment") or {}
    if not isinstance(own, dict):
        raise _fail(stack.path, f"functions.{function.name}.environment", "must be a mapping")
    env.update({str(k): _text(v) for k, v in own.items()})
    return env


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def deployment(stack: Stack, function: StackFunction) -> dict[str, Any]:
    """The entry as OpenFaaS's FunctionDeployment (what faas-cli deploy sends)."""
    doc = function.document
    out: dict[str, Any] = {"service": function.name, "image": str(doc.get("image") or ""),
                           "envVars": environment(stack, function)}
    for ours, theirs in (("labels", "labels"), ("annotations", "annotations"),
                         ("secrets", "secrets"), ("constraints", "constraints"),
                         ("limits", "limits"), ("requests", "requests"),
                         ("readonly_root_filesystem", "readOnlyRootFilesystem")):
        if doc.get(ours) is not None:
            out[theirs] = doc[ours]
    return out


def new_entry(name: str, lang: str) -> dict[str, Any]:
    return {"lang": lang, "handler": f"./{name}", "image": f"{name}:latest"}


def add_function(path: str, name: str, lang: str, gateway: str) -> None:
    """Add ``name`` to the stack file (made when missing); StackError if it is there."""
    if os.path.exists(path):
        try:
            with open(path, "rb") as file:
                data = yaml.safe_load(file) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise StackError(f"{path}: cannot read it: {exc}") from None
        if not isinstance(data, dict):
            raise _fail(path, "(top)", "must be a mapping")
        functions = data.setdefault("functions", {})
        if not isinstance(functions, dict):
            raise _fail(path, "functions", "must be a mapping")
        if name in functions:
            raise _fail(path, f"functions.{name}", "already exists")
    else:
        data = {"version": 1.0, "provider": {"name": "openfaas", "gateway": gateway},
                "functions": {}}
        functions = data["functions"]
    functions[name] = new_entry(name, lang)
    temporary = f"{path}.new"
    with open(temporary, "w") as file:
        yaml.safe_dump(data, file, sort_keys=False, default_flow_style=False)
    os.replace(temporary, path)
