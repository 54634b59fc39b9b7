"""RESP3 (``protocol: 3``) for both layers, asked for in an address URL or a host dict.

In RESP3 hiredis returns pushed pub/sub messages as ``hiredis.PushNotification`` and
ZRANGE WITHSCORES / a counted ZPOPMIN as nested [member, score] pairs with double scores.
Every message sent must arrive exactly once.
"""

from __future__ import annotations

import asyncio

import pytest
import redis

from channels_redis_fast.connection import PUSH_TYPE
from channels_redis_fast.core import RedisChannelLayer
from channels_redis_fast.pubsub import RedisPubSubChannelLayer

COUNT = 60


def _hosts(url: str, form: str) -> list:
    if form == "url":
        return [f"{url}?protocol=3"]
    return [{"address": url, "protocol": 3}]


def _clients(url: str) -> dict[int, int | None]:
    """Client id -> RESP version of the other clients of a server (CLIENT LIST's ``resp``,
    Redis 7+; None on older servers, which do not list it)."""
    client = redis.Redis.from_url(url, protocol=2)
    try:
        me = client.client_id()
        return {
            int(e["id"]): int(e["resp"]) if "resp" in e else None
            for e in client.client_list()
            if int(e["id"]) != me
        }
    finally:
        client.close()


def _hello_calls(url: str) -> int:
    client = redis.Redis.from_url(url, protocol=2)
    try:
        return int(client.info("commandstats").get("cmdstat_hello", {}).get("calls", 0))
    finally:
        client.close()


def _assert_layer_speaks_resp3(url: str, before: dict[int, int | None], hellos_before: int) -> None:
    """Every connection opened since ``before`` (the layer's) speaks RESP3."""
    opened = {client_id: resp for client_id, resp in _clients(url).items() if client_id not in before}
    assert opened, "the layer holds no connection"
    if None not in opened.values():
        assert set(opened.values()) == {3}
    else:
        # Redis 6.2 lists no protocol; redis-py sends HELLO only to switch to RESP3, and this
        # private server has no other client that could have sent one.
        assert _hello_calls(url) - hellos_before >= len(opened)


def _resp3_layer(layer_class, url: str, form: str):
    """``layer_class`` asking for RESP3, or None where hiredis < 3 refuses it (checked)."""
    if PUSH_TYPE is None:  # hiredis < 3 cannot tell pushes from replies: refused up front
        with pytest.raises(ValueError, match="hiredis >= 3.0"):
            layer_class(hosts=_hosts(url, form))
        return None
    return layer_class(hosts=_hosts(url, form))


@pytest.mark.parametrize("form", ["url", "dict"])
async def test_core_layer_speaks_resp3(fresh_redis, form):
    redis_url = fresh_redis.url  # a private server: no other test's clients in CLIENT LIST
    before = _clients(redis_url)
    hellos_before = _hello_calls(redis_url)
    layer = _resp3_layer(RedisChannelLayer, redis_url, form)
    if layer is None:
        return
    try:
        # A process channel: its pump reads batches with ZRANGE WITHSCORES.
        channel = await layer.new_channel()
        for n in range(COUNT):
            await layer.send(channel, {"type": "resp3.specific", "n": n})
        got = [(await asyncio.wait_for(layer.receive(channel), 5))["n"] for _ in range(COUNT)]
        assert got == list(range(COUNT))

        # A shared work queue with several waiting receivers: BZPOPMIN plus a counted ZPOPMIN.
        receivers = [asyncio.ensure_future(layer.receive("resp3.work")) for _ in range(COUNT)]
        for n in range(COUNT):
            await layer.send("resp3.work", {"type": "resp3.work", "n": n})
        done = await asyncio.wait_for(asyncio.gather(*receivers), 10)
        assert sorted(message["n"] for message in done) == list(range(COUNT))

        # Groups: membership read with ZRANGE, delivery by script.
        members = [await layer.new_channel() for _ in range(3)]
        for member in members:
            await layer.group_add("resp3group", member)
        await layer.group_send("resp3group", {"type": "resp3.group"})
        for member in members:
            assert (await asyncio.wait_for(layer.receive(member), 5))["type"] == "resp3.group"
        _assert_layer_speaks_resp3(redis_url, before, hellos_before)
        await layer.flush()
    finally:
        await layer.close_pools()


@pytest.mark.parametrize("form", ["url", "dict"])
async def test_pubsub_layer_speaks_resp3(fresh_redis, form):
    redis_url = fresh_redis.url  # a private server: no other test's clients in CLIENT LIST
    before = _clients(redis_url)
    hellos_before = _hello_calls(redis_url)
    layer = _resp3_layer(RedisPubSubChannelLayer, redis_url, form)
    if layer is None:
        return
    try:
        channel = await layer.new_channel()
        for n in range(COUNT):
            await layer.send(channel, {"type": "resp3.pubsub", "n": n})
        got = [(await asyncio.wait_for(layer.receive(channel), 5))["n"] for _ in range(COUNT)]
        assert got == list(range(COUNT))

        await layer.group_add("resp3ps", channel)
        await layer.group_send("resp3ps", {"type": "resp3.pubsub.group"})
        assert (await asyncio.wait_for(layer.receive(channel), 5))["type"] == "resp3.pubsub.group"
        await layer.group_discard("resp3ps", channel)
        # Nothing else arrived: every message exactly once.
        await layer.send(channel, {"type": "resp3.last"})
        assert (await asyncio.wait_for(layer.receive(channel), 5))["type"] == "resp3.last"
        _assert_layer_speaks_resp3(redis_url, before, hellos_before)
    finally:
        await layer.flush()
        await layer.close()


@pytest.mark.parametrize("protocol", [1, 4, "three"])
def test_unknown_protocol_is_refused_at_construction(protocol):
    for layer_class in (RedisChannelLayer, RedisPubSubChannelLayer):
        with pytest.raises(ValueError, match="protocol"):
            layer_class(hosts=[{"address": "redis://127.0.0.1:1", "protocol": protocol}])
        with pytest.raises(ValueError, match="protocol"):
            layer_class(hosts=[f"redis://127.0.0.1:1?protocol={protocol}"])
