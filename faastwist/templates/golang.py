"""The Go templates' build (``golang-middleware``, ``golang-http``): ``go build`` of the
runner with the handler, as the function, in its sandbox.

Layout of ``{digest}/function/`` (a copy of the handler folder, which is the main
module, ``handler/function`` as OpenFaaS's ``faas-cli new`` makes it; a folder without
``go.mod`` gets one): the runner's ``main.go`` and contract adapter in its package
``faastwist_main/`` (importing the handler by its module path), and the binary
``.handler`` beside the handler's files (the binary works from there: ``./static/`` is
where OpenFaaS puts it). The copy belongs to the build uid (``go`` writes ``go.sum``).

Modules: ``GOFLAGS=-mod=vendor`` when the handler vendors (``vendor/modules.txt``), else
``-mod=mod`` (a go.sum the developer did not write is completed). Modules come from
``GOPROXY`` as the developer's environment sets it (``GOPROXY``, ``GOPRIVATE``,
``GONOSUMDB``, ``GOSUMDB``, ``GOINSECURE`` pass through; unset: Go's default, the public
proxy), through the network the build shares; ``GOPROXY=off`` builds offline, and then
only vendored or ``replace``-d local modules resolve. ``github.com/openfaas/templates-sdk/
go-http`` (golang-http's request/response types) resolves to the runner's own copy unless
vendored, so neither template needs the network by itself. ``GOCACHE`` and the module
cache live in the function's build folder (``{root}/{name}/.go``, the build uid's):
a rebuild compiles only what changed. ``CGO_ENABLED`` is Go's default (on where a C
compiler is installed): then the standard library comes precompiled from Debian's
GOROOT and a first build takes about a second, where ``CGO_ENABLED=0`` (OpenFaaS's
setting) or ``-trimpath`` recompile it into each function's cache (25-50 s measured
here on a loaded 2-core machine). ``GOTOOLCHAIN=local``: never a downloaded toolchain. A ``go`` line newer than
the installed Go (OpenFaaS's scaffold says 1.24.0; Debian bookworm's Go is 1.19) is
lowered to it in the copy, with a note.
"""

from __future__ import annotations

import os
import re
import subprocess
from typing import Callable, Mapping, Protocol, Sequence

from faastwist.providers.sandbox import ROOT_PATH
from faastwist.templates import Template
from faastwist.templates.files import BuildError, copy_file, shown, tail
from faastwist.templates.stack import StackFunction
from faastwist.util.users import Identity


class Builder(Protocol):
    """What this module needs of build.Builder (which imports this module)."""

    say: Callable[[str], None]

    def run(self, name: str, identity: Identity, home: str, argv: Sequence[str],
             writable: Sequence[str], what: str, binds: Sequence[str] = (),
             env_extra: Mapping[str, str] | None = None,
             cwd: str | None = None) -> tuple[int, str]: ...

BINARY = ".handler"
MAIN = "faastwist_main"
SDK_MODULE = "github.com/openfaas/templates-sdk/go-http"
SIGNATURES = {"middleware": "func Handle(w http.ResponseWriter, r *http.Request)",
              "http": "func Handle(req handler.Request) (handler.Response, error)"}
_GO_LINE = re.compile(rb"^go[ \t]+(\d+)\.(\d+)(?:\.\d+)?[ \t]*(//.*)?$", re.M)
_TOOLCHAIN_LINE = re.compile(rb"^toolchain[ \t]+\S+[ \t]*\r?\n?", re.M)
_MODULE_LINE = re.compile(r'^module[ \t]+"?([^"\s]+)"?', re.M)
_ERROR_LINE = re.compile(r"^(?:\./)?([^\s:]+\.go):(\d+):(\d+): (.*)$")


def toolchain_version(go: str) -> tuple[int, int]:
    """(major, minor) of the installed Go: its VERSION file, else ``go env``."""
    version = ""
    try:
        with open(os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(go))),
                               "VERSION")) as file:
            version = file.readline().strip()
    except OSError:
        done = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True,
                              env={"PATH": ROOT_PATH, "HOME": "/nonexistent",
                                   "GOTOOLCHAIN": "local", "GOENV": "off"},
                              cwd="/", timeout=60)
        version = done.stdout.strip()
    found = re.match(r"go(\d+)\.(\d+)", version)
    if not found:
        raise BuildError(f"{go}: cannot tell its version ({version!r})")
    return int(found.group(1)), int(found.group(2))


def adapt_go_mod(data: bytes, have: tuple[int, int]) -> tuple[bytes, str | None]:
    """The handler's go.mod for the installed Go: a newer ``go`` line lowered to it and
    a ``toolchain`` line (unknown before Go 1.21) dropped; (data, what was asked)."""
    found = _GO_LINE.search(data)
    asked = None
    if found and (int(found.group(1)), int(found.group(2))) > have:
        asked = found.group(0).decode(errors="replace").split()[1]
        data = data[:found.start()] + f"go {have[0]}.{have[1]}".encode() + data[found.end():]
    if have < (1, 21):
        data = _TOOLCHAIN_LINE.sub(b"", data)
    return data, asked


