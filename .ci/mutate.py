#!/usr/bin/env python3
"""Mutation testing of the modules that hold decisions (``make mutate``).

mutmut (2.x, the ``test`` extra) makes the mutants: its parser, its operators, its
``# pragma: no mutate``. This script runs them, each module against its fast tests only
(the unit tier, or a target's own ``-m`` expression: etcd's starts a real etcd), each
mutant in a forked child of one warm process: pytest, its plugins, Twisted and the other
dependencies are imported once, the ``faastwist`` package never in the parent, so each
child imports the mutated source fresh. That is several times faster than the pytest
process per mutant that ``mutmut run`` starts, which matters on a small shared machine.

The work happens in a copy of the tree (the checkout is never modified, an interrupted
run leaves nothing behind). A mutant is *killed* when its tests fail, error or time out;
it *survives* when they pass. A survivor is either killed by a new test or listed, with
why it cannot change behaviour, in ``.ci/mutants-equivalent.txt``; listed survivors are
subtracted. The score is killed / (mutants - listed equivalents); under GOAL in any
module the run fails and prints the survivors in the file's format.

Every module of ``faastwist/`` is a target: against its own test file
(``tests/<package>/test_<module>.py``, tests/support/layout.py says which) unless
TARGETS names it with other tests or marks; TARGETS also holds narrower targets (some
functions of a module against the tests that pin their decisions), run besides the
whole module. A module of imports only, or with no mutant, is not run.

    python .ci/mutate.py                 # every target
    python .ci/mutate.py gate/adaptor    # the targets whose path contains the word
    python .ci/mutate.py --shard 2/4     # the second of four parts of equal weight (CI)
    python .ci/mutate.py --list          # the targets and their tests
"""

from __future__ import annotations

import argparse
import ast
import runpy
import gc
import importlib.metadata
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EQUIVALENT_FILE = ROOT / ".ci" / "mutants-equivalent.txt"
GOAL = 90.0
#: the unit tier (as `make unit`): no external process, no real etcd or apiserver
UNIT = "not etcd and not envtest and not slow and not process and not e2e and not nats and not cluster"
#: which test file is a module's own (shared with tests/node/test_layout.py); loaded by
#: path: importing the ``tests`` package here would make every child import it from
#: the checkout instead of its copy
LAYOUT = runpy.run_path(str(ROOT / "tests" / "support" / "layout.py"))
#: modules whose annotations are read at run time (kube/schema.py builds the CRD from the
#: spec records' type hints): their annotation-only mutants count; everywhere else
#: (``from __future__ import annotations``) an annotation is never evaluated
ANNOTATIONS_READ = frozenset({"faastwist/model/spec.py"})


@dataclass(frozen=True)
class Target:
    """One module to mutate, the unit tests that must catch its mutants and, optionally,
    the functions (or methods) to mutate when only part of the module holds decisions."""

    path: str
    tests: tuple[str, ...]
    functions: tuple[str, ...] = ()
    #: which of the tests run (pytest -m): the unit tier, unless a module's decisions are
    #: only exercised against a real server that starts fast (etcd)
    marks: str = UNIT
    #: a module another branch brings: absent here, it is listed as such, not an error
    optional: bool = False

    @property
    def name(self) -> str:
        return f"{self.path}:{','.join(self.functions)}" if self.functions else self.path

    @property
    def traced(self) -> bool:
        """Every test runs in the child (the unit tier): a line coverage saw no test run
        is run by none, so its mutants survive without running anything."""
        return self.marks == UNIT


