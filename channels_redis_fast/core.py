"""RedisChannelLayer: the channels_redis 4.x core layer, one round trip per operation.

Keys, scores and message bytes are those of channels_redis 4.x, so our processes and
stock ones share a Redis during a migration. What differs is how we talk to it:
every send and group delivery is one Lua script sent by SHA over a multiplexed,
auto-pipelined connection, and receives on a key are served by one pump that pops
batches into bounded local buffers (see pump.py).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import itertools
import logging
import math
import time
import uuid
import weakref
from typing import Any, Callable, Iterable

from channels.exceptions import ChannelFull
from channels.layers import BaseChannelLayer
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from .connection import DEFAULT_REPLY_TIMEOUT, RedisConnection
from .exceptions import RESERVED_KEY, InvalidMessageError, ReservedKeyError, WrongClientPrefixError
from .flush import flush_node
from .group_plan import NO_DESTINATIONS, GroupPlans, ShardPlan, make_plan
from .loop_connections import LoopConnections
from .routing import HashRing
from .scripts import group_add_script, group_send_known_script, group_send_script, send_script
from .serializers import MsgPackSerializer, registry
from .speedups import CapacityMatcher, ChannelBuffer, demux_batch
from .sync_bridge import PER_CALL_LOOPS, SyncBridge
from .utils import ValidNames, _consistent_hash, _wrap_close, decode_hosts, running_loop
from .work_queue import GeneralChannelDelivery, WorkQueueReturns

logger = logging.getLogger(__name__)

__all__ = ["ChannelFull", "RedisChannelLayer"]

#: Seconds between sweeps of local buffers nobody receives from.
SWEEP_INTERVAL = 1.0
#: A buffer emptied by a hand-over stays for its receiver's next wait (a new one per
#: message costs ~5% of a group delivery) while there are at most this many buffers;
#: the next sweep drops it if that receiver does not come back.
KEEP_EMPTY_BUFFERS = 4096
#: How many channels' receive routes to remember (cleared when full).
ROUTE_CACHE_SIZE = 16384


class RedisChannelLayer(WorkQueueReturns, BaseChannelLayer):
    """Redis channel layer, a drop-in for ``channels_redis.core.RedisChannelLayer``."""

    #: Seconds one blocking pop may wait before it is renewed.
    brpop_timeout = 5
    #: Most messages one pump round trip brings back from a process key.
    receive_batch_size = 100

    extensions = ["groups", "flush"]

    def __init__(
        self,
        hosts: Iterable[Any] | None = None,
        prefix: str = "asgi",
        expiry: float = 60,
        group_expiry: float = 86400,
        capacity: int = 100,
        channel_capacity: dict | None = None,
        symmetric_encryption_keys: Iterable[str | bytes] | None = None,
        random_prefix_length: int = 12,
        serializer_format: str = "msgpack",
    ) -> None:
        if not isinstance(prefix, str):
            raise AssertionError("Prefix must be unicode")
        self.expiry = expiry  # type: ignore[assignment]  # types-channels says int; seconds may be a float
        self.group_expiry = group_expiry
        self.capacity = capacity
        # types-channels declares the uncompiled dict; BaseChannelLayer itself stores this list.
        self.channel_capacity = self.compile_capacities(channel_capacity or {})  # type: ignore[assignment]
        self._capacity_matcher = CapacityMatcher(channel_capacity or {}, capacity)
        self.prefix = prefix
        self.hosts = decode_hosts(hosts)
        self.ring_size = len(self.hosts)
        #: Which node holds which key (routing.py); everything that picks a server asks it.
        self.router = HashRing(self.hosts, prefix)
        self._serializer = registry.get_serializer(
            serializer_format,
            symmetric_encryption_keys=symmetric_encryption_keys,
            random_prefix_length=random_prefix_length,
            expiry=expiry,
        )
        self.client_prefix = uuid.uuid4().hex
        self._own_suffix = self.client_prefix + "!"
        self._inflight_serial = itertools.count()
        # Per event loop: sockets and pumps (see loop_connections.py).
        self._layers: dict[asyncio.AbstractEventLoop, LoopConnections] = {}
        self._hooked_loops: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
        # Local delivery state, shared by whichever loop currently receives.
        self.receive_buffer: dict[str, ChannelBuffer] = _ReceiveBuffers(capacity)
        self.receive_count = 0
        self.receive_event_loop: asyncio.AbstractEventLoop | None = None
        self.receive_lock = None  # kept for attribute compatibility; pumps need no lock
        self._waiters: dict[str, list[asyncio.Future]] = {}
        #: Channels with a message on its way to a receiver through its future.
        self._handed_over: set[str] = set()
        self._key_receivers: dict[str, int] = {}
        # Work-queue channels only: the (score, member) each buffered message was popped
        # with, so messages handed back to Redis keep their place in the queue.
        self._work_scores: dict[str, collections.deque] = {}
        self._give_back_timers: dict[str, asyncio.TimerHandle] = {}
        self._giving_back: dict[str, asyncio.Future] = {}
        self._buffer_touched: dict[str, float] = {}
        self._next_sweep = 0.0
        self.reply_timeout = DEFAULT_REPLY_TIMEOUT
        self.stats_counters: collections.Counter[str] = collections.Counter()
        self._valid_channels = ValidNames(self.require_valid_channel_name)
        self._receive_routes: dict[str, tuple[str, str, bool]] = {}
        self._group_plans = GroupPlans()
        self.router.on_change(self._group_plans.clear)
        self._background: set[asyncio.Task] = set()
        #: Runs calls made on asgiref's per-call loops (sync callers); see sync_bridge.py.
        self._sync = SyncBridge(self)

    def __str__(self) -> str:
        return f"{self.__class__.__name__}(hosts={self.hosts})"

    def _forked(self) -> None:
        # A forked child (Celery prefork, gunicorn --preload) must not read the process
        # key of its parent or siblings: it gets channel names of its own.
        self.client_prefix = uuid.uuid4().hex
        self._own_suffix = self.client_prefix + "!"
        self._receive_routes.clear()

    # -- serialization and naming ---------------------------------------------------
    def serialize(self, message: Any) -> bytes:
        return self._serializer.serialize(message)

    def deserialize(self, message: bytes) -> Any:
        return self._serializer.deserialize(message)

    def consistent_hash(self, value: str | bytes) -> int:
        return _consistent_hash(value, self.ring_size)

    def get_capacity(self, channel: str) -> int:
        return self._capacity_matcher.get(channel)

    def _group_key(self, group: str) -> bytes:
        return f"{self.prefix}:group:{group}".encode("utf8")

    async def new_channel(self, prefix: str = "specific") -> str:
        return f"{prefix}.{self.client_prefix}!{uuid.uuid4().hex}"

    def _check_message(self, message: Any) -> None:
        # Explicit raises, not asserts: validation must survive ``python -O``.
        if not isinstance(message, dict):
            raise InvalidMessageError(
                f"Message must be a dict, not {type(message).__name__}"
            )
        if RESERVED_KEY in message:
            raise ReservedKeyError(f"Messages may not contain the reserved key {RESERVED_KEY!r}")

    # -- connections ----------------------------------------------------------------
    def _loop_connections(self) -> LoopConnections:
        loop = running_loop()
        state = self._layers.get(loop)
        if state is None or state.closed:
            state = LoopConnections(self.router, loop, self.reply_timeout)
            self._layers[loop] = state
            if loop not in self._hooked_loops:
                self._hooked_loops.add(loop)
                _wrap_close(self, loop)
        return state

    def connection(self, index: int) -> RedisConnection:
        """The shared command connection to node ``index`` on the running loop."""
        known = len(self.router.hosts)
        if not 0 <= index < known:
            raise ValueError(f"There are only {known} hosts - you asked for {index}!")
        return self._loop_connections().commands[index]

    async def _close_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        state = self._layers.pop(loop, None)
        if state is not None:
            await state.close(after_pumps=functools.partial(self._return_all_work, state.commands))

    async def close_pools(self) -> None:
        """Close every socket this layer holds; it reconnects lazily if used again."""
        await self._sync.aclose()
        current = asyncio.get_running_loop()
        for loop, state in list(self._layers.items()):
            del self._layers[loop]
            if loop is current:
                await state.close(after_pumps=functools.partial(self._return_all_work, state.commands))
            elif loop.is_closed() or not loop.is_running():
                state.close_nowait()
            else:
                loop.call_soon_threadsafe(state.close_nowait)
        # The pumps that would have woken receives still waiting are gone: fail those
        # receives, as a blocking pop fails when its socket is closed, instead of
        # leaving them waiting forever. Nothing was popped for them, so nothing is lost.
        receiving = self.receive_event_loop
        if receiving is None or receiving is current:
            self._fail_waiters()
        elif not receiving.is_closed():
            receiving.call_soon_threadsafe(self._fail_waiters)

    def _fail_waiters(self, error: BaseException | None = None) -> None:
        """Make every waiting receive() raise ``error`` (a pump cannot serve them)."""
        for queue in list(self._waiters.values()):
            for waiter in queue:
                if not waiter.done():
                    waiter.set_exception(
                        error or RedisConnectionError("The channel layer's connections were closed")
                    )

    async def wait_received(self) -> None:
        """Kept for API compatibility: nothing is ever left in flight after a receive."""

    async def stats(self, groups: Iterable[str] | None = None) -> dict:
        """Queue depths, local buffers, counters and (on request) group sizes; see stats.py."""
        from .stats import layer_stats

        return await layer_stats(self, groups)

    # -- send -----------------------------------------------------------------------
    async def send(self, channel: str, message: dict) -> None:
        """Send a message onto a (general or specific) channel."""
        if PER_CALL_LOOPS and running_loop() in PER_CALL_LOOPS:
            return await self._sync.call(self.send, channel, message)
        self._check_message(message)
        if type(channel) is not str or channel not in self._valid_channels:
            self._valid_channels.require(channel)
        bang = channel.find("!")
        if bang >= 0:
            message = dict(message)
            message[RESERVED_KEY] = channel
            # The receiver polls the shard of the non-local name; hashing the full
            # name (as channels_redis does) would strand messages on other shards.
            key = self.prefix + channel[: bang + 1]
            node = self.router.node_of(key)
        else:
            key = self.prefix + channel
            node = self.router.work_node(key)
        payload = self.serialize(message)
        connection = self._loop_connections().commands[node]
        now = time.time()
        keys = (key,)
        args = (payload, now, now - self.expiry, self.get_capacity(channel), self._key_ttl)
        try:
            added = await send_script.start(connection, keys, args)
        except ResponseError as exc:
            added = await send_script.after_error(exc, connection, keys, args)
        if not added:
            self.stats_counters["channel_full"] += 1
            raise ChannelFull(channel)
        self.stats_counters["sent"] += 1

    @property
    def _key_ttl(self) -> int:
        # EXPIRE takes whole seconds; round up so a key never dies before its messages.
        return max(1, math.ceil(self.expiry))

    # -- receive --------------------------------------------------------------------
    async def receive(self, channel: str) -> dict:
        """Receive the first message on a channel, waiting for one if needed.

        Cancelling it never loses a message: pops happen in the pump, and a message
        taken from a local buffer is returned with no await in between.
        """
        if PER_CALL_LOOPS and running_loop() in PER_CALL_LOOPS:
            return await self._sync.call(self.receive, channel, give_back=self._put_back)
        route = self._receive_routes.get(channel) if type(channel) is str else None
        if route is None:
            route = self._receive_route(channel)
        key, real_channel, general = route
        buffer = self.receive_buffer.get(channel)
        if buffer is not None and buffer.qsize():
            return self._take(channel, buffer, general)
        loop = running_loop()
        if self.receive_count == 0:
            self.receive_event_loop = loop
        elif self.receive_event_loop is not loop:
            raise RuntimeError("Two event loops are trying to receive() on one channel layer at once!")
        self.receive_count += 1
        receivers = self._key_receivers
        waiters = self._waiters
        try:
            while True:
                waiter = loop.create_future()
                queue = waiters.get(channel)
                if queue is None:
                    queue = waiters[channel] = [waiter]
                else:
                    queue.append(waiter)
                others = receivers.get(key, 0)
                receivers[key] = others + 1
                cancelled = False
                try:
                    if general:
                        if channel in self._giving_back:
                            # Messages this process handed back are on their way to the
                            # head of the queue: pop only after they are there, to keep
                            # order.
                            await asyncio.wait([self._giving_back[channel]])
                        self._start_pumps(key, real_channel, loop)
                    elif not others:
                        # A process channel's pumps run while anyone waits on its key.
                        self._start_pumps(key, real_channel, loop)
                    message = await waiter
                except (asyncio.CancelledError, GeneratorExit):
                    if waiter.done() and not waiter.cancelled():
                        # We were woken, maybe handed a message, but cancelled before
                        # running: the message goes back to the head of the buffer and
                        # the wake-up to the next receiver of this channel.
                        if waiter.result() is not None:
                            self._handed_over.discard(channel)
                            self.stats_counters["received"] -= 1  # counted when handed
                            self.receive_buffer[channel].put_front(waiter.result())
                            self._buffer_touched[channel] = time.time()
                        self._wake(channel, 1)
                    cancelled = True
                    raise
                finally:
                    left = receivers[key] - 1
                    if left:
                        receivers[key] = left
                    else:
                        del receivers[key]
                    if len(queue) == 1:
                        if waiters.get(channel) is queue:
                            del waiters[channel]
                    else:
                        try:
                            queue.remove(waiter)
                        except ValueError:
                            pass
                    if cancelled:
                        if general:
                            self._check_work_surplus(channel)
                        self._drop_if_idle(channel)
                if message is not None:
                    # Only process channels hand over, and their messages are shared
                    # (see _take).
                    self._handed_over.discard(channel)
                    return dict(message)
                buffer = self.receive_buffer.get(channel)
                if buffer is not None and buffer.qsize():
                    return self._take(channel, buffer, general)
        finally:
            self.receive_count -= 1
            if self.receive_count == 0:
                self.receive_event_loop = None

    def _receive_route(self, channel: Any) -> tuple[str, str, bool]:
        """(Redis key, channel or its ``...!`` process part, is general) for receive()."""
        self._valid_channels.require(channel)
        bang = channel.find("!")
        if bang >= 0:
            real_channel = channel[: bang + 1]
            if not real_channel.endswith(self._own_suffix):
                raise WrongClientPrefixError(
                    f"Wrong client prefix: {channel!r} was not made by this layer"
                )
        else:
            real_channel = channel
        route = (self.prefix + real_channel, real_channel, bang < 0)
        routes = self._receive_routes
        if len(routes) >= ROUTE_CACHE_SIZE:
            routes.clear()
        routes[channel] = route
        return route

    def _take(self, channel: str, buffer: ChannelBuffer, general: bool) -> dict:
        # No await between taking a message and returning it: a cancellation can only
        # land before the take (the message stays buffered) or after the return.
        message = buffer.get_nowait()
        if general:
            scores = self._work_scores.get(channel)
            if scores:
                scores.popleft()
        else:
            # Channels of one process share the dict of a bundled group message
            # (demux_batch): each receiver gets its own copy as it takes one.
            message = dict(message)
        if not buffer.qsize() and channel not in self._waiters:
            del self.receive_buffer[channel]
            self._buffer_touched.pop(channel, None)
            self._work_scores.pop(channel, None)
        self.stats_counters["received"] += 1
        return message

    def _start_pumps(self, key: str, real_channel: str, loop: asyncio.AbstractEventLoop) -> None:
        state = self._layers.get(loop)
        if state is None or state.closed:
            state = self._loop_connections()
        pumps = state.key_pumps.get(key)
        if pumps is not None:
            for pump in pumps:
                if pump.task is None or pump.task.done():
                    pump.ensure_running()
            return
        general = not real_channel.endswith("!")
        # A general channel is a shared work queue: take only as many messages as
        # local receivers wait for (batch 0), so other processes get theirs.
        batch = 0 if general else self.receive_batch_size
        wanted: Callable[..., int]
        if general:
            wanted = lambda key=key, channel=real_channel: (  # noqa: E731
                self._key_receivers.get(key, 0) - self._buffered(channel)
            )
        else:
            # Read only for receivers of this pump's loop: two loops' pumps reading one
            # process key (it is read first, removed after) would both deliver it.
            wanted = lambda key=key, loop=loop: (  # noqa: E731
                self._key_receivers.get(key, 0) if self.receive_event_loop is loop else 0
            )
        # On a ring of hosts every shard, not only the hashed one: stock channels_redis
        # senders put messages for a process channel on the shard of its *full* name,
        # and work queues are filled round-robin.
        pumps = []
        for node in self.router.pump_nodes(key):
            on_batch = (
                GeneralChannelDelivery(self, real_channel, key, node)
                if general
                else self._deliver_process_batch
            )
            pump = state.pump(
                key,
                node,
                wanted,
                on_batch,
                self.brpop_timeout,
                batch,
                self._fail_waiters,
                None if general else functools.partial(self._may_linger, loop),
                self._inflight_key(key) if general else None,
                self._key_ttl,
            )
            pump.ensure_running()
            pumps.append(pump)
        state.key_pumps[key] = pumps

    def _inflight_key(self, key: str) -> str:
        """The in-flight backup of one work-queue pump (see pump.py).

        Named under the prefix, so the README's ACL key pattern, flush() and ``stats``
        cover it; the braces make Redis Cluster hash it by the queue key alone (channel
        names cannot contain braces), so a script touches one slot. Per pump, not per
        layer: pumps on two event loops must never put back each other's pops.
        """
        return f"{key}$inflight{{{key}}}{self.client_prefix}.{next(self._inflight_serial)}"

    def _may_linger(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Whether a process key's pump on ``loop`` may keep one blocking pop waiting.

        Only while no local buffer holds a message (emptied ones may stay for their
        receiver), and only with one loop holding connections: a lingering pump on one
        loop and a reading pump on another would both deliver what they find.
        """
        if len(self._layers) != 1 or self.receive_event_loop not in (None, loop):
            return False
        return not any(map(len, self.receive_buffer.values()))

    def _deliver_process_batch(self, flat: list) -> None:
        now = time.time()
        serializer = self._serializer
        decode = serializer.deserialize
        # Plain msgpack: pass the prefix length so demux decodes each member without a call.
        if type(serializer) is MsgPackSerializer and serializer.crypter is None:
            if type(serializer.random_prefix_length) is int:
                decode = serializer.random_prefix_length
        touched, malformed, expired = demux_batch(
            flat, decode, self.receive_buffer, self.capacity, now - self.expiry
        )
        self._after_batch(touched, malformed, expired, now, hand_over=True)

    def _after_batch(
        self, touched: list, malformed: list, expired: int, now: float, hand_over: bool = False
    ) -> None:
        if malformed:
            self.stats_counters["malformed"] += len(malformed)
            for member, exc in malformed:
                logger.warning(
                    "Skipped a message that could not be read (%s: %s); first bytes %r",
                    type(exc).__name__,
                    exc,
                    bytes(member[:24]),
                )
        if expired:
            self.stats_counters["expired"] += expired
        touched_at = self._buffer_touched
        buffers = self.receive_buffer
        waiters = self._waiters
        handed_over = self._handed_over
        handed = 0
        # Checked once per batch: deleting only ever brings the count down.
        keep_emptied = len(buffers) <= KEEP_EMPTY_BUFFERS
        for channel in touched:
            buffer = buffers[channel]
            queue = waiters.get(channel)
            if queue:
                if hand_over and channel not in handed_over:
                    # Process channels: a waiting receiver gets its message through its
                    # future, which saves it a trip through the buffer. One at a time, so
                    # that a receiver cancelled before it runs can put its message back
                    # at the head without reordering.
                    for waiter in queue:
                        if not waiter.done():
                            waiter.set_result(buffer.get_nowait())
                            handed_over.add(channel)
                            handed += 1
                            break
                    left = buffer.qsize()
                    if not left and not keep_emptied:
                        del buffers[channel]
                        touched_at.pop(channel, None)
                        continue
                else:
                    left = buffer.qsize()
                if left:
                    self._wake(channel, left)
            touched_at[channel] = now
        if handed:
            self.stats_counters["received"] += handed
        if now >= self._next_sweep:
            self._sweep_buffers(now)

    def _wake(self, channel: str, count: int) -> None:
        queue = self._waiters.get(channel)
        if not queue:
            return
        for waiter in queue:
            if count <= 0:
                break
            if not waiter.done():
                waiter.set_result(None)
                count -= 1

    def _drop_if_idle(self, channel: str) -> None:
        """Forget an empty buffer nobody waits on (its consumer went away)."""
        buffer = self.receive_buffer.get(channel)
        if buffer is not None and not buffer.qsize() and channel not in self._waiters:
            del self.receive_buffer[channel]
            self._buffer_touched.pop(channel, None)
            self._work_scores.pop(channel, None)

    def _sweep_buffers(self, now: float) -> None:
        # Empty buffers nobody waits on, and buffers of channels nobody receives on any
        # more (a consumer that went away) once they hold only expired messages: drop
        # them, so memory does not grow with channel churn.
        self._next_sweep = now + SWEEP_INTERVAL
        stale = now - self.expiry
        buffers = self.receive_buffer
        waiters = self._waiters
        for channel, touched in list(self._buffer_touched.items()):
            if channel in waiters:
                continue
            buffer = buffers.get(channel)
            if buffer is None or not buffer.qsize() or touched < stale:
                buffers.pop(channel, None)
                self._work_scores.pop(channel, None)
                del self._buffer_touched[channel]

    # -- groups ---------------------------------------------------------------------
    async def group_add(self, group: str, channel: str) -> None:
        if PER_CALL_LOOPS and running_loop() in PER_CALL_LOOPS:
            return await self._sync.call(self.group_add, group, channel)
        self.require_valid_group_name(group)
        self._valid_channels.require(channel)
        key = self._group_key(group)
        self._group_plans.pop(group, None)
        connection = self._loop_connections().commands[self.router.node_of(key)]
        # A script, so that a Redis out of memory refuses the ZADD and the EXPIRE alike.
        await group_add_script(connection, [key], [time.time(), channel, max(1, math.ceil(self.group_expiry))])

    async def group_discard(self, group: str, channel: str) -> None:
        if PER_CALL_LOOPS and running_loop() in PER_CALL_LOOPS:
            return await self._sync.call(self.group_discard, group, channel)
        self.require_valid_group_name(group)
        self._valid_channels.require(channel)
        self._group_plans.pop(group, None)
        key = self._group_key(group)
        await self._loop_connections().commands[self.router.node_of(key)].execute("ZREM", key, channel)

    async def group_send(self, group: str, message: dict) -> None:
        """Send to every channel of a group. With a remembered plan (see group_plan.py):
        one script on the group's node that checks the members and writes that node's
        part, then one script per other destination node. Otherwise one read first."""
        if PER_CALL_LOOPS and running_loop() in PER_CALL_LOOPS:
            return await self._sync.call(self.group_send, group, message)
        self.require_valid_group_name(group)
        self._check_message(message)
        state = self._loop_connections()
        key = self._group_key(group)
        group_node = self.router.node_of(key)
        connection = state.commands[group_node]
        now = time.time()
        group_cutoff = f"({now - self.group_expiry!r}"
        plan = self._group_plans.get(group)
        if plan is not None:
            shard = plan.by_shard.get(group_node, NO_DESTINATIONS)
            keys = [key, *shard.keys]
            args = [group_cutoff, plan.digest, now, now - self.expiry, self._key_ttl,
                    *self._group_payloads(message, shard), *shard.capacities]
            if plan.on_group_shard:
                over = await group_send_known_script(connection, keys, args)
            else:
                # The other nodes are written only once the check passed, from its reply.
                rest = [
                    (state.commands[node], *self._shard_send(message, part, now))
                    for node, part in plan.by_shard.items()
                    if node != group_node
                ]
                over, others = await group_send_known_script.chain(
                    connection, keys, args, _members_matched, group_send_script, rest
                )
                over += sum(others)
            if over >= 0:
                self._count_group_over(over, plan.member_count, group)
                return
            # The members changed since the plan was made: read them again.
        _, members = await connection.execute_many(
            [("ZREMRANGEBYSCORE", key, "-inf", group_cutoff), ("ZRANGE", key, 0, -1)]
        )
        if not members:
            self._group_plans.pop(group, None)
            return
        plan = make_plan(members, group_node, self.prefix, self.router.node_of, self.get_capacity)
        self._group_plans.remember(group, plan)
        sends = [(state.commands[node], *self._shard_send(message, part, now)) for node, part in plan.by_shard.items()]
        over = sum(await group_send_script.run_each(sends))
        self._count_group_over(over, plan.member_count, group)

    def _shard_send(self, message: dict, shard: ShardPlan, now: float) -> tuple[list, list]:
        """(KEYS, ARGV) of the GROUP_SEND script for one node's part of a plan."""
        return shard.keys, [now, now - self.expiry, self._key_ttl,
                            *self._group_payloads(message, shard), *shard.capacities]

    def _group_payloads(self, message: dict, shard: ShardPlan) -> list[bytes]:
        # Members living in one process share one message, as channels_redis bundles
        # them: __asgi_channel__ lists every local channel it is for.
        payloads = []
        for names in shard.names:
            copy = dict(message)
            copy[RESERVED_KEY] = names
            payloads.append(self.serialize(copy))
        return payloads

    def _count_group_over(self, over: int, members: int, group: str) -> None:
        if over:
            self.stats_counters["group_over_capacity"] += over
            logger.info("%s of %s channels over capacity in group %s", over, members, group)

    # -- flush ----------------------------------------------------------------------
    async def flush(self) -> None:
        """Delete this layer's keys (SCAN, never KEYS) and close the connections."""
        if PER_CALL_LOOPS and running_loop() in PER_CALL_LOOPS:
            return await self._sync.call(self.flush)
        state = self._loop_connections()
        await asyncio.gather(*[flush_node(state.commands[node], self.prefix) for node in self.router.nodes])
        self.receive_buffer.clear()
        self._group_plans.clear()
        self._buffer_touched.clear()
        self._work_scores.clear()
        for timer in self._give_back_timers.values():
            timer.cancel()
        self._give_back_timers.clear()
        await self.close_pools()


class _ReceiveBuffers(dict):
    """channel name -> ChannelBuffer, made on first use with the layer's capacity."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity

    def __missing__(self, channel: str) -> ChannelBuffer:
        buffer = self[channel] = ChannelBuffer(self.capacity)
        return buffer


def _members_matched(reply: Any) -> bool:
    """Whether GROUP_SEND_KNOWN found the members its plan was made from (and wrote)."""
    return type(reply) is int and reply >= 0
