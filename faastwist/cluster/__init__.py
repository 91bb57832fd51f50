"""Several nodes on one etcd: node sessions (lease, node key, reports), node-local
convergence of process replicas, and the rule that folds the nodes' reports into the
FSM's events (the leader's view). Layered above store/, providers/ and lifecycle/."""

from faastwist.cluster.converger import LocalConverger
from faastwist.cluster.reports import ClusterView, Report, aggregate
from faastwist.cluster.memsession import MemorySession
from faastwist.cluster.session import ClusterSession, NodeSession

__all__ = ["ClusterSession", "ClusterView", "LocalConverger", "MemorySession", "NodeSession",
           "Report", "aggregate"]
