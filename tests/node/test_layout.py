"""The package layout holds: no import cycle between modules or packages, few top-level
modules, and every test file in a folder named for the package it tests.

Imports are read from the source (every ``import``/``from`` anywhere in a module,
including those inside functions and ``TYPE_CHECKING`` blocks), so a lazy import cannot
hide a cycle.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

from tests.support import layout

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "faastwist"
MAX_TOP_LEVEL_MODULES = 8


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """The faastwist modules a module imports (``from a.b import c`` is ``a.b.c`` when
    ``c`` is a module, else ``a.b``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules
                     else node.module for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in modules)
    return found


@functools.lru_cache(maxsize=1)
def graph() -> dict[str, set[str]]:
    """Parsed once per run: the tests below only read it."""
    modules = all_modules()
    return {name: imports_of(path, modules) - {name} for name, path in modules.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def package_of(module: str) -> str:
    """``faastwist.gate.lean`` -> ``faastwist.gate``; a top-level module is its own node."""
    return ".".join(module.split(".")[:2])


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_modules() -> None:
    assert cycles(graph()) == []


def test_no_import_cycle_between_packages() -> None:
    packages: dict[str, set[str]] = {}
    for module, targets in graph().items():
        source = package_of(module)
        packages.setdefault(source, set()).update(
            package_of(t) for t in targets if package_of(t) != source)
    assert cycles(packages) == []


def test_util_imports_nothing_else_of_faastwist() -> None:
    offenders = {module: sorted(t for t in targets if not t.startswith("faastwist.util"))
                 for module, targets in graph().items() if module.startswith("faastwist.util")}
    assert {m: t for m, t in offenders.items() if t} == {}


def test_nothing_in_the_node_imports_the_testing_fakes() -> None:
    users = sorted(module for module, targets in graph().items()
                   if not module.startswith("faastwist.testing")
                   and any(t.startswith("faastwist.testing") for t in targets))
    assert users == []


def test_the_transports_and_the_upstream_client_never_import_each_other() -> None:
    edges = graph()
    peers = {"faastwist.gate.lean", "faastwist.gate.web", "faastwist.gate.upstream"}
    assert {m: sorted(edges[m] & peers) for m in peers if edges[m] & peers} == {}


def test_few_top_level_modules() -> None:
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top


def test_every_package_declares_its_public_names() -> None:
    missing = sorted(module_name(init) for init in PACKAGE.rglob("__init__.py")
                     if "__all__" not in init.read_text()
                     and module_name(init) != "faastwist")
    assert missing == []


def test_every_test_file_lives_in_a_folder_named_for_what_it_tests() -> None:
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    # node: the top-level modules (tap, node, config, ...), packaging and this layout;
    # e2e: whole nodes as real processes
    allowed = folders | {"node", "e2e"}
    misplaced = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py")
                       if p.parent.name not in allowed or p.parent.parent != ROOT / "tests")
    assert misplaced == []


def provider_name_comparisons(source: str, names: set[str]) -> list[int]:
    """Lines where a provider name (a string literal, alone or in a tuple/list/set) is
    compared (``==``, ``!=``, ``in``, ``is``...) or matched (``case "knative":``)."""
    def names_in(node: ast.AST) -> bool:
        if isinstance(node, ast.Constant):
            return node.value in names
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return any(names_in(element) for element in node.elts)
        return False

    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            if any(names_in(operand) for operand in [node.left, *node.comparators]):
                lines.append(node.lineno)
        elif isinstance(node, ast.MatchValue) and names_in(node.value):
            lines.append(node.lineno)
    return sorted(lines)


def test_the_comparison_finder_sees_every_form() -> None:
    names = {"knative", "process"}
    source = ('if p == "knative": pass\n'
              'if ("process"\n    != p): pass\n'
              'x = p in ("knative", "other")\n'
              'y = "knative" if p is "process" else None\n'
              'match p:\n    case "process": pass\n'
              'z = {"knative": 1}\n'                 # a key, not a comparison
              'w = p == "knativeish"\n')
    assert provider_name_comparisons(source, names) == [1, 2, 4, 5, 7]


def test_no_provider_name_is_compared_outside_the_providers_package() -> None:
    """The node asks the provider registry (providers/registry.py) what a provider
    does; only providers/ knows them by name."""
    from faastwist.providers.registry import KINDS

    names = set(KINDS)
    offenders = {
        str(path.relative_to(ROOT)): found
        for path in sorted(PACKAGE.rglob("*.py"))
        if PACKAGE / "providers" not in path.parents
        for found in [provider_name_comparisons(path.read_text(), names)] if found}
    assert offenders == {}


def test_the_provider_registry_lists_every_provider_module() -> None:
    """Every module of providers/ that implements the Provider interface (a class with
    its lifecycle methods) is a registered provider's factory module, and every
    registered reference resolves."""
    import importlib

    from faastwist.providers.registry import KINDS

    registered = {kind.modules[0] for kind in KINDS.values()}
    implementing = set()
    for path in sorted((PACKAGE / "providers").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                methods = {item.name for item in node.body if isinstance(item, ast.FunctionDef)}
                if {"check_spec", "observe", "deploy", "delete", "acquire"} <= methods and "Protocol" not in {
                        getattr(base, "id", None) for base in node.bases}:
                    implementing.add(module_name(path))
    assert implementing == registered
    for kind in KINDS.values():
        for ref in [kind.factory] + ([kind.worker_routing] if kind.worker_routing else []):
            module, _, attribute = ref.partition(":")
            assert callable(getattr(importlib.import_module(module), attribute)), ref


def test_every_module_has_its_own_test_file() -> None:
    """``faastwist/<package>/<module>.py`` is tested by ``tests/<package>/test_<module>.py``
    (tests/support/layout.py): a new module without one fails here. The exceptions say
    why; the pending list (issue 25) only shrinks."""
    unlisted = [m for m in layout.missing_own_tests() if m not in layout.OWN_TEST_PENDING]
    assert unlisted == [], [f"{m}: write {layout.own_test_file(m)}" for m in unlisted]


def test_the_lists_of_modules_without_their_test_file_are_current() -> None:
    modules = set(layout.modules())
    listed = set(layout.WITHOUT_OWN_TEST) | set(layout.OWN_TEST_PENDING)
    assert sorted(listed - modules) == [], "no such module: remove it from the list"
    done = sorted(m for m in layout.OWN_TEST_PENDING
                  if (ROOT / layout.own_test_file(m)).exists())
    assert done == [], "has its own test file now: remove it from OWN_TEST_PENDING"
    assert set(layout.WITHOUT_OWN_TEST).isdisjoint(layout.OWN_TEST_PENDING)
    assert all(why.strip() for why in layout.WITHOUT_OWN_TEST.values())
    covering = {t for tests in layout.OWN_TEST_PENDING.values() for t in tests}
    assert sorted(t for t in covering if not (ROOT / t).exists()) == []


def test_a_module_maps_to_its_own_test_file() -> None:
    assert layout.own_test_file("faastwist/gate/lean.py") == "tests/gate/test_lean.py"
    assert layout.own_test_file("faastwist/config.py") == "tests/node/test_config.py"
    assert layout.own_test_file("faastwist/catalogue/__init__.py") == \
        "tests/catalogue/test_catalogue.py"
    assert layout.own_test_file("faastwist/templates/runners/python.py") == \
        "tests/templates/test_runners_python.py"
    assert layout.only_reexports('"""doc"""\nfrom a import b\n__all__ = ["b"]\n')
    assert not layout.only_reexports('from a import b\nc = b()\n')
