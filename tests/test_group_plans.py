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
from channels_redis_fast.group_plan import make_plan, member_digest
from channels_redis_fast.scripts import group_send_known_script

pytestmark = pytest.mark.timeout(30)


async def _receive(layer, channel, timeout=5.0):
    return await asyncio.wait_for(layer.receive(channel), timeout)


async def _nothing(layer, channel, timeout=0.3):
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(layer.receive(channel), timeout)


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
    assert await _receive(sender, a) == {"type": "m", "n": 1}
    assert "room" in sender._group_plans

    await other.group_add("room", b)  # the sender's plan is now stale
    await sender.group_send("room", {"type": "m", "n": 2})
    assert await _receive(sender, a) == {"type": "m", "n": 2}
    assert await _receive(other, b) == {"type": "m", "n": 2}

    await other.group_discard("room", a)
    await sender.group_send("room", {"type": "m", "n": 3})
    assert await _receive(other, b) == {"type": "m", "n": 3}
    await _nothing(sender, a)

    await other.group_discard("room", b)
    await sender.group_send("room", {"type": "m", "n": 4})  # nobody left
    await _nothing(other, b)
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
    assert [await _receive(layer, c) for c in (a, b)] == [{"type": "first"}] * 2
    await asyncio.sleep(0.6)
    await layer.group_add("room", b)  # b renews its membership, a does not
    await asyncio.sleep(0.6)
    await layer.group_send("room", {"type": "second"})
    assert await _receive(layer, b) == {"type": "second"}
    await _nothing(layer, a)
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

    def args(digest):
        return [f"({now - 86400!r}", digest, now, now - 60, 60, b"m1", b"m2", *shard.capacities]

    # A digest of other members: nothing is written.
    stale = member_digest(members[:2])
    assert await group_send_known_script(connection, [group_key, *shard.keys], args(stale)) == -1
    assert client.zcard("asgispecific.p1!") == 0 and client.zcard("asgigeneral.work") == 0
    # The digest the Python side computes is the one Lua computes from ZRANGE.
    assert await group_send_known_script(connection, [group_key, *shard.keys], args(plan.digest)) == 0
    assert client.zrange("asgispecific.p1!", 0, -1) == [b"m1"]
    assert client.zrange("asgigeneral.work", 0, -1) == [b"m2"]
    client.delete(group_key, "asgispecific.p1!", "asgigeneral.work")
    await layer.close_pools()
