"""A rolling migration: stock channels_redis 4.3 processes and ours on the same Redis.

Messages go both ways on every path (process-specific channels, worker channels,
groups), plain and encrypted, on one server and on three shards. Stock layers get
``socket_timeout: None`` in their host dicts: with redis-py 8 an idle stock receive
otherwise dies with TimeoutError after 5 s (channels_redis issue 422).
"""

from __future__ import annotations

import asyncio
import uuid

import channels_redis.core as stock_core
import pytest

from channels_redis_fast.core import RedisChannelLayer
from conftest import receive_soon

TIMEOUT = 8  # a stock receive on a normal channel may block 5 s on an empty shard
KEYS = ["mixed-fleet-key-one-" + "k" * 20, "mixed-fleet-key-two-" + "q" * 20]


@pytest.fixture(params=["one-shard", "three-shards"])
def urls(request):
    if request.param == "one-shard":
        return [request.getfixturevalue("redis_url")]
    return request.getfixturevalue("shard_urls")


@pytest.fixture(params=["plain", "encrypted"])
def encryption(request):
    return KEYS if request.param == "encrypted" else None


@pytest.fixture
async def fleet(urls, encryption):
    """(stock layer, our layer) sharing ``urls``."""
    stock = stock_core.RedisChannelLayer(
        hosts=[{"address": url, "socket_timeout": None} for url in urls],
        symmetric_encryption_keys=encryption,
    )
    ours = RedisChannelLayer(hosts=list(urls), symmetric_encryption_keys=encryption)
    yield stock, ours
    await ours.flush()
    await stock.flush()


def tag():
    return uuid.uuid4().hex


async def test_direct_stock_to_ours(fleet, urls):
    stock, ours = fleet
    # several channels, so that with three shards the stock sender (which hashes the
    # full name) writes to shards other than the one of the process key
    channels_ = [await ours.new_channel() for _ in range(8)]
    sent = [{"type": "s2o", "tag": tag(), "bin": b"\x00\x01"} for _ in channels_]
    for channel, message in zip(channels_, sent):
        await stock.send(channel, message)
    if len(urls) > 1:
        process_shard = ours.consistent_hash(ours.non_local_name(channels_[0]))
        assert any(stock.consistent_hash(c) != process_shard for c in channels_)
    for channel, message in zip(channels_, sent):
        assert await receive_soon(ours, channel, TIMEOUT) == message


async def test_direct_ours_to_stock(fleet):
    stock, ours = fleet
    channels_ = [await stock.new_channel() for _ in range(4)]
    sent = [{"type": "o2s", "tag": tag(), "n": [1, 2.5, None]} for _ in channels_]
    for channel, message in zip(channels_, sent):
        await ours.send(channel, message)
    for channel, message in zip(channels_, sent):
        assert await receive_soon(stock, channel, TIMEOUT) == message


async def test_worker_channel_both_directions(fleet, urls):
    stock, ours = fleet
    n = len(urls)
    # stock -> ours: ours polls every shard
    sent = [{"type": "w", "i": i, "tag": tag()} for i in range(2 * n)]
    for message in sent:
        await stock.send("fleet.to-ours", message)
    got = [await receive_soon(ours, "fleet.to-ours", TIMEOUT) for _ in sent]
    assert sorted(m["i"] for m in got) == list(range(2 * n))
    assert all(m in sent for m in got)
    # ours -> stock: both walk the shards round robin from 0, so each stock receive
    # finds a message on the shard it blocks on
    sent = [{"type": "w", "i": i, "tag": tag()} for i in range(n)]
    for message in sent:
        await ours.send("fleet.to-stock", message)
    got = [await receive_soon(stock, "fleet.to-stock", TIMEOUT) for _ in sent]
    assert sorted(m["i"] for m in got) == list(range(n))
    assert all(m in sent for m in got)


async def test_encrypted_wire_format(urls, encryption, fleet, redis_shards, redis_server):
    stock, ours = fleet
    channel = await stock.new_channel()
    await ours.send(channel, {"type": "peek"})
    index = ours.consistent_hash(ours.non_local_name(channel))
    server = redis_server if len(urls) == 1 else redis_shards[index]
    (member,) = server.client().zrange("asgi" + stock.non_local_name(channel), 0, -1)
    if encryption:
        assert member[12:].startswith(b"gAAAAA")
        assert b"peek" not in member
    else:
        assert b"peek" in member
    assert stock.deserialize(member) == {"type": "peek", "__asgi_channel__": channel}
    assert await receive_soon(stock, channel, TIMEOUT) == {"type": "peek"}


async def test_groups_across_the_fleet(fleet):
    stock, ours = fleet
    stock_channels = [await stock.new_channel() for _ in range(2)]
    our_channels = [await ours.new_channel() for _ in range(2)]
    for channel in stock_channels:
        await stock.group_add("fleet", channel)
    for channel in our_channels:
        await ours.group_add("fleet", channel)
    await stock.group_add("fleet", "fleet.group-worker")
    for sender in (stock, ours):
        message = {"type": "fleet.group", "from": type(sender).__module__, "tag": tag()}
        await sender.group_send("fleet", message)
        for channel in stock_channels:
            assert await receive_soon(stock, channel, TIMEOUT) == message
        for channel in our_channels:
            assert await receive_soon(ours, channel, TIMEOUT) == message
        assert await receive_soon(ours, "fleet.group-worker", TIMEOUT) == message
    # a discard from the other side takes effect for both
    await ours.group_discard("fleet", stock_channels[0])
    await stock.group_discard("fleet", our_channels[0])
    await ours.group_send("fleet", {"type": "after-discard"})
    assert await receive_soon(stock, stock_channels[1], TIMEOUT) == {"type": "after-discard"}
    assert await receive_soon(ours, our_channels[1], TIMEOUT) == {"type": "after-discard"}
    for layer, channel in ((stock, stock_channels[0]), (ours, our_channels[0])):
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(layer.receive(channel), 0.3)


async def test_key_rotation_across_the_fleet(urls):
    # Mid-rotation: stock already encrypts with the new key, ours still with the old
    # one; both list both keys, so each reads the other's messages.
    old, new = KEYS
    stock = stock_core.RedisChannelLayer(
        hosts=[{"address": url, "socket_timeout": None} for url in urls],
        symmetric_encryption_keys=[new, old],
    )
    ours = RedisChannelLayer(hosts=list(urls), symmetric_encryption_keys=[old, new])
    try:
        channel = await ours.new_channel()
        back = await stock.new_channel()
        await stock.send(channel, {"type": "rotated"})
        await ours.send(back, {"type": "old-key"})
        assert await receive_soon(ours, channel, TIMEOUT) == {"type": "rotated"}
        assert await receive_soon(stock, back, TIMEOUT) == {"type": "old-key"}
    finally:
        await ours.flush()
        await stock.flush()
