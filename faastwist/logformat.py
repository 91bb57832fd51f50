"""``--log-format json``: one JSON object per line with the event's named fields.

Every log call in faastwist names its fields (``log.info("synced {count}", count=n)``);
the JSON format keeps them as fields instead of flattening them into text, so
journald (``journalctl -o cat``), Loki or jq can filter on ``function_name`` or
``status``. Each line holds ``time`` (RFC 3339, UTC, milliseconds), ``level``,
``namespace``, ``message`` (the formatted text), ``system`` when Twisted set one,
then every named field whose value JSON can encode (others are left out). A field
that would shadow one of those keys is written as ``field_<name>``. Failures add
``exception`` (type and message) and ``traceback``.

How twistd picks it (measured with Twisted 26): twistd's own ``--logger`` option
takes the dotted name of a zero-argument observer factory and calls it before it
starts logging; ``json_observer`` is such a factory, so
``twistd --logger faastwist.logformat.json_observer faasgate ...`` works with any
plugin. The faasgate plugin's ``--log-format json`` calls ``use_log_format`` from
its ``postOptions``, which fills twistd's ``--logger`` the same way (the plugin's
options are parsed before twistd's own ``postOptions`` resolves that name). An
explicit ``--logger`` always wins.
"""

from __future__ import annotations

import json
import sys
import time
from typing import IO, Any, Callable

from twisted.logger import FileLogObserver, ILogObserver, LogEvent, formatEvent
from twisted.python import usage
from twisted.python.failure import Failure

LOG_FORMATS = ("text", "json")
FACTORY_NAME = "faastwist.logformat.json_observer"

#: keys of ours; a user field with one of these names is written as ``field_<name>``
RESERVED = frozenset({"time", "level", "namespace", "message", "system", "exception",
                      "traceback"})
#: keys of twisted.python.log's legacy events, already rendered into ``message``
LEGACY = frozenset({"message", "isError", "system", "time", "format", "why", "failure",
                    "printed", "logLevel"})