# Every module is mutated against its own test file (automatic). A line here, for a whole
# module (no ``functions``), replaces that: other or more tests, other marks; with
# ``functions``, it is a narrower target besides the whole module.
TARGETS = (
    Target("faastwist/model/fsm.py", ("tests/model/test_fsm.py",)),
    Target("faastwist/model/spec.py", ("tests/model/test_spec.py",)),
    Target("faastwist/config.py", ("tests/node/test_config.py",)),
    Target("faastwist/gate/decisions.py", ("tests/gate/test_decisions.py", "tests/gate/test_gate.py")),
    Target("faastwist/gate/adaptor.py", ("tests/gate/test_decisions.py", "tests/gate/test_gate.py")),
    Target("faastwist/gate/routes.py", ("tests/gate/test_routes.py", "tests/gate/test_gate.py")),
    Target("faastwist/lifecycle/reconciler.py", ("tests/lifecycle/test_reconciler.py",),
           functions=("plan", "_same")),
    Target("faastwist/store/memory.py", ("tests/store/test_store_contract.py",),
           functions=("create", "_current", "update", "delete")),
    # etcd's compare-and-swap: the compares a write is guarded by and what a failed one
    # means, against the contract suite's etcd variant (a real etcd per child: ~1 s)
    Target("faastwist/store/etcd.py", ("tests/store/test_store_contract.py",),
           functions=("_guard", "_fence_reads", "_lost_race", "_holds", "_unchanged"),
           marks="etcd and not slow"),
    Target("faastwist/auth/authorizer.py", ("tests/auth/test_authorizer.py",)),
    Target("faastwist/auth/origin.py", ("tests/auth/test_origin.py",)),
    Target("faastwist/admin/guard.py", ("tests/admin/test_guard.py",)),
    Target("faastwist/gate/access.py", ("tests/gate/test_access.py",)),
    # the key and rate-limit rules as the gate applies them (the rest of the module is I/O)
    Target("faastwist/gate/exchange.py", ("tests/gate/test_access.py", "tests/gate/test_gate.py"),
           functions=("_check_key", "_check_rate")),
    Target("faastwist/queue/policy.py", ("tests/queue/test_policy.py",)),
    # a node's session, etcd's paged listing and the leader's election: only a real etcd
    # reaches them (~1 s a child)
    Target("faastwist/cluster/session.py", ("tests/cluster/test_session.py",),
           marks="etcd and not slow"),
    Target("faastwist/store/etcdlist.py", ("tests/store/test_etcdlist.py",),
           marks="etcd and not slow"),
    Target("faastwist/store/leader.py", ("tests/store/test_leader.py",),
           marks="etcd and not slow"),
    # the sweep of a dead gate's children: found on a /proc tree the test writes, killed
    # for real (a child process or two per test run, well under a second)
    Target("faastwist/providers/orphans.py", ("tests/providers/test_orphans.py",),
           marks="not envtest and not slow and not e2e and not nats and not etcd"),
    # secret files written so that nothing a function plants is followed: the chown and
    # the failing removal need root (CI runs as root)
    Target("faastwist/providers/secretfiles.py", ("tests/providers/test_secretfiles.py",),
           marks="not envtest and not slow and not e2e and not nats and not etcd"),
    # the sandbox's argv (its order is the isolation) and the uid per function
    Target("faastwist/providers/sandbox.py", ("tests/providers/test_sandbox.py",)),
    Target("faastwist/util/users.py",
           ("tests/util/test_users.py", "tests/providers/test_sandbox.py"),
           functions=("parse", "uid_for", "identity", "account_exists")),
    # the queue's I/O modules, Clock-driven on the in-memory JetStream (faastwist/testing/
    # jetstream.py, itself held to nats-server by the contract suite); the secret store's
    # transactions against the real etcd (one per child, ~1 s)
    Target("faastwist/queue/worker.py", ("tests/queue/test_worker.py",
                                          "tests/queue/test_service.py")),
    Target("faastwist/queue/steps.py", ("tests/queue/test_worker.py",)),
    Target("faastwist/queue/service.py", ("tests/queue/test_service.py",)),
    Target("faastwist/queue/callback.py", ("tests/queue/test_callback.py",)),
    Target("faastwist/queue/bridge.py", ("tests/queue/test_bridge.py",)),
    Target("faastwist/store/secrets.py", ("tests/store/test_secrets.py",),
           marks="not envtest and not slow and not process and not e2e and not nats"),
    # the in-memory JetStream against its own tests and the fake half of its contract
    # suite (67% and 57% against the contract suite alone on 7 Dec 2026; its own tests,
    # for message sizes, the duplicate window's expiry and the outage hooks, came after:
    # not measured again yet)
    Target("faastwist/testing/nats.py", ("tests/testing/test_nats.py",
                                          "tests/queue/test_jetstream_contract.py")),
    Target("faastwist/testing/jetstream.py", ("tests/testing/test_jetstream.py",
                                               "tests/queue/test_jetstream_contract.py")),
)

