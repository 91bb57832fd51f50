"""OpenFaaS-style language templates for the process provider, without Docker.

A template is a scaffold (what ``faastwist new`` writes into the handler folder) and a
runner written here (``runners/``) that implements the template's handler contract as
OpenFaaS documents it and serves it over HTTP on ``$PORT``, as the function, in its
sandbox. ``faastwist build`` (build.py; golang.py for the Go templates, which compile
the runner with the handler) puts runner, handler and dependencies into a build folder;
stack.py reads and writes OpenFaaS's ``stack.yml``.
"""

from __future__ import annotations

import enum
import os
from typing import Mapping

import attrs

HERE = os.path.dirname(os.path.abspath(__file__))


class Runtime(str, enum.Enum):
    PYTHON = "python"
    NODE = "node"
    GO = "go"


@attrs.frozen
class Template:
    """One language: its scaffold folder, runner, and the files its handler needs."""

    lang: str
    runtime: Runtime
    runner: str              # file (Go: folder) in runners/
    contract: str            # the runner's argument (Go: its adapter), the handler contract
    handler_file: str        # the file a handler folder must hold
    deps_file: str           # requirements.txt / package.json / go.mod
    folder: str = ""         # the scaffold's folder when not named after ``lang``

    @property
    def scaffold(self) -> str:
        return os.path.join(HERE, "scaffold", self.folder or self.lang)

    @property
    def runner_path(self) -> str:
        return os.path.join(HERE, "runners", self.runner)

    def interpreter(self) -> str | None:
        """The interpreter the runner needs on this machine (None: not installed)."""
        if self.runtime is Runtime.PYTHON:
            return _first_executable("/usr/bin/python3")
        if self.runtime is Runtime.GO:
            return _first_executable("/usr/bin/go")   # Debian's golang-go
        return _first_executable("/usr/bin/node", "/usr/bin/nodejs")

    def runner_files(self) -> list[tuple[str, str]]:
        """(relative, absolute) of the runner's files (Go: main.go, this contract's
        adapter and, for golang-http, the request/response types in sdk/)."""
        if self.runtime is not Runtime.GO:
            return [(self.runner, self.runner_path)]
        names = ["main.go", f"contract_{self.contract}.go"]
        if self.contract == "http":
            names += ["sdk/go.mod", "sdk/handler.go"]
        return [(name, os.path.join(self.runner_path, name)) for name in names]


def _first_executable(*paths: str) -> str | None:
    for path in paths:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


TEMPLATES: Mapping[str, Template] = {
    template.lang: template for template in (
        Template("python3-http", Runtime.PYTHON, "python.py", "http", "handler.py",
                 "requirements.txt"),
        Template("python3", Runtime.PYTHON, "python.py", "classic", "handler.py",
                 "requirements.txt"),
        Template("node", Runtime.NODE, "node.js", "http", "handler.js", "package.json"),
        Template("node20", Runtime.NODE, "node.js", "http", "handler.js", "package.json",
                 "node"),
        Template("golang-middleware", Runtime.GO, "go", "middleware", "handler.go",
                 "go.mod"),
        Template("golang-http", Runtime.GO, "go", "http", "handler.go", "go.mod"),
    )
}


def template_for(lang: str) -> Template | None:
    return TEMPLATES.get(lang)


def known() -> str:
    return ", ".join(sorted(TEMPLATES))


__all__ = ["TEMPLATES", "Template", "Runtime", "template_for", "known"]