def _rfc3339(stamp: float) -> str:
    seconds = int(stamp)
    millis = int((stamp - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def _reject(value: Any) -> Any:
    raise TypeError("not JSON")


def _encodable(value: Any) -> bool:
    try:
        json.dumps(value, default=_reject, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return False
    return True


def _failure_of(event: LogEvent) -> Failure | None:
    failure = event.get("log_failure")
    if failure is None:
        failure = event.get("failure")
    return failure if isinstance(failure, Failure) else None


def event_as_dict(event: LogEvent) -> dict[str, Any]:
    """The JSON-ready record of one event (see the module docstring for its keys)."""
    level = event.get("log_level")
    failure = _failure_of(event)
    legacy = "log_legacy" in event or event.get("log_namespace") == "log_legacy" or (
        "isError" in event and "log_logger" not in event)
    if failure is not None and legacy and "log_failure" not in event:
        # a legacy log.err: Twisted's text would embed the traceback in the message
        message = str(event.get("why") or "Unhandled Error")
    else:
        message = formatEvent(event)
    record: dict[str, Any] = {
        "time": _rfc3339(event.get("log_time") or time.time()),
        "level": getattr(level, "name", "info"),
        "namespace": event.get("log_namespace", ""),
        "message": message,
    }
    system = event.get("log_system")
    if isinstance(system, str) and system not in ("", "-"):
        record["system"] = system
    fields: dict[str, Any] = {}
    for key, value in event.items():
        if key.startswith("log_") or (legacy and key in LEGACY):
            continue
        fields[f"field_{key}" if key in RESERVED else key] = value
    if not _encodable(fields):
        fields = {key: value for key, value in fields.items() if _encodable(value)}
    record.update(fields)
    if failure is not None:
        record["exception"] = f"{type(failure.value).__qualname__}: {failure.getErrorMessage()}"
        record["traceback"] = failure.getTraceback()
    return record


def event_as_json(event: LogEvent) -> str:
    """One line: the event as a JSON object, then a newline."""
    try:
        return json.dumps(event_as_dict(event), ensure_ascii=False, allow_nan=False,
                          default=_reject) + "\n"
    except Exception as exc:  # an observer must never raise
        return json.dumps({"time": _rfc3339(time.time()), "level": "error",
                           "namespace": "faastwist.logformat",
                           "message": f"unencodable log event: {exc!r}"}) + "\n"


def json_file_observer(stream: IO[Any]) -> ILogObserver:
    """An observer writing JSON lines to ``stream`` (flushed after each line)."""
    return FileLogObserver(stream, event_as_json)


_destination: str | None = None  # set by use_log_format from twistd's --logfile
TEXT_FACTORY_NAME = "faastwist.logformat.text_observer"

#: where the gate's access log writes its batches: (write whole lines, json?), set
#: when one of this module's observers opened the log's stream
_access: tuple[Callable[[str], None], bool] | None = None


def access_sink() -> tuple[Callable[[str], None] | None, bool]:
    """The log's stream for the gate's buffered access log, and whether it takes JSON.

    (None, False) unless one of this module's observers writes the log (twistd's
    ``--syslog`` or another ``--logger``, tests): the access log then logs events.
    """
    if _access is None:
        return None, False
    return _access


def _open_destination() -> IO[Any]:
    """stdout, or twistd's --logfile (rotated on SIGUSR1, as twistd's own does)."""
    if _destination is None:
        return sys.stdout
    from twisted.python.logfile import LogFile

    logfile = LogFile.fromFullPath(_destination)
    import signal

    if not signal.getsignal(signal.SIGUSR1):
        def rotate(signum: int, frame: Any) -> None:
            from faastwist.util.reactor import global_reactor

            global_reactor().callFromThread(logfile.rotate)
        signal.signal(signal.SIGUSR1, rotate)
    return logfile


def _register(stream: IO[Any], json_lines: bool) -> None:
    global _access

    def write(text: str) -> None:
        stream.write(text)
        stream.flush()
    _access = (write, json_lines)


def json_observer() -> ILogObserver:
    """twistd ``--logger`` factory: JSON lines on stdout, or on twistd's --logfile.

    Called by twistd before it redirects stdout into the log, so ``sys.stdout`` is
    still the real stream here (journald's, under systemd).
    """
    stream = _open_destination()
    _register(stream, True)
    return json_file_observer(stream)


def text_observer() -> ILogObserver:
    """twistd ``--logger`` factory for ``--log-format text``: twistd's own text observer
    on twistd's own destination, whose stream the access log then shares."""
    from twisted.logger import textFileLogObserver

    stream = _open_destination()
    _register(stream, False)
    return textFileLogObserver(stream)


def use_log_format(options: usage.Options, log_format: str) -> None:
    """Apply ``--log-format`` from the faasgate plugin's ``postOptions``.

    Both formats set twistd's ``--logger`` to this module's observer for that format
    (so the gate's access log can write to the same stream in batches), on twistd's
    destination (``--logfile``, stdout with ``--nodaemon``, else twistd.log), unless
    the operator chose a logger or ``--syslog`` (then twistd's own observer stays, and
    the access log logs events through it). Raises UsageError for an unknown format
    or a combination twistd cannot honour.
    """
    if log_format not in LOG_FORMATS:
        raise usage.UsageError(f"--log-format must be one of {', '.join(LOG_FORMATS)}, "
                               f"got {log_format!r}")
    parent: usage.Options | None = getattr(options, "parent", None)  # twistd's options
    if parent is None:
        return  # not under twistd (a test building the service directly)
    if parent.get("logger"):
        return  # an explicit --logger wins
    if parent.get("syslog"):
        if log_format == "text":
            return  # twistd's syslog observer
        raise usage.UsageError("--log-format json and --syslog both choose the log "
                               "destination; use one of them")
    global _destination
    logfile = parent.get("logfile")
    if logfile == "-" and not parent.get("nodaemon") and log_format == "text":
        return  # twistd refuses this itself ("Daemons cannot log to stdout")
    if logfile and logfile != "-":
        _destination = logfile
    elif not logfile and not parent.get("nodaemon"):
        _destination = "twistd.log"  # where twistd itself would write as a daemon
    else:
        _destination = None
    parent["logger"] = (
        FACTORY_NAME if log_format == "json" else TEXT_FACTORY_NAME)