def all_targets() -> list[Target]:
    """TARGETS, and for every other module of the package the whole module against its
    own test file; modules of imports only (a package's re-exports) and those that need
    no test of their own (tests/support/layout.py says why) are left out."""
    whole = {t.path for t in TARGETS if not t.functions}
    found = list(TARGETS)
    for module in LAYOUT["modules"]():
        if (module in whole or module in LAYOUT["WITHOUT_OWN_TEST"]
                or LAYOUT["only_reexports"]((ROOT / module).read_text())):
            continue
        own = LAYOUT["own_test_file"](module)
        # until a module has its own file: the tests that import it today
        tests = (own,) if (ROOT / own).exists() else LAYOUT["OWN_TEST_PENDING"].get(module, ())
        found.append(Target(module, tuple(tests)))
    return sorted(found, key=lambda t: t.name)


def weight(target: Target) -> int:
    """About how long a target takes, to cut a run into shards of equal work: the lines
    it mutates (its mutants without running mutmut's parser over every module)."""
    path = ROOT / target.path
    if not path.exists():
        return 0
    source = path.read_text()
    code = {n for n, line in enumerate(source.split("\n"), 1) if line.strip()}
    return len(mutable_lines(source, target.functions) & code)


def shard(targets: list[Target], index: int, count: int) -> list[Target]:
    """The ``index``-th (1-based) of ``count`` parts of equal weight, the same parts on
    every machine (heaviest first, each to the lightest part so far)."""
    parts: list[list[Target]] = [[] for _ in range(count)]
    loads = [0] * count
    for target in sorted(targets, key=lambda t: (-weight(t), t.name)):
        lightest = loads.index(min(loads))
        parts[lightest].append(target)
        loads[lightest] += weight(target)
    return sorted(parts[index - 1], key=lambda t: t.name)


#: imported once in the parent, shared by every forked child (never faastwist itself,
#: and never twisted.internet.reactor: pytest-twisted installs the reactor in the child)
WARM = ("attr", "attrs", "yaml", "click", "httptools", "prometheus_client", "hypothesis",
        "pytest", "_pytest.python", "_pytest.fixtures", "twisted.internet.defer",
        "twisted.internet.task", "twisted.internet.protocol", "twisted.web.server",
        "twisted.web.resource", "twisted.web.client", "twisted.logger", "twisted.python.failure",
        "twisted.internet.epollreactor", "treq", "treq.testing", "klein", "kubernetes.client",
        "greenlet", "txaioetcd")

KILLED, SURVIVED, TIMEOUT = "killed", "survived", "timeout"
#: the tests named could not run (pytest's exit code 4, usage error: an id not found, e.g.
#: a parametrized id made from a mutated constant; 5, no tests collected): neither a kill
#: nor a survival; the mutant is tested again with its test files whole
NOT_RUN = "not run"


@dataclass
class Mutant:
    path: str
    line: int  # 1-based
    original: str
    mutated: str
    status: str = ""
    #: on a line no test of the target runs: not run, a survivor
    unreached: bool = False

    def key(self) -> tuple[str, str, str]:
        return self.path, self.original.strip(), self.mutated.strip()

    def block(self, why: str = "?") -> str:
        return (f"{self.path}\n  - {self.original.strip()}\n  + {self.mutated.strip()}\n"
                f"  why: {why}\n")


