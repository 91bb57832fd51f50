"""Function logs as NDJSON, once or followed, for both admin APIs.

Easegress-style ``/{fn}/logs`` and OpenFaaS's ``/system/logs`` differ only in the shape
of a line (OpenFaaS adds ``namespace``), so both stream through ``send_logs``.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from twisted.internet.defer import Deferred

from faastwist.admin.codec import NDJSON_TYPE
from faastwist.providers.base import LogLine, LogSource

Shape = Callable[[LogLine], dict[str, Any]]
Timed = Callable[[Deferred], Deferred]


def ndjson(line: LogLine, shape: Shape) -> bytes:
    return json.dumps(shape(line)).encode() + b"\n"


async def send_logs(request: Any, source: LogSource, name: str, tail: int | None,
                    since: float | None, follow: bool, timed: Timed,
                    shape: Shape = LogLine.to_dict) -> bytes | None:
    """The lines as one body, or (``follow``) streamed until the client goes away."""
    if not follow:
        lines = await timed(source.read_logs(name, tail=tail, since=since))
        body = b"".join(ndjson(line, shape) for line in lines)
        request.setHeader(b"content-type", NDJSON_TYPE.encode())
        request.setHeader(b"content-length", b"%d" % len(body))
        return body
    # Subscribe before reading history so no line falls between the two; lines that
    # arrive meanwhile wait in `pending` and are sent after history, minus duplicates.
    pending: list[LogLine] = []
    state = {"live": False, "done": False}

    def on_line(line: LogLine) -> None:
        if state["done"]:
            return
        if state["live"]:
            request.write(ndjson(line, shape))
        else:
            pending.append(line)

    unsubscribe = source.follow_logs(name, on_line)
    try:
        history = await timed(source.read_logs(name, tail=tail, since=since))
        request.setResponseCode(200)
        request.setHeader(b"content-type", NDJSON_TYPE.encode())
        request.setHeader(b"cache-control", b"no-cache")
        seen = set(history)
        request.write(b"".join(ndjson(line, shape) for line in history))  # sends the head
        request.write(b"".join(ndjson(line, shape) for line in pending if line not in seen))
        pending.clear()
        state["live"] = True
        finished = request.notifyFinish()
        finished.addErrback(lambda _: None)  # the client went away: that is the end
        await finished
    finally:
        state["done"] = True
        unsubscribe()
    return None


class OneInstance:
    """A log source narrowed to one instance (``?instance=``)."""

    def __init__(self, source: Any, instance: str) -> None:
        self.source = source
        self.instance = instance

    def read_logs(self, name: str, tail: int | None = None,
                  since: float | None = None) -> Deferred[list[LogLine]]:
        d = self.source.read_logs(name, tail=None, since=since)

        def narrow(lines: list[LogLine]) -> list[LogLine]:
            mine = [line for line in lines if line.instance == self.instance]
            return mine[-tail:] if tail else mine
        return d.addCallback(narrow)

    def follow_logs(self, name: str, on_line: Callable[[LogLine], None]) -> Callable[[], None]:
        return self.source.follow_logs(
            name, lambda line: on_line(line) if line.instance == self.instance else None)
