"""Several nodes on one etcd: node sessions (lease, node key, reports), node-local
convergence of process replicas, and the rule that folds the nodes' reports into the
FSM's events (the leader's view). Layered above store/, providers/ and lifecycle/."""

from faastwist.cluster.converger import LocalConverger
from faastwist.cluster.reports import ClusterView, Report, aggregate
from faastwist.cluster.session import NodeSession

__all__ = ["ClusterView", "LocalConverger", "NodeSession", "Report", "aggregate"]
