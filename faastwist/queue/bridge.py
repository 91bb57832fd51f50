"""The one place where asyncio meets Twisted.

nats-py is an asyncio library; faastwist runs on the Twisted reactor. Rather than
switching the whole node to the asyncio reactor (which would change the gate's hot
path), the bridge runs an asyncio event loop on a thread it owns. Twisted code hands
it a coroutine function with ``call``; the coroutine runs on the loop's thread with
a timeout, and its result (or exception) comes back on the reactor thread as a
Deferred through ``callFromThread``. Calls and results cross in batches (one wake-up
of the other thread per turn, not one per call): under load that halves the cost of
a queued call's trip. Nothing here blocks the reactor: starting waits
for the loop with a short handshake, stopping joins the thread from a worker thread.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections import deque
from typing import Any, Callable, Coroutine

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool


#: The interpreter's thread switch interval while a bridge runs (seconds).
SWITCH_INTERVAL = 0.0005


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
        self._inbox: deque[_Call] = deque()
        self._inbox_armed = False
        self._outbox: deque[_Call] = deque()
        self._outbox_armed = False

    def startService(self) -> None:
        super().startService()
        # Every bridged call hands the GIL to the loop's thread and back. With the
        # default 5 ms switch interval a busy reactor thread keeps it that long each
        # time, and a queued call's 202 waits several such turns.
        if sys.getswitchinterval() > SWITCH_INTERVAL:
            sys.setswitchinterval(SWITCH_INTERVAL)
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

    def call(self, function: Callable[..., Coroutine[Any, Any, Any]], *args: Any,
             timeout: float | None = None, **kwargs: Any) -> Deferred[Any]:
        """Run ``function(*args, **kwargs)`` on the loop; a Deferred with its result.

        The coroutine is cancelled after ``timeout`` seconds (the default when None)
        and the Deferred fails with BridgeTimeout; cancelling the Deferred cancels it.
        """
        loop = self.loop
        if loop is None:
            return _failed(BridgeStopped("the asyncio bridge is not running"))
        call = _Call(function, args, kwargs,
                     self.default_timeout if timeout is None else timeout)
        def cancel(_: Deferred[Any]) -> None:
            loop.call_soon_threadsafe(call.cancel)

        call.deferred = Deferred(cancel)
        # calls made in one reactor turn cross to the loop with one wake-up
        self._inbox.append(call)
        if not self._inbox_armed:
            self._inbox_armed = True
            loop.call_soon_threadsafe(self._start_calls)
        return call.deferred

    # -- on the loop's thread --------------------------------------------------------

    def _start_calls(self) -> None:
        self._inbox_armed = False  # before draining: a call appended now re-arms
        loop = asyncio.get_running_loop()
        inbox = self._inbox
        while inbox:
            call = inbox.popleft()
            if call.cancelled:
                self._finished(call, None)
                continue
            try:
                call.task = loop.create_task(call.function(*call.args, **call.kwargs))
            except Exception as exc:  # the function raised before giving a coroutine
                call.error = exc
                self._finished(call, None)
                continue
            call.timer = loop.call_later(call.limit, call.expire)
            call.task.add_done_callback(lambda task, c=call: self._finished(c, task))

    def _finished(self, call: "_Call", task: Any) -> None:
        if call.timer is not None:
            call.timer.cancel()
        if call.error is None:
            if call.timed_out:
                name = getattr(call.function, "__name__", "call")
                call.error = BridgeTimeout(f"{name} did not finish within {call.limit:g}s")
            elif task is None or task.cancelled():
                call.error = BridgeStopped("the call was cancelled")
            elif task.exception() is not None:
                call.error = task.exception()
            else:
                call.result = task.result()
        # results finished in one loop turn cross back with one wake-up
        self._outbox.append(call)
        if not self._outbox_armed:
            self._outbox_armed = True
            self.reactor.callFromThread(self._deliver_results)

    # -- on the reactor thread -------------------------------------------------------

    def _deliver_results(self) -> None:
        self._outbox_armed = False
        outbox = self._outbox
        while outbox:
            call = outbox.popleft()
            d = call.deferred
            if d is None or d.called:
                continue
            if call.error is not None:
                d.errback(call.error)
            else:
                d.callback(call.result)


class _Call:
    """One bridged call, from the reactor's ``call`` to its Deferred firing."""

    __slots__ = ("function", "args", "kwargs", "limit", "deferred", "task", "timer",
                 "timed_out", "cancelled", "error", "result")

    def __init__(self, function: Callable[..., Coroutine[Any, Any, Any]], args: tuple[Any, ...],
                 kwargs: dict[str, Any], limit: float) -> None:
        self.function = function
        self.args = args
        self.kwargs = kwargs
        self.limit = limit
        self.deferred: Deferred[Any] | None = None
        self.task: Any = None
        self.timer: Any = None
        self.timed_out = False
        self.cancelled = False
        self.error: BaseException | None = None
        self.result: Any = None

    def expire(self) -> None:
        self.timed_out = True
        if self.task is not None:
            self.task.cancel()

    def cancel(self) -> None:
        self.cancelled = True
        if self.task is not None:
            self.task.cancel()


def _failed(error: Exception) -> Deferred[Any]:
    d: Deferred[Any] = Deferred()
    d.errback(error)
    return d