def assemble(builder: Builder, template: Template, function: StackFunction,
             files: Sequence[tuple[str, str]], work: str, identity: Identity,
             go: str) -> None:
    """Copy the handler folder and the runner into ``work/function`` (as root: regular
    files only, never through a link), then give the copy to the build uid."""
    target = os.path.join(work, "function")
    os.mkdir(target, 0o755)
    for rel, path in files:
        os.makedirs(os.path.dirname(os.path.join(target, rel)), 0o755, exist_ok=True)
        executable = os.stat(path).st_mode & 0o100
        copy_file(path, os.path.join(target, rel), 0o755 if executable else 0o644)
    go_mod = os.path.join(target, "go.mod")
    have = toolchain_version(go)
    if os.path.isfile(go_mod):
        with open(go_mod, "rb") as file:
            data = file.read()
    else:
        data = f"module handler/function\n\ngo {have[0]}.{have[1]}\n".encode()
    data, asked = adapt_go_mod(data, have)
    if asked:
        builder.say(f"{function.name}: {shown(function, 'go.mod')} asks for go {asked}; "
                    f"building with the installed go {have[0]}.{have[1]}")
    text = data.decode("utf-8", "replace")
    module = _MODULE_LINE.search(text)
    if module is None:
        raise BuildError(f"{function.name}: {shown(function, 'go.mod')}: no module line "
                         f"(OpenFaaS's templates use: module handler/function)")
    vendored = os.path.isfile(os.path.join(target, "vendor", "modules.txt"))
    if template.contract == "http" and not vendored and not re.search(
            r"^\s*replace\s.*" + re.escape(SDK_MODULE) + r"\s", text, re.M) and not re.search(
            r"^replace\s*\(", text, re.M):
        data += f"\nreplace {SDK_MODULE} => ./{MAIN}/sdk\n".encode()
    with open(go_mod, "wb") as file:   # our own copy, made above
        file.write(data)
    main = os.path.join(target, MAIN)
    if os.path.lexists(main):
        raise BuildError(f"{function.name}: {shown(function, MAIN)}: the name is the "
                         f"runner's; rename that folder")
    os.mkdir(main, 0o755)
    for rel, path in template.runner_files():
        destination = os.path.join(main, rel)
        os.makedirs(os.path.dirname(destination), 0o755, exist_ok=True)
        if rel.endswith(".go") and not rel.startswith("sdk/"):
            with open(path, "rb") as file:
                source = file.read().replace(b'"handler/function"',
                                             f'"{module.group(1)}"'.encode())
            fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                         0o644)
            with os.fdopen(fd, "wb") as file:
                file.write(source)
        else:
            copy_file(path, destination, 0o644)
    if identity.switch:
        for current, _dirs, names in os.walk(target):
            for entry in [current] + [os.path.join(current, n) for n in names]:
                os.chown(entry, identity.uid, identity.gid, follow_symlinks=False)


def _cache(home: str, identity: Identity) -> str:
    """``{home}/.go``: GOCACHE and GOPATH of the function's builds, the build uid's."""
    path = os.path.join(home, ".go")
    try:
        os.mkdir(path, 0o700)
        if identity.switch:
            os.chown(path, identity.uid, identity.gid)
    except FileExistsError:
        info = os.lstat(path)
        if not os.path.isdir(path) or os.path.islink(path) or info.st_uid != identity.uid:
            raise BuildError(f"{path}: not the build cache it should be (a link or "
                             f"someone else's folder); remove it") from None
    return path


def build_binary(builder: Builder, template: Template, function: StackFunction,
            identity: Identity, home: str, work: str, go: str) -> None:
    """``go build`` as the build uid in its sandbox; a failure names file and line."""
    folder = os.path.join(work, "function")
    cache = _cache(home, identity)
    vendored = os.path.isfile(os.path.join(folder, "vendor", "modules.txt"))
    env = {"GOCACHE": os.path.join(cache, "cache"), "GOPATH": os.path.join(cache, "path"),
           "GOFLAGS": "-mod=vendor" if vendored else "-mod=mod",
           "GOTOOLCHAIN": "local", "GOTELEMETRY": "off", "GO111MODULE": "on"}
    code, output = builder.run(function.name, identity, home,
                                [go, "build", "-ldflags=-s -w", "-o", BINARY,
                                 f"./{MAIN}"], (folder, cache), "go build", binds=(work,),
                                env_extra=env, cwd=folder)
    if code != 0:
        raise BuildError(f"{function.name}: go build failed: "
                         f"{problem(template, function, output)}; its last lines:\n"
                         + tail(output))


def problem(template: Template, function: StackFunction, output: str) -> str:
    """The first thing to fix in ``go build``'s output, with the developer's paths."""
    handler = shown(function, template.handler_file)
    want = SIGNATURES[template.contract]
    for line in output.splitlines():
        found = _ERROR_LINE.match(line.strip())
        if found is None:
            continue
        path, row, column, message = found.groups()
        if path.startswith(MAIN + "/"):
            if "undefined: function.Handle" in message:
                return f"{handler}: package function defines no {want}"
            typed = re.search(r"cannot use function\.Handle \(value of type (.*)\) as ",
                              message)
            if typed:
                return (f"{handler}: Handle is {typed.group(1).strip()}; the "
                        f"{template.lang} template calls {want}")
            if "is a program, not an importable package" in message:
                return f"{handler}: the handler's package must be package function"
            if "function.Handle" in message or path.endswith(f"contract_{template.contract}.go"):
                return (f"{handler}: Handle does not fit the {template.lang} template, which "
                        f"calls {want} ({message})")
            return f"{function.name}: the runner does not build: {message}"
        return f"{shown(function, path)}:{row}:{column}: {message}"
    for line in output.splitlines():
        text = line.strip()
        if text.startswith("go: ") or "is a program, not an importable package" in text:
            return text
    lines = [line for line in output.splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"
