"""Which test file is a module's own: shared by the layout test (tests/node/test_layout.py)
and the mutation runner (.ci/mutate.py, which loads this file by path, so it must import
nothing of faastwist or of the tests).

The convention: ``faastwist/<package>/<module>.py`` is tested by
``tests/<package>/test_<module>.py``; a package's ``__init__.py`` by
``tests/<package>/test_<package>.py``; a top-level module (``faastwist/config.py``) by
``tests/node/test_<module>.py``; a module in a sub-package
(``faastwist/templates/runners/python.py``) by ``tests/templates/test_runners_python.py``
(test files live one folder deep, named for the package).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "faastwist"

#: modules with no test file of their own, and why none is needed (a handful at most;
#: a package ``__init__`` that only re-exports needs no entry: see ``only_reexports``)
WITHOUT_OWN_TEST: dict[str, str] = {
    "faastwist/__init__.py": "the version string only",
    "faastwist/cli/__main__.py": "three lines that call faastwist.cli.main (python -m); "
                                 "tests/cli/test_cli.py runs the console script",
    "faastwist/templates/scaffold/python3/handler.py":
        "a function template's handler, copied into a user's function folder, never "
        "imported by the node; tests/e2e/test_templates_e2e.py builds and calls it",
    "faastwist/templates/scaffold/python3-http/handler.py":
        "a function template's handler, copied into a user's function folder, never "
        "imported by the node; tests/e2e/test_templates_e2e.py builds and calls it",
}

#: modules whose own test file is still to be written (issue 25): this list only
#: shrinks; the layout test fails for a module missing from it and for an entry whose
#: file now exists. The tests that cover each today are named.
OWN_TEST_PENDING: dict[str, str] = {}


def own_test_file(module: str) -> str:
    """``faastwist/gate/lean.py`` -> ``tests/gate/test_lean.py`` (paths relative to the
    checkout, with forward slashes)."""
    parts = Path(module).with_suffix("").parts
    assert parts[0] == "faastwist", module
    inner = list(parts[1:])
    if len(inner) == 1:
        return ("tests/node/test_.py" if inner[0] == "__init__"
                else f"tests/node/test_{inner[0]}.py")
    if inner[-1] == "__init__":
        inner = inner[:-1]
    package = inner[0]
    rest = inner[1:] or [package]
    return f"tests/{package}/test_{'_'.join(rest)}.py"


def only_reexports(source: str) -> bool:
    """A module of imports and ``__all__`` (and a docstring): nothing to test or mutate."""
    for node in ast.parse(source).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name) and node.targets[0].id == "__all__"):
            continue
        return False
    return True


def modules() -> list[str]:
    """Every module of the package, as sorted relative paths."""
    return sorted(str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py"))


def missing_own_tests() -> list[str]:
    """Modules with no own test file that are neither excepted nor re-export only."""
    return [m for m in modules()
            if m not in WITHOUT_OWN_TEST and not (ROOT / own_test_file(m)).exists()
            and not only_reexports((ROOT / m).read_text())]
