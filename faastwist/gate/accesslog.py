"""The gate's access log: one pre-formatted line per request, written in batches.

A twisted.logger event per request (a dict of fields, a format string parsed by
``string.Formatter``, an observer chain, a flush per line) cost about 100 µs on this
machine, a third of the gate's time per request: the access log cut throughput from
12k to 4k req/s. Here each request costs one ``%`` format of a line into a list, and
the list is written to the log's stream in one ``write`` every ``interval`` seconds,
when ``max_lines`` are waiting, and at shutdown (``stop``), so nothing is lost on
SIGTERM; a crash (SIGKILL) loses at most ``interval`` seconds of lines.

The lines look exactly like the ones the log observer would have written for the
same event: in text mode twistd's ``{time} [faastwist.access#info] {message}``, with
``--log-format json`` one object with ``time``, ``level``, ``namespace``, ``message``
and the named fields ``method``, ``path``, ``function``, ``status``, ``duration``,
``bytes``, ``call_id``. The stream is the one the faasgate plugin's observer writes
to (``faastwist.logformat.access_sink``); without one (twistd's ``--syslog``, a
custom ``--logger``, tests) each line is a twisted.logger event as before.

In text the client's method, path and call id are escaped (``text_field``): a call id
with spaces or a line break cannot forge fields or lines. JSON quotes every field, so
there they are logged as received.

No faastwist imports: the lowest layer of the gate.
"""

from __future__ import annotations

import re
import time
from json.encoder import encode_basestring_ascii as _quote
from typing import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

NAMESPACE = "faastwist.access"
FORMAT = "{method} {path} {function} {status} {duration:.4f}s {bytes}B {call_id}"

_event_log = Logger(namespace=NAMESPACE)
_log = Logger(namespace="faastwist.gate")

Sink = Callable[[str], None]

#: What a text field may not hold: a space or a control character would let a client
#: (its X-Call-Id, its request line) forge fields or whole lines; a quote, a backslash
#: or a byte past ASCII would make the line ambiguous to parsers.
_UNSAFE = re.compile(rb'[\x00-\x20"\\\x7f-\xff]')


def _hex(found: "re.Match[bytes]") -> bytes:
    return b"\\x%02x" % found.group()[0]


def text_field(value: bytes) -> str:
    """``value`` as one space-free, printable ASCII field: each unsafe byte as ``\\xHH``
    (nginx's escaping); a value with none, the common case, costs one regex search."""
    if _UNSAFE.search(value) is None:
        return value.decode("ascii")
    return _UNSAFE.sub(_hex, value).decode("ascii")


class AccessLog:
    """Buffers access-log lines and writes them to ``sink`` in batches.

    ``sink`` takes a string of whole lines; ``json`` picks the line format. With
    ``sink=None`` every line is emitted as a twisted.logger event instead.
    """

    def __init__(self, clock: IReactorTime, sink: Sink | None = None, json: bool = False,
                 interval: float = 0.5, max_lines: int = 1024) -> None:
        self.clock = clock
        self.sink = sink
        self.json = json
        self.interval = interval
        self.max_lines = max_lines
        self.lines: list[str] = []
        self.dropped = 0
        self._second = -1
        self._stamp = ""
        self._timer: LoopingCall | None = None

    def start(self) -> None:
        if self.sink is not None and self._timer is None:
            self._timer = LoopingCall(self.flush)
            self._timer.clock = self.clock
            self._timer.start(self.interval, now=False)

    def stop(self) -> None:
        """Write what is buffered and stop the timer (at shutdown, after the drain)."""
        if self._timer is not None and self._timer.running:
            self._timer.stop()
        self._timer = None
        self.flush()

    def flush(self) -> None:
        lines = self.lines
        if not lines or self.sink is None:
            return
        self.lines = []
        try:
            self.sink("".join(lines))
        except Exception as exc:  # disk full, a closed pipe: never break the gate
            self.dropped += len(lines)
            _log.warn("access log: {count} lines lost: {error}", count=len(lines),
                      error=str(exc))

    def record(self, when: float, method: bytes, path: bytes, function: str, status: int,
               duration: float, size: int, call_id: bytes) -> None:
        """One request's line (``when``: the end of the request, epoch seconds)."""
        if self.sink is None:   # a text observer formats the fields: the safe forms
            _event_log.info(FORMAT, method=text_field(method), path=text_field(path),
                            function=function or "-", status=status, duration=duration,
                            bytes=size, call_id=text_field(call_id))
            return
        second = int(when)
        if second != self._second:
            self._second = second
            self._stamp = self._format_second(second)
        if self.json:   # JSON quotes every field: the values as received
            m = method.decode("latin-1")
            p = path.decode("latin-1")
            c = call_id.decode("latin-1")
            message = "%s %s %s %d %.4fs %dB %s" % (m, p, function, status, duration, size, c)
            line = ('{"time": "%s.%03dZ", "level": "info", "namespace": "faastwist.access", '
                    '"message": %s, "method": %s, "path": %s, "function": %s, "status": %d, '
                    '"duration": %.6f, "bytes": %d, "call_id": %s}\n' % (
                        self._stamp, int((when - second) * 1000), _quote(message), _quote(m),
                        _quote(p), _quote(function), status, duration, size, _quote(c)))
        else:
            line = "%s [faastwist.access#info] %s %s %s %d %.4fs %dB %s\n" % (
                self._stamp, text_field(method), text_field(path), function or "-", status,
                duration, size, text_field(call_id))
        lines = self.lines
        lines.append(line)
        if len(lines) >= self.max_lines:
            self.flush()

    def _format_second(self, second: int) -> str:
        if self.json:  # logformat's RFC 3339 time, UTC (milliseconds added per line)
            return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        # twistd's text observer: local time with its offset
        return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(second))
