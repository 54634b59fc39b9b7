"""What a layer looks like from inside, right now.

``RedisChannelLayer.stats()`` and the pub/sub layer's ``stats()`` call into this module.
It knows the layers only through the attributes it reads (the Protocols below), so it
imports neither. The view from outside, ``python -m channels_redis_fast stats``, is
cli/top.py.
"""

from __future__ import annotations

import asyncio
from typing import Any, Iterable, Protocol

from .connection import describe_host

#: Counters every core-layer report carries, zero when nothing happened yet.
CORE_COUNTERS = (
    "sent",
    "received",
    "channel_full",
    "dropped",
    "group_over_capacity",
    "malformed",
    "expired",
    "returned",
    "reconnects",
)


class CoreLayer(Protocol):
    """What layer_stats reads of a ``RedisChannelLayer``."""

    prefix: str
    client_prefix: str
    hosts: list[dict[str, Any]]
    ring_size: int
    stats_counters: Any
    receive_buffer: dict[str, Any]
    _layers: dict[Any, Any]

    def _loop_connections(self) -> Any: ...

    def _group_key(self, group: str) -> bytes: ...

    def consistent_hash(self, value: str | bytes) -> int: ...


class PubSubLayer(Protocol):
    """What pubsub_stats reads of a ``RedisPubSubLoopLayer``."""

    prefix: str
    dropped: int
    channels: dict[str, Any]
    groups: dict[str, set[str]]
    _shards: list[Any]

    def _get_group_channel_name(self, group: str) -> str: ...



def _reconnects(connections: Iterable[Any]) -> int:
    return sum(max(0, connection.connects - 1) for connection in connections)


async def layer_stats(layer: CoreLayer, groups: Iterable[str] | None = None) -> dict:
    """Per shard: depths of the keys this layer receives on, group sizes, reconnects;
    plus local buffer sizes and the layer's counters.

    ``groups``: names whose member counts (ZCARD) to include.
    """
    if isinstance(groups, str):
        groups = [groups]
    groups = list(groups or ())
    state = layer._loop_connections()
    # Keys with pumps on any loop: this process's own key(s) and the general channels
    # it receives on.
    key_set: set[str] = set()
    shard_connections: list[list[Any]] = [[] for _ in range(layer.ring_size)]
    for loop_state in list(layer._layers.values()):
        key_set.update(loop_state.key_pumps)
        for index, connection in enumerate(loop_state.commands):
            shard_connections[index].append(connection)
        for (_key, index), pump in loop_state.pumps.items():
            shard_connections[index].append(pump.connection)
    keys = sorted(key_set)
    group_keys = {group: layer._group_key(group) for group in groups}
    by_shard_groups: dict[int, list[str]] = {}
    for group in groups:
        by_shard_groups.setdefault(layer.consistent_hash(group), []).append(group)

    async def one_shard(index: int) -> dict:
        commands: list[tuple[str, str | bytes]] = [("ZCARD", key) for key in keys]
        shard_groups = by_shard_groups.get(index, [])
        commands += [("ZCARD", group_keys[group]) for group in shard_groups]
        replies = await state.commands[index].execute_many(commands) if commands else []
        queues = {key: int(depth) for key, depth in zip(keys, replies)}
        sizes = {group: int(size) for group, size in zip(shard_groups, replies[len(keys) :])}
        return {
            "host": describe_host(layer.hosts[index]),
            "queues": queues,
            "groups": sizes,
            "reconnects": _reconnects(shard_connections[index]),
        }

    shards = await asyncio.gather(*[one_shard(index) for index in range(layer.ring_size)])
    counters = {name: 0 for name in CORE_COUNTERS}
    counters.update(layer.stats_counters)
    # Only buffers holding messages: an emptied one may wait for its receiver's next wait.
    buffers = {
        channel: buffer.qsize() for channel, buffer in list(layer.receive_buffer.items()) if buffer.qsize()
    }
    counters["dropped"] = sum(buffer.dropped for buffer in list(layer.receive_buffer.values()))
    counters["reconnects"] = sum(shard["reconnects"] for shard in shards)
    group_sizes: dict[str, int] = {}
    for shard in shards:
        group_sizes.update(shard["groups"])
    return {
        "prefix": layer.prefix,
        "client_prefix": layer.client_prefix,
        "shards": list(shards),
        "buffers": buffers,
        "buffered": sum(buffers.values()),
        "groups": group_sizes,
        "counters": counters,
    }


async def pubsub_stats(layer: PubSubLayer, groups: Iterable[str] | None = None) -> dict:
    """Per shard: subscriptions and reconnects; local buffers, local group members, drops."""
    if isinstance(groups, str):
        groups = [groups]
    shards = []
    for shard in layer._shards:
        shards.append(
            {
                "host": shard.name,
                "subscriptions": len(shard.wanted),
                "reconnects": _reconnects([shard.publisher, shard.subscriber]),
            }
        )
    buffers = {name: local.buffer.qsize() for name, local in list(layer.channels.items())}
    sizes = {}
    for group in groups or ():
        sizes[group] = len(layer.groups.get(layer._get_group_channel_name(group), ()))
    return {
        "prefix": layer.prefix,
        "shards": shards,
        "buffers": buffers,
        "buffered": sum(buffers.values()),
        "groups": sizes,
        "counters": {
            "dropped": layer.dropped,
            "reconnects": sum(shard["reconnects"] for shard in shards),
        },
    }
