"""Where the tests sleep or skip: read from the syntax tree (a ``sleep`` in a function
script that a test writes out is text, not a call, and is not counted).

A sleep inside a ``while`` loop, for a constant of at most POLL seconds or a named
interval, is a poll: it waits for a positive event, checking every so often. Any other
sleep or skip must be listed, with its reason, in tests/node/test_hygiene.py.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[2]
POLL = 0.5


def _calls(tree: ast.AST) -> Iterator[tuple[ast.Call, list[ast.AST]]]:
    """Every call with the nodes that enclose it (outermost first)."""
    stack: list[tuple[ast.AST, list[ast.AST]]] = [(tree, [])]
    while stack:
        node, parents = stack.pop()
        if isinstance(node, ast.Call):
            yield node, parents
        for child in ast.iter_child_nodes(node):
            stack.append((child, [*parents, node]))


def _name(call: ast.Call) -> str:
    func = call.func
    if isinstance(func, ast.Attribute):
        base = func.value.id if isinstance(func.value, ast.Name) else "?"
        return f"{base}.{func.attr}"
    return func.id if isinstance(func, ast.Name) else "?"


def _is_poll(call: ast.Call, parents: list[ast.AST]) -> bool:
    if not any(isinstance(p, ast.While) for p in parents):
        return False
    if not call.args:
        return False
    arg = call.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, (int, float)):
        return arg.value <= POLL
    return isinstance(arg, (ast.Name, ast.Attribute))


@functools.lru_cache(maxsize=None)
def uses(folder: Path = ROOT / "tests", root: Path = ROOT) -> list[tuple[str, str, str, int]]:
    """(file, enclosing function, call as written, line) of every sleep that is not a
    poll and of every skip, sorted."""
    found = []
    for path in sorted(folder.rglob("*.py")):
        source = path.read_text()
        tree = ast.parse(source, str(path))
        relative = str(path.relative_to(root))
        for call, parents in _calls(tree):
            name = _name(call)
            sleep = name.endswith(".sleep") or name == "sleep"
            skip = name in ("pytest.skip", "pytest.importorskip")
            if not (sleep and not _is_poll(call, parents)) and not skip:
                continue
            function = next((p.name for p in reversed(parents)
                             if isinstance(p, (ast.FunctionDef, ast.AsyncFunctionDef))), "")
            found.append((relative, function, ast.get_source_segment(source, call) or name,
                          call.lineno))
        for node in ast.walk(tree):   # skip marks are attributes, called or not
            if (isinstance(node, ast.Attribute) and node.attr in ("skip", "skipif", "xfail")
                    and isinstance(node.value, ast.Attribute) and node.value.attr == "mark"):
                found.append((relative, "", f"pytest.mark.{node.attr}", node.lineno))
    return sorted(set(found))
