"""Reconcile-pass benchmark against a real kube-apiserver (the envtest one).

    FAASTWIST_ENVTEST=../shared/k8s PYTHONPATH=. .venv/bin/python bench/reconcile.py

For N = 10, 100, 1000 functions (``--sizes``): create them in the in-memory store, run
the pass that creates the ksvcs, let the fake Knative controller mark every revision
ready, run the pass that records it, then time steady-state passes (nothing changed)
and a pass where 10% of the functions were stopped over the admin path (one PUT each).
Every HTTP request the provider's ApiClient sends is counted. The apiserver is started
in a temporary folder and stopped (by pid) at the end.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer, task

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from faastwist.config import KnativeConfig  # noqa: E402
from faastwist.model.fsm import Event, FunctionStatus, State, apply_event  # noqa: E402
from faastwist.metrics import Metrics  # noqa: E402
from faastwist.providers.knative import KnativeProvider  # noqa: E402
from faastwist.lifecycle.reconciler import Reconciler  # noqa: E402
from faastwist.model.spec import FunctionSpec  # noqa: E402
from faastwist.store.memory import MemoryStore  # noqa: E402
from tests.support.k8s import Envtest, envtest_unavailable  # noqa: E402
from faastwist.testing.knative import CallCounter, FakeKnative  # noqa: E402


def spec(name: str) -> FunctionSpec:
    return FunctionSpec.from_dict({
        "name": name, "image": "dev.local/colordeploy:17.0", "port": 8089,
        "autoScaleType": "rps", "autoScaleValue": "111", "minReplica": 1, "maxReplica": 3,
        "limitCPU": "180m", "limitMemory": "100Mi", "requestCPU": "80m",
        "requestMemory": "20Mi"})


@defer.inlineCallbacks
def timed_pass(reconciler: Reconciler, calls: CallCounter):
    calls.take()
    started = time.perf_counter()
    yield reconciler.run_pass()
    elapsed = time.perf_counter() - started
    if reconciler.last_error:
        raise RuntimeError(f"pass failed: {reconciler.last_error}")
    return elapsed, calls.take()


def summary(requests: list[tuple[str, str]]) -> str:
    counts: dict[str, int] = {}
    for method, _ in requests:
        counts[method] = counts.get(method, 0) + 1
    return " ".join(f"{m}={c}" for m, c in sorted(counts.items())) or "-"


@defer.inlineCallbacks
def run_size(reactor: Any, server: Envtest, n: int, steady_runs: int):
    controller = f"bench{n}"
    metrics = Metrics()
    config = KnativeConfig(namespace="default", timeout=60.0, kubeconfig=server.kubeconfig)
    provider = KnativeProvider(config, controller, reactor, metrics)
    calls = CallCounter(provider.api_client)
    store = MemoryStore(controller)
    reconciler = Reconciler(store, provider, task.Clock(), 10.0, metrics)
    knative = FakeKnative(server.api_client())
    provider.startService()
    try:
        names = [f"{controller}-fn{i:04d}" for i in range(n)]
        for name in names:
            yield store.create(spec(name), FunctionStatus.initial(name, time.time()))
        deploy_time, deploy_calls = yield timed_pass(reconciler, calls)
        knative.reconcile(controller, workers=8)
        record_time, record_calls = yield timed_pass(reconciler, calls)
        listing = yield store.list()
        states = {r.status.state for r in listing.records.values()}
        assert states == {State.ACTIVE}, states

        steady: list[float] = []
        steady_calls: list[int] = []
        for _ in range(steady_runs):
            elapsed, requests = yield timed_pass(reconciler, calls)
            steady.append(elapsed)
            steady_calls.append(len(requests))

        changed = names[:: 10]
        for name in changed:                      # admin stop: apply_event + CAS write
            record = yield store.get(name)
            yield store.update(record, status=apply_event(record.status, Event.STOP,
                                                          time.time()))
        changed_time, changed_requests = yield timed_pass(reconciler, calls)
        after_time, after_requests = yield timed_pass(reconciler, calls)
        return {
            "n": n,
            "deploy": (deploy_time, summary(deploy_calls)),
            "record": (record_time, summary(record_calls)),
            "steady": (statistics.median(steady), min(steady), max(steady)),
            "steady_calls": sorted(set(steady_calls)),
            "changed": (changed_time, summary(changed_requests), len(changed)),
            "after": (after_time, summary(after_requests)),
        }
    finally:
        provider.stopService()
        knative.delete_all(controller)


@defer.inlineCallbacks
def main(reactor: Any, argv: list[str]):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000",
                        help="comma-separated numbers of functions (default 10,100,1000)")
    parser.add_argument("--steady-runs", type=int, default=5,
                        help="steady-state passes timed per size (median reported)")
    args = parser.parse_args(argv)
    reason = envtest_unavailable()
    if reason:
        raise SystemExit(f"bench/reconcile.py: {reason}")
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    with tempfile.TemporaryDirectory(prefix="faastwist-bench-") as workdir:
        server = Envtest(Path(workdir))
        started = time.perf_counter()
        server.start()
        print(f"envtest apiserver on 127.0.0.1:{server.api_port} ready in "
              f"{time.perf_counter() - started:.1f}s", flush=True)
        try:
            results = []
            for n in sizes:
                result = yield run_size(reactor, server, n, args.steady_runs)
                results.append(result)
                print(f"N={n}: done", flush=True)
        finally:
            server.stop()
    print()
    print("| N | steady pass (median, min-max) | API calls / steady pass | "
          "10% stopped: pass | its API calls | first pass (creates) | its API calls |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        med, low, high = r["steady"]
        print(f"| {r['n']} | {med * 1000:.1f} ms ({low * 1000:.1f}-{high * 1000:.1f}) | "
              f"{','.join(map(str, r['steady_calls']))} | "
              f"{r['changed'][0] * 1000:.1f} ms | {r['changed'][1]} | "
              f"{r['deploy'][0] * 1000:.0f} ms | {r['deploy'][1]} |")
    print()
    for r in results:
        print(f"N={r['n']}: recording {r['n']} ready verdicts took "
              f"{r['record'][0] * 1000:.1f} ms ({r['record'][1]}); the pass after the "
              f"10% stop took {r['after'][0] * 1000:.1f} ms ({r['after'][1]})")


if __name__ == "__main__":
    task.react(main, [sys.argv[1:]])
