"""RedisPubSubChannelLayer: channels_redis 4.x's pub/sub layer, event driven and bounded.

Same configuration, names and observable behaviour as
``channels_redis.pubsub.RedisPubSubChannelLayer``: one layer object per event loop behind a
proxy, PUBLISH for send/group_send, SUBSCRIBE per channel and per group, messages lost when
nobody listens. What differs is underneath:

* The subscriber socket is read by an asyncio protocol: pushed ``message`` frames are routed
  to their channel inside ``data_received``. There is no polling loop and no task per
  message, so a burst is drained as fast as the kernel hands it over and Redis never closes
  us for overrunning its pub/sub output-buffer limit.
* Each local channel has a bounded buffer (``capacity``, default 100). When a consumer falls
  behind, the oldest message is dropped, counted and logged, instead of memory growing.
* A lost subscriber connection is re-established within moments of Redis accepting
  connections again, and every channel and group re-subscribed before anything else is
  sent on it (see subscriber.py). ``on_disconnect`` / ``on_reconnect``, if set, are message types pushed to every local
  channel when that happens (the anchor documents them but ignores them).
* Cancelling ``receive()`` frees the channel and sends UNSUBSCRIBE without awaiting it, and a
  freed channel also leaves its groups, so channel churn does not grow memory.
* Names are validated like the core layer before anything is published.
* On a Redis Cluster (a ``cluster`` host entry) it uses sharded pub/sub, SPUBLISH and
  SSUBSCRIBE on the node that serves each name's slot (sharded_subscriber.py).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
import time
import types
import uuid
from typing import Any, Iterable, cast

from channels.layers import BaseChannelLayer

from .connection import DEFAULT_REPLY_TIMEOUT
from .exceptions import InvalidMessageError
from .local_channel import EMPTY, LocalChannel
from .local_delivery import plain_copy
from .serializers import MsgPackSerializer, registry
from .subscriber import Shard
from .sync_bridge import PER_CALL_LOOPS, SyncBridge
from .subscriber import SubscriberProtocol as _SubscriberProtocol  # noqa: F401 - bench/fanout_cost.py
from .cluster_config import cluster_config
from .routing import HashRing, Router
from .sharded_subscriber import ShardedPubSub
from .utils import ValidNames, _wrap_close, decode_hosts, running_loop

logger = logging.getLogger(__name__)

__all__ = ["RedisPubSubChannelLayer", "RedisPubSubLoopLayer"]

#: Seconds between two "messages dropped" warnings from one loop layer.
DROP_LOG_INTERVAL = 1.0
#: Types whose values a shallow dict copy cannot share mutably (see _decode_once).
_IMMUTABLE_VALUES = frozenset({str, int, float, bool, bytes, type(None)})


class _OnCurrentLoop:
    """Descriptor for the proxy's channel-layer methods.

    Inside a running loop, ``proxy.receive`` is that loop's layer's own bound coroutine
    method, so a call costs one coroutine frame, not two: consumers bind
    ``channel_layer.receive`` once and call it for every message, and the extra frame
    and layer lookup were ~15% of a group delivery. With no running loop (as in
    ``async_to_sync(channel_layer.send)``) it is the proxy's coroutine method, which finds
    the layer of whichever loop runs the call.
    """

    def __init__(self, forward: Any) -> None:
        self.forward = forward
        self.name = forward.__name__
        functools.update_wrapper(cast(Any, self), forward)  # a descriptor, not a callable: only the attributes

    def __get__(self, proxy: Any, owner: type | None = None) -> Any:
        if proxy is None:
            return self.forward
        try:
            loop = running_loop()
            layer = proxy._layers[loop]
        except RuntimeError:
            return types.MethodType(self.forward, proxy)
        except KeyError:
            if loop in PER_CALL_LOOPS:  # a sync caller's loop: the proxy's bridged method
                return types.MethodType(self.forward, proxy)
            layer = proxy._get_layer()
        return getattr(layer, self.name)


class RedisPubSubChannelLayer:
    """Per-event-loop proxy, a drop-in for ``channels_redis.pubsub.RedisPubSubChannelLayer``.

    Positional and keyword arguments other than the serializer's go to one
    :class:`RedisPubSubLoopLayer` per running event loop (sockets and futures belong to a
    loop, and ``async_to_sync`` runs every call on a fresh one).
    """

    extensions = ["groups", "flush"]

    def __init__(
        self,
        *args: Any,
        symmetric_encryption_keys: Iterable[str | bytes] | None = None,
        serializer_format: str = "msgpack",
        **kwargs: Any,
    ) -> None:
        self._args = args
        self._kwargs = kwargs
        # The loop layers are made on first use; bad hosts (an unknown RESP version) fail now.
        hosts = kwargs["hosts"] if "hosts" in kwargs else args[0] if args else None
        if cluster_config(hosts) is None:
            decode_hosts(hosts)
        #: One layer per loop that calls it (the callers' loops only: channels_redis's
        #: suite checks that a finished ``async_to_sync`` call leaves nothing here).
        self._layers: dict[asyncio.AbstractEventLoop, RedisPubSubLoopLayer] = {}
        #: The sync bridge's loop's layer, which outlives every per-call loop (sync_bridge.py).
        self._bridge_layers: dict[asyncio.AbstractEventLoop, RedisPubSubLoopLayer] = {}
        # Unlike the core layer: no random prefix and no expiry (so no Fernet TTL either),
        # because nothing is stored in a sorted set. Bytes match channels_redis's pub/sub.
        self._serializer = registry.get_serializer(
            serializer_format, symmetric_encryption_keys=symmetric_encryption_keys
        )
        #: Runs calls made on asgiref's per-call loops (sync callers); see sync_bridge.py.
        self._sync = SyncBridge(self)

    def __getattr__(self, name: str) -> Any:
        # Everything else (prefix, channels, groups, _shards, dropped, ...) lives on the
        # current loop's layer, as in channels_redis. Guard our own attributes so a
        # half-built or unpickled object cannot recurse here.
        if name.startswith("__") or name in ("_args", "_kwargs", "_layers", "_bridge_layers", "_serializer", "_sync"):
            raise AttributeError(name)
        return getattr(self._get_layer(), name)

    def serialize(self, message: Any) -> bytes:
        return self._serializer.serialize(message)

    def deserialize(self, message: bytes) -> Any:
        return self._serializer.deserialize(message)

    def _get_layer(self) -> "RedisPubSubLoopLayer":
        loop = running_loop()
        layer = self._layers.get(loop)
        if layer is None:
            layer = self._bridge_layers.get(loop)
        if layer is None:
            # mypy cannot see that the proxy's own positional arguments stop before channel_layer.
            layer = RedisPubSubLoopLayer(*self._args, **self._kwargs, channel_layer=self)  # type: ignore[misc]
            (self._bridge_layers if loop is self._sync.loop else self._layers)[loop] = layer
            _wrap_close(self, loop)
        return layer

    async def _on_loop(self, name: str, *args: Any) -> Any:
        """The current loop's layer's method ``name``; on a per-call loop, the bridge's."""
        if running_loop() in PER_CALL_LOOPS:
            give_back = self._put_back if name == "receive" else None
            return await self._sync.call(self._on_loop, name, *args, give_back=give_back)
        return await getattr(self._get_layer(), name)(*args)

    def _put_back(self, name: str, channel: str, message: Any) -> None:
        # On the bridge's loop: a message its sync receiver gave up on (sync_bridge.py).
        layer = self._bridge_layers.get(running_loop())
        if layer is not None:
            layer._put_back(channel, message)

    def _forget_loop(self, loop: asyncio.AbstractEventLoop) -> "RedisPubSubLoopLayer | None":
        layer = self._layers.pop(loop, None)
        bridged = self._bridge_layers.pop(loop, None)
        return layer if layer is not None else bridged

    async def _close_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        layer = self._forget_loop(loop)
        if layer is not None:
            await layer.close()

    # The channel-layer API: real coroutine functions, so inspect and Channels see them
    # as such, each forwarded to the current loop's layer (see _OnCurrentLoop).
    @_OnCurrentLoop
    async def new_channel(self, prefix: str = "specific.") -> str:
        name: str = await self._on_loop("new_channel", prefix)
        return name

    @_OnCurrentLoop
    async def send(self, channel: str, message: Any) -> None:
        await self._on_loop("send", channel, message)

    @_OnCurrentLoop
    async def receive(self, channel: str) -> Any:
        return await self._on_loop("receive", channel)

    @_OnCurrentLoop
    async def group_add(self, group: str, channel: str) -> None:
        await self._on_loop("group_add", group, channel)

    @_OnCurrentLoop
    async def group_discard(self, group: str, channel: str) -> None:
        await self._on_loop("group_discard", group, channel)

    @_OnCurrentLoop
    async def group_send(self, group: str, message: Any) -> None:
        await self._on_loop("group_send", group, message)

    @_OnCurrentLoop
    async def flush(self) -> None:
        await self._on_loop("flush")

    async def close(self) -> None:
        """Close this loop's connections now instead of when the loop closes (and the
        sync callers' thread, unless called on it)."""
        await self._sync.aclose()
        await self._close_loop(asyncio.get_running_loop())


