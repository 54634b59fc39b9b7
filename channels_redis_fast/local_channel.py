"""One local channel: the messages a process holds for a channel and the receivers waiting.

Both layers keep one of these per channel they receive on. A delivery either goes
straight to a waiting receiver (a hand-over: one at a time, so that a receiver cancelled
before it runs can put its message back at the head without reordering) or into the
bounded buffer, waking a receiver to take it. A waiter's future only ever means "you were
woken"; what it brings is asked of the channel with :meth:`LocalChannel.claim`, and a
receiver that leaves for any reason (cancelled, timed out, failed) calls
:meth:`LocalChannel.forget`, which puts back a message handed to it and passes its
wake-up on.

The object also answers the ``ChannelBuffer`` calls (``qsize``, ``put_nowait``, ...), so a
layer's ``receive_buffer`` (channels_redis's name, which its tests read) can be the one
dict of channels.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any, Callable

from .speedups import ChannelBuffer

__all__ = ["EMPTY", "LocalChannel", "LocalChannels"]

#: What :meth:`LocalChannel.claim` returns when a woken receiver finds nothing to take.
EMPTY: Any = object()


class LocalChannel:
    """One channel's bounded buffer, waiting receivers and hand-over state."""

    __slots__ = (
        "name",
        "buffer",
        "waiters",
        "woken",
        "handed_to",
        "handed_item",
        "scores",
        "give_back_timer",
        "touched",
        "put_nowait",
    )

    def __init__(self, name: str, capacity: int, buffer: ChannelBuffer | None = None) -> None:
        self.name = name
        self.buffer = ChannelBuffer(capacity) if buffer is None else buffer
        #: Receivers waiting for a message, oldest first; woken ones leave the deque.
        self.waiters: collections.deque[asyncio.Future] = collections.deque()
        #: Receivers woken to look at the buffer that have not run yet.
        self.woken = 0
        #: The receiver a message is on its way to (a hand-over), and that message.
        self.handed_to: asyncio.Future | None = None
        self.handed_item: Any = None
        #: Work-queue channels only: (shard, score, member) of each buffered message, so
        #: messages handed back to Redis keep their place in the queue (see work_queue.py).
        self.scores: collections.deque | None = None
        self.give_back_timer: asyncio.TimerHandle | None = None
        #: When a delivery last reached this channel (time.time()); 0 if none yet.
        self.touched = 0.0
        #: Buffer ``item`` without waking anyone: demux_batch calls it per delivery, so it
        #: is the buffer's own method, bound once, not a Python function around it.
        self.put_nowait: Callable[[Any], None] = self.buffer.put_nowait

    # -- delivering ---------------------------------------------------------------------
    def put(self, item: Any) -> bool:
        """Deliver ``item``: handed to a receiver waiting on an empty buffer, else
        buffered (dropping the oldest when full) with a receiver woken. True if one
        was dropped."""
        waiters = self.waiters
        if waiters and self.handed_to is None and not self.buffer:
            while waiters:
                waiter = waiters.popleft()
                if not waiter.done():
                    self.handed_to = waiter
                    self.handed_item = item
                    waiter.set_result(None)
                    return False
        buffer = self.buffer
        dropped = buffer.full()
        buffer.put_nowait(item)
        if waiters:
            self.wake(1)
        return dropped

    def hand_over(self) -> bool:
        """Hand the head of the buffer to the first waiting receiver, unless a hand-over
        is still on its way (one at a time). True if one was handed."""
        if self.handed_to is not None or not self.buffer:
            return False
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                scores = self.scores
                if scores:
                    scores.popleft()
                self.handed_to = waiter
                self.handed_item = self.buffer.get_nowait()
                waiter.set_result(None)
                return True
        return False

    def wake(self, count: int) -> None:
        """Wake up to ``count`` waiting receivers to take from the buffer."""
        waiters = self.waiters
        while count > 0 and waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self.woken += 1
                count -= 1

    def wake_one(self) -> None:
        self.wake(1)

    def fail(self, error: BaseException) -> None:
        """Make every waiting receiver raise ``error`` (nothing was taken for them)."""
        waiters, self.waiters = self.waiters, collections.deque()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(error)

    # -- receiving ----------------------------------------------------------------------
    def take(self) -> Any:
        """The oldest buffered message (the buffer must not be empty)."""
        scores = self.scores
        if scores:
            scores.popleft()
        return self.buffer.get_nowait()

    def claim(self, waiter: asyncio.Future) -> Any:
        """What a woken receiver gets: the message handed to it, else the oldest buffered
        one, else EMPTY (another receiver took it first). No await may come between the
        receiver's wake-up and this call, nor between this call and its return."""
        if self.handed_to is waiter:
            item = self.handed_item
            self.handed_to = self.handed_item = None
            return item
        self.woken -= 1
        return self.take() if self.buffer else EMPTY

    def forget(self, waiter: asyncio.Future) -> None:
        """A receiver leaves without claiming (cancelled, timed out, failed)."""
        try:
            self.waiters.remove(waiter)
            return
        except ValueError:
            pass
        if self.handed_to is waiter:
            # Handed a message but gone before it ran: the message goes back to the head.
            self.put_back(self.handed_item)
            self.handed_to = self.handed_item = None
        elif not waiter.cancelled() and waiter.exception() is None:
            self.woken -= 1
        else:
            return  # failed, or cancelled while still waiting: it was never woken
        # Pass the wake-up on to the next receiver of this channel.
        if self.buffer:
            self.wake(1)

    def put_back(self, item: Any) -> None:
        """Return a message to the head of the buffer (it was taken, then not received)."""
        self.buffer.put_front(item)

    # -- state --------------------------------------------------------------------------
    def waiting(self) -> int:
        """Receivers still waiting (not yet woken, not cancelled)."""
        return sum(1 for waiter in self.waiters if not waiter.done())

    def in_use(self) -> bool:
        """Does a receiver wait here, or has one been woken that has not run yet?"""
        return bool(self.waiters) or self.handed_to is not None or self.woken > 0

    def is_idle(self) -> bool:
        """Nothing buffered and nobody receiving: the channel may be forgotten."""
        return not self.buffer and not self.in_use()

    # -- the ChannelBuffer calls, for ``receive_buffer`` readers ------------------------
    def qsize(self) -> int:
        return len(self.buffer)

    def __len__(self) -> int:
        return len(self.buffer)

    def empty(self) -> bool:
        return not self.buffer

    def full(self) -> bool:
        return self.buffer.full()

    def get_nowait(self) -> Any:
        return self.buffer.get_nowait()

    def put_front(self, item: Any) -> None:
        self.buffer.put_front(item)

    @property
    def maxsize(self) -> int:
        return self.buffer.maxsize

    @property
    def dropped(self) -> int:
        return self.buffer.dropped

    def __repr__(self) -> str:
        return (
            f"<LocalChannel {self.name!r} qsize={len(self.buffer)} waiting={len(self.waiters)} "
            f"woken={self.woken} handed={self.handed_to is not None}>"
        )


class LocalChannels(dict):
    """channel name -> LocalChannel, made on first use with the layer's capacity."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity

    def __missing__(self, name: str) -> LocalChannel:
        local = self[name] = LocalChannel(name, self.capacity)
        return local
