"""General (work-queue) channels: a process holds only what its waiting receivers take.

A general channel is shared by every process that receives on it, so the pump pops only
as many messages as local receivers wait for. A message popped for a receiver that is
cancelled before it takes it waits WORK_GRACE seconds for another local receiver, then
goes back to Redis with its original score and bytes, ahead of anything sent since, so
another process gets it and the queue keeps its order.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import TYPE_CHECKING, Any, Callable

from .routing import Router

from .exceptions import RESERVED_KEY

if TYPE_CHECKING:
    from .loop_connections import LoopConnections
    from .speedups import ChannelBuffer

logger = logging.getLogger("channels_redis_fast.core")

#: Seconds popped work-queue messages wait in a local buffer for a receiver of this
#: process before they are handed back to Redis for other processes.
WORK_GRACE = 0.5


class WorkQueueReturns:
    """The core layer's give-back of popped work-queue messages (a mixin)."""

    # The layer's state this mixin works on (set by RedisChannelLayer.__init__); declared
    # here, not imported, so that this module never imports the layer.
    prefix: str
    receive_buffer: dict[str, ChannelBuffer]
    stats_counters: collections.Counter[str]
    _waiters: dict[str, list[asyncio.Future]]
    _work_scores: dict[str, collections.deque]
    _give_back_timers: dict[str, asyncio.TimerHandle]
    _giving_back: dict[str, asyncio.Future]
    _buffer_touched: dict[str, float]
    router: Router
    _background: set[asyncio.Task]
    serialize: Callable[[Any], bytes]
    _loop_connections: Callable[[], LoopConnections]
    _wake: Callable[[str, int], None]

    def _put_back(self, channel: str, message: dict) -> None:
        """A message received for a sync caller who gave up before taking it (see
        sync_bridge.py): back to the head of its buffer, for the next receiver."""
        buffer = self.receive_buffer[channel]
        buffer.put_front(message)
        self.stats_counters["received"] -= 1
        self._buffer_touched[channel] = time.time()
        if "!" not in channel:
            # A work queue's buffer and scores stay in step, so that a give-back to
            # Redis returns exact bytes; this one gets fresh bytes at the head's score.
            scores = self._work_scores.setdefault(channel, collections.deque())
            if len(scores) == buffer.qsize() - 1:
                key = self.prefix + channel
                score = scores[0][1] if scores else time.time()
                scores.appendleft((self.router.work_node(key), score, self.serialize(message)))
            self._check_work_surplus(channel)
        self._wake(channel, 1)

    def _waiting(self, channel: str) -> int:
        queue = self._waiters.get(channel)
        return sum(1 for waiter in queue if not waiter.done()) if queue else 0

    def _buffered(self, channel: str) -> int:
        buffer = self.receive_buffer.get(channel)
        return buffer.qsize() if buffer is not None else 0

    def _check_work_surplus(self, channel: str) -> None:
        """Schedule a give-back if a work queue holds more than its waiting receivers take."""
        if self._buffered(channel) > self._waiting(channel) and channel not in self._give_back_timers:
            self._give_back_timers[channel] = asyncio.get_running_loop().call_later(
                WORK_GRACE, self._give_back_if_unclaimed, channel
            )

    def _give_back_if_unclaimed(self, channel: str) -> None:
        self._give_back_timers.pop(channel, None)
        if channel in self._waiters:
            self._check_work_surplus(channel)
        else:
            self._return_buffered(channel)

    async def _return_all_work(self, commands: list) -> None:
        """Hand every buffered work-queue message back to Redis, and wait until it is there.

        Runs when a loop's connections close (close_pools, or the loop itself closing, as
        at the end of ``runworker`` or ``async_to_sync``): the last pops may have brought
        messages that no receiver took, and the give-back timer would never fire.
        """
        for channel in [name for name in self.receive_buffer if "!" not in name]:
            timer = self._give_back_timers.pop(channel, None)
            if timer is not None:
                timer.cancel()
            self._return_buffered(channel, commands)
        pending = list(self._giving_back.values())
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    def _return_buffered(self, channel: str, commands: list | None = None) -> None:
        # Nobody here received them within WORK_GRACE: put popped work-queue messages
        # back in Redis for other processes rather than hold them for a receiver that
        # may never come.
        buffer = self.receive_buffer.pop(channel, None)
        self._buffer_touched.pop(channel, None)
        scores = self._work_scores.pop(channel, None)
        if buffer is None or not buffer.qsize():
            return
        if scores is not None and len(scores) == buffer.qsize():
            # The very bytes and scores they were popped with: they go back to the
            # head of the queue, ahead of anything sent since.
            by_shard: dict[int, list] = {}
            for index, score, member in scores:
                by_shard.setdefault(index, []).append((score, member))
            returns = [
                self._give_back(index, self.prefix + channel, pairs, commands)
                for index, pairs in by_shard.items()
            ]
            self._track_give_back(channel, returns)
            return
        now = time.time()  # pragma: no cover - only if the two ever disagree
        pairs = [(now, self.serialize(buffer.get_nowait())) for _ in range(buffer.qsize())]
        key = self.prefix + channel
        returned = self._give_back(self.router.work_node(key), key, pairs, commands)
        self._track_give_back(channel, [returned])

    def _track_give_back(self, channel: str, returns: list) -> None:
        done = asyncio.gather(*returns, return_exceptions=True)
        self._giving_back[channel] = done

        def forget(future: asyncio.Future) -> None:
            if self._giving_back.get(channel) is future:
                del self._giving_back[channel]

        done.add_done_callback(forget)

    def _give_back(self, index: int, key: str, pairs: list, commands: list | None = None) -> asyncio.Future:
        """ZADD popped (score, member) pairs back into a work queue, in the background.

        ``commands``: the connections to use, when the loop's are closing (not yet
        closed, but no longer the loop's current set).
        """
        self.stats_counters["returned"] += len(pairs)
        args: list = ["ZADD", key]
        for score, member in pairs:
            args.append(score)
            args.append(member)
        connection = (commands or self._loop_connections().commands)[index]
        task = asyncio.ensure_future(connection.execute(*args))
        self._background.add(task)
        task.add_done_callback(self._background_done)
        return task

    def _background_done(self, task: asyncio.Task) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("Could not return messages to Redis: %s", task.exception())


