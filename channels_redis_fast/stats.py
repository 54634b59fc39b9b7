"""What a layer looks like from inside, right now.

``RedisChannelLayer.stats()`` and the pub/sub layer's ``stats()`` call into this module.
It knows the layers only through the attributes it reads (the Protocols below), so it
imports neither. The view from outside, ``python -m channels_redis_fast stats``, is
cli/top.py.
"""

from __future__ import annotations

import asyncio
from typing import Any, Iterable, Protocol

from .routing import Router

#: Counters every core-layer report carries, zero when nothing happened yet.
CORE_COUNTERS = (
    "sent",
    "sent_local",
    "group_sent_local",
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
    router: Router
    stats_counters: Any
    receive_buffer: dict[str, Any]
    _layers: dict[Any, Any]

    def _loop_connections(self) -> Any: ...

    def _group_key(self, group: str) -> bytes: ...


class PubSubLayer(Protocol):
    """What pubsub_stats reads of a ``RedisPubSubLoopLayer``."""

    prefix: str
    dropped: int
    sent_local: int
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
    router = layer.router
    key_set: set[str] = set()
    node_connections: dict[int, list[Any]] = {node: [] for node in router.nodes}
    for loop_state in list(layer._layers.values()):
        key_set.update(loop_state.key_pumps)
        for node, connection in enumerate(loop_state.commands):
            node_connections.setdefault(node, []).append(connection)
        for (_key, node), pump in loop_state.pumps.items():
            node_connections.setdefault(node, []).append(pump.connection)
    keys = sorted(key_set)
    group_keys = {group: layer._group_key(group) for group in groups}
    by_node_groups: dict[int, list[str]] = {}
    for group in groups:
        by_node_groups.setdefault(router.node_of(group_keys[group]), []).append(group)

    # Each node reports the keys read from it (on a ring, every key on every node).
    keys_by_node: dict[int, list[str]] = {node: [] for node in router.nodes}
    for key in keys:
        for node in router.pump_nodes(key):
            keys_by_node.setdefault(node, []).append(key)

    async def one_node(node: int) -> dict:
        node_keys = keys_by_node[node]
        commands: list[tuple[str, str | bytes]] = [("ZCARD", key) for key in node_keys]
        node_groups = by_node_groups.get(node, [])
        commands += [("ZCARD", group_keys[group]) for group in node_groups]
        replies = await state.commands[node].execute_many(commands) if commands else []
        queues = {key: int(depth) for key, depth in zip(node_keys, replies)}
        sizes = {group: int(size) for group, size in zip(node_groups, replies[len(node_keys) :])}
        return {
            "host": router.describe(node),
            "queues": queues,
            "groups": sizes,
            "reconnects": _reconnects(node_connections[node]),
        }

    shards = await asyncio.gather(*[one_node(node) for node in router.nodes])
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
            "sent_local": layer.sent_local,
            "reconnects": sum(shard["reconnects"] for shard in shards),
        },
    }
