"""Per-node observations of node-local functions, and the rule that folds them into one.

With the process provider every node runs its own replicas, so "is the function ready"
has one answer per node. Each node writes its observation to
``{prefix}/{controller}/report/{fn}/{node}`` (bound to its lease: a dead node's reports
vanish); the leader folds the reports of the *live* nodes (those whose
``.../node/{id}`` key exists) into one Observation for the FSM:

- every live node reported the same spec digest, stop state and status epoch (the
  operator's intent it acted on), else nothing is concluded yet (``event`` None): a
  report written before the latest start or stop says nothing about it;
- any node in error -> error, the message naming the node(s);
- every live node ready -> ready;
- any node without a verdict yet -> nothing concluded; otherwise (some pending) -> pending.

``extData`` gets ``nodes`` (``n0=ready n1=pending``), one ``node.<id>`` entry per node,
``replicas``: the fewest ready replicas any live node has (minReplica is per node),
``user``/``sandbox``/``memoryLimit``/``cpuLimit``/``pidsLimit``/``diskLimit``/``network``
(once when every node says the same, else per node) and ``oomKills`` (the sum; then ``reason: OOM``).
"""

from __future__ import annotations

import json
from typing import Any, Callable, Generator, Mapping, Sequence

import attrs
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

from faastwist.model.fsm import Event
from faastwist.model.spec import FunctionSpec
from faastwist.providers.base import Observation, Provider, UpstreamLease


