"""Coverage of the ``twistd faasgate`` nodes the tests start.

Under ``make test`` coverage's ``patch = subprocess`` (setup.cfg) puts its configuration in
the environment (``COVERAGE_PROCESS_CONFIG``), so every Python child the tests start
measures itself from its first line and saves its data at exit, or on SIGTERM through a
handler of its own. A twistd node defeats both ways of saving: the reactor installs its own
SIGTERM handler over coverage's, and once the clean shutdown is done twistd restores the
default action and sends itself the signal again (so its exit status says "killed by
SIGTERM"), which ends the process without running ``atexit``. Measured: a node stopped by
``FaasNodeProcess.stop`` left no data at all, so faastwist/node.py and tap.py read 0%.

So, while the tests are measured, ``twistd_command`` runs a node through this module's
``__main__``: it adds a reactor trigger that saves the data once the shutdown is over
(every service, the node's own ``stopService`` included, has stopped by then), and then
runs twistd exactly as the ``twistd`` script does. A test that starts a Python child with
an environment of its own adds ``coverage_env()`` to it (without it the child is not
measured at all: tests/node/test_config.py's twistd runs read 0% of tap's refusals). faastwist itself knows nothing of
coverage; a node the tests SIGKILL loses its data, as any crashed process would.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["TWISTD", "coverage_env", "measuring", "twistd_command"]

#: what a child needs to measure itself and write where the run's data goes
_CARRIED = ("COVERAGE_PROCESS_CONFIG", "COVERAGE_PROCESS_START", "COVERAGE_FILE")

TWISTD = Path(sys.executable).parent / "twistd"


def measuring() -> bool:
    """Whether the Python children of this process measure themselves (coverage's
    subprocess patch, or its older COVERAGE_PROCESS_START, is in the environment)."""
    return bool(os.environ.get("COVERAGE_PROCESS_CONFIG")
                or os.environ.get("COVERAGE_PROCESS_START"))


def coverage_env() -> dict[str, str]:
    """The coverage variables of this process, for a child started with an environment
    of its own (one without them is not measured)."""
    return {name: os.environ[name] for name in _CARRIED if name in os.environ}


def twistd_command(args: list[str]) -> list[str]:
    """The argv that runs ``twistd *args``: through this module while measuring (the
    child needs the repository on its PYTHONPATH, as every node the tests start has)."""
    if not measuring():
        return [str(TWISTD), *args]
    return [sys.executable, "-m", __name__, *args]


def _save_after_shutdown() -> None:
    """Save this process's coverage data after the reactor's shutdown."""
    import coverage
    from twisted.internet import reactor

    def save() -> None:
        current = coverage.Coverage.current()
        if current is not None:
            current.save()

    # "after": every "during" trigger (the services' stopService) has finished
    reactor.addSystemEventTrigger("after", "shutdown", save)


def _main() -> None:
    from twisted.scripts.twistd import run

    if measuring():
        _save_after_shutdown()
    sys.argv[0] = str(TWISTD)
    sys.exit(run())


if __name__ == "__main__":
    _main()
