"""Every command block of the docs is run by a test, or says why no test can run it.

A command block is a ``code-block:: sh`` (a script with ``# ->`` lines for what it
prints) or ``code-block:: console`` (a transcript: ``$`` lines and what they print).
``RUN_BY`` names the test that runs each one, by its page and the section title above
it; a block no test can run carries an rst comment ``.. not run by a test: REASON``
right above it. Other blocks (output, configuration, diagrams) may not hold commands.
"""

from __future__ import annotations

import ast
import re

import pytest

from tests.support.docs import (ROOT, Block, blocks, matches, pages, transcript)

TOURS = "tests/e2e/test_doc_tours_e2e.py"
KUBE = "tests/kube/test_node_kube_e2e.py"

#: (page, section title) -> (test file, test function) that runs the block there
RUN_BY = {
    ("README", "A tour with curl"): (TOURS, "test_curl_tour"),
    ("cli", "Operating with the CLI"): (TOURS, "test_cli_tour"),
    ("cli", "Templates: write a handler, not a server"): (TOURS, "test_templates_tour"),
    ("openfaas", "An OpenFaaS tour"): (TOURS, "test_openfaas_tour"),
    ("openfaas", "Function store"): (TOURS, "test_function_store_transcript"),
    ("async", "An async tour"): (TOURS, "test_async_tour"),
    ("gate", "Invocation keys and rate limits"): (TOURS, "test_invocation_keys_transcript"),
    ("operations", "Backing up a single node"):
        (TOURS, "test_backup_and_restore_of_a_single_node"),
    ("operations", "Restoring a single node"):
        (TOURS, "test_backup_and_restore_of_a_single_node"),
    ("kubernetes", "Functions as Kubernetes objects"):
        (KUBE, "test_the_documented_kubectl_commands_verbatim"),
}

#: what a line of a block that is not a command block may not start with
COMMANDS = re.compile(r"\$ |(curl|tar|kubectl|faastwist|faas-cli|twistd|make|journalctl|systemctl|"
                      r"etcdctl|prometheus|mkdir|chmod|export|sudo|python3?)( |$)")


def every_block() -> list[Block]:
    return [block for name in pages() for block in blocks(name)]


def test_every_command_block_is_run_by_a_test_or_says_why_not() -> None:
    commands = [block for block in every_block() if block.is_commands]
    assert len(commands) >= len(RUN_BY)
    for block in commands:
        key = (block.page, block.heading)
        if key in RUN_BY:
            assert not block.not_run, f"{key} is run by {RUN_BY[key]}: drop its comment"
        else:
            assert len(block.not_run) > 20, f"{key}: no test runs it, and it does not say why"


def test_each_test_named_runs_the_block_of_its_page() -> None:
    """The test reads its block through ``code_block_after(page, title...)``, so moving
    or renaming a section breaks the test instead of leaving the block untested."""
    located = {(block.page, block.heading) for block in every_block() if block.is_commands}
    for (name, heading), (path, function) in RUN_BY.items():
        assert (name, heading) in located, f"no command block under {heading!r} in {name}"
        tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
        [node] = [node for node in ast.walk(tree)
                  if isinstance(node, ast.FunctionDef) and node.name == function]
        calls = [call for call in ast.walk(node) if isinstance(call, ast.Call)
                 and getattr(call.func, "id", "") == "code_block_after"]
        assert any(call.args[0].value == name and heading.startswith(call.args[1].value)
                   for call in calls), f"{path}::{function} does not read {name}: {heading}"


def test_only_command_blocks_hold_commands() -> None:
    for block in every_block():
        if block.is_commands:
            continue
        for line in block.text.splitlines():
            assert not COMMANDS.match(line.strip()), (
                f"{block.page}, {block.heading}: {line.strip()!r} is a command: put it in a "
                f"code-block:: sh or console (run by a test, or saying why not)")


@pytest.mark.parametrize("expected, actual, same", [
    (["a ... c"], ["a b c"], True),
    (["a ... c"], ["a b d"], False),
    (["x"], ["x", "y"], False),
    (["0/0..4"], ["0/0x4"], False),
])
def test_a_transcript_line_matches_with_dots_for_what_varies(
        expected: list[str], actual: list[str], same: bool) -> None:
    assert matches(expected, actual) is same


def test_a_transcript_is_commands_and_what_each_prints() -> None:
    block = "$ one  # a comment\nout 1\nout 2\n\n$ two\n"
    assert transcript(block) == [("one", ["out 1", "out 2"]), ("two", [])]