class _LocalChannel(LocalChannel):
    """A subscribed channel in this process (see local_channel.py), and its groups."""

    __slots__ = ("groups", "made_here")

    def __init__(self, name: str, capacity: int) -> None:
        super().__init__(name, capacity)
        #: Group channel names this channel belongs to, so freeing it can leave them: a
        #: tuple, since a channel is in a group or two and an empty set is several times
        #: the size of a small tuple.
        self.groups: tuple[str, ...] = ()
        #: Made by this loop layer's new_channel() (and still subscribed since): sends to it
        #: are delivered in process (local_delivery.py).
        self.made_here = False


class RedisPubSubLoopLayer(BaseChannelLayer):
    """The pub/sub layer for one event loop. Build it through the proxy."""

    extensions = ["groups", "flush"]

    def __init__(
        self,
        hosts: Iterable[Any] | None = None,
        prefix: str = "asgi",
        on_disconnect: str | None = None,
        on_reconnect: str | None = None,
        channel_layer: RedisPubSubChannelLayer | None = None,
        capacity: int = 100,
        channel_capacity: dict | None = None,
        strict_messages: bool = False,
        reply_timeout: float = DEFAULT_REPLY_TIMEOUT,
        local_delivery: bool = True,
        **kwargs: Any,
    ) -> None:
        # Core-layer options such as expiry/group_expiry have no meaning for pub/sub and
        # are ignored, as channels_redis does, so one CONFIG can serve both backends.
        super().__init__(capacity=capacity)
        # types-channels declares the uncompiled dict; BaseChannelLayer itself stores this list.
        self.channel_capacity = self.compile_capacities(channel_capacity or {})  # type: ignore[assignment]
        if not isinstance(prefix, str):
            raise AssertionError("Prefix must be unicode")
        self.prefix = prefix
        self.on_disconnect = on_disconnect
        self.on_reconnect = on_reconnect
        self.channel_layer = channel_layer
        # channels_redis delivers anything msgpack can pack (its own test sends a str),
        # so only strict mode enforces the channel-layer spec's "messages are dicts".
        self.strict_messages = strict_messages
        self.reply_timeout = reply_timeout
        serializer = channel_layer._serializer if channel_layer is not None else None
        # (Only with msgpack, whose decoding plain_copy mirrors; other serializers keep Redis.)
        self.local_delivery = local_delivery and isinstance(serializer, MsgPackSerializer)
        #: Messages delivered in process (to channels made here), since the layer was made.
        self.sent_local = 0
        self.channels: dict[str, _LocalChannel] = {}
        self._valid_channels = ValidNames(self.require_valid_channel_name)
        #: Group channel name (``{prefix}__group__{group}``) -> local member channel names.
        self.groups: dict[str, set[str]] = {}
        #: Messages discarded because a local buffer was full, since the layer was made.
        self.dropped = 0
        self._drops_unlogged = 0
        self._drop_logged_at = 0.0
        self._closed = False
        self.loop = asyncio.get_running_loop()
        #: On a Redis Cluster: sharded pub/sub on the node of each name's slot.
        self._cluster: ShardedPubSub | None = None
        config = cluster_config(hosts)
        if config is None:
            #: Which node holds which Redis channel name (routing.py; names are hashed whole).
            self.router: Router = HashRing(decode_hosts(hosts))
            self._shards = [Shard(self, self.router.hosts[node], node) for node in self.router.nodes]
        else:
            self._cluster = ShardedPubSub(self, config)
            self.router = self._cluster.router
            self._shards = self._cluster.shards  # one per primary, added as they are found

    # -- helpers ------------------------------------------------------------------------
    def _get_shard(self, name: str) -> Shard | ShardedPubSub:
        if self._cluster is not None:
            return self._cluster
        return self._shards[self.router.node_of(name)]

    def _get_group_channel_name(self, group: str) -> str:
        return f"{self.prefix}__group__{group}"

    def _serialize(self, message: Any) -> bytes:
        # Validate before serializing so nothing half-checked reaches Redis.
        if not isinstance(message, dict) and self.strict_messages:
            raise InvalidMessageError(f"message must be a dict, not {type(message).__name__}")
        serializer = self.channel_layer if self.channel_layer is not None else _default_serializer()
        return serializer.serialize(message)

    def _deserialize(self, data: bytes) -> Any:
        serializer = self.channel_layer if self.channel_layer is not None else _default_serializer()
        return serializer.deserialize(data)

    def _local_channel(self, name: str) -> _LocalChannel:
        local = self.channels.get(name)
        if local is None:
            local = self.channels[name] = _LocalChannel(name, self.get_capacity(name))
        return local

    # -- routing (called from the subscriber protocol, synchronously) ---------------------
    def _targets(self, wire_name: bytes) -> tuple[_LocalChannel, ...]:
        """Local channels a message published on ``wire_name`` goes to (as channels_redis:
        a channel of that name first, else the members of a group of that name)."""
        name = wire_name.decode("utf-8", "replace")
        local = self.channels.get(name)
        if local is not None:
            return (local,)
        members = self.groups.get(name)
        if not members:
            return ()
        channels = self.channels
        return tuple(channels[m] for m in members if m in channels)

    def _put(self, local: _LocalChannel, data: Any) -> None:
        if local.put(data):
            self._note_drops(1, local.name)

    def _decode_once(self, data: bytes) -> Any:
        """A message for several local channels (a group): decode it once, not per member.

        Returns the decoded dict when every value is immutable, so that a shallow copy
        per receiver is indistinguishable from decoding again; otherwise (or if it does
        not decode, so each receive() reports that as before) the bytes themselves.
        """
        try:
            message = self._deserialize(data)
        except Exception:  # noqa: BLE001 - each receiver raises it from receive()
            return data
        if type(message) is dict and all(type(v) in _IMMUTABLE_VALUES for v in message.values()):
            return message
        return data

    def _note_drops(self, count: int, channel: str) -> None:
        # A stalled consumer under a burst could drop thousands per second: count every
        # one, log at most once per interval.
        self.dropped += count
        self._drops_unlogged += count
        now = time.monotonic()
        if now - self._drop_logged_at >= DROP_LOG_INTERVAL:
            logger.warning(
                "Pub/sub buffer full: dropped %d oldest message(s) (latest on channel %s; "
                "capacity %d; %d dropped in total)",
                self._drops_unlogged,
                channel,
                self.get_capacity(channel),
                self.dropped,
            )
            self._drops_unlogged = 0
            self._drop_logged_at = now

    def _notify_all(self, message_type: str | None) -> None:
        """Push ``{"type": message_type}`` to every local channel (connection events)."""
        if not message_type or not self.channels:
            return
        data = self._serialize({"type": message_type})
        for local in list(self.channels.values()):
            self._put(local, data)

    # -- channel layer API ----------------------------------------------------------------
    async def send(self, channel: str, message: Any) -> None:
        """PUBLISH ``message`` on ``channel`` (only current subscribers get it)."""
        if type(channel) is not str or channel not in self._valid_channels:
            self._valid_channels.require(channel)
        local = self.channels.get(channel)
        if local is not None and local.made_here and type(message) is dict:
            # Only this layer listens on a channel it made: no PUBLISH, no serialization
            # (unless the message is one PUBLISH would refuse or change: plain_copy).
            item = plain_copy(message)
            if item is not None:
                self._put(local, item)
                self.sent_local += 1
                return
        data = self._serialize(message)
        await self._get_shard(channel).publish(channel, data)

    async def new_channel(self, prefix: str = "specific.") -> str:
        """A new, already subscribed, process-local channel name."""
        channel = f"{self.prefix}{prefix}{uuid.uuid4().hex}"
        self.require_valid_channel_name(channel)
        local = await self._subscribe_channel(channel)
        local.made_here = self.local_delivery
        return channel

    async def _subscribe_channel(self, channel: str) -> _LocalChannel:
        local = self._local_channel(channel)
        try:
            await self._get_shard(channel).subscribe(channel)
        except BaseException:
            # Do not leave a channel behind that Redis never delivers to.
            if self.channels.get(channel) is local and not local.in_use() and not local.buffer:
                self._free_channel(local)
            raise
        return local

    async def receive(self, channel: str) -> Any:
        """The next message on ``channel``; subscribes first if it is not local yet.

        Cancelling it (a consumer going away, or a timeout) frees the channel and
        unsubscribes, since Channels has no ``delete_channel()`` to do so.
        """
        # Only valid names become local channels, so a known one needs no new check.
        local = self.channels.get(channel) if type(channel) is str else None
        if local is None:
            self.require_valid_channel_name(channel, receive=True)
        waiter: asyncio.Future | None = None
        try:
            if local is None:
                local = await self._subscribe_channel(channel)
            while True:
                # No await between taking a message and returning it: a cancellation
                # can never lose one that left the buffer.
                if local.buffer:
                    item = local.take()
                else:
                    if self.channels.get(channel) is not local:
                        # Freed while we were being woken (another receiver was cancelled).
                        local = await self._subscribe_channel(channel)
                        continue
                    waiter = self.loop.create_future()  # a waiting receiver (see LocalChannel)
                    local.waiters.append(waiter)
                    await waiter
                    item = local.claim(waiter)
                    waiter = None
                    if item is EMPTY:  # another receiver took it first
                        continue
                # A dict is a group message decoded once for all members (_decode_once).
                return item.copy() if type(item) is dict else self._deserialize(item)
        except BaseException as exc:
            if local is not None:
                if waiter is not None:
                    local.forget(waiter)
                cancelled = isinstance(exc, (asyncio.CancelledError, asyncio.TimeoutError, GeneratorExit))
                if cancelled and not local.in_use() and self.channels.get(channel) is local:
                    self._free_channel(local)
            raise

    def _put_back(self, channel: str, message: Any) -> None:
        """A message received for a sync caller who gave up before taking it (see
        sync_bridge.py): back to the head of its channel, if that is still subscribed."""
        local = self.channels.get(channel)
        if local is None:
            return  # freed meanwhile: like any message for a channel nobody listens to
        local.put_back(message if type(message) is dict else self._serialize(message))
        local.wake(1)

    def _free_channel(self, local: _LocalChannel) -> None:
        """Drop a channel, its buffer and its group memberships; UNSUBSCRIBE, not awaited."""
        if self.channels.get(local.name) is local:
            del self.channels[local.name]
        self._get_shard(local.name).unsubscribe_nowait(local.name)
        for group_channel in local.groups:
            members = self.groups.get(group_channel)
            if members is None:
                continue
            members.discard(local.name)
            if not members:
                del self.groups[group_channel]
                self._get_shard(group_channel).unsubscribe_nowait(group_channel)
        local.groups = ()

    # -- groups ---------------------------------------------------------------------------
    async def group_add(self, group: str, channel: str) -> None:
        """Add a channel of this process to ``group`` and SUBSCRIBE the group."""
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        local = self.channels.get(channel)
        if local is None:
            raise RuntimeError(
                "You can only call group_add() on channels that exist in-process.\n"
                "Consumers are encouraged to use the common pattern:\n"
                f"   self.channel_layer.group_add({group!r}, self.channel_name)"
            )
        # Interned: every member's ``groups`` names it, one string for all of them.
        group_channel = sys.intern(self._get_group_channel_name(group))
        self.groups.setdefault(group_channel, set()).add(channel)
        if group_channel not in local.groups:
            local.groups = (*local.groups, group_channel)
        # Shared: the concurrent group_adds of one group wait for one SUBSCRIBE.
        await self._get_shard(group_channel).subscribe(group_channel, shared=True)

    async def group_discard(self, group: str, channel: str) -> None:
        """Remove a channel from ``group``; a no-op if it is not in it."""
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        group_channel = self._get_group_channel_name(group)
        members = self.groups.get(group_channel)
        if members is None or channel not in members:
            return
        members.discard(channel)
        local = self.channels.get(channel)
        if local is not None and group_channel in local.groups:
            local.groups = tuple(g for g in local.groups if g != group_channel)
        if not members:
            del self.groups[group_channel]
            await self._get_shard(group_channel).unsubscribe(group_channel)

    async def group_send(self, group: str, message: Any) -> None:
        """One PUBLISH on the group's channel; each subscribed process fans out locally."""
        self.require_valid_group_name(group)
        data = self._serialize(message)
        group_channel = self._get_group_channel_name(group)
        await self._get_shard(group_channel).publish(group_channel, data)

    # -- flush / close --------------------------------------------------------------------
    async def flush(self) -> None:
        """Forget every channel and group and close the sockets; usable again afterwards.

        As in channels_redis nothing is deleted in Redis: pub/sub stores nothing.
        """
        self.channels = {}
        self.groups = {}
        if self._cluster is not None:
            await self._cluster.reset()
        for shard in self._shards:
            await shard.reset()

    async def stats(self, groups: Iterable[str] | None = None) -> dict:
        """Subscriptions, local buffers, drops and reconnects per shard; see stats.py."""
        from .stats import pubsub_stats

        return await pubsub_stats(self, groups)

    async def close(self) -> None:
        self._closed = True
        self.channels = {}
        self.groups = {}
        if self._cluster is not None:
            await self._cluster.close()
        for shard in self._shards:
            await shard.close()


def _default_serializer() -> Any:
    # Only for a loop layer built without its proxy (tests, embedding).
    global _fallback_serializer
    if _fallback_serializer is None:
        _fallback_serializer = registry.get_serializer("msgpack")
    return _fallback_serializer


_fallback_serializer: Any = None
