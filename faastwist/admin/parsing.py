"""Request bodies are parsed off the reactor, on a thread pool the admin API owns.

A spec body of up to ``admin.maxBodySize`` (1 MiB by default) takes tens of milliseconds
to parse and validate, a hostile one more: on the reactor thread that time would stall
every gate connection of the node. The pool is small (bodies wait their turn rather than
take every core) and started on first use; the node stops it at shutdown. Under a test
``Clock`` (no ``callFromThread``) the work runs inline, so in-memory tests stay
deterministic.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

T = TypeVar("T")

#: threads parsing bodies at once; more bodies queue (each is bounded by maxBodySize)
PARSE_THREADS = 2


class BodyParser:
    """Runs pure parsing functions (no reactor, no shared state) on its own threads."""

    def __init__(self, reactor: Any, threads: int = PARSE_THREADS) -> None:
        self.reactor = reactor
        self.threads = threads
        self._pool: ThreadPool | None = None

    @property
    def threaded(self) -> bool:
        return hasattr(self.reactor, "callFromThread")

    def run(self, parse: Callable[..., T], *args: Any) -> Deferred[T]:
        """``parse(*args)`` on a pool thread; its result or exception, on the reactor."""
        if not self.threaded:
            return maybeDeferred(parse, *args)
        if self._pool is None:
            self._pool = ThreadPool(minthreads=0, maxthreads=self.threads, name="admin-parse")
            self._pool.start()
        return deferToThreadPool(self.reactor, self._pool, parse, *args)

    def close(self) -> None:
        """Stop the threads (the node does this at shutdown)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.stop()
