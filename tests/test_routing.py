"""The routing seam (routing.py): every key lands on, and is read from, the node the router names.

The ring must place keys exactly where channels_redis 4.3 puts them (the stock package is
asked on generated names), and the layers must ask the router rather than hash on their
own: each test checks what real servers hold against the router's answer.
"""
# These tests are about what reaches Redis: their layers run with local_delivery off
# (issue 16; tests/test_local_delivery.py covers the in-process path).


from __future__ import annotations

import asyncio
import random
import string

import channels_redis.utils as stock_utils
import pytest
import redis

from channels_redis_fast import routing
from channels_redis_fast.core import RedisChannelLayer
from channels_redis_fast.group_plan import SNAPSHOT_SUFFIX, member_digest
from channels_redis_fast.pubsub import RedisPubSubChannelLayer
from channels_redis_fast.routing import HashRing, Router
from channels_redis_fast.scripts import group_send_known_script, group_send_script

NAME_CHARS = string.ascii_letters + string.digits + "-_."


def _names(count: int, seed: int) -> list[str]:
    generator = random.Random(seed)
    names = []
    for _ in range(count):
        name = "".join(generator.choice(NAME_CHARS) for _ in range(generator.randint(1, 40)))
        if generator.random() < 0.5:
            name += "!" + "".join(generator.choice(NAME_CHARS) for _ in range(generator.randint(0, 32)))
        names.append(name)
    return names


def _holders(clients: list[redis.Redis], key: str | bytes) -> list[int]:
    return [node for node, client in enumerate(clients) if client.exists(key)]


@pytest.mark.parametrize("size", [1, 2, 3, 5, 16])
@pytest.mark.parametrize("prefix", ["asgi", "", "my:app-", "ünï:"])
def test_ring_places_keys_where_channels_redis_hashes_their_names(size, prefix):
    hosts = [{"address": f"redis://127.0.0.1:{port}"} for port in range(1, size + 1)]
    core = HashRing(hosts, prefix)
    pubsub = HashRing(hosts)
    for name in _names(400, seed=size):
        expected = stock_utils._consistent_hash(name, size)
        assert core.node_of(prefix + name) == expected, name
        assert pubsub.node_of(name) == expected, name
        if "!" not in name:
            # A group key hashes by its group name, as str or as bytes (_group_key).
            group_key = f"{prefix}:group:{name}"
            assert core.node_of(group_key) == expected, name
            assert core.node_of(group_key.encode("utf-8")) == expected, name
    assert list(core.nodes) == list(range(size))
    assert [core.work_node(prefix + "any") for _ in range(2 * size)] == list(range(size)) * 2
    assert list(core.pump_nodes(prefix + "a.b")) == list(range(size))


def test_ring_answers_the_same_once_it_forgets(monkeypatch):
    # A small memory: the same names asked three times over, far more names than it keeps.
    monkeypatch.setattr(routing, "KNOWN_KEYS", 8)
    ring = HashRing([{"address": f"redis://127.0.0.1:{port}"} for port in (1, 2, 3)], "asgi")
    names = _names(50, seed=11)
    for _ in range(3):
        assert [ring.node_of("asgi" + name) for name in names] == [
            stock_utils._consistent_hash(name, 3) for name in names
        ]


