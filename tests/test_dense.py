"""Dense processes (issue 24): many idle consumers, join storms, a group delivery to all.

A websocket process holds one consumer per socket, each waiting in receive() on its own
channel and in a group. What each costs while idle, whether a wave of joins lands whole
and in few Redis calls, and whether a group message reaches every waiting member without
a buffer round trip.
"""

from __future__ import annotations

import asyncio
import tracemalloc

import redis

from channels_redis_fast.core import RedisChannelLayer
from channels_redis_fast.local_channel import NO_BUFFER
from channels_redis_fast.pubsub import RedisPubSubChannelLayer
from conftest import until

JOINS = 10_000
IDLE = 2_000
# What one idle consumer's receive() may hold, everything included (its task, coroutine,
# future, channel state and the layer's entries for it), at IDLE consumers. The parts
# cut for issue 24 (a deque per channel, a buffer before any message waits, a route per
# name) were over 1 kB of it.
MAX_IDLE_BYTES = 2_000


def _calls(client: redis.Redis, command: str) -> int:
    return int(client.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


async def _join_storm(layer, group: str) -> list[str]:
    async def join() -> str:
        channel = await layer.new_channel()
        await layer.group_add(group, channel)
        return channel

    return await asyncio.gather(*[join() for _ in range(JOINS)])


async def _all_receive(layer, channels: list[str], message: dict, send) -> int:
    got = 0

    async def consumer(channel: str) -> None:
        nonlocal got
        if await layer.receive(channel) == message:
            got += 1

    tasks = [asyncio.ensure_future(consumer(c)) for c in channels]
    await asyncio.sleep(0.2)  # every consumer is waiting
    await send()
    await until(lambda: got == len(channels), 30, f"{len(channels)} deliveries")
    await asyncio.gather(*tasks)
    return got


async def test_core_join_storm_lands_every_member_in_few_calls(redis_url):
    layer = RedisChannelLayer(hosts=[redis_url])
    client = redis.Redis.from_url(redis_url)
    await layer.group_add("warm", await layer.new_channel())  # the script is loaded
    calls = _calls(client, "evalsha")
    channels = await _join_storm(layer, "storm")
    # Concurrent joins of one group share script calls (group_joins.py).
    assert _calls(client, "evalsha") - calls < JOINS // 100
    members = {m.decode() for m in client.zrange("asgi:group:storm", 0, -1)}
    assert members == set(channels)
    assert 0 < client.ttl("asgi:group:storm") <= layer.group_expiry
    message = {"type": "storm.hello"}
    got = await _all_receive(layer, channels, message, lambda: layer.group_send("storm", message))
    assert got == JOINS
    await layer.flush()


async def test_core_join_wave_goes_out_whole_when_some_joiners_are_cancelled(redis_url, caplog):
    layer = RedisChannelLayer(hosts=[redis_url])
    client = redis.Redis.from_url(redis_url)
    channels = [await layer.new_channel() for _ in range(100)]
    tasks = [asyncio.ensure_future(layer.group_add("wave", c)) for c in channels]
    await asyncio.sleep(0)  # every group_add is in the wave, which has not gone out yet
    for task in tasks[::2]:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results[::2])
    assert all(r is None for r in results[1::2])
    # The others' call was not cancelled with them: the wave went out whole.
    assert client.zcard("asgi:group:wave") == 100
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    await layer.flush()


async def test_pubsub_join_storm_subscribes_the_group_once(redis_url):
    layer = RedisPubSubChannelLayer(hosts=[redis_url])
    client = redis.Redis.from_url(redis_url)
    subscribes = _calls(client, "subscribe")
    channels = await _join_storm(layer, "storm")
    # One SUBSCRIBE per channel, and the group's members waited for one of their own.
    assert _calls(client, "subscribe") - subscribes == JOINS + 1
    assert layer.groups["asgi__group__storm"] == set(channels)
    assert client.pubsub_numsub("asgi__group__storm")[0][1] == 1
    message = {"type": "storm.hello"}
    got = await _all_receive(layer, channels, message, lambda: layer.group_send("storm", message))
    assert got == JOINS
    # A group left by all and joined again is subscribed again.
    for channel in channels:
        await layer.group_discard("storm", channel)
    assert client.pubsub_numsub("asgi__group__storm")[0][1] == 0
    await layer.group_add("storm", channels[0])
    assert client.pubsub_numsub("asgi__group__storm")[0][1] == 1
    await layer.flush()


async def test_group_delivery_hands_over_without_buffers(redis_url):
    layer = RedisChannelLayer(hosts=[redis_url])
    sender = RedisChannelLayer(hosts=[redis_url])
    channels = [await layer.new_channel() for _ in range(200)]
    for channel in channels:
        await layer.group_add("room", channel)
    message = {"type": "room.hello", "n": 1}
    got = await _all_receive(layer, channels, message, lambda: sender.group_send("room", message))
    assert got == len(channels)
    # Each waiting member was handed its message directly: no channel made a buffer.
    assert all(layer.receive_buffer[c].buffer is NO_BUFFER for c in channels)
    await layer.flush()
    await sender.close_pools()


async def _idle_bytes(layer, make_channel) -> float:
    channels = [await make_channel() for _ in range(IDLE)]
    # The layer's own sockets and pumps are not a per-consumer cost.
    warm = asyncio.ensure_future(layer.receive(channels[0]))
    await asyncio.sleep(0.2)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tasks = [asyncio.ensure_future(layer.receive(c)) for c in channels[1:]]
        await asyncio.sleep(0.2)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    for task in [warm, *tasks]:
        task.cancel()
    await asyncio.gather(warm, *tasks, return_exceptions=True)
    return held / (IDLE - 1)


async def test_idle_core_consumer_is_small(redis_url):
    layer = RedisChannelLayer(hosts=[redis_url])
    held = await _idle_bytes(layer, layer.new_channel)
    assert held < MAX_IDLE_BYTES, f"{held:.0f} bytes per idle consumer"
    await layer.flush()


async def test_idle_pubsub_consumer_is_small(redis_url):
    layer = RedisPubSubChannelLayer(hosts=[redis_url])

    async def joined() -> str:
        channel = await layer.new_channel()
        await layer.group_add("room", channel)
        return channel

    held = await _idle_bytes(layer, joined)
    assert held < MAX_IDLE_BYTES, f"{held:.0f} bytes per idle consumer"
    await layer.flush()
