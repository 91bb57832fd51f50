"""Two protocols joined in memory (what one writes, the other reads when ``pump`` runs),
for control-channel tests driven by ``task.Clock``."""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import StringTransport


class Pipe:
    """Connects ``a`` and ``b``; ``pump()`` delivers what each wrote; ``close()`` ends it
    for both as a dropped connection would."""

    def __init__(self, a: Any, b: Any) -> None:
        self.a, self.b = a, b
        self.ta, self.tb = StringTransport(), StringTransport()
        a.makeConnection(self.ta)
        b.makeConnection(self.tb)

    def pump(self) -> None:
        for _ in range(100):
            moved = False
            for source, target in ((self.ta, self.b), (self.tb, self.a)):
                data = source.value()
                if data:
                    source.clear()
                    target.dataReceived(data)
                    moved = True
            if not moved:
                return

    def close(self) -> None:
        from twisted.internet.error import ConnectionLost
        from twisted.python.failure import Failure

        for proto in (self.a, self.b):
            proto.connectionLost(Failure(ConnectionLost("the other process went away")))
