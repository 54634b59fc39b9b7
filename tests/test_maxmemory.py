"""A Redis at its ``maxmemory`` with ``noeviction``: what grows memory is refused whole.

Redis refuses a memory-growing command inside a Lua script only before the script's first
write, so the scripts read until their ZADD (see scripts.py). Each refused operation must
raise redis-py's OutOfMemoryError (still a ResponseError), write nothing at all (no
pruning, no EXPIRE), and work again once memory is free.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.exceptions import OutOfMemoryError, ResponseError

from channels_redis_fast.core import RedisChannelLayer
from channels_redis_fast.pubsub import RedisPubSubChannelLayer

MB = 1024 * 1024


def _used_memory(admin) -> int:
    return int(admin.info("memory")["used_memory"])


def _over_the_limit(admin) -> None:
    """Fill Redis with a filler key, then set maxmemory well below what it uses.

    The margin (2 MB) dwarfs what client buffers add or free on their own, so every
    memory-growing command is refused until the filler goes.
    """
    admin.setrange("filler", 4 * MB, b"x")
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", _used_memory(admin) - 2 * MB)
    with pytest.raises(OutOfMemoryError):
        admin.set("probe", b"x")


def _snapshot(admin) -> dict:
    """Every key but the filler: its members with scores, and its remaining TTL."""
    state = {}
    for key in sorted(admin.keys("asgi*")):
        state[key] = (admin.zrange(key, 0, -1, withscores=True), admin.pttl(key))
    return state


def _assert_unchanged(admin, before: dict) -> None:
    after = _snapshot(admin)
    assert sorted(after) == sorted(before), "keys appeared or vanished"
    for key, (members, ttl) in before.items():
        assert after[key][0] == members, f"{key!r} was written"
        # An EXPIRE would have reset the TTL upwards; untouched it only counts down.
        assert after[key][1] <= ttl, f"{key!r} had its TTL refreshed"


async def test_sends_fill_redis_up_to_its_limit_and_no_further(fresh_redis):
    admin = fresh_redis.client()
    layer = RedisChannelLayer(hosts=[fresh_redis.url], capacity=5000)
    await layer.send("fill", {"i": -1})  # loads the script before the limit is set
    limit = _used_memory(admin) + 4 * MB
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", limit)
    payload = "x" * 20_000
    sent = 0
    with pytest.raises(OutOfMemoryError) as refused:
        while sent < 1000:  # 20 MB: far past the limit
            await layer.send("fill", {"i": sent, "p": payload})
            sent += 1
    assert isinstance(refused.value, ResponseError)
    assert str(refused.value).startswith("OOM ")
    assert 100 < sent < 1000
    # Every accepted send is there, the refused one is not.
    assert admin.zcard("asgifill") == sent + 1
    # Taking the messages out frees the memory, and sends are accepted again.
    for i in range(-1, sent):
        assert (await layer.receive("fill"))["i"] == i
    await layer.send("fill", {"i": "again"})
    assert await layer.receive("fill") == {"i": "again"}
    await layer.flush()


async def test_refused_send_group_send_and_group_add_write_nothing(fresh_redis):
    admin = fresh_redis.client()
    layer = RedisChannelLayer(hosts=[fresh_redis.url])
    local = await layer.new_channel()
    # Two destinations per group: a general channel and one process key.
    await layer.group_add("room", "chat.a")
    await layer.group_add("room", local)
    await layer.group_add("lobby", "chat.b")
    await layer.send("chat.a", {"n": "before"})
    await layer.group_send("room", {"n": "room before"})  # leaves a remembered plan
    # An expired message on chat.b (as an older send would leave it): the prune of a
    # group_send that went through would remove it.
    admin.zadd("asgichat.b", {b"expired": time.time() - 3600})
    admin.expire("asgichat.b", 60)
    _over_the_limit(admin)
    before = _snapshot(admin)
    assert admin.zcard("asgichat.b") == 1

    calls = {
        "send": layer.send("chat.a", {"n": "oom"}),
        "send to a new key": layer.send("chat.new", {"n": "oom"}),
        "group_send with a plan": layer.group_send("room", {"n": "oom"}),
        "group_send without one": layer.group_send("lobby", {"n": "oom"}),
        "group_add": layer.group_add("room", "chat.c"),
        "group_add to a new group": layer.group_add("hall", "chat.c"),
    }
    for what, call in calls.items():
        with pytest.raises(OutOfMemoryError) as refused:
            await call
        assert isinstance(refused.value, ResponseError), what
        _assert_unchanged(admin, before)

    # Memory freed: everything works again, and the delayed pruning happens.
    admin.delete("filler")
    await layer.send("chat.a", {"n": "after"})
    await layer.group_send("room", {"n": "room after"})
    await layer.group_send("lobby", {"n": "lobby after"})
    await layer.group_add("room", "chat.c")
    await layer.group_send("room", {"n": "room again"})
    assert [await layer.receive("chat.a") for _ in range(5)] == [
        {"n": "before"},
        {"n": "room before"},
        {"n": "after"},
        {"n": "room after"},
        {"n": "room again"},
    ]
    assert [await layer.receive(local) for _ in range(3)] == [
        {"n": "room before"},
        {"n": "room after"},
        {"n": "room again"},
    ]
    assert await layer.receive("chat.c") == {"n": "room again"}
    assert admin.zrange("asgichat.b", 0, -1) != [b"expired"]
    assert await layer.receive("chat.b") == {"n": "lobby after"}
    assert admin.zcard("asgichat.b") == 0
    await layer.flush()


async def test_pubsub_layer_keeps_publishing_when_redis_is_full(fresh_redis):
    # PUBLISH is not a memory-growing command to Redis: it goes through at maxmemory,
    # and what bounds it is the subscribers' client-output-buffer-limit.
    admin = fresh_redis.client()
    layer = RedisPubSubChannelLayer(hosts=[fresh_redis.url])
    channel = await layer.new_channel()  # subscribed from here on
    await layer.send(channel, {"n": 0})
    assert await asyncio.wait_for(layer.receive(channel), 5) == {"n": 0}
    _over_the_limit(admin)
    await layer.send(channel, {"n": 1})
    assert await asyncio.wait_for(layer.receive(channel), 5) == {"n": 1}
    await layer.close()
