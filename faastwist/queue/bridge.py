"""The one place where asyncio meets Twisted.

nats-py is an asyncio library; faastwist runs on the Twisted reactor. Rather than
switching the whole node to the asyncio reactor (which would change the gate's hot
path), the bridge runs an asyncio event loop on a thread it owns. Twisted code hands
it a coroutine function with ``call``; the coroutine runs on the loop's thread with
a timeout, and its result (or exception) comes back on the reactor thread as a
Deferred through ``callFromThread``. Nothing here blocks the reactor: starting waits
for the loop with a short handshake, stopping joins the thread from a worker thread.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Awaitable, Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

log = Logger()


class BridgeTimeout(Exception):
    """A bridged call did not finish within its timeout (the coroutine was cancelled)."""


class BridgeStopped(Exception):
    """The bridge is not running: the call was not started."""


class AsyncioBridge(Service):
    """An asyncio loop on a thread of its own; ``call`` runs coroutines on it."""

    name = "asyncio-bridge"

    def __init__(self, reactor: Any, default_timeout: float = 5.0) -> None:
        self.reactor = reactor
        self.default_timeout = default_timeout
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def startService(self) -> None:
        super().startService()
        loop = asyncio.new_event_loop()
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(started.set)
            loop.run_forever()
            # cancel what is left (a fetch waiting for messages, say) and close
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

        self._thread = threading.Thread(target=run, name="faastwist-asyncio", daemon=True)
        self._thread.start()
        started.wait(5.0)  # the loop starts in microseconds; bounded anyway
        self.loop = loop

    def stopService(self) -> Deferred[None]:
        super().stopService()
        loop, thread = self.loop, self._thread
        self.loop = self._thread = None
        if loop is None or thread is None:
            return succeed(None)
        loop.call_soon_threadsafe(loop.stop)
        return deferToThreadPool(self.reactor, self.reactor.getThreadPool(), thread.join, 10.0)

    def call(self, function: Callable[..., Awaitable[Any]], *args: Any,
             timeout: float | None = None, **kwargs: Any) -> Deferred[Any]:
        """Run ``function(*args, **kwargs)`` on the loop; a Deferred with its result.

        The coroutine is cancelled after ``timeout`` seconds (the default when None)
        and the Deferred fails with BridgeTimeout; cancelling the Deferred cancels it.
        """
        loop = self.loop
        if loop is None:
            return _failed(BridgeStopped("the asyncio bridge is not running"))
        limit = self.default_timeout if timeout is None else timeout

        async def bounded() -> Any:
            # asyncio.wait, not wait_for: a TimeoutError the coroutine raises itself
            # (nats-py does) must not pass for the bridge's own timeout
            task = asyncio.ensure_future(function(*args, **kwargs))
            try:
                done, _ = await asyncio.wait({task}, timeout=limit)
            except asyncio.CancelledError:
                task.cancel()
                raise
            if not done:
                task.cancel()
                name = getattr(function, "__name__", "call")
                raise BridgeTimeout(f"{name} did not finish within {limit:g}s")
            return task.result()

        future = asyncio.run_coroutine_threadsafe(bounded(), loop)
        d: Deferred[Any] = Deferred(lambda _: future.cancel())
        reactor = self.reactor

        def done(f: Any) -> None:
            reactor.callFromThread(_deliver, d, f)

        future.add_done_callback(done)
        return d


def _deliver(d: Deferred[Any], future: Any) -> None:
    """On the reactor thread: fire ``d`` from the finished future (unless cancelled)."""
    if d.called:
        return
    if future.cancelled():
        d.errback(BridgeStopped("the call was cancelled"))
        return
    error = future.exception()
    if error is not None:
        d.errback(error)
    else:
        d.callback(future.result())


def _failed(error: Exception) -> Deferred[Any]:
    d: Deferred[Any] = Deferred()
    d.errback(error)
    return d
