"""OpenFaaS's ``stack.yml`` (faastwist/templates/stack.py): read as faas-cli writes it,
refused with the file and key named, turned into the FunctionDeployment faas-cli sends,
and added to without losing what is there."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from faastwist.templates.stack import (
    FUNCTION_KEYS,
    TOP_KEYS,
    Stack,
    StackError,
    StackFunction,
    add_function,
    deployment,
    environment,
    load_stack,
    new_entry,
)

FAAS_CLI_STACK = """\
version: 1.0
provider:
  name: openfaas
  gateway: http://127.0.0.1:8080
functions:
  hello:
    lang: python3-http
    handler: ./hello
    image: hello:latest
    environment:
      write_debug: true
      retries: 3
      empty:
    environment_file:
      - env.yml
    secrets: [db]
    labels: {com.openfaas.scale.min: "2"}
    annotations: {topic: orders}
    limits: {memory: 128Mi, cpu: 200m}
    requests: {memory: 64Mi}
    constraints: ["node.platform.os == linux"]
    readonly_root_filesystem: true
    build_args: {ADDITIONAL_PACKAGE: gcc}
    platforms: linux/amd64
  other:
    lang: node
    handler: sub/../other
configuration:
  templates:
    - name: python3-http
"""


def write(folder: Path, text: str, name: str = "stack.yml") -> str:
    path = folder / name
    path.write_text(text)
    return str(path)


def test_faas_clis_file_reads_with_every_key_it_knows(tmp_path: Path) -> None:
    stack = load_stack(write(tmp_path, FAAS_CLI_STACK))
    assert stack.folder == str(tmp_path)
    assert [(f.name, f.lang, f.handler) for f in stack.functions] == [
        ("hello", "python3-http", str(tmp_path / "hello")),
        ("other", "node", str(tmp_path / "other"))]
    assert stack.functions[0].document["build_args"] == {"ADDITIONAL_PACKAGE": "gcc"}
    assert TOP_KEYS == {"version", "provider", "functions", "configuration"}
    assert FUNCTION_KEYS == {
        "lang", "handler", "image", "fprocess", "environment", "environment_file",
        "secrets", "labels", "annotations", "limits", "requests", "constraints",
        "readonly_root_filesystem", "namespace", "skip_build", "build_args",
        "build_options", "platforms", "build_secrets"}


def test_the_environment_merges_files_first_then_the_entrys_own(tmp_path: Path) -> None:
    (tmp_path / "env.yml").write_text("environment:\n  retries: 1\n  from_file: yes\n"
                                      "  enabled: false\n")
    stack = load_stack(write(tmp_path, FAAS_CLI_STACK))
    assert environment(stack, stack.functions[0]) == {
        "retries": "3", "from_file": "true", "enabled": "false", "write_debug": "true",
        "empty": ""}
    assert environment(stack, stack.functions[1]) == {}


def test_the_deployment_is_what_faas_cli_deploy_sends(tmp_path: Path) -> None:
    (tmp_path / "env.yml").write_text("environment: {}\n")
    stack = load_stack(write(tmp_path, FAAS_CLI_STACK))
    assert deployment(stack, stack.functions[0]) == {
        "service": "hello", "image": "hello:latest",
        "envVars": {"write_debug": "true", "retries": "3", "empty": ""},
        "labels": {"com.openfaas.scale.min": "2"}, "annotations": {"topic": "orders"},
        "secrets": ["db"], "constraints": ["node.platform.os == linux"],
        "limits": {"memory": "128Mi", "cpu": "200m"}, "requests": {"memory": "64Mi"},
        "readOnlyRootFilesystem": True}
    assert deployment(stack, stack.functions[1]) == {"service": "other", "image": "",
                                                     "envVars": {}}


@pytest.mark.parametrize(("text", "message"), [
    ("- a list\n", "(top): must be a mapping with version, provider, functions"),
    ("version: 1\nfunction: {}\n",
     "function: unknown key (known: configuration, functions, provider, version)"),
    ("version: 1\n", "functions: must map function names to their settings"),
    ("functions: {}\n", "functions: must map function names to their settings"),
    ("functions: [a]\n", "functions: must map function names to their settings"),
    ("functions:\n  Bad_Name: {lang: node, handler: ./x}\n",
     "functions.Bad_Name: must be a DNS-1123 label"),
    ("functions:\n  f: ./f\n", "functions.f: must be a mapping (lang, handler, ...)"),
    ("functions:\n  f: {lang: node, handler: ./f, replicas: 2}\n",
     "functions.f.replicas: unknown key"),
    ("functions:\n  f: {lang: java11, handler: ./f}\n",
     "functions.f.lang: 'java11' is not a template faastwist builds (known: golang-http, "
     "golang-middleware, node, node20, python3, python3-http)"),
    ("functions:\n  f: {handler: ./f}\n", "functions.f.lang: None is not a template"),
    ("functions:\n  f: {lang: node}\n",
     "functions.f.handler: must name the handler folder, e.g. ./f"),
    ("functions:\n  f: {lang: node, handler: ''}\n",
     "functions.f.handler: must name the handler folder, e.g. ./f"),
    ("functions:\n  f: {lang: node, handler: [x]}\n",
     "functions.f.handler: must name the handler folder"),
])
def test_a_bad_stack_is_refused_naming_file_and_key(tmp_path: Path, text: str,
                                                    message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(StackError) as caught:
        load_stack(path)
    assert str(caught.value).startswith(f"{path}: {message}")


def test_an_unreadable_or_invalid_file_is_refused_by_name(tmp_path: Path) -> None:
    missing = str(tmp_path / "none.yml")
    with pytest.raises(StackError, match=f"^{missing}: cannot read it: No such file"):
        load_stack(missing)
    bad = write(tmp_path, "functions: [\n")
    with pytest.raises(StackError, match=f"^{bad}: not valid YAML: "):
        load_stack(bad)


def test_stack_and_environment_files_are_read_only_up_to_their_caps(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A stack file is small: a huge one is cut (and then fails to parse), never read
    whole into memory. The size asked of the read is what is checked (parsing 4 MiB of
    YAML in pure Python takes seconds)."""
    import faastwist.templates.stack as stack_module

    asked: list[int] = []
    real_open = open

    class Recording:
        def __init__(self, path: str, mode: str) -> None:
            self.file = real_open(path, mode)

        def __enter__(self) -> "Recording":
            return self

        def __exit__(self, *exc: object) -> None:
            self.file.close()

        def read(self, size: int = -1) -> bytes:
            asked.append(size)
            return self.file.read(size)
    monkeypatch.setattr(stack_module, "open", Recording, raising=False)
    (tmp_path / "env.yml").write_text("environment: {A: 1}\n")
    stack = load_stack(write(tmp_path, "functions:\n  f: {lang: node, handler: ./f,"
                                       " environment_file: [env.yml]}\n"))
    environment(stack, stack.functions[0])
    assert asked == [4 * 2**20 + 1, 2**20]     # the stack file, then an environment file


