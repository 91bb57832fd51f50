"""The log namespaces operators filter on stay put when modules move (README, "Logs")."""

from __future__ import annotations

import faastwist.gate.accesslog
import faastwist.gate.context
import faastwist.gate.service
import faastwist.lifecycle.reconciler
import faastwist.node


def test_stable_namespaces() -> None:
    # the access log's lines (buffered, or events when no stream is known)
    assert faastwist.gate.accesslog.NAMESPACE == "faastwist.access"
    assert faastwist.gate.accesslog._event_log.namespace == "faastwist.access"
    assert faastwist.gate.service.log.namespace == "faastwist.gate"
    assert faastwist.gate.context.log.namespace == "faastwist.gate"
    assert faastwist.lifecycle.reconciler.log.namespace == "faastwist.reconciler"
    assert faastwist.node.log.namespace == "faastwist.node"
