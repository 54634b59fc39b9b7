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

from .cluster_commands import ClusterCommands
from .cluster_config import cluster_config
from .cluster_router import ClusterSlots, check_prefix
from .connection import DEFAULT_REPLY_TIMEOUT, RedisConnection
from .exceptions import RESERVED_KEY, InvalidMessageError, ReservedKeyError, WrongClientPrefixError
from .flush import flush_node
from .group_plan import (
    NO_DESTINATIONS,
    SNAPSHOT_SUFFIX,
    GroupPlans,
    ShardPlan,
    bundled_payloads,
    make_plan,
)
from .group_joins import GroupJoins
from .loop_connections import LoopConnections
from .routing import HashRing, Router
from .scripts import group_add_script, group_send_known_script, group_send_script, send_script
from .serializers import MsgPackSerializer, registry
from .local_channel import EMPTY, LocalChannel, LocalChannels
from .local_delivery import CoreDelivery
from .speedups import CapacityMatcher, demux_batch
from .sync_bridge import PER_CALL_LOOPS, SyncBridge
from .utils import ValidNames, _consistent_hash, _wrap_close, decode_hosts, running_loop
from .work_queue import WorkQueue

logger = logging.getLogger(__name__)

__all__ = ["ChannelFull", "RedisChannelLayer"]

#: Seconds between sweeps of local buffers nobody receives from.
SWEEP_INTERVAL = 1.0
#: A channel emptied by a hand-over stays for its receiver's next wait (making it anew
#: per message costs more than keeping it) while there are at most this many channels;
#: the next sweep drops it if that receiver does not come back. An empty channel is
#: small (no buffer until a message waits in one), so a dense process's every consumer
#: fits (issue 24).
KEEP_EMPTY_BUFFERS = 65536
#: How many channels' receive routes to remember (cleared when full).
ROUTE_CACHE_SIZE = 16384