@attrs.frozen
class Report:
    """One node's observation of one function."""

    node: str
    digest: str
    stopped: bool
    event: Event | None
    message: str = ""
    ext_data: Mapping[str, str] = attrs.field(factory=dict)
    #: a rolling update is not live on this node but the previous version serves there
    serving_previous: bool = False
    #: the status epoch this node had acted on when it observed (None: a node that
    #: does not say, from before epochs: taken as agreeing)
    epoch: int | None = None

    @classmethod
    def of(cls, node: str, observation: Observation, epoch: int | None = None) -> "Report":
        return cls(node, observation.digest, observation.stopped, observation.event,
                   observation.message, dict(observation.ext_data),
                   observation.serving_previous, epoch)

    def encode(self) -> bytes:
        return json.dumps({"node": self.node, "digest": self.digest, "stopped": self.stopped,
                           "event": None if self.event is None else self.event.value,
                           "message": self.message, "extData": dict(self.ext_data),
                           "servingPrevious": self.serving_previous,
                           "epoch": self.epoch},
                          sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> "Report":
        doc = json.loads(data)
        event = doc.get("event")
        epoch = doc.get("epoch")
        return cls(str(doc["node"]), str(doc.get("digest", "")), bool(doc.get("stopped")),
                   None if event is None else Event(event), str(doc.get("message", "")),
                   {str(k): str(v) for k, v in (doc.get("extData") or {}).items()},
                   bool(doc.get("servingPrevious", False)),
                   None if epoch is None else int(epoch))

    @property
    def verdict(self) -> str:
        if self.stopped:
            return "stopped"
        return "starting" if self.event is None else self.event.value


def aggregate(name: str, reports: Mapping[str, Report], live: Sequence[str]) -> Observation | None:
    """The cluster's observation of ``name`` from the live nodes' reports (None: no
    live node reported it)."""
    present = {node: reports[node] for node in sorted(live) if node in reports}
    if not present:
        return None
    first = next(iter(present.values()))
    ext = {"nodes": " ".join(f"{node}={present[node].verdict if node in present else 'none'}"
                             for node in sorted(live))}
    for node, report in present.items():
        ext[f"node.{node}"] = report.message or report.verdict
    counts = [r.ext_data.get("replicas") for r in present.values()]
    digits = [c for c in counts if c is not None and c.isdigit()]
    if counts and len(digits) == len(counts):
        ext["replicas"] = str(min(int(c) for c in digits))  # the fewest any gate has
    _carry(ext, list(present.values()))
    epochs = {r.epoch for r in present.values() if r.epoch is not None}
    epoch = max(epochs) if epochs else None
    agreed = (len(present) == len(live) and len(epochs) <= 1
              and all(r.digest == first.digest and r.stopped == first.stopped
                      for r in present.values()))
    if not agreed:
        missing = sorted(set(live) - set(present))
        why = f"waiting for {', '.join(missing)}" if missing else "nodes are converging"
        return Observation(name, first.digest, first.stopped, None, why, ext, epoch=epoch)
    if first.stopped:
        return Observation(name, first.digest, True, None, "stopped on every node", ext,
                           epoch=epoch)
    failed = [r for r in present.values() if r.event is Event.ERROR]
    if failed:
        ext.update(failed[0].ext_data)  # the first failing node's details, unprefixed
        for report in failed:
            for key, value in report.ext_data.items():
                ext[f"{report.node}.{key}"] = value
        message = "; ".join(f"node {r.node}: {r.message}" for r in failed)
        return Observation(name, first.digest, False, Event.ERROR, message, ext,
                           serving_previous=all(r.serving_previous for r in failed),
                           epoch=epoch)
    if all(r.event is Event.READY for r in present.values()):
        return Observation(name, first.digest, False, Event.READY,
                           f"ready on {len(present)} of {len(live)} nodes", ext, epoch=epoch)
    if any(r.event is None for r in present.values()):
        return Observation(name, first.digest, False, None, "starting", ext, epoch=epoch)
    pending = [r for r in present.values() if r.event is Event.PENDING]
    message = "; ".join(f"node {r.node}: {r.message}" for r in pending)
    return Observation(name, first.digest, False, Event.PENDING, message, ext,
                       serving_previous=all(r.serving_previous for r in pending),
                       epoch=epoch)


#: what each node says about how it runs the function (its user, its sandbox, how limits
#: apply, its autoscaler's last decision)
_SHARED = ("user", "sandbox", "memoryLimit", "cpuLimit", "pidsLimit", "diskLimit", "network",
           "lastScale")


def _carry(ext: dict[str, str], reports: list[Report]) -> None:
    """The nodes' details a ready function keeps: a shared value once (else one per
    node, ``{node}.{key}``), and the OOM kills of every node added up."""
    for key in _SHARED:
        values = {r.ext_data.get(key) for r in reports}
        if len(values) == 1 and None not in values:
            ext[key] = str(values.pop())
            continue
        for report in reports:
            if key in report.ext_data:
                ext[f"{report.node}.{key}"] = report.ext_data[key]
    kills = sum(int(r.ext_data.get("oomKills", "0")) for r in reports
                if r.ext_data.get("oomKills", "0").isdigit())
    if kills:
        ext.update(oomKills=str(kills), reason="OOM")


#: Functions folded per reactor turn.
CHUNK = 500

#: what a ClusterView reads: every function's reports by node, and the live nodes
Reports = tuple[dict[str, dict[str, Report]], list[str]]


class ClusterView:
    """What the leader's reconciler sees as its provider when functions are node-local:
    ``observe`` folds the nodes' reports; the writes are done by every node's
    LocalConverger from the store, so here they have nothing left to do."""

    def __init__(self, local: Provider, read_reports: Callable[[], Deferred[Reports]],
                 clock: IReactorTime | None = None) -> None:
        self.local = local
        self.kind = local.kind
        self._read = read_reports  # () -> Deferred[(reports by fn by node, live nodes)]
        self.clock = clock  # with a clock, a fold gives the reactor back every CHUNK
        #: name -> (live nodes, its reports, the observation folded from them)
        self._folded: dict[str, tuple[tuple[str, ...], tuple[Report, ...], Observation | None]] = {}

    def check_spec(self, spec: FunctionSpec) -> None:
        self.local.check_spec(spec)

    def observe(self, names: Sequence[str] | None = None) -> Deferred[dict[str, Observation]]:
        return self._read().addCallback(self._fold, names)

    @inlineCallbacks
    def _fold(self, result: Reports, names: Sequence[str] | None
              ) -> Generator[Deferred[Any], Any, dict[str, Observation]]:
        """Fold every function's reports, ``CHUNK`` functions per reactor turn (10,000
        took ~0.3 s in one, every pass); a function whose live nodes and report
        objects (decoded once per stored value) did not change keeps its observation."""
        by_function, live = result
        live_key = tuple(sorted(live))
        wanted = list(by_function if names is None else
                      [n for n in names if n in by_function])
        folded: dict[str, Observation] = {}
        memo = self._folded
        fresh: dict[str, tuple[tuple[str, ...], tuple[Report, ...], Observation | None]] = {}
        for start in range(0, len(wanted), CHUNK):
            if start and self.clock is not None:
                yield deferLater(self.clock, 0, lambda: None)
            for name in wanted[start:start + CHUNK]:
                reports = by_function[name]
                key = tuple(reports[node] for node in sorted(reports))
                cached = memo.get(name)
                if (cached is not None and cached[0] == live_key and len(cached[1]) == len(key)
                        and all(a is b for a, b in zip(cached[1], key))):
                    observation = cached[2]
                else:
                    observation = aggregate(name, reports, live)
                fresh[name] = (live_key, key, observation)
                if observation is not None:
                    folded[name] = observation
        if names is None:
            self._folded = fresh   # functions gone since are forgotten
        else:
            memo.update(fresh)
        return folded

    def deploy(self, spec: FunctionSpec) -> Deferred[None]:
        return succeed(None)

    update = stop = start = deploy

    def delete(self, name: str) -> Deferred[None]:
        return succeed(None)

    def acquire(self, spec: FunctionSpec) -> UpstreamLease | Deferred[UpstreamLease]:
        return self.local.acquire(spec)

    def check(self) -> Deferred[None]:
        return self.local.check()
