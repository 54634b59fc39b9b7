"""General (work-queue) channels: a process holds only what its waiting receivers take.

A general channel is shared by every process that receives on it, so the pump pops only
as many messages as local receivers wait for. A message popped for a receiver that is
cancelled before it takes it waits WORK_GRACE seconds for another local receiver, then
goes back to Redis with its original score and bytes, ahead of anything sent since, so
another process gets it and the queue keeps its order.

Nothing here imports a layer: the core layer is reached through :class:`WorkQueueOwner`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Any, Protocol

from .exceptions import RESERVED_KEY
from .local_channel import LocalChannel
from .loop_connections import LoopConnections
from .routing import Router

logger = logging.getLogger(__name__)

__all__ = ["WORK_GRACE", "WorkQueue", "WorkQueueOwner"]

#: Seconds popped work-queue messages wait in a local buffer for a receiver of this
#: process before they are handed back to Redis for other processes.
WORK_GRACE = 0.5


class WorkQueueOwner(Protocol):
    """What the work queue needs from its layer."""

    prefix: str
    router: Router
    _cluster: Any  # cluster_commands.ClusterCommands on a Redis Cluster, else None
    stats_counters: collections.Counter[str]
    _layers: dict[Any, LoopConnections]

    @property
    def expiry(self) -> float: ...

    def serialize(self, message: Any) -> bytes: ...

    def deserialize(self, message: bytes) -> Any: ...

    def _loop_connections(self) -> LoopConnections: ...


class WorkQueue:
    """The layer's general channels: popped batches in, unclaimed messages back to Redis."""

    def __init__(self, owner: WorkQueueOwner, channels: dict[str, LocalChannel]) -> None:
        self.owner = owner
        #: The layer's local channels (its receive_buffer); general ones are read here.
        self.channels = channels
        #: channel -> the ZADDs handing its messages back, while they are on their way.
        self.giving_back: dict[str, asyncio.Future] = {}
        self._background: set[asyncio.Task] = set()

    # -- popped batches in ------------------------------------------------------------
    def put_batch(self, channel: str, index: int, flat: list, now: float) -> tuple[list, list, int]:
        """Buffer a batch popped from shard ``index``: ``(touched, malformed, expired)``."""
        owner = self.owner
        cutoff = now - owner.expiry
        local = self.channels[channel]
        buffer = local.own_buffer()
        malformed = []
        expired = 0
        scores = local.scores
        if scores is None:
            scores = local.scores = collections.deque()
        for i in range(0, len(flat), 2):
            member, score = flat[i], float(flat[i + 1])
            if score < cutoff:
                expired += 1
                continue
            try:
                message = owner.deserialize(member)
                if not isinstance(message, dict):
                    raise ValueError(f"payload is a {type(message).__name__}, not a dict")
            except Exception as exc:  # noqa: BLE001 - reported, never raised out of the batch
                malformed.append((member, exc))
                continue
            message.pop(RESERVED_KEY, None)
            if buffer.full() and scores:
                scores.popleft()  # the buffer drops its oldest message too
            buffer.put_nowait(message)
            scores.append((index, score, member))
        # More than the receivers waiting here (one was cancelled while its pop was on
        # the wire): give it a moment to come back, then hand the rest back to Redis.
        self.check_surplus(local)
        if buffer:
            return [channel], malformed, expired
        if local.is_idle():
            del self.channels[channel]
        return [], malformed, expired

    # -- unclaimed messages back --------------------------------------------------------
    def put_back(self, local: LocalChannel, message: dict) -> None:
        """``message`` went back to the head of ``local``'s buffer (a sync caller gave it
        up): keep the scores in step with the buffer, so that a give-back to Redis returns
        exact bytes; this one gets fresh bytes at the head's score."""
        scores = local.scores
        if scores is None:
            scores = local.scores = collections.deque()
        if len(scores) == len(local.buffer) - 1:
            key = self.owner.prefix + local.name
            score = scores[0][1] if scores else time.time()
            scores.appendleft((self.owner.router.work_node(key), score, self.owner.serialize(message)))
        self.check_surplus(local)

    def check_surplus(self, local: LocalChannel) -> None:
        """Schedule a give-back if a work queue holds more than its waiting receivers take."""
        if local.give_back_timer is None and len(local.buffer) > local.waiting():
            local.give_back_timer = asyncio.get_running_loop().call_later(
                WORK_GRACE, self._give_back_if_unclaimed, local
            )

    def _give_back_if_unclaimed(self, local: LocalChannel) -> None:
        local.give_back_timer = None
        if self.channels.get(local.name) is not local:
            return  # forgotten since, with nothing left in it
        if local.in_use() or self._pumping(local.name):
            self.check_surplus(local)
        else:
            self.return_buffered(local)

    def _pumping(self, channel: str) -> bool:
        """Is a pump of this loop still at the channel's key (its pop may be on the wire)?

        A blocking pop outlives the receiver it was made for. Were the buffer handed back
        meanwhile, a message sent after it could reach Redis first, be taken by that pop
        and overtake the ones handed back; kept, it lands behind them in the buffer.
        """
        state = self.owner._layers.get(asyncio.get_running_loop())
        if state is None:
            return False
        return any(pump.running for pump in state.key_pumps.get(self.owner.prefix + channel, ()))

    async def return_all(self, commands: list) -> None:
        """Hand every buffered work-queue message back to Redis, and wait until it is there.

        Runs when a loop's connections close (close_pools, or the loop itself closing, as
        at the end of ``runworker`` or ``async_to_sync``): the last pops may have brought
        messages that no receiver took, and the give-back timer would never fire.
        """
        for local in [local for name, local in self.channels.items() if "!" not in name]:
            if local.give_back_timer is not None:
                local.give_back_timer.cancel()
                local.give_back_timer = None
            self.return_buffered(local, commands)
        pending = list(self.giving_back.values())
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    def return_buffered(self, local: LocalChannel, commands: list | None = None) -> None:
        # Nobody here received them within WORK_GRACE: put popped work-queue messages
        # back in Redis for other processes rather than hold them for a receiver that
        # may never come.
        channel = local.name
        if self.channels.get(channel) is local and not local.in_use():
            del self.channels[channel]
        buffer, scores = local.buffer, local.scores
        count = len(buffer)
        local.scores = None
        if not count:
            return
        key = self.owner.prefix + channel
        if scores is not None and len(scores) == count:
            # The very bytes and scores they were popped with: they go back to the
            # head of the queue, ahead of anything sent since.
            for _ in range(count):
                buffer.get_nowait()
            by_shard: dict[int, list] = {}
            for index, score, member in scores:
                by_shard.setdefault(index, []).append((score, member))
            returns = [self._give_back(index, key, pairs, commands) for index, pairs in by_shard.items()]
            self._track(channel, returns)
            return
        now = time.time()  # pragma: no cover - only if the two ever disagree
        pairs = [(now, self.owner.serialize(buffer.get_nowait())) for _ in range(count)]
        self._track(channel, [self._give_back(self.owner.router.work_node(key), key, pairs, commands)])

    def _track(self, channel: str, returns: list) -> None:
        done = asyncio.gather(*returns, return_exceptions=True)
        self.giving_back[channel] = done

        def forget(future: asyncio.Future) -> None:
            if self.giving_back.get(channel) is future:
                del self.giving_back[channel]

        done.add_done_callback(forget)

    def _give_back(self, index: int, key: str, pairs: list, commands: list | None = None) -> asyncio.Future:
        """ZADD popped (score, member) pairs back into a work queue, in the background.

        ``commands``: the connections to use, when the loop's are closing (not yet
        closed, but no longer the loop's current set).
        """
        self.owner.stats_counters["returned"] += len(pairs)
        args: list = ["ZADD", key]
        for score, member in pairs:
            args.append(score)
            args.append(member)
        commands = commands or self.owner._loop_connections().commands
        task: asyncio.Task
        if self.owner._cluster is not None:  # to the key's node now: its slot may have moved
            task = asyncio.ensure_future(self.owner._cluster.execute_via(commands, key, *args))
        else:
            task = asyncio.ensure_future(commands[index].execute(*args))
        self._background.add(task)
        task.add_done_callback(self._background_done)
        return task

    def _background_done(self, task: asyncio.Task) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("Could not return messages to Redis: %s", task.exception())