@dataclass
class Score:
    target: Target
    mutants: list[Mutant] = field(default_factory=list)
    equivalent: int = 0
    #: survivors on lines no test runs (not run: nothing could kill them)
    unreached: int = 0
    seconds: float = 0.0

    @property
    def killed(self) -> int:
        return sum(m.status in (KILLED, TIMEOUT) for m in self.mutants)

    @property
    def survivors(self) -> list[Mutant]:
        return [m for m in self.mutants if m.status == SURVIVED]

    @property
    def percent(self) -> float:
        counted = len(self.mutants) - self.equivalent
        return 100.0 * self.killed / counted if counted else 100.0


# -- which lines may be mutated -------------------------------------------------------------

def mutable_lines(source: str, functions: tuple[str, ...]) -> set[int]:
    """1-based line numbers whose mutants count: inside ``functions`` when given, never a
    docstring or a log call (log text and level are not behaviour the README promises)."""
    tree = ast.parse(source)
    lines = set(range(1, source.count("\n") + 2))
    if functions:
        lines = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in functions:
                lines.update(range(node.lineno, node.end_lineno + 1))
        missing = set(functions) - {n.name for n in ast.walk(tree)
                                    if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        if missing:
            raise SystemExit(f"mutate: no function {sorted(missing)} in the module")
    for node in ast.walk(tree):
        skip = None
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)):
                skip = body[0]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and isinstance(node.func.value, ast.Name) and node.func.value.id == "log"):
            skip = node
        if skip is not None:
            lines.difference_update(range(skip.lineno, skip.end_lineno + 1))
    return lines


def statement_starts(source: str) -> dict[int, int]:
    """Each line's innermost enclosing statement's first line (what coverage records)."""
    starts: dict[int, int] = {}
    nodes = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.stmt)]
    for node in sorted(nodes, key=lambda n: (n.end_lineno - n.lineno), reverse=True):
        for line in range(node.lineno, node.end_lineno + 1):
            starts[line] = node.lineno
    return starts


def _shape(source: str) -> str | None:
    """The module's syntax tree without its annotations (None: not Python)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.arg):
            node.annotation = None
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            node.returns = None
        elif isinstance(node, ast.AnnAssign):
            node.annotation = None  # type: ignore[assignment]
    return ast.dump(tree)


def make_mutants(path: str, source: str, functions: tuple[str, ...]) -> list[Mutant]:
    """mutmut's mutants of the allowed lines, less those that only change an annotation
    where annotations are never evaluated (``from __future__ import annotations``, and
    nothing reads the hints: ANNOTATIONS_READ): Python cannot tell them apart."""
    from mutmut import Context, list_mutations, mutate

    allowed = mutable_lines(source, functions)
    original_lines = source.split("\n")
    shape = (_shape(source) if path not in ANNOTATIONS_READ
             and "from __future__ import annotations" in source else None)
    mutants = []
    for mutation_id in list_mutations(Context(source=source, filename=path)):
        number = mutation_id.line_number + 1
        if number not in allowed:
            continue
        mutated_source, count = mutate(Context(source=source, mutation_id=mutation_id,
                                               filename=path))
        assert count == 1, mutation_id
        if (shape is not None and ":" in original_lines[number - 1]
                and _shape(mutated_source) == shape):
            continue
        mutated_lines = mutated_source.split("\n")
        # a mutation changes one line, or deletes/joins it: show what became of it
        changed = mutated_lines[number - 1] if len(mutated_lines) == len(original_lines) else ""
        mutants.append(Mutant(path, number, original_lines[number - 1], changed))
        mutants[-1].source = mutated_source  # type: ignore[attr-defined]
    return mutants


# -- the equivalents file ------------------------------------------------------------------------

def read_equivalents(path: Path) -> dict[tuple[str, str, str], str]:
    """``{(module, original, mutated): why}`` from blocks of path / ``  - `` / ``  + `` /
    ``  why:`` lines; ``#`` lines and blank lines between blocks are ignored."""
    found: dict[tuple[str, str, str], str] = {}
    if not path.exists():
        return found
    block: list[str] = []
    for number, line in enumerate(path.read_text().splitlines() + [""], 1):
        if line.startswith("#"):
            continue
        if line.strip():
            block.append(line)
            continue
        if not block:
            continue
        if (len(block) != 4 or not block[1].startswith("  - ") or not block[2].startswith("  + ")
                or not block[3].startswith("  why: ") or not block[3][7:].strip()
                or block[3][7:].strip() == "?"):
            raise SystemExit(f"{path}:{number - len(block)}: a block is the module path, "
                             f"'  - original', '  + mutated', '  why: reason' (got {block!r})")
        found[(block[0].strip(), block[1][4:].strip(), block[2][4:].strip())] = block[3][7:].strip()
        block = []
    return found


