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

#: modules whose own test file is still to be written (issue 25), with the test files
#: that cover them today, importing them or driving them through another module (the
#: mutation runner uses those until the module has its own; () where only whole nodes
#: reach it, tests/e2e). This list only shrinks: the layout test fails for a new module
#: without its file and for an entry whose file now exists.
OWN_TEST_PENDING: dict[str, tuple[str, ...]] = {
    # modules that came with the provider registry, the gate assembly, the Go templates
    # (issue 23, 28): tested through the files named until they have their own
    "faastwist/gate/assembly.py": ("tests/node/test_node_inprocess.py",
                                   "tests/e2e/test_workers_e2e.py"),
    "faastwist/providers/registry.py": ("tests/node/test_layout.py", "tests/node/test_config.py"),
    "faastwist/templates/files.py": ("tests/templates/test_templates.py",),
    "faastwist/templates/golang.py": ("tests/templates/test_templates.py",),
    "faastwist/workers/setup.py": ("tests/workers/test_supervisor.py",
                                   "tests/e2e/test_workers_e2e.py"),
    "faastwist/admin/asyncapi.py": (),
    "faastwist/admin/codec.py": (
        "tests/admin/test_api.py",
        "tests/admin/test_listbody.py",
        "tests/admin/test_parsing.py",
        "tests/admin/test_writes.py",
    ),
    "faastwist/admin/logstream.py": (),
    "faastwist/admin/rollout.py": ('tests/providers/test_knative_envtest.py',),
    "faastwist/cli/asynccmd.py": ('tests/cli/test_cli.py',),
    "faastwist/cli/client.py": (),
    "faastwist/cli/commands.py": (),
    "faastwist/cli/export.py": (),
    "faastwist/cli/output.py": ('tests/cli/test_cli.py',),
    "faastwist/cli/storecmd.py": (),
    "faastwist/cli/templatecmd.py": ('tests/templates/test_templates.py',),
    "faastwist/gate/adaptor.py": ('tests/gate/test_decisions.py', 'tests/gate/test_gate.py'),
    "faastwist/gate/context.py": ("tests/gate/test_gate.py", "tests/node/test_log_namespaces.py"),
    "faastwist/gate/exchange.py": (
        "tests/gate/test_gate.py", "tests/gate/test_lean.py", "tests/gate/test_webchannel.py"),
    "faastwist/gate/service.py": (
        "tests/gate/test_asynccall.py",
        "tests/gate/test_gate_hardening.py",
        "tests/gate/test_gate_integration.py",
        "tests/gate/test_process_gate.py",
        "tests/node/test_log_namespaces.py",
    ),
    "faastwist/gate/upstream.py": ("tests/gate/test_gate.py", "tests/gate/test_lean.py"),
    "faastwist/gate/web.py": ('tests/gate/test_webchannel.py',),
    "faastwist/gate/wire.py": (
        "tests/gate/test_decisions.py", "tests/gate/test_lean.py", "tests/gate/test_webchannel.py"),
    "faastwist/kube/kubeapi.py": ('tests/node/test_config.py',),
    "faastwist/kube/service.py": ('tests/kube/test_watch_retry.py',),
    "faastwist/kube/sync.py": (),
    "faastwist/node.py": ('tests/node/test_log_namespaces.py', 'tests/node/test_node_inprocess.py'),
    "faastwist/providers/base.py": (
        "tests/admin/test_api.py",
        "tests/admin/test_writes.py",
        "tests/cluster/test_reports.py",
        "tests/cluster/test_start_race.py",
        "tests/gate/test_gate.py",
        "tests/gate/test_gate_integration.py",
        "tests/kube/test_function_objects.py",
        "tests/lifecycle/test_reconciler.py",
        "tests/providers/test_knative_envtest.py",
        "tests/providers/test_knative_logs.py",
        "tests/providers/test_logfile.py",
        "tests/providers/test_process.py",
        "tests/providers/test_runtime.py",
        "tests/workers/test_link.py",
    ),
    "faastwist/providers/classicwatchdog.py": ('tests/providers/test_sandbox.py',),
    "faastwist/providers/knative.py": (
        "tests/kube/test_function_objects.py",
        "tests/providers/test_knative_envtest.py",
    ),
    "faastwist/providers/launch.py": (),
    "faastwist/providers/secretsync.py": (),
    "faastwist/queue/embedded.py": ('tests/queue/test_queue_nats.py',),
    "faastwist/queue/jetstream.py": (
        "tests/queue/test_names.py",
        "tests/queue/test_queue_nats.py",
    ),
    "faastwist/queue/replay.py": ('tests/gate/test_asynccall.py',),
    "faastwist/queue/steps.py": (),
    "faastwist/store/base.py": (
        "tests/admin/test_api.py",
        "tests/admin/test_listbody.py",
        "tests/admin/test_writes.py",
        "tests/cluster/test_start_race.py",
        "tests/gate/test_routes.py",
        "tests/lifecycle/test_reconciler.py",
        "tests/store/test_etcd_failover.py",
        "tests/store/test_etcdlist.py",
        "tests/store/test_leader.py",
        "tests/store/test_store_contract.py",
    ),
    "faastwist/store/etcd.py": (
        "tests/cluster/test_session.py",
        "tests/gate/test_gate_integration.py",
        "tests/store/test_embedded.py",
        "tests/store/test_etcd_failover.py",
        "tests/store/test_etcdlist.py",
        "tests/store/test_leader.py",
        "tests/store/test_store_contract.py",
    ),
    "faastwist/store/etcdcompat.py": ('tests/store/test_store_contract.py',),
    "faastwist/store/memory.py": (
        "tests/admin/test_api.py",
        "tests/admin/test_guard.py",
        "tests/admin/test_listbody.py",
        "tests/admin/test_openfaas.py",
        "tests/admin/test_parsing.py",
        "tests/admin/test_writes.py",
        "tests/cluster/test_converger.py",
        "tests/cluster/test_start_race.py",
        "tests/gate/test_asynccall.py",
        "tests/gate/test_gate_hardening.py",
        "tests/gate/test_gate_integration.py",
        "tests/gate/test_process_gate.py",
        "tests/gate/test_routes.py",
        "tests/kube/test_function_objects.py",
        "tests/kube/test_watch_retry.py",
        "tests/lifecycle/test_reconciler.py",
        "tests/node/test_node_inprocess.py",
        "tests/providers/test_knative_envtest.py",
        "tests/store/test_leader_contract.py",
        "tests/store/test_owned.py",
        "tests/store/test_secrets_contract.py",
        "tests/store/test_store_contract.py",
        "tests/workers/test_link.py",
    ),
    "faastwist/tap.py": (),
    "faastwist/templates/build.py": ('tests/templates/test_templates.py',),
    "faastwist/templates/runners/python.py": (),
    "faastwist/testing/knative.py": ('tests/providers/test_knative_envtest.py',),
    "faastwist/testing/provider.py": (
        "tests/admin/test_openfaas.py",
        "tests/admin/test_parsing.py",
        "tests/admin/test_writes.py",
        "tests/gate/test_asynccall.py",
        "tests/lifecycle/test_reconciler.py",
        "tests/node/test_node_inprocess.py",
        "tests/providers/test_process.py",
        "tests/store/test_owned.py",
    ),
    "faastwist/workers/child.py": ('tests/workers/test_link.py',),
    "faastwist/workers/remote.py": ('tests/workers/test_link.py',),
}


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