class RedisChannelLayer(BaseChannelLayer):
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
        local_delivery: bool = True,
    ) -> None:
        if not isinstance(prefix, str):
            raise AssertionError("Prefix must be unicode")
        self.expiry = expiry  # type: ignore[assignment]  # types-channels says int; seconds may be a float
        self.group_expiry = group_expiry
        self.capacity = capacity
        # types-channels declares the uncompiled dict; BaseChannelLayer itself stores this list.
        self.channel_capacity = self.compile_capacities(channel_capacity or {})  # type: ignore[assignment]
        self._capacity_matcher = CapacityMatcher(channel_capacity or {}, capacity)
        #: The largest buffer a channel may need (_buffer_capacity): demux_batch makes new
        #: channels' buffers this size, fitted to each channel's own right after.
        self._largest_buffer = max([capacity, *(channel_capacity or {}).values()])
        self.prefix = prefix
        #: On a Redis Cluster (a ``cluster`` host entry): what follows its redirections.
        self._cluster: ClusterCommands | None = None
        config = cluster_config(hosts)
        if config is None:
            self.hosts = decode_hosts(hosts)
            #: Which node holds which key (routing.py); everything that picks a server asks it.
            self.router: Router = HashRing(self.hosts, prefix)
        else:
            self.hosts = [{**config.options, "cluster": list(config.startup)}]
            self.router = ClusterSlots(config)
            check_prefix(prefix)
            self._cluster = ClusterCommands(self.router, self._loop_connections)
            self.router.on_change(self._add_nodes)
        self.ring_size = len(self.hosts)
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
        # Local delivery state, shared by whichever loop currently receives: one
        # LocalChannel per channel (channels_redis's name for the dict of its buffers).
        self.receive_buffer: dict[str, LocalChannel] = LocalChannels(self._buffer_capacity)
        self.receive_count = 0
        self.receive_event_loop: asyncio.AbstractEventLoop | None = None
        self.receive_lock = None  # kept for attribute compatibility; pumps need no lock
        #: Redis key -> receivers waiting on it (a process key serves many channels).
        self._key_receivers: dict[str, int] = {}
        self._work = WorkQueue(self, self.receive_buffer)
        self._next_sweep = 0.0
        self.reply_timeout = DEFAULT_REPLY_TIMEOUT
        self.stats_counters: collections.Counter[str] = collections.Counter()
        self._valid_channels = ValidNames(self.require_valid_channel_name)
        self._receive_routes: dict[str, tuple[str, str, bool]] = {}
        #: One route per process-channel prefix, shared by every channel under it.
        self._process_routes: dict[str, tuple[str, str, bool]] = {}
        self._group_plans = GroupPlans()
        #: Per loop's connections: group_adds waiting to go out together (group_joins.py).
        self._joins: weakref.WeakKeyDictionary[LoopConnections, GroupJoins] = weakref.WeakKeyDictionary()
        self.router.on_change(self._group_plans.clear)
        #: Runs calls made on asgiref's per-call loops (sync callers); see sync_bridge.py.
        self._sync = SyncBridge(self)
        #: Messages to this instance's own process channels skip Redis (local_delivery.py).
        # (Only with msgpack, whose decoding plain_copy mirrors; other serializers keep Redis.)
        local = local_delivery and isinstance(self._serializer, MsgPackSerializer)
        self._local = CoreDelivery(self) if local else None

    def __str__(self) -> str:
        return f"{self.__class__.__name__}(hosts={self.hosts})"

    def _forked(self) -> None:
        # A forked child (Celery prefork, gunicorn --preload) must not read the process
        # key of its parent or siblings: it gets channel names of its own.
        self.client_prefix = uuid.uuid4().hex
        self._own_suffix = self.client_prefix + "!"
        self._receive_routes.clear()
        if self._local is not None:
            self._local.forked()
        self._process_routes.clear()
        for local in self.receive_buffer.values():
            local.route = None

    # -- serialization and naming ---------------------------------------------------
    def serialize(self, message: Any) -> bytes:
        return self._serializer.serialize(message)

    def deserialize(self, message: bytes) -> Any:
        return self._serializer.deserialize(message)

    def consistent_hash(self, value: str | bytes) -> int:
        return _consistent_hash(value, self.ring_size)

    def get_capacity(self, channel: str) -> int:
        return self._capacity_matcher.get(channel)

    def _buffer_capacity(self, channel: str) -> int:
        # What Redis holds for the channel may be more than the layer's capacity (a
        # channel_capacity pattern), and the pump moves it all here: a smaller buffer
        # would push out messages Redis accepted. Never less than channels_redis's.
        return max(self.capacity, self._capacity_matcher.get(channel))

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

    def _add_nodes(self) -> None:
        for state in list(self._layers.values()):
            state.add_nodes()

    def connection(self, index: int) -> RedisConnection:
        """The shared command connection to node ``index`` on the running loop."""
        known = len(self.router.hosts)
        if not 0 <= index < known:
            raise ValueError(f"There are only {known} hosts - you asked for {index}!")
        return self._loop_connections().commands[index]

    def _forget_loop(self, loop: asyncio.AbstractEventLoop) -> LoopConnections | None:
        return self._layers.pop(loop, None)

    async def _close_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        state = self._forget_loop(loop)
        if state is not None:
            await state.close(after_pumps=functools.partial(self._work.return_all, state.commands))

    async def close_pools(self) -> None:
        """Close every socket this layer holds; it reconnects lazily if used again."""
        await self._sync.aclose()
        current = asyncio.get_running_loop()
        for loop, state in list(self._layers.items()):
            del self._layers[loop]
            if loop is current:
                await state.close(after_pumps=functools.partial(self._work.return_all, state.commands))
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
        error = error or RedisConnectionError("The channel layer's connections were closed")
        for local in list(self.receive_buffer.values()):
            if local.waiters:
                local.fail(error)

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
        if bang >= 0 and self._local is not None and self._local.send(channel, bang, message, running_loop()):
            return
        if self._cluster is not None and not self._cluster.router.ready:
            await self._cluster.ready()  # the first use loads the slot map
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
            if self._cluster is None:
                added = await send_script.after_error(exc, connection, keys, args)
            else:
                added = await self._cluster.script(send_script, keys, args, exc)
        except RedisConnectionError as exc:
            if self._cluster is None:
                raise
            # On a cluster the node may be gone for good: what was never written is retried
            # on the slot's new owner.
            added = await self._cluster.script(send_script, keys, args, exc)
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
        local = self.receive_buffer.get(channel) if type(channel) is str else None
        # A channel a receive() already checked keeps its route (see LocalChannel.route).
        route = local.route if local is not None else None
        if route is None:
            route = self._receive_routes.get(channel) if type(channel) is str else None
            if route is None:
                route = self._receive_route(channel)
        if local is not None and local.buffer:
            return self._received(local, local.take(), route[2])
        if self._cluster is not None and not self._cluster.router.ready:
            # (Checked here, not awaited each time: a coroutine per waiting receive.)
            await self._cluster.ready()
        loop = running_loop()
        if self.receive_count == 0:
            self.receive_event_loop = loop
        elif self.receive_event_loop is not loop:
            raise RuntimeError("Two event loops are trying to receive() on one channel layer at once!")
        self.receive_count += 1
        key, real_channel, general = route
        receivers = self._key_receivers
        try:
            while True:
                # Wait as a receiver of this channel (and of its Redis key's pumps).
                local = self.receive_buffer[channel]
                local.route = route
                waiter = loop.create_future()  # a waiting receiver (see LocalChannel)
                local.waiters.append(waiter)
                others = receivers.get(key, 0)
                receivers[key] = others + 1
                try:
                    if general:
                        giving_back = self._work.giving_back.get(channel)
                        if giving_back is not None:
                            # Messages this process handed back are on their way to the
                            # head of the queue: pop only after they are there, in order.
                            await asyncio.wait([giving_back])
                        self._start_pumps(key, real_channel, loop)
                    elif not others:
                        # A process channel's pumps run while anyone waits on its key.
                        self._start_pumps(key, real_channel, loop)
                    await waiter
                except BaseException:
                    # Cancelled (or failed): a message handed to us goes back to the head
                    # of the buffer, and our wake-up to the next receiver of this channel.
                    local.forget(waiter)
                    if general:
                        self._work.check_surplus(local)
                    self._drop_if_idle(local)
                    raise
                finally:
                    left = receivers[key] - 1
                    if left:
                        receivers[key] = left
                    else:
                        del receivers[key]
                message = local.claim(waiter)
                if message is not EMPTY:
                    return self._received(local, message, general)
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
            shared = self._process_routes.get(real_channel)
            if shared is None:
                if len(self._process_routes) >= ROUTE_CACHE_SIZE:
                    self._process_routes.clear()
                shared = self._process_routes[real_channel] = (self.prefix + real_channel, real_channel, False)
            route = shared
        else:
            route = (self.prefix + channel, channel, True)
        routes = self._receive_routes
        if len(routes) >= ROUTE_CACHE_SIZE:
            routes.clear()
        routes[channel] = route
        return route

    def _received(self, local: LocalChannel, message: dict, general: bool) -> dict:
        # No await between taking a message and returning it: a cancellation can only
        # land before the take (the message stays buffered) or after the return.
        if not general:
            # Channels of one process share the dict of a bundled group message
            # (demux_batch): each receiver gets its own copy as it takes one.
            message = dict(message)
        # An emptied channel stays for its receiver's next wait (a new one per message
        # costs more than keeping it) while few are held; the next sweep drops it if
        # that receiver does not come back.
        if len(self.receive_buffer) > KEEP_EMPTY_BUFFERS:
            self._drop_if_idle(local)
        self.stats_counters["received"] += 1
        return message

    def _buffered(self, channel: str) -> int:
        local = self.receive_buffer.get(channel)
        return len(local.buffer) if local is not None else 0

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
                functools.partial(self._deliver_work_batch, real_channel, node)
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
        return not any(local.buffer for local in self.receive_buffer.values())

    def _deliver_process_batch(self, flat: list) -> None:
        now = time.time()
        serializer = self._serializer
        decode: Callable[[bytes], Any] | int = serializer.deserialize
        # Plain msgpack: pass the prefix length so demux decodes each member without a call.
        if type(serializer) is MsgPackSerializer and serializer.crypter is None:
            if type(serializer.random_prefix_length) is int:
                decode = serializer.random_prefix_length
        # demux_batch puts into existing channels through their put_nowait, and makes a
        # plain ChannelBuffer for a new one (_after_batch wraps it in a LocalChannel).
        buffers: dict[str, Any] = self.receive_buffer
        touched, malformed, expired = demux_batch(flat, decode, buffers, self._largest_buffer, now - self.expiry)
        self._after_batch(touched, malformed, expired, now, hand_over=True)

    def _deliver_work_batch(self, channel: str, index: int, flat: list) -> None:
        now = time.time()
        touched, malformed, expired = self._work.put_batch(channel, index, flat, now)
        self._after_batch(touched, malformed, expired, now)

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
        channels = self.receive_buffer
        for channel in touched:
            local: Any = channels[channel]
            if type(local) is not LocalChannel:
                # A buffer demux_batch made for a channel nobody received on yet.
                local = channels[channel] = LocalChannel(channel, self._buffer_capacity(channel), local)
                if local.capacity != self._largest_buffer:
                    local.refit()
            local.touched = now
            if local.waiters:
                # Process channels: a waiting receiver gets its message straight away
                # (see LocalChannel.hand_over); the others are woken to take the rest.
                if hand_over and local.handed_to is None:
                    local.hand_over()
                if local.buffer:
                    local.wake(len(local.buffer))
        if now >= self._next_sweep:
            # After the receivers this batch woke, not before them: a sweep walks every
            # channel, and a dense process has tens of thousands.
            self._next_sweep = now + SWEEP_INTERVAL
            asyncio.get_running_loop().call_soon(self._sweep_buffers, now)

    def _put_back(self, channel: str, message: dict) -> None:
        """A message received for a sync caller who gave up before taking it (see
        sync_bridge.py): back to the head of its channel, for the next receiver."""
        local = self.receive_buffer[channel]
        local.put_back(message)
        self.stats_counters["received"] -= 1
        local.touched = time.time()
        if "!" not in channel:
            self._work.put_back(local, message)
        local.wake(1)

    def _drop_if_idle(self, local: LocalChannel) -> None:
        """Forget an empty channel nobody waits on (its consumer went away)."""
        if local.is_idle() and self.receive_buffer.get(local.name) is local:
            del self.receive_buffer[local.name]

    def _sweep_buffers(self, now: float) -> None:
        # Empty channels nobody waits on, and channels nobody receives on any more (a
        # consumer that went away) once they hold only expired messages: drop them, so
        # memory does not grow with channel churn.
        self._next_sweep = now + SWEEP_INTERVAL
        stale = now - self.expiry
        channels = self.receive_buffer
        for channel, local in list(channels.items()):
            if local.in_use():
                continue
            if not local.buffer or 0 < local.touched < stale:
                del channels[channel]

    def _forget_buffers(self) -> None:
        """Drop every buffered message (flush); receivers still waiting keep their channel."""
        for channel, local in list(self.receive_buffer.items()):
            if local.give_back_timer is not None:
                local.give_back_timer.cancel()
                local.give_back_timer = None
            if local.in_use():
                while local.buffer:
                    local.take()
                local.scores = None
            else:
                del self.receive_buffer[channel]

    # -- groups ---------------------------------------------------------------------
    async def group_add(self, group: str, channel: str) -> None:
        if PER_CALL_LOOPS and running_loop() in PER_CALL_LOOPS:
            return await self._sync.call(self.group_add, group, channel)
        self.require_valid_group_name(group)
        self._valid_channels.require(channel)
        key = self._group_key(group)
        self._group_plans.pop(group, None)
        # A script, so that a Redis out of memory refuses the ZADD and the EXPIRE alike.
        now, ttl = time.time(), max(1, math.ceil(self.group_expiry))
        if self._cluster is not None:
            await self._cluster.script(group_add_script, [key], [now, channel, ttl])
            return
        # Concurrent joins of one group share one script call (group_joins.py).
        state = self._loop_connections()
        joins = self._joins.get(state)
        if joins is None:
            joins = self._joins[state] = GroupJoins()
        await joins.join(state.commands[self.router.node_of(key)], key, now, channel, ttl)

    async def group_discard(self, group: str, channel: str) -> None:
        if PER_CALL_LOOPS and running_loop() in PER_CALL_LOOPS:
            return await self._sync.call(self.group_discard, group, channel)
        self.require_valid_group_name(group)
        self._valid_channels.require(channel)
        self._group_plans.pop(group, None)
        key = self._group_key(group)
        if self._cluster is not None:
            await self._cluster.execute(key, "ZREM", key, channel)
            return
        await self._loop_connections().commands[self.router.node_of(key)].execute("ZREM", key, channel)

    async def group_send(self, group: str, message: dict) -> None:
        """Send to every channel of a group. With a remembered plan (see group_plan.py):
        one script on the group's node that checks the members and writes that node's
        part, then one script per other destination node. Otherwise one read first."""
        if PER_CALL_LOOPS and running_loop() in PER_CALL_LOOPS:
            return await self._sync.call(self.group_send, group, message)
        self.require_valid_group_name(group)
        self._check_message(message)
        if self._cluster is not None:
            return await self._cluster.group_send(self, group, message)  # one SEND per key
        state = self._loop_connections()
        key = self._group_key(group)
        group_node = self.router.node_of(key)
        connection = state.commands[group_node]
        now = time.time()
        group_cutoff = f"({now - self.group_expiry!r}"
        plan = self._group_plans.get(group)
        here: tuple[str, ...] = ()  # our own members, delivered in process (local_delivery.py)
        item: Any = None
        if plan is not None:
            if self._local is not None:
                plan, here, item = self._local.split(group, plan, group_node, message, state.loop)
            shard = plan.by_shard.get(group_node, NO_DESTINATIONS)
            keys = [key, key + SNAPSHOT_SUFFIX, *shard.keys]
            args = [group_cutoff, plan.digest, now, now - self.expiry, self._key_ttl, plan.snapshot_ttl,
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
                if here:
                    over += self._local.group(here, item, state.loop)  # type: ignore[union-attr]
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
        if self._local is not None:
            plan, here, item = self._local.split(group, plan, group_node, message, state.loop)
        sends = [(state.commands[node], *self._shard_send(message, part, now)) for node, part in plan.by_shard.items()]
        over = sum(await group_send_script.run_each(sends)) if sends else 0
        if here:
            over += self._local.group(here, item, state.loop)  # type: ignore[union-attr]
        self._count_group_over(over, plan.member_count, group)

    def _shard_send(self, message: dict, shard: ShardPlan, now: float) -> tuple[list, list]:
        """(KEYS, ARGV) of the GROUP_SEND script for one node's part of a plan."""
        return shard.keys, [now, now - self.expiry, self._key_ttl,
                            *self._group_payloads(message, shard), *shard.capacities]

    def _group_payloads(self, message: dict, shard: ShardPlan) -> list[bytes]:
        # Members living in one process share one message, as channels_redis bundles
        # them: __asgi_channel__ lists every local channel it is for.
        serializer = self._serializer
        if type(serializer) is MsgPackSerializer and serializer.crypter is None:
            if type(serializer.random_prefix_length) is int and serializer.random_prefix_length >= 0:
                bundled = bundled_payloads(message, shard, serializer.random_prefix_length)
                if bundled is not None:
                    return bundled
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
        if self._cluster is not None:
            await self._cluster.ready()
        state, per_key = self._loop_connections(), self._cluster is not None  # (CROSSSLOT)
        await asyncio.gather(*[flush_node(state.commands[node], self.prefix, per_key) for node in self.router.nodes])
        self._forget_buffers()
        self._group_plans.clear()
        if self._local is not None:
            self._local.flushed()
        await self.close_pools()


def _members_matched(reply: Any) -> bool:
    """Whether GROUP_SEND_KNOWN found the members its plan was made from (and wrote)."""
    return type(reply) is int and reply >= 0
