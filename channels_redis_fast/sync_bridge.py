"""Connections that outlive ``async_to_sync``: one I/O thread per layer for sync callers.

``async_to_sync(layer.send)(...)`` called where no event loop runs (a WSGI view, a Celery
task, a management command) runs on a loop asgiref makes for that one call and closes
afterwards. Connections are kept per loop, so each such call would open (and, over TLS,
handshake) a connection and close it again. Instead, a call made on such a loop runs on
this bridge: a daemon thread with its own long-lived loop, where the layer keeps its
connections for the life of the process. The caller waits for the result on its own loop.
Calls from every thread share that loop, so their commands are pipelined together, and
each thread's calls keep their order (a thread waits for one before it makes the next).

The rule for which loops use the bridge: exactly the loops asgiref registers in
``AsyncToSync.loop_thread_executors`` while one ``async_to_sync`` call runs on them. Any
other loop, including one made by ``asyncio.run`` per call, counts as long-lived and
keeps connections of its own, closed with it: we cannot tell how long such a loop will
live. Sync code should call the layer through ``async_to_sync``, as Channels documents.

The thread starts on first use, stops in the layer's ``close_pools()`` (``close()`` for
pub/sub) and at interpreter exit, and is forgotten, never touched, in a forked child,
which starts its own on first use.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import functools
import logging
import os
import threading
import weakref
from typing import Any, Awaitable, Callable, Protocol, TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError

logger = logging.getLogger(__name__)

try:
    from asgiref.sync import AsyncToSync

    #: Loops that run one ``async_to_sync`` call each (asgiref adds and removes them).
    #: Empty in a process served by an ASGI server, so the layers' check is one truth test.
    PER_CALL_LOOPS: dict = AsyncToSync.loop_thread_executors
except (ImportError, AttributeError):  # pragma: no cover - every asgiref Channels 4 allows has it
    PER_CALL_LOOPS = {}

#: Seconds interpreter exit waits for a bridge to close its connections.
EXIT_TIMEOUT = 10.0

_Result = TypeVar("_Result")


class LoopOwner(Protocol):
    """A layer as the bridge sees it: it holds state per event loop."""

    def _forget_loop(self, loop: asyncio.AbstractEventLoop) -> Any:
        """Drop (without closing) and return what the layer holds for ``loop``."""


class _Call:
    """One call crossing from a caller's loop to the bridge's and back.

    ``lock`` decides, once, whether the caller or the bridge owns the result: a result
    the caller can no longer take (it was cancelled, say by a timeout) is given back.
    """

    __slots__ = ("lock", "caller", "future", "args", "give_back", "task", "outcome", "abandoned")

    def __init__(
        self,
        caller: asyncio.AbstractEventLoop,
        future: asyncio.Future,
        args: tuple,
        give_back: Callable[..., None] | None,
    ) -> None:
        self.lock = threading.Lock()
        self.caller = caller
        self.future = future
        self.args = args
        self.give_back = give_back
        self.task: asyncio.Task | None = None
        self.outcome: tuple[bool, Any] | None = None
        self.abandoned = False


class SyncBridge:
    """The I/O thread and long-lived loop one layer uses for calls from per-call loops."""

    def __init__(self, owner: LoopOwner) -> None:
        self._owner = owner
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: concurrent.futures.Future | None = None
        #: Calls running on the bridge's loop (touched only in its thread).
        self._calls: set[asyncio.Task] = set()
        _BRIDGES.add(self)

    @property
    def thread(self) -> threading.Thread | None:
        """The running I/O thread, if any."""
        return self._thread

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The bridge's loop while its thread runs."""
        return self._loop

    async def call(
        self,
        function: Callable[..., Awaitable[_Result]],
        *args: Any,
        give_back: Callable[..., None] | None = None,
    ) -> _Result:
        """``await function(*args)`` on the bridge's loop, waited for on the caller's.

        ``give_back(*args, result)`` runs on the bridge's loop if the caller is cancelled
        after the call finished, so that a received message goes back, not lost.
        """
        future = asyncio.get_running_loop().create_future()
        call = _Call(future.get_loop(), future, args, give_back)
        with self._lock:
            # Under the lock: stop() cannot slip in between choosing the loop and
            # queueing on it, so nothing is queued on a loop that will not run again.
            loop = self._loop or self._start()
            loop.call_soon_threadsafe(self._begin, call, function)
        try:
            result: _Result = await future
            return result
        except asyncio.CancelledError:
            self._abandon(call, loop)
            raise

    # -- the caller's side ------------------------------------------------------------
    @staticmethod
    def _abandon(call: _Call, loop: asyncio.AbstractEventLoop) -> None:
        with call.lock:
            call.abandoned = True
            outcome = call.outcome
        try:
            if outcome is None:
                # Still running: cancel it there (a cancelled receive keeps its message).
                loop.call_soon_threadsafe(_cancel_task, call)
            elif outcome[0] and call.give_back is not None:
                # Finished, but the caller will never see it: hand it back.
                loop.call_soon_threadsafe(_give_back, call, outcome[1])
        except RuntimeError:
            # The bridge's loop closed meanwhile (close_pools): its buffers went with it.
            pass

    # -- the bridge's side (its thread) ---------------------------------------------
    def _begin(self, call: _Call, function: Callable[..., Awaitable[Any]]) -> None:
        with call.lock:
            if call.abandoned:
                return
            try:
                task = call.task = asyncio.ensure_future(function(*call.args))
            except Exception as exc:  # noqa: BLE001 - e.g. wrong arguments: the caller's error
                failed: tuple[bool, Any] = (False, exc)
                call.outcome = failed
        if call.task is None:
            with contextlib.suppress(RuntimeError):  # the caller's loop is gone
                call.caller.call_soon_threadsafe(_settle, call.future, failed)
            return
        self._calls.add(task)
        task.add_done_callback(functools.partial(self._finish, call))

    def _finish(self, call: _Call, task: asyncio.Task) -> None:
        self._calls.discard(task)
        outcome: tuple[bool, Any]
        if task.cancelled():
            # Only stop() cancels a call the caller still waits for.
            outcome = (False, RedisConnectionError("The channel layer's connections were closed"))
        elif task.exception() is not None:
            outcome = (False, task.exception())
        else:
            outcome = (True, task.result())
        with call.lock:
            abandoned = call.abandoned
            if not abandoned:
                call.outcome = outcome
        if not abandoned:
            try:
                call.caller.call_soon_threadsafe(_settle, call.future, outcome)
                return
            except RuntimeError:
                pass  # the caller's loop is gone: nobody will take the result
        if outcome[0] and call.give_back is not None:
            _give_back(call, outcome[1])

    def _start(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.new_event_loop()
        stopped: concurrent.futures.Future = concurrent.futures.Future()
        thread = threading.Thread(
            target=self._run, args=(loop, stopped), name="channels_redis_fast-sync-bridge", daemon=True
        )
        self._loop, self._thread, self._stopped = loop, thread, stopped
        thread.start()
        return loop

    def _run(self, loop: asyncio.AbstractEventLoop, stopped: concurrent.futures.Future) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
            # Calls still running (a receive waiting, a send to a dead server) end with
            # a connection error for their callers, as when close_pools() closes a loop.
            calls = list(self._calls)
            for task in calls:
                task.cancel()
            if calls:
                loop.run_until_complete(asyncio.gather(*calls, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        except BaseException:  # noqa: BLE001 - the loop must still close below
            logger.exception("The sync bridge's loop failed")
        finally:
            with self._lock:
                if self._loop is loop:  # ended without stop(): the next call starts afresh
                    self._loop = self._thread = self._stopped = None
            try:
                # The layers wrap close() (utils._wrap_close): they stop their pumps,
                # hand back buffered work and close their sockets here first.
                loop.close()
            finally:
                stopped.set_result(None)

    # -- stopping -------------------------------------------------------------------
    def stop(self) -> tuple[threading.Thread, concurrent.futures.Future] | None:
        """Ask the thread to close its connections and end; returns what to wait on."""
        with self._lock:
            loop, thread, stopped = self._loop, self._thread, self._stopped
            self._loop = self._thread = self._stopped = None
        if loop is None or thread is None or stopped is None:
            return None
        loop.call_soon_threadsafe(loop.stop)
        return thread, stopped

    async def aclose(self) -> None:
        """Stop the thread and wait (without blocking this loop) until it has ended.

        On the bridge's own loop (a bridged ``flush()`` closes the pools) it does nothing:
        a loop cannot wait for itself to stop. The layer closes that loop's connections
        as any loop's, and the idle thread ends at the next close or at exit.
        """
        if threading.current_thread() is self._thread:
            return
        stopping = self.stop()
        if stopping is not None:
            thread, stopped = stopping
            await asyncio.wrap_future(stopped)
            thread.join()

    def _after_fork(self) -> None:
        # In a child the thread does not exist, and the loop's selector, self-pipe and
        # sockets are shared with the parent: closing them here could unregister the
        # parent's sockets. Keep them referenced forever (nothing runs their __del__)
        # and start afresh on first use.
        self._lock = threading.Lock()
        # On the class: the pub/sub proxy forwards unknown attributes to a loop's layer.
        forked = getattr(type(self._owner), "_forked", None)
        if forked is not None:
            forked(self._owner)  # the layer's own per-process state (core: its client prefix)
        loop = self._loop
        if loop is None:
            return
        _FORK_ORPHANS.append((loop, self._thread, self._calls, self._owner._forget_loop(loop)))
        self._loop = self._thread = self._stopped = None
        self._calls = set()


def _settle(future: asyncio.Future, outcome: tuple[bool, Any]) -> None:
    # On the caller's loop. Done already means cancelled: the caller saw the outcome
    # and gave the result back (SyncBridge._abandon).
    if future.done():
        return
    ok, value = outcome
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


def _give_back(call: _Call, result: Any) -> None:
    if call.give_back is not None:
        call.give_back(*call.args, result)


def _cancel_task(call: _Call) -> None:
    task = call.task
    if task is not None and not task.done():
        task.cancel()


_BRIDGES: weakref.WeakSet[SyncBridge] = weakref.WeakSet()
_FORK_ORPHANS: list = []


def _forget_after_fork() -> None:
    for bridge in list(_BRIDGES):
        try:
            bridge._after_fork()
        except Exception:  # noqa: BLE001 - one layer's failure must not spare the others
            logger.exception("Could not reset a sync bridge after fork")


def _stop_all_at_exit() -> None:
    stopping = [bridge.stop() for bridge in list(_BRIDGES)]
    for item in stopping:
        if item is not None:
            thread, _ = item
            thread.join(EXIT_TIMEOUT)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)
atexit.register(_stop_all_at_exit)