# -- running tests in forked children -------------------------------------------------------------

def _child(work: Path, args: list[str], cache: bool = False) -> None:
    """In a forked child: run pytest in ``work`` quietly and exit with its code.

    ``cache``: write bytecode (the baseline run only: it leaves pytest's assertion-
    rewritten test modules cached for the mutants' children, which only read them)."""
    code = 3
    try:
        sys.dont_write_bytecode = not cache
        os.setpgid(0, 0)  # its own group: a timeout kills what it started, too
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        os.chdir(work)
        sys.path.insert(0, str(work))
        os.environ["PYTHONPATH"] = str(work)
        # Hypothesis's "mutate" profile (tests/support/properties.py, loaded by the tests'
        # conftest): a quarter of each property test's examples, the same ones every run,
        # no shrinking; make test keeps the tests' own counts
        os.environ["FAASTWIST_HYPOTHESIS_PROFILE"] = "mutate"
        import pytest

        code = pytest.main(["-x", "-q", "-p", "no:cacheprovider",
                            "-o", "addopts=", *args])
    finally:
        os._exit(int(code))


def start(work: Path, args: list[str], cache: bool = False) -> int:
    pid = os.fork()
    if pid == 0:
        _child(work, args, cache)
    return pid


def share_test_cache(works: list[Path]) -> None:
    """After a baseline run in ``works[0]``: drop the bytecode of ``faastwist`` (a mutant
    of the same size written in the same second would run the original's .pyc) and
    give the other copies pytest's rewritten tests (never mutated; the copies keep the
    sources' mtimes, so the cache stays valid there)."""
    for cache in (works[0] / "faastwist").rglob("__pycache__"):
        shutil.rmtree(cache, ignore_errors=True)
    for cache in (works[0] / "tests").rglob("__pycache__"):
        for other in works[1:]:
            shutil.copytree(cache, other / cache.relative_to(works[0]), dirs_exist_ok=True)


def finish(pid: int, started: float, timeout: float, block: bool) -> str | None:
    """The mutant's status once its child ended (None while it runs): killed when its
    tests failed or errored (a mutant that breaks the module's import fails collection,
    pytest's 2), NOT_RUN when pytest could not run them; past ``timeout`` the child's
    group is killed and the mutant counts as killed (TIMEOUT)."""
    done, status = os.waitpid(pid, 0 if block else os.WNOHANG)
    if done:
        code = os.waitstatus_to_exitcode(status)
        return SURVIVED if code == 0 else NOT_RUN if code in (4, 5) else KILLED
    if time.monotonic() - started > timeout:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)
        return TIMEOUT
    return None


