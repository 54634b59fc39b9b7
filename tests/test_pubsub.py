"""RedisPubSubChannelLayer against real, private Redis servers: the everyday behaviour.

Faults (restarts, bursts, cancellation, churn, bad input) are in test_pubsub_faults.py.
"""

from __future__ import annotations

import asyncio
import inspect
import logging

import pytest
import redis
from asgiref.sync import async_to_sync
from channels_redis.pubsub import RedisPubSubChannelLayer as AnchorPubSubLayer

from channels_redis_fast.pubsub import RedisPubSubChannelLayer
from channels_redis_fast.utils import _consistent_hash
from conftest import nothing_arrives, receive_soon, until

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def layer(redis_url):
    layer = RedisPubSubChannelLayer(hosts=[redis_url])
    yield layer
    await layer.close()


async def test_new_channel_round_trip(layer):
    channel = await layer.new_channel()
    assert channel.startswith("asgispecific.") and len(channel) == len("asgispecific.") + 32
    message = {"type": "test.message", "text": "Ahoy-hoy!", "blob": b"\x00\xff", "n": [1, 2.5, None]}
    await layer.send(channel, message)
    assert await receive_soon(layer, channel) == message


async def test_fifo_order_and_custom_prefix(redis_url):
    layer = RedisPubSubChannelLayer(hosts=[redis_url], prefix="myapp")
    try:
        channel = await layer.new_channel(prefix="chat.")
        assert channel.startswith("myappchat.")
        for i in range(50):
            await layer.send(channel, {"type": "m", "i": i})
        assert [(await receive_soon(layer, channel))["i"] for _ in range(50)] == list(range(50))
    finally:
        await layer.close()


async def test_general_channel_every_receiving_layer_gets_a_copy(redis_url, layer):
    other = RedisPubSubChannelLayer(hosts=[redis_url])
    try:
        first = asyncio.ensure_future(layer.receive("jobs.general"))
        second = asyncio.ensure_future(other.receive("jobs.general"))
        client = redis.Redis.from_url(redis_url)
        # Wait for both subscriptions instead of sleeping.
        for _ in range(100):
            if client.pubsub_numsub("jobs.general")[0][1] == 2:
                break
            await asyncio.sleep(0.02)
        await layer.send("jobs.general", {"type": "job", "id": 7})
        assert await asyncio.wait_for(first, 2) == {"type": "job", "id": 7}
        assert await asyncio.wait_for(second, 2) == {"type": "job", "id": 7}
    finally:
        await other.close()


async def test_groups_fan_out_and_discard(layer):
    a, b, c = [await layer.new_channel() for _ in range(3)]
    for channel in (a, b, c):
        await layer.group_add("room", channel)
    await layer.group_add("room", a)  # adding twice is harmless
    await layer.group_discard("room", b)
    await layer.group_send("room", {"type": "chat", "text": "hi"})
    assert await receive_soon(layer, a) == {"type": "chat", "text": "hi"}
    assert await receive_soon(layer, c) == {"type": "chat", "text": "hi"}
    await nothing_arrives(layer, a)
    await nothing_arrives(layer, b)


async def test_group_add_needs_a_local_channel(layer):
    with pytest.raises(RuntimeError, match="only call group_add\\(\\) on channels that exist in-process"):
        await layer.group_add("room", "some.channel")
    assert layer.groups == {}


async def test_group_discard_of_unknown_group_is_a_noop(layer, redis_url):
    channel = await layer.new_channel()
    await layer.group_discard("never-added", channel)
    await layer.group_discard("never-added", "not.local")
    assert redis.Redis.from_url(redis_url).pubsub_channels() == [channel.encode()]


async def test_last_group_discard_unsubscribes_the_group(layer, redis_url):
    channel = await layer.new_channel()
    await layer.group_add("room", channel)
    client = redis.Redis.from_url(redis_url)
    assert client.pubsub_numsub("asgi__group__room")[0][1] == 1
    await layer.group_discard("room", channel)
    assert client.pubsub_numsub("asgi__group__room")[0][1] == 0
    assert layer.groups == {} and not layer.channels[channel].groups


async def test_multiple_shards_route_by_consistent_hash(shard_urls):
    layer = RedisPubSubChannelLayer(hosts=shard_urls)
    clients = [redis.Redis.from_url(url) for url in shard_urls]
    try:
        channels = [await layer.new_channel() for _ in range(12)]
        groups = [f"group-{i}" for i in range(6)]
        for i, group in enumerate(groups):
            await layer.group_add(group, channels[i])
            await layer.group_add(group, channels[i + 6])
        used = set()
        for name in channels + [f"asgi__group__{g}" for g in groups]:
            index = _consistent_hash(name, 3)
            used.add(index)
            assert clients[index].pubsub_numsub(name)[0][1] == 1, name
            others = [c for j, c in enumerate(clients) if j != index]
            assert all(c.pubsub_numsub(name)[0][1] == 0 for c in others)
        assert len(used) > 1
        for channel in channels:
            await layer.send(channel, {"type": "direct", "to": channel})
        for i, group in enumerate(groups):
            await layer.group_send(group, {"type": "group", "g": i})
        for i, channel in enumerate(channels):
            assert (await receive_soon(layer, channel))["to"] == channel
            assert (await receive_soon(layer, channel)) == {"type": "group", "g": i % 6}
    finally:
        await layer.close()
        for client in clients:
            client.close()