class GeneralChannelDelivery:
    """Batch handler for a general (work-queue) channel on one shard.

    Popped messages wait in the local buffer for this process's receivers; any that
    no receiver claims within WORK_GRACE go back to Redis with their original score
    and bytes, so other processes get them, in order.
    """

    __slots__ = ("layer", "channel", "key", "index")

    def __init__(self, layer: Any, channel: str, key: str, index: int) -> None:
        self.layer = layer
        self.channel = channel
        self.key = key
        self.index = index

    def __call__(self, flat: list) -> None:
        layer = self.layer
        now = time.time()
        cutoff = now - layer.expiry
        buffer = layer.receive_buffer[self.channel]
        malformed = []
        expired = 0
        scores = layer._work_scores.get(self.channel)
        if scores is None:
            scores = layer._work_scores[self.channel] = collections.deque()
        for i in range(0, len(flat), 2):
            member, score = flat[i], float(flat[i + 1])
            if score < cutoff:
                expired += 1
                continue
            try:
                message = layer._serializer.deserialize(member)
                if not isinstance(message, dict):
                    raise ValueError(f"payload is a {type(message).__name__}, not a dict")
            except Exception as exc:  # noqa: BLE001 - reported, never raised out of the batch
                malformed.append((member, exc))
                continue
            message.pop(RESERVED_KEY, None)
            if buffer.full() and scores:
                scores.popleft()  # the buffer drops its oldest message too
            buffer.put_nowait(message)
            scores.append((self.index, score, member))
        # More than the receivers waiting here (one was cancelled while its pop was on
        # the wire): give it a moment to come back, then hand the rest back to Redis.
        layer._check_work_surplus(self.channel)
        touched = [self.channel] if buffer.qsize() else []
        if not touched:
            layer.receive_buffer.pop(self.channel, None)
            layer._work_scores.pop(self.channel, None)
        layer._after_batch(touched, malformed, expired, now)