def coverage_by_line(work: Path, target: Target) -> tuple[dict[int, list[str]] | None, float]:
    """Run the target's tests once on the original module, with coverage contexts: which
    tests run each line (pytest node ids), and how long the run took."""
    data_file = work / ".coverage.mutate"
    module = target.path[:-3].replace("/", ".").removesuffix(".__init__")  # a package
    started = time.monotonic()
    os.environ["COVERAGE_FILE"] = str(data_file)
    # no floor here: setup.cfg's fail_under is for the whole suite, not one module
    pid = start(work, ["-m", target.marks, f"--cov={module}", "--cov-context=test",
                       "--cov-report=", "--cov-fail-under=0", *target.tests], cache=True)
    status = finish(pid, started, 900, block=True)
    elapsed = time.monotonic() - started
    if status == NOT_RUN:  # none of its tests is in the target's marks: none runs
        return None, elapsed
    if status != SURVIVED:
        raise SystemExit(f"mutate: the tests of {target.path} fail without any mutant: "
                         f"pytest -m '{target.marks}' {' '.join(target.tests)}")
    import coverage

    data = coverage.CoverageData(basename=str(data_file))
    data.read()
    path = str(work / target.path)
    by_line: dict[int, list[str]] = {}
    for line, contexts in (data.contexts_by_lineno(path) or {}).items():
        ids = sorted({c.rsplit("|", 1)[0] for c in contexts if c})
        by_line[line] = ids if all(contexts) else []  # "": run at import: every test
    data_file.unlink(missing_ok=True)
    return by_line, elapsed


def tests_for(line: int, by_line: dict[int, list[str]], starts: dict[int, int]) -> list[str]:
    """The tests that ran the statement a mutant is in ([] for all of them).

    Both the mutant's line and its statement's first line count: mutmut names the line
    of the node it changed, and in a condition over several lines that can be a line
    only some runs reach (``a or b \\ or c`` made ``a and b or c`` is named on the
    second line, which a test that stops at ``b`` never runs, yet that test tells the
    two apart); a line no test runs gets every test (it must survive them all)."""
    chosen: set[str] = set()
    for number in {line, starts.get(line, line)}:
        ids = by_line.get(number)
        if ids == []:  # run at import: every test runs it
            return []
        chosen.update(ids or ())
    return sorted(chosen)


