"""The log namespaces operators filter on stay put when modules move (README, "Logs")."""

from __future__ import annotations

import faastwist.gate.context
import faastwist.gate.exchange
import faastwist.gate.service
import faastwist.lifecycle.reconciler
import faastwist.node


def test_stable_namespaces() -> None:
    assert faastwist.gate.exchange.access.namespace == "faastwist.access"
    assert faastwist.gate.service.log.namespace == "faastwist.gate"
    assert faastwist.gate.context.log.namespace == "faastwist.gate"
    assert faastwist.lifecycle.reconciler.log.namespace == "faastwist.reconciler"
    assert faastwist.node.log.namespace == "faastwist.node"