async def test_sentinel_round_trip_and_groups(sentinel_hosts):
    layer = RedisPubSubChannelLayer(hosts=sentinel_hosts)
    try:
        a = await layer.new_channel()
        b = await layer.new_channel()
        await layer.send(a, {"type": "direct"})
        assert await receive_soon(layer, a) == {"type": "direct"}
        await layer.group_add("g", a)
        await layer.group_add("g", b)
        await layer.group_send("g", {"type": "fan"})
        assert await receive_soon(layer, a) == {"type": "fan"}
        assert await receive_soon(layer, b) == {"type": "fan"}
    finally:
        await layer.close()


async def test_bounded_buffer_drops_oldest_and_counts(redis_url, caplog):
    layer = RedisPubSubChannelLayer(hosts=[redis_url], capacity=5, channel_capacity={"asgitiny.*": 2})
    try:
        channel = await layer.new_channel()
        with caplog.at_level(logging.WARNING, logger="channels_redis_fast.pubsub"):
            for i in range(20):
                await layer.send(channel, {"type": "m", "i": i})
            await layer.send(channel, {"type": "m", "i": "flush"})
            # The subscriber reads on its own socket: wait until all 21 have arrived there
            # (16 of them pushed out) before the first receive, which would otherwise take
            # whatever had arrived so far.
            await until(lambda: layer.dropped == 16, 10, "21 messages at the subscriber")
            received = [(await receive_soon(layer, channel))["i"] for _ in range(5)]
        # The newest survive; the flush marker is the newest of all.
        assert received == list(range(16, 20)) + ["flush"]
        assert layer.dropped == 16
        assert any("dropped" in r.getMessage() for r in caplog.records)
        await nothing_arrives(layer, channel, 0.1)

        tiny = await layer.new_channel(prefix="tiny.")
        for i in range(4):
            await layer.send(tiny, {"type": "m", "i": i})
        await until(lambda: layer.channels[tiny].buffer.dropped == 2, 10, "4 messages at the subscriber")
        assert [(await receive_soon(layer, tiny))["i"] for _ in range(2)] == [2, 3]
        assert layer.dropped == 18
    finally:
        await layer.close()


async def test_proxy_surface(layer):
    for name in ("new_channel", "send", "receive", "group_add", "group_discard", "group_send", "flush"):
        assert inspect.iscoroutinefunction(getattr(layer, name)), name
    assert layer._get_layer().channel_layer is layer
    assert layer.extensions == ["groups", "flush"]
    assert layer.prefix == "asgi"  # forwarded to the loop layer
    assert layer.serialize({"a": True}) == b"\x81\xa1a\xc3"  # msgpack, no random prefix
    assert layer.deserialize(b"\x81\xa1a\xc3") == {"a": True}


async def test_encryption_round_trip(redis_url):
    key = "an-encryption-key-that-is-32-bytes-or-more"
    layer = RedisPubSubChannelLayer(hosts=[redis_url], symmetric_encryption_keys=[key])
    try:
        assert layer.serialize({"a": 1}).startswith(b"gAAAAA")  # a Fernet token
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "secret", "v": 42})
        assert await receive_soon(layer, channel) == {"type": "secret", "v": 42}
    finally:
        await layer.close()


async def test_interoperates_with_channels_redis_pubsub(redis_url):
    """Same wire bytes: a stock channels_redis pub/sub process and ours talk both ways."""
    ours = RedisPubSubChannelLayer(hosts=[redis_url])
    theirs = AnchorPubSubLayer(hosts=[redis_url])
    try:
        mine = await ours.new_channel()
        their_channel = await theirs.new_channel()
        await ours.group_add("mixed", mine)
        await theirs.group_add("mixed", their_channel)
        await theirs.send(mine, {"type": "from.anchor", "b": b"\x01"})
        await ours.send(their_channel, {"type": "from.fast"})
        assert await receive_soon(ours, mine) == {"type": "from.anchor", "b": b"\x01"}
        assert await asyncio.wait_for(theirs.receive(their_channel), 2) == {"type": "from.fast"}
        await ours.group_send("mixed", {"type": "g"})
        assert await receive_soon(ours, mine) == {"type": "g"}
        assert await asyncio.wait_for(theirs.receive(their_channel), 2) == {"type": "g"}
    finally:
        await ours.close()
        await theirs.flush()


def test_async_to_sync_loops_are_cleaned_up(redis_url):
    layer = RedisPubSubChannelLayer(hosts=[redis_url])

    async def round_trip():
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "x"})
        return await receive_soon(layer, channel)

    client = redis.Redis.from_url(redis_url)
    before = len(client.client_list())
    for _ in range(3):
        assert async_to_sync(round_trip)() == {"type": "x"}
        # The per-call loops hold nothing (channels_redis's suite checks _layers): the
        # calls ran on the sync bridge's loop, whose layer is kept aside.
        assert layer._layers == {}
        assert list(layer._bridge_layers) == [layer._sync.loop]
    # Closing the layer stops the bridge, and its sockets close with its loop.
    async_to_sync(layer.close)()
    assert layer._bridge_layers == {} and layer._sync.thread is None
    assert len(client.client_list()) == before
    assert client.pubsub_channels() == []


async def test_flush_forgets_everything_and_layer_still_works(layer, redis_url):
    channel = await layer.new_channel()
    await layer.group_add("room", channel)
    await layer.flush()
    assert layer.channels == {} and layer.groups == {}
    client = redis.Redis.from_url(redis_url)
    for _ in range(50):
        if client.pubsub_channels() == []:
            break
        await asyncio.sleep(0.01)
    assert client.pubsub_channels() == []
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "after.flush"})
    assert await receive_soon(layer, channel) == {"type": "after.flush"}