def run_target(target: Target, works: list[Path], equivalents: dict) -> Score:
    score = Score(target)
    began = time.monotonic()
    source = (works[0] / target.path).read_text()
    score.mutants = make_mutants(target.path, source, target.functions)
    print(f"{target.name}: {len(score.mutants)} mutants, tests: "
          f"{' '.join(target.tests) or 'none (no own test file)'}", flush=True)
    if not score.mutants or not target.tests:
        for mutant in score.mutants:
            mutant.status, mutant.unreached = SURVIVED, True
        return settle(score, equivalents, began)
    os.environ.pop("COVERAGE_FILE", None)
    by_line, baseline = coverage_by_line(works[0], target)
    os.environ.pop("COVERAGE_FILE", None)
    if by_line is None:
        print(f"{target.name}: none of its tests is in -m '{target.marks}'", flush=True)
        for mutant in score.mutants:
            mutant.status, mutant.unreached = SURVIVED, True
        return settle(score, equivalents, began)
    share_test_cache(works)
    timeout = max(60.0, 4 * baseline)
    starts = statement_starts(source)
    queue = []  # (mutant, with whole test files)
    for mutant in score.mutants:
        if target.traced and not reached(mutant.line, by_line, starts):
            mutant.status = SURVIVED
            mutant.unreached = True
        else:
            queue.append((mutant, False))
    running: dict[int, tuple[Mutant, Path, float, bool]] = {}
    free = list(works)
    done = 0

    def record(mutant: Mutant, status: str) -> None:
        nonlocal done
        mutant.status = status
        done += 1
        print({KILLED: ".", TIMEOUT: "T", SURVIVED: "S"}[status],
              end="\n" if done % 60 == 0 else "", flush=True)

    try:
        while queue or running:
            while queue and free:
                mutant, whole = queue.pop(0)
                work = free.pop()
                (work / target.path).write_text(mutant.source)  # type: ignore[attr-defined]
                tests = (list(target.tests) if whole
                         else tests_for(mutant.line, by_line, starts) or list(target.tests))
                running[start(work, ["-m", target.marks, *tests])] = (
                    mutant, work, time.monotonic(), whole or tests == list(target.tests))
            for pid, (mutant, work, started, whole) in list(running.items()):
                status = finish(pid, started, timeout, block=False)
                if status is not None:
                    del running[pid]
                    (work / target.path).write_text(source)
                    free.append(work)
                    if status != NOT_RUN:
                        record(mutant, status)
                    elif not whole:
                        queue.insert(0, (mutant, True))
                    else:
                        # the whole files ran on the original (the baseline): that they
                        # cannot even be collected now (a conftest's import broken, say)
                        # is the mutant's doing
                        record(mutant, KILLED)
            time.sleep(0.01)
    finally:
        for pid in running:
            try:
                os.killpg(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        for work in works:
            (work / target.path).write_text(source)
    print(flush=True)
    return settle(score, equivalents, began)


def settle(score: Score, equivalents: dict, began: float) -> Score:
    score.equivalent = sum(m.key() in equivalents for m in score.survivors)
    for mutant in score.survivors:
        if mutant.key() in equivalents:
            mutant.status = "equivalent"
    score.unreached = sum(m.unreached for m in score.survivors)
    score.seconds = time.monotonic() - began
    return score


def reached(line: int, by_line: dict[int, list[str]], starts: dict[int, int]) -> bool:
    """Whether any test ran the mutant's line or its statement's first line."""
    return any(number in by_line for number in {line, starts.get(line, line)})


def copy_tree(work: Path) -> None:
    ignore = shutil.ignore_patterns(".git", ".venv", "venv", "__pycache__", "build", "data",
                                    "test-artifacts", "*.egg-info", ".mutmut-cache",
                                    ".hypothesis", ".coverage*", "htmlcov")
    for entry in ROOT.iterdir():
        if entry.name in (".git", ".venv", "venv", "build", "data", "test-artifacts"):
            continue
        if entry.is_dir():
            shutil.copytree(entry, work / entry.name, ignore=ignore)
        else:
            shutil.copy2(entry, work / entry.name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("only", nargs="*", help="run the targets whose path contains a word")
    parser.add_argument("--list", action="store_true", help="list the targets and stop")
    parser.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1,
                        help="mutants tested at once (default: one per CPU)")
    parser.add_argument("--shard", metavar="I/N", type=shard_arg,
                        help="run the I-th of N parts of equal weight (1-based), e.g. one "
                             "per CI job; the parts of N runs cover every target once")
    parser.add_argument("--rst", metavar="FILE", type=Path,
                        help="also write the per-module table as reStructuredText")
    args = parser.parse_args(argv)
    targets = [t for t in all_targets() if not args.only or any(w in t.name for w in args.only)]
    if args.shard:
        targets = shard(targets, *args.shard)
    if not targets:
        parser.error(f"no target matches {args.only}")
    if args.list:
        for target in targets:
            marks = "" if target.marks == UNIT else f" [-m {target.marks}]"
            print(f"{target.name}: {' '.join(target.tests) or '(no own test file)'}{marks}")
        return 0
    equivalents = read_equivalents(EQUIVALENT_FILE)
    # a SIGTERM (make interrupted, CI's time out) still stops every child and cleans up
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    top = Path(tempfile.mkdtemp(prefix="faastwist-mutate-"))
    works = [top / f"w{n}" for n in range(max(1, args.jobs))]
    work = works[0]
    scores: list[Score] = []
    absent: list[str] = []
    try:
        for each in works:
            each.mkdir()
            copy_tree(each)
        os.chdir(work)
        sys.dont_write_bytecode = True  # a mutant must never run from a stale .pyc
        os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
        for name in WARM:
            __import__(name)
        # pytest's plugins too: each child would import them again (schemathesis alone
        # takes seconds) and assertion-rewrite them without a bytecode cache
        for plugin in importlib.metadata.entry_points(group="pytest11"):
            plugin.load()
        # what the parent holds is never collected: each child's gc.collect (pytest runs
        # several at its end) then neither walks it nor copies its pages on write
        gc.freeze()
        assert not any(m == "faastwist" or m.startswith("faastwist.") for m in sys.modules)
        for target in targets:
            if not (work / target.path).exists():
                if target.optional:
                    absent.append(target.path)
                    continue
                raise SystemExit(f"mutate: {target.path} does not exist: fix TARGETS")
            missing = [t for t in target.tests if not (work / t).exists()]
            if missing:
                raise SystemExit(f"mutate: {target.path}: no test file {missing}: fix TARGETS")
            scores.append(run_target(target, works, equivalents))
            summary(scores[-1])  # as each module ends: a long run can be stopped early
    finally:
        os.chdir(ROOT)
        shutil.rmtree(top, ignore_errors=True)
    if args.rst:
        args.rst.write_text(rst_table(scores))
    return report(scores, absent, equivalents)


def shard_arg(text: str) -> tuple[int, int]:
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard: I/N, two integers (got {text!r})")
    if not 1 <= index <= count:
        raise argparse.ArgumentTypeError(f"--shard: I from 1 to N (got {text!r})")
    return index, count


def rst_table(scores: list[Score]) -> str:
    """The per-module table, for the docs (``--rst FILE``)."""
    rows = [("module", "mutants", "killed", "equivalent", "survived", "unreached", "score")]
    for s in scores:
        rows.append((f"``{s.target.name}``", str(len(s.mutants)), str(s.killed),
                     str(s.equivalent), str(len(s.survivors)), str(s.unreached),
                     f"{s.percent:.1f}%"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    rule = " ".join("=" * w for w in widths)
    lines = [rule, " ".join(c.ljust(w) for c, w in zip(rows[0], widths)).rstrip(), rule]
    lines += [" ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows[1:]]
    return "\n".join(lines + [rule, ""])


def summary(s: Score) -> None:
    unreached = f" ({s.unreached} on lines no test runs)" if s.unreached else ""
    print(f"{s.target.name}: {len(s.mutants)} mutants, {s.killed} killed, {s.equivalent} "
          f"equivalent, {len(s.survivors)} survived{unreached}: {s.percent:.1f}% in "
          f"{s.seconds:.0f}s", flush=True)
    for mutant in s.survivors:
        print(f"# line {mutant.line}\n{mutant.block()}", flush=True)


def report(scores: list[Score], absent: list[str], equivalents: dict) -> int:
    width = max([36] + [len(s.target.name) for s in scores])
    print(f"\n{'module':<{width}} {'mutants':>7} {'killed':>6} {'equiv':>5} {'survived':>8} "
          f"{'unrun':>5} {'score':>6} {'time':>6}")
    for s in scores:
        print(f"{s.target.name:<{width}} {len(s.mutants):>7} {s.killed:>6} {s.equivalent:>5} "
              f"{len(s.survivors):>8} {s.unreached:>5} {s.percent:>5.1f}% {s.seconds:>5.0f}s"
              f"{'' if s.target.tests else '  (no own test file)'}")
    for path in absent:
        print(f"{path:<{width}} not in this tree")
    failing = [s for s in scores if s.percent < GOAL]
    survivors = [m for s in scores for m in s.survivors]
    if survivors:
        print(f"\nSurvivors: kill each with a test, or add it with why it is equivalent "
              f"to {EQUIVALENT_FILE.relative_to(ROOT)}:\n")
        for mutant in survivors:
            print(f"# line {mutant.line}")
            print(mutant.block())
    seen = {m.key() for s in scores for m in s.mutants}
    ran = {s.target.path for s in scores}
    stale = [k for k in equivalents if k[0] in ran and k not in seen]
    if stale:
        print(f"Listed in {EQUIVALENT_FILE.name} but no longer a mutant (remove them):")
        for path, original, mutated in stale:
            print(f"  {path}: {original}  ->  {mutated}")
    if failing:
        print(f"\nunder {GOAL:g}%: {', '.join(s.target.name for s in failing)}")
        return 1
    print(f"\nevery module at or over {GOAL:g}% of its mutants killed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