def test_ring_refuses_what_is_not_a_key():
    ring = HashRing([{"address": "redis://127.0.0.1:1"}, {"address": "redis://127.0.0.1:2"}], "asgi")
    with pytest.raises(TypeError, match="str or bytes"):
        ring.node_of(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one host"):
        HashRing([], "asgi")


async def test_sends_group_keys_and_pumps_follow_the_router(redis_shards, shard_urls):
    layers = [RedisChannelLayer(local_delivery=False, hosts=shard_urls) for _ in range(4)]
    router: Router = layers[0].router
    clients = [server.client() for server in redis_shards]
    try:
        channels = [await layer.new_channel() for layer in layers for _ in range(3)]
        owners = [layer for layer in layers for _ in range(3)]
        for channel, owner in zip(channels, owners):
            await owners[0].send(channel, {"to": channel})
            key = owner.prefix + owner.non_local_name(channel)
            assert _holders(clients, key) == [router.node_of(key)]
            assert router.node_of(key) == stock_utils._consistent_hash(owner.non_local_name(channel), 3)
        # Work queues: each new message on the node work_node names (a fresh ring
        # predicts the layer's round robin).
        predicted = HashRing(layers[1].router.hosts, "asgi")
        for n in range(7):
            await layers[1].send("routed.work", {"n": n})
        expected = [0] * 3
        for _ in range(7):
            expected[predicted.work_node("asgirouted.work")] += 1
        assert [client.zcard("asgirouted.work") for client in clients] == expected
        # Groups: the group key on its node, each destination on its own.
        for group in _names(12, seed=7):
            if "!" in group:
                continue
            await layers[0].group_add(group, channels[0])
            group_key = f"asgi:group:{group}".encode()
            assert _holders(clients, group_key) == [router.node_of(group_key)]
        await layers[2].group_add("routed", "routed.work")
        for channel in channels:
            await layers[2].group_add("routed", channel)
        for _ in range(2):  # the member read, then the remembered plan
            await layers[3].group_send("routed", {"type": "group"})
        plan = layers[3]._group_plans["routed"]
        for node, part in plan.by_shard.items():
            for key in part.keys:
                assert router.node_of(key) == node
                assert clients[node].zcard(key) >= 1
        # Receivers pop from every node the router lists for their key.
        for channel, owner in zip(channels, owners):
            assert await asyncio.wait_for(owner.receive(channel), 5) == {"to": channel}
            key = owner.prefix + owner.non_local_name(channel)
            pumped = sorted(node for (pump_key, node) in owner._loop_connections().pumps if pump_key == key)
            assert pumped == sorted(owner.router.pump_nodes(key))
        stats = await layers[0].stats()
        assert [shard["host"] for shard in stats["shards"]] == [router.describe(node) for node in router.nodes]
    finally:
        for layer in layers:
            await layer.flush()
    assert sum(client.dbsize() for client in clients) == 0


async def test_pubsub_subscribes_and_publishes_on_the_router_node(shard_urls):
    layer = RedisPubSubChannelLayer(local_delivery=False, hosts=shard_urls)
    clients = [redis.Redis.from_url(url) for url in shard_urls]
    try:
        router: Router = layer.router
        channels = [await layer.new_channel() for _ in range(9)]
        for index, channel in enumerate(channels):
            await layer.group_add(f"g{index}", channel)
        names = channels + [f"asgi__group__g{index}" for index in range(9)]
        for name in names:
            node = router.node_of(name)
            assert node == stock_utils._consistent_hash(name, 3)
            assert [client.pubsub_numsub(name)[0][1] for client in clients] == [
                1 if other == node else 0 for other in range(3)
            ], name
        for channel in channels:
            await layer.send(channel, {"type": "direct"})
            assert await asyncio.wait_for(layer.receive(channel), 5) == {"type": "direct"}
    finally:
        await layer.close()
        for client in clients:
            client.close()


async def test_chained_writes_wait_for_the_check_and_survive_a_script_flush(redis_shards, shard_urls):
    """Script.chain on real nodes: followers are written only when the first reply allows
    it, and a server that forgot the scripts (SCRIPT FLUSH) gets them by EVAL."""
    layer = RedisChannelLayer(local_delivery=False, hosts=shard_urls)
    clients = [server.client() for server in redis_shards]
    router = layer.router
    group_key = "asgi:group:chained"
    group_node = router.node_of(group_key)
    others = [node for node in router.nodes if node != group_node]
    # Destination keys per other node, found from the router itself.
    keys: dict[int, list[str]] = {node: [] for node in others}
    for name in _names(200, seed=3):
        key = "asgi" + name.split("!")[0] + ("!" if "!" in name else "")
        node = router.node_of(key)
        if node in keys and len(keys[node]) < 2 and key not in keys[node]:
            keys[node].append(key)
    now = 1_000_000.0
    clients[group_node].zadd(group_key, {"member": now})
    try:
        for flush in (False, True):
            if flush:
                for client in clients:
                    client.script_flush()
            calls = [
                (layer.connection(node), part, [now, 0, 60, *[b"m%d" % i for i in range(len(part))],
                                                *[100] * len(part)])
                for node, part in keys.items()
            ]
            for proceed in (False, True):
                reply, replies = await group_send_known_script.chain(
                    layer.connection(group_node),
                    [group_key, group_key.encode() + SNAPSHOT_SUFFIX],
                    # Snapshot ttl 0: a group this small keeps no member snapshot.
                    [f"({now - 10}", member_digest([b"member"]) if proceed else "not the digest", now, 0, 60, 0],
                    lambda reply: type(reply) is int and reply >= 0,
                    group_send_script,
                    calls,
                )
                if not proceed:
                    assert (reply, replies) == (-1, [])
                    assert all(clients[node].zcard(key) == 0 for node, part in keys.items() for key in part)
                else:
                    assert (reply, replies) == (0, [0] * len(calls))
                    for node, part in keys.items():
                        for index, key in enumerate(part):
                            assert clients[node].zrange(key, 0, -1) == [b"m%d" % index]
                            assert _holders(clients, key) == [node]
                    for node, part in keys.items():
                        clients[node].delete(*part)
        # run_each: the same script on several nodes at once, after another flush.
        for client in clients:
            client.script_flush()
        calls = [(layer.connection(node), part[:1], [now, 0, 60, b"solo", 0]) for node, part in keys.items()]
        assert await group_send_script.run_each(calls) == [1] * len(calls)  # capacity 0: over
        assert all(clients[node].zcard(part[0]) == 0 for node, part in keys.items())
    finally:
        await layer.flush()
        clients[group_node].delete(group_key)
