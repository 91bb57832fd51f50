"""One replica of an envProcess function: OpenFaaS's classic watchdog as a process.

The process provider starts this program as each replica of a function deployed with
``envProcess`` and no command (``python -c`` with the package's folder on the path, so it
runs from a checkout as well as from an install). It listens on ``$PORT`` and runs
``$fprocess`` once per request (watchdog.py), so replicas, scaling, scale from zero,
rolling updates, crash handling and logs are those of any HTTP function: its log lines
(``Forking fprocess.``, ``Wrote N Bytes - Duration: Xs``) go to stderr, which the
provider keeps as the function's log.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Mapping

#: The folder that holds the faastwist package, put on the child's sys.path.
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
DEFAULT_TIMEOUT_VAR = "FAASTWIST_TIMEOUT"
#: JSON argv each request's process starts behind (the function user's launch prefix)
FORK_PREFIX_VAR = "FAASTWIST_FORK_PREFIX"
STOP_GRACE = 5.0


def fprocess_argv(fprocess: str) -> list[str]:
    """envProcess split as a shell would split words (no shell runs it), or ValueError."""
    argv = shlex.split(fprocess)
    if not argv:
        raise ValueError("is empty")
    return argv


def watchdog_argv(env: Mapping[str, str]) -> list[str]:
    """The argv of a watchdog replica (``env`` is the replica's environment)."""
    code = (f"import sys; sys.path.insert(0, {PACKAGE_ROOT!r}); "
            f"from faastwist.providers.watchdogd import main; main()")
    return [sys.executable, "-c", code]


class _StderrSink:
    """The watchdog's log lines and the forks' stderr, to this process's stderr."""

    def emit(self, instance: str, stream: str, text: str) -> None:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()


def main() -> None:
    from twisted.internet import reactor

    from faastwist.model.spec import FunctionSpec
    from faastwist.providers.replica import LOOPBACK
    from faastwist.providers.watchdog import Watchdog
    from faastwist.providers.watchdogenv import read_settings

    env = dict(os.environ)
    try:
        prefix = json.loads(env.pop(FORK_PREFIX_VAR, "[]"))
        argv = fprocess_argv(env.get("fprocess", ""))
        port = int(env["PORT"])
        spec = FunctionSpec(name=env.get("FAASTWIST_FUNCTION", "function"),
                            timeout=float(env.get(DEFAULT_TIMEOUT_VAR, "60")))
        settings = read_settings(spec, classic=True, env=env)
    except (KeyError, ValueError) as exc:
        sys.stderr.write(f"watchdog cannot start: {exc}\n")
        sys.exit(2)
    # each run as the function user in a session of its own (the launch prefix), so a
    # timeout ends all it started; without a prefix, a session of its own at least
    setsid = shutil.which("setsid")
    run = [*prefix, *argv] if prefix else ([setsid, *argv] if setsid else argv)
    watchdog = Watchdog(reactor, settings, lambda: run, lambda: env, os.getcwd(),
                        _StderrSink())
    watchdog.listen(port, LOOPBACK)
    sys.stderr.write(f"Listening on port: {port}\n")
    sys.stderr.flush()
    reactor.addSystemEventTrigger("before", "shutdown", watchdog.stop, STOP_GRACE)
    reactor.run()


if __name__ == "__main__":  # pragma: no cover
    main()
