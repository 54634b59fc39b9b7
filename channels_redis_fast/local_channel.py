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

A process may hold tens of thousands of these, nearly all idle with one receiver waiting,
so each is kept small: the buffer is allocated by the first message that has to wait in
it (a message handed straight to a waiting receiver never touches one), and the waiting
receivers are a list, which is a fraction of an empty deque's size and as fast for the
one or two receivers a channel usually has.
"""

from __future__ import annotations

import asyncio
import collections
from asyncio import QueueEmpty
from typing import Any, Callable

from .speedups import ChannelBuffer

__all__ = ["EMPTY", "NO_BUFFER", "LocalChannel", "LocalChannels"]

#: What :meth:`LocalChannel.claim` returns when a woken receiver finds nothing to take.
EMPTY: Any = object()


class _NoBuffer(tuple):
    """The buffer of a channel that has not buffered anything yet: empty, read-only.

    An empty tuple underneath, so that ``len()`` and the truth test every delivery makes
    (``not local.buffer``) stay in C instead of calling a Python ``__len__``.
    """

    __slots__ = ()
    maxsize = 0
    dropped = 0

    def qsize(self) -> int:
        return 0

    def empty(self) -> bool:
        return True

    def full(self) -> bool:
        return False

    def get_nowait(self) -> Any:
        raise QueueEmpty

    def put_nowait(self, item: Any) -> None:
        raise RuntimeError("a LocalChannel buffers through its own methods (own_buffer)")

    put_front = put_nowait

    def __repr__(self) -> str:
        return "<no buffer yet>"


#: Shared by every channel that has not buffered a message yet.
NO_BUFFER: Any = _NoBuffer()


class LocalChannel:
    """One channel's bounded buffer, waiting receivers and hand-over state."""

    __slots__ = (
        "name",
        "capacity",
        "buffer",
        "waiters",
        "woken",
        "handed_to",
        "handed_item",
        "scores",
        "give_back_timer",
        "touched",
        "route",
    )

    def __init__(self, name: str, capacity: int, buffer: ChannelBuffer | None = None) -> None:
        self.name = name
        self.capacity = capacity
        #: NO_BUFFER until a message has to wait here (see own_buffer).
        self.buffer: ChannelBuffer = NO_BUFFER if buffer is None else buffer
        #: Receivers waiting for a message, oldest first; woken ones leave the list.
        self.waiters: list[asyncio.Future] = []
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
        #: The layer's receive route for this name, once a receive() has checked it.
        self.route: Any = None

    def refit(self) -> None:
        """Rebuild a buffer made for another size at ``capacity``, keeping its messages in
        order (past ``capacity`` the oldest go, counted as dropped, as a full buffer drops
        them): a channel_capacity pattern's size differs from the layer's."""
        buffer = self.buffer
        if buffer is NO_BUFFER or buffer.maxsize == self.capacity:
            return
        fitted = ChannelBuffer(self.capacity)
        fitted.dropped = buffer.dropped  # stats() sums what buffers dropped
        while len(buffer):
            fitted.put_nowait(buffer.get_nowait())
        self.buffer = fitted

    def own_buffer(self) -> ChannelBuffer:
        """The channel's buffer, allocated now if it had none."""
        buffer = self.buffer
        if buffer is NO_BUFFER:
            buffer = self.buffer = ChannelBuffer(self.capacity)
        return buffer

    # -- delivering ---------------------------------------------------------------------
    def put_nowait(self, item: Any) -> None:
        """Deliver ``item`` without waking anyone else: handed to a receiver waiting on
        an empty buffer (no buffer round trip), else buffered. demux_batch calls this per
        delivery; the layer wakes receivers for what was buffered once the batch is in."""
        waiters = self.waiters
        if waiters and self.handed_to is None and not self.buffer:
            while waiters:
                waiter = waiters.pop(0)
                if not waiter.done():
                    self.handed_to = waiter
                    self.handed_item = item
                    waiter.set_result(None)
                    return
        buffer = self.buffer
        if buffer is NO_BUFFER:
            buffer = self.own_buffer()
        buffer.put_nowait(item)

    def put(self, item: Any) -> bool:
        """Deliver ``item``: handed to a receiver waiting on an empty buffer, else
        buffered (dropping the oldest when full) with a receiver woken. True if one
        was dropped."""
        waiters = self.waiters
        if waiters and self.handed_to is None and not self.buffer:
            while waiters:
                waiter = waiters.pop(0)
                if not waiter.done():
                    self.handed_to = waiter
                    self.handed_item = item
                    waiter.set_result(None)
                    return False
        buffer = self.buffer
        if buffer is NO_BUFFER:
            buffer = self.own_buffer()
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
            waiter = waiters.pop(0)
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
            waiter = waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                self.woken += 1
                count -= 1

    def wake_one(self) -> None:
        self.wake(1)

    def fail(self, error: BaseException) -> None:
        """Make every waiting receiver raise ``error`` (nothing was taken for them)."""
        waiters, self.waiters = self.waiters, []
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
        self.own_buffer().put_front(item)

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
        self.own_buffer().put_front(item)

    @property
    def maxsize(self) -> int:
        return self.capacity

    @property
    def dropped(self) -> int:
        return self.buffer.dropped

    def __repr__(self) -> str:
        return (
            f"<LocalChannel {self.name!r} qsize={len(self.buffer)} waiting={len(self.waiters)} "
            f"woken={self.woken} handed={self.handed_to is not None}>"
        )


class LocalChannels(dict):
    """channel name -> LocalChannel, made on first use with the capacity ``capacity_of``
    gives for its name."""

    def __init__(self, capacity_of: Callable[[str], int]) -> None:
        super().__init__()
        self.capacity_of = capacity_of

    def __missing__(self, name: str) -> LocalChannel:
        local = self[name] = LocalChannel(name, self.capacity_of(name))
        return local
