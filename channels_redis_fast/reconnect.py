"""Hearing a shard again soon after it comes back: a short retry pace and a wake-up.

Listeners (the core layer's pumps, the pub/sub layer's subscriber) are the only ones
that reconnect on their own while Redis is away; everything else reconnects when it is
next used. Pub/sub loses whatever is published before the subscriber is back, so a
listener that sleeps on a long back-off stays deaf long after the server returned.

So the pace stays short whatever the outage lasted: an attempt on a refused port is
cheap at this rate, while a host that does not answer at all is paced by the connect
timeout, not by us. Only one listener per shard (the prober) keeps that pace; the others
wait, so a process listening on many keys costs no more while Redis is away than one
listening on a single key. The first connection of a layer that reaches a shard again
(the prober, a send reconnecting) wakes every listener of that shard at once through its
:class:`Reachable`, owned by the layer's per-loop state.

Nothing here knows about layers; connections call :meth:`Reachable.notify` through
``RedisConnection.on_connect``.
"""

from __future__ import annotations

import asyncio
import time

#: First and largest pause between two reconnect attempts of a listener (seconds).
RETRY_START = 0.02
RETRY_MAX = 0.1
#: A listener that keeps failing logs its first failure, then at most one line per this
#: many seconds: the retry pace must not become the log's pace.
LOG_EVERY = 30.0
#: A prober not heard from for this long (stuck in a slow connect, or gone without
#: resigning) is replaced; listeners that are not probing look again this often.
PROBER_STALE = 1.0


class Reachable:
    """One shard on one loop: paces its listeners' reconnects and wakes them when it is back."""

    __slots__ = ("loop", "_waiters", "_prober", "_prober_seen")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._waiters: set[asyncio.Future] = set()
        self._prober: object | None = None
        self._prober_seen = 0.0

    @property
    def probing(self) -> bool:
        """Is a listener retrying this shard at the reconnect pace right now?"""
        return self._prober is not None

    def notify(self) -> None:
        """A connection to this shard was just made: end every :meth:`wait` now."""
        self._prober = None
        if not self._waiters:
            return
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(True)

    async def pause(self, listener: object, delay: float) -> None:
        """``listener`` failed to reach the shard: wait before its next attempt.

        The prober waits ``delay``; any other listener waits until the shard is reached
        again (or the prober resigns or goes quiet, when it may take over).
        """
        while True:
            now = self.loop.time()
            prober = self._prober
            if prober is None or prober is listener or now - self._prober_seen > PROBER_STALE:
                self._prober = listener
                self._prober_seen = now
                await self.wait(delay)
                return
            if await self.wait(PROBER_STALE):
                return

    def resign(self, listener: object) -> None:
        """``listener`` stops listening: if it was probing, another waiter takes over now."""
        if self._prober is not listener:
            return
        self._prober = None
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(False)  # not reached: it looks again and becomes the prober
                self._waiters.discard(waiter)
                return

    async def wait(self, timeout: float) -> bool:
        """Sleep ``timeout`` seconds or until :meth:`notify`; True if notified."""
        waiter: asyncio.Future[bool] = self.loop.create_future()
        self._waiters.add(waiter)
        timer = self.loop.call_later(timeout, _expire, waiter)
        try:
            return await waiter
        finally:
            timer.cancel()
            self._waiters.discard(waiter)


def _expire(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(False)


class Backoff:
    """The pause before a listener's next attempt, and whether to log this failure."""

    __slots__ = ("delay", "failures", "_logged_at", "_since")

    def __init__(self) -> None:
        self.delay = RETRY_START
        self.failures = 0
        self._logged_at = 0.0
        self._since = 0.0

    @property
    def down_for(self) -> float:
        """Seconds since the first failure of this outage."""
        return time.monotonic() - self._since if self.failures else 0.0

    def failed(self) -> bool:
        """Count a failure; True when it should be logged."""
        self.failures += 1
        now = time.monotonic()
        if self.failures == 1:
            self._since = now
        if self.failures == 1 or now - self._logged_at >= LOG_EVERY:
            self._logged_at = now
            return True
        return False

    def next_delay(self) -> float:
        delay = self.delay
        self.delay = min(delay * 2, RETRY_MAX)
        return delay

    def reset(self) -> None:
        self.delay = RETRY_START
        self.failures = 0
