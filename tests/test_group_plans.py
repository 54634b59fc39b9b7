"""group_send's remembered plans never send from a stale membership.

After one membership read, a group on one shard is sent to with one script that checks a
digest of the members first (see group_plan.py). These tests change the group between
sends from other layer instances, ours and stock channels_redis, and check who gets what.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import redis
from channels_redis.core import RedisChannelLayer as StockLayer

from channels_redis_fast.core import RedisChannelLayer
from channels_redis_fast.exceptions import RESERVED_KEY
from channels_redis_fast.group_plan import (
    SNAPSHOT_MIN_MEMBERS,
    SNAPSHOT_SUFFIX,
    bundled_payloads,
    make_plan,
    member_digest,
)
from channels_redis_fast.scripts import group_send_known_script
from channels_redis_fast.speedups import pack_message, unpack_message
from conftest import nothing_arrives, receive_soon

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("other_kind", ["ours", "stock"])
async def test_membership_changed_elsewhere_is_seen_by_the_next_send(redis_url, other_kind):
    sender = RedisChannelLayer(hosts=[redis_url])
    if other_kind == "ours":
        other = RedisChannelLayer(hosts=[redis_url])
    else:
        other = StockLayer(hosts=[{"address": redis_url, "socket_timeout": None}])
    a = await sender.new_channel()
    b = await other.new_channel()
    await sender.group_add("room", a)
    await sender.group_send("room", {"type": "m", "n": 1})  # reads members, makes a plan
    assert await receive_soon(sender, a) == {"type": "m", "n": 1}
    assert "room" in sender._group_plans

    await other.group_add("room", b)  # the sender's plan is now stale
    await sender.group_send("room", {"type": "m", "n": 2})
    assert await receive_soon(sender, a) == {"type": "m", "n": 2}
    assert await receive_soon(other, b) == {"type": "m", "n": 2}

    await other.group_discard("room", a)
    await sender.group_send("room", {"type": "m", "n": 3})
    assert await receive_soon(other, b) == {"type": "m", "n": 3}
    await nothing_arrives(sender, a)

    await other.group_discard("room", b)
    await sender.group_send("room", {"type": "m", "n": 4})  # nobody left
    await nothing_arrives(other, b)
    assert "room" not in sender._group_plans
    await sender.flush()
    await other.flush()


async def test_expired_member_is_not_sent_to_from_a_plan(redis_url):
    layer = RedisChannelLayer(hosts=[redis_url], group_expiry=1)
    a = await layer.new_channel()
    b = await layer.new_channel()
    await layer.group_add("room", a)
    await layer.group_add("room", b)
    await layer.group_send("room", {"type": "first"})
    assert [await receive_soon(layer, c) for c in (a, b)] == [{"type": "first"}] * 2
    await asyncio.sleep(0.6)
    await layer.group_add("room", b)  # b renews its membership, a does not
    await asyncio.sleep(0.6)
    await layer.group_send("room", {"type": "second"})
    assert await receive_soon(layer, b) == {"type": "second"}
    await nothing_arrives(layer, a)
    await layer.flush()


async def test_known_members_script_checks_the_digest_before_writing(redis_url):
    client = redis.Redis.from_url(redis_url)
    group_key = b"asgi:group:digest-room"
    members = [b"specific.p1!a", b"specific.p1!b", b"general.work"]
    now = time.time()
    for score, member in enumerate(members):
        client.zadd(group_key, {member: now + score})
    plan = make_plan(members, 0, "asgi", lambda name: 0, lambda name: 100)
    assert plan.digest == member_digest(members) and plan.on_group_shard
    shard = plan.by_shard[0]
    assert shard.keys == ["asgispecific.p1!", "asgigeneral.work"]
    assert shard.names == [["specific.p1!a", "specific.p1!b"], ["general.work"]]
    layer = RedisChannelLayer(hosts=[redis_url])
    connection = layer.connection(0)

    snapshot = group_key + SNAPSHOT_SUFFIX
    keys = [group_key, snapshot, *shard.keys]

    def args(digest):
        return [f"({now - 86400!r}", digest, now, now - 60, 60, 300, b"m1", b"m2", *shard.capacities]

    # A digest of other members: nothing is written, no snapshot made.
    stale = member_digest(members[:2])
    assert await group_send_known_script(connection, keys, args(stale)) == -1
    assert client.zcard("asgispecific.p1!") == 0 and client.zcard("asgigeneral.work") == 0
    assert not client.exists(snapshot)
    # The digest the Python side computes is the one Lua computes from ZRANGE.
    assert await group_send_known_script(connection, keys, args(plan.digest)) == 0
    assert client.zrange("asgispecific.p1!", 0, -1) == [b"m1"]
    assert client.zrange("asgigeneral.work", 0, -1) == [b"m2"]
    # It left a snapshot of the members, marked with the digest, for the next send.
    assert client.zrange(snapshot, 0, -1) == sorted([b"\0" + plan.digest.encode(), *members])
    # A stale plan is refused through the snapshot as well.
    assert await group_send_known_script(connection, keys, args(stale)) == -1
    assert client.zcard("asgispecific.p1!") == 1
    client.delete(group_key, snapshot, "asgispecific.p1!", "asgigeneral.work")
    await layer.close_pools()


@pytest.mark.parametrize("other_kind", ["ours", "stock"])
async def test_plan_over_several_shards_is_checked_before_any_shard_is_written(shard_urls, other_kind):
    # "Processes" (layer instances) on three shards whose process keys hash to at least
    # two shards, one of them not the group's: the plan has destinations off its shard.
    layers = [RedisChannelLayer(hosts=shard_urls) for _ in range(5)]
    group_shard = layers[0].consistent_hash("wide")

    def shards():
        return {layer.consistent_hash(f"specific.{layer.client_prefix}!") for layer in layers}

    while len(shards() - {group_shard}) < 1 or len(shards()) < 2:
        layers.append(RedisChannelLayer(hosts=shard_urls))
    if other_kind == "ours":
        other = RedisChannelLayer(hosts=shard_urls)
    else:
        other = StockLayer(hosts=[{"address": url, "socket_timeout": None} for url in shard_urls])
    channels = [await layer.new_channel() for layer in layers]
    for channel in channels:
        await layers[0].group_add("wide", channel)
    sender = layers[0]
    await sender.group_send("wide", {"type": "m", "n": 1})
    for layer, channel in zip(layers, channels):
        assert await receive_soon(layer, channel) == {"type": "m", "n": 1}
    plan = sender._group_plans["wide"]
    assert not plan.on_group_shard and len(plan.by_shard) > 1

    # From the remembered plan: no member read, everyone still gets it.
    await sender.group_send("wide", {"type": "m", "n": 2})
    for layer, channel in zip(layers, channels):
        assert await receive_soon(layer, channel) == {"type": "m", "n": 2}
    assert sender._group_plans["wide"] is plan

    # Changed elsewhere: a member leaves, another joins. The stale plan writes nothing,
    # so the one who left gets nothing and the newcomer gets exactly one copy.
    newcomer = await other.new_channel()
    await other.group_add("wide", newcomer)
    await other.group_discard("wide", channels[1])
    await sender.group_send("wide", {"type": "m", "n": 3})
    assert await receive_soon(other, newcomer) == {"type": "m", "n": 3}
    for index, (layer, channel) in enumerate(zip(layers, channels)):
        if index == 1:
            await nothing_arrives(layer, channel)
        else:
            assert await receive_soon(layer, channel) == {"type": "m", "n": 3}
    await nothing_arrives(other, newcomer)
    assert sender._group_plans["wide"] is not plan
    for layer in (*layers, other):
        await layer.flush()


@pytest.mark.parametrize("other_kind", ["ours", "stock"])
async def test_a_change_that_keeps_the_size_is_seen_through_the_snapshot(redis_url, other_kind):
    # After two sends the plan is checked against the snapshot (ZDIFF), not the digest.
    # A member swapped for another (same count, same scores' order kept) must still be
    # seen: the one who left gets nothing, the newcomer gets the message once.
    sender = RedisChannelLayer(hosts=[redis_url])
    if other_kind == "ours":
        other = RedisChannelLayer(hosts=[redis_url])
    else:
        other = StockLayer(hosts=[{"address": redis_url, "socket_timeout": None}])
    client = redis.Redis.from_url(redis_url)
    mine = [await sender.new_channel() for _ in range(SNAPSHOT_MIN_MEMBERS)]
    for channel in mine:
        await sender.group_add("swap", channel)
    for n in range(3):
        await sender.group_send("swap", {"type": "m", "n": n})
        for channel in mine:
            assert await receive_soon(sender, channel) == {"type": "m", "n": n}
    snapshot = sender._group_key("swap") + SNAPSHOT_SUFFIX
    assert client.zcard(snapshot) == len(mine) + 1  # the quick check has what it needs

    newcomer = await other.new_channel()
    await other.group_discard("swap", mine[0])
    await other.group_add("swap", newcomer)
    await sender.group_send("swap", {"type": "m", "n": 9})
    assert await receive_soon(other, newcomer) == {"type": "m", "n": 9}
    for channel in mine[1:]:
        assert await receive_soon(sender, channel) == {"type": "m", "n": 9}
    await nothing_arrives(sender, mine[0])
    await nothing_arrives(other, newcomer)
    await sender.flush()
    assert not client.exists(snapshot)  # flush removes the snapshot with the group
    await other.flush()


@pytest.mark.parametrize("size", [0, 1, 14, 15, 40])
@pytest.mark.parametrize("prefix_length", [0, 12])
def test_bundled_payloads_pack_as_a_copy_with_the_names(size, prefix_length):
    # The names are packed once per plan and joined to each send's message: the bytes
    # after the random prefix are those of packing the bundled copy as channels_redis does.
    plan = make_plan([b"specific.p1!a", b"specific.p1!b", b"general.work"], 0, "asgi", lambda n: 0, lambda n: 5)
    shard = plan.by_shard[0]
    message = {"type": "m", **{f"k{i}": i for i in range(size - 1)}} if size else {}
    payloads = bundled_payloads(message, shard, prefix_length)
    if size >= 15:  # no room in a one-byte map header: the caller packs each copy
        assert payloads is None
        return
    assert payloads is not None and len(payloads) == len(shard.names)
    for payload, names in zip(payloads, shard.names):
        expected = pack_message({**message, RESERVED_KEY: names}, 0)
        assert payload[prefix_length:] == expected
        assert unpack_message(payload, prefix_length) == {**message, RESERVED_KEY: names}
    assert bundled_payloads(message, shard, prefix_length) is not None  # from the cached names
    if prefix_length:
        again = bundled_payloads(message, shard, prefix_length)
        assert again is not None and again[0][:prefix_length] != payloads[0][:prefix_length]


async def test_a_message_too_wide_to_splice_is_still_delivered(redis_url):
    layer = RedisChannelLayer(hosts=[redis_url])
    channels = [await layer.new_channel() for _ in range(2)]
    for channel in channels:
        await layer.group_add("wide-message", channel)
    message = {"type": "m", **{f"k{i}": i for i in range(20)}}
    for _ in range(2):
        await layer.group_send("wide-message", message)
        for channel in channels:
            assert await receive_soon(layer, channel) == message
    await layer.flush()


async def test_a_small_group_keeps_no_snapshot(redis_url):
    # Below SNAPSHOT_MIN_MEMBERS the digest is checked every time and no copy is kept.
    layer = RedisChannelLayer(hosts=[redis_url])
    client = redis.Redis.from_url(redis_url)
    channels = [await layer.new_channel() for _ in range(SNAPSHOT_MIN_MEMBERS - 1)]
    for channel in channels:
        await layer.group_add("small", channel)
    for n in range(3):
        await layer.group_send("small", {"type": "m", "n": n})
        for channel in channels:
            assert await receive_soon(layer, channel) == {"type": "m", "n": n}
    assert layer._group_plans["small"].snapshot_ttl == 0
    assert not client.exists(layer._group_key("small") + SNAPSHOT_SUFFIX)
    await layer.group_add("small", await layer.new_channel())  # now big enough
    for n in range(3):
        await layer.group_send("small", {"type": "m", "n": n})
    assert client.zcard(layer._group_key("small") + SNAPSHOT_SUFFIX) == SNAPSHOT_MIN_MEMBERS + 1
    await layer.flush()