@pytest.mark.parametrize(("entry", "message"), [
    ({"environment_file": "env.yml"}, "environment_file: must be a list of YAML files"),
    ({"environment_file": ["missing.yml"]}, "environment_file: missing.yml: cannot read it"),
    ({"environment_file": ["list.yml"]},
     "environment_file: list.yml: must hold an environment: mapping"),
    ({"environment_file": ["nokey.yml"]},
     "environment_file: nokey.yml: must hold an environment: mapping"),
    ({"environment": ["A=1"]}, "functions.f.environment: must be a mapping"),
])
def test_bad_environments_are_refused_naming_the_key(tmp_path: Path, entry: dict,
                                                     message: str) -> None:
    (tmp_path / "list.yml").write_text("- a\n")
    (tmp_path / "nokey.yml").write_text("env: {A: 1}\n")
    stack = Stack(str(tmp_path / "stack.yml"),
                  (StackFunction("f", "node", str(tmp_path / "f"), entry),))
    with pytest.raises(StackError) as caught:
        environment(stack, stack.functions[0])
    assert message in str(caught.value)
    assert str(caught.value).startswith(f"{tmp_path / 'stack.yml'}: ")


def test_an_empty_environment_file_is_no_variables(tmp_path: Path) -> None:
    (tmp_path / "empty.yml").write_text("")
    stack = Stack(str(tmp_path / "stack.yml"), (StackFunction(
        "f", "node", str(tmp_path / "f"), {"environment_file": ["empty.yml"]}),))
    with pytest.raises(StackError, match="must hold an environment"):
        environment(stack, stack.functions[0])
    (tmp_path / "empty.yml").write_text("environment:\n  A: 1\n")
    assert environment(stack, stack.functions[0]) == {"A": "1"}


def test_new_makes_the_file_faas_cli_would(tmp_path: Path) -> None:
    path = str(tmp_path / "stack.yml")
    add_function(path, "hello", "python3-http", "http://127.0.0.1:8080")
    assert yaml.safe_load(Path(path).read_text()) == {
        "version": 1.0, "provider": {"name": "openfaas", "gateway": "http://127.0.0.1:8080"},
        "functions": {"hello": {"lang": "python3-http", "handler": "./hello",
                                "image": "hello:latest"}}}
    assert new_entry("x", "node") == {"lang": "node", "handler": "./x", "image": "x:latest"}
    assert Path(path).read_text().startswith("version: 1.0\nprovider:\n")   # faas-cli's order
    assert not os.path.exists(path + ".new")


def test_new_adds_to_an_existing_file_keeping_what_is_there(tmp_path: Path) -> None:
    path = write(tmp_path, FAAS_CLI_STACK)
    add_function(path, "third", "golang-http", "http://ignored")
    data = yaml.safe_load(Path(path).read_text())
    assert list(data["functions"]) == ["hello", "other", "third"]
    assert data["provider"]["gateway"] == "http://127.0.0.1:8080"
    assert data["configuration"] == {"templates": [{"name": "python3-http"}]}
    with pytest.raises(StackError, match=f"^{path}: functions.third: already exists$"):
        add_function(path, "third", "node", "")
    bare = write(tmp_path, "", "bare.yml")
    add_function(bare, "f", "node", "")
    assert yaml.safe_load(Path(bare).read_text()) == {"functions": {"f": new_entry("f", "node")}}


@pytest.mark.parametrize(("text", "message"), [
    ("- a\n", "(top): must be a mapping"),
    ("functions: [a]\n", "functions: must be a mapping"),
    ("functions: [\n", "cannot read it"),
])
def test_new_refuses_a_file_it_cannot_add_to(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(StackError) as caught:
        add_function(path, "f", "node", "")
    assert str(caught.value).startswith(f"{path}: ") and message in str(caught.value)
    assert Path(path).read_text() == text
