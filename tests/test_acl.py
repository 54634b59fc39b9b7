"""Least-privilege Redis users: the layers work under the ACL rules the README documents.

Redis 7 checks the commands a Lua script runs against the caller's ACL too, so the core
rule lists what SEND/GROUP_SEND call (ZREMRANGEBYSCORE, ZCARD, ZADD, EXPIRE) as well.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from channels_redis_fast.core import RedisChannelLayer
from channels_redis_fast.group_plan import SNAPSHOT_MIN_MEMBERS
from channels_redis_fast.pubsub import RedisPubSubChannelLayer
from channels_redis_fast.testing import RedisServer, server_version

PASSWORD = "crf-acl-password"

#: The README's rule for the core layer (keys under the default prefix "asgi").
CORE_RULE = (
    "resetkeys ~asgi* resetchannels -@all "
    "+evalsha +eval +bzpopmin +zpopmin +zadd +zrem +zrange +zcard +zdiff +zremrangebyscore "
    "+expire +scan +type +unlink +client|id +client|unblock"
)
#: Without CLIENT ID/UNBLOCK: stopping a receive waits out its block (brpop_timeout).
CORE_RULE_NO_UNBLOCK = CORE_RULE.replace(" +client|id +client|unblock", "")
#: The rule of releases before group_send's snapshot check (no ZDIFF).
CORE_RULE_NO_ZDIFF = CORE_RULE.replace(" +zdiff", "")
#: The README's rule for the pub/sub layer: its own channels (new_channel, groups) are
#: "asgi…"; channels your code names itself need their own patterns ("&chat.*").
PUBSUB_RULE = "resetkeys resetchannels &asgi* &chat.* -@all +publish +subscribe +unsubscribe +ping"


@pytest.fixture(scope="module")
def acl_server():
    server = RedisServer()
    admin = server.client()
    for name, rule in (
        ("crf", CORE_RULE),
        ("crf-nounblock", CORE_RULE_NO_UNBLOCK),
        ("crf-nozdiff", CORE_RULE_NO_ZDIFF),
        ("crf-pubsub", PUBSUB_RULE),
    ):
        admin.execute_command("ACL", "SETUSER", name, "reset", "on", f">{PASSWORD}", *rule.split())
    yield server
    server.close()


def _url(server: RedisServer, user: str) -> str:
    return f"redis://{user}:{PASSWORD}@{server.host}:{server.port}"


def _denied(admin: redis.Redis, user: str) -> list:
    # redis-py's handshake sends CLIENT SETINFO (Redis >= 7.2) and ignores a refusal;
    # any other denial is a command the rule is missing.  Before Redis 7 the log names the
    # command without its subcommand, so there a refused "client" may be that handshake too
    # (the rule's CLIENT subcommands are checked on the newer servers).
    unnamed_subcommands = server_version() < (7, 0)

    def handshake(entry: dict) -> bool:
        command = str(entry.get("object", "")).lower()
        return "setinfo" in command or (unnamed_subcommands and command == "client")

    return [entry for entry in admin.acl_log() if entry.get("username") == user and not handshake(entry)]


@pytest.fixture
def admin(acl_server):
    acl_server.flushall()
    acl_server.client().execute_command("ACL", "LOG", "RESET")
    return acl_server.client()


@pytest.mark.asyncio
async def test_core_layer_under_least_privilege(acl_server, admin):
    layer = RedisChannelLayer(hosts=[_url(acl_server, "crf")])
    try:
        await layer.send("work", {"type": "w", "n": 1})
        assert await asyncio.wait_for(layer.receive("work"), 5) == {"type": "w", "n": 1}
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "direct"})
        assert (await asyncio.wait_for(layer.receive(channel), 5))["type"] == "direct"
        await layer.group_add("room", channel)
        await layer.group_send("room", {"type": "g"})
        assert (await asyncio.wait_for(layer.receive(channel), 5))["type"] == "g"
        await layer.group_discard("room", channel)
        await layer.group_add("room", channel)
        await layer.send("leftover", {"type": "l"})
        assert admin.exists("asgileftover", "asgi:group:room") == 2
        admin.set("unrelated", "stays")
        await layer.flush()  # SCAN + TYPE + UNLINK
        assert admin.exists("asgileftover", "asgi:group:room") == 0
        assert admin.get("unrelated") == b"stays"
        # A receive stopped by close_pools: the pump is unblocked (CLIENT UNBLOCK), so
        # the close does not wait for the block to run out.
        layer.brpop_timeout = 20
        receiving = asyncio.ensure_future(layer.receive(await layer.new_channel()))
        await asyncio.sleep(0.3)
        start = time.monotonic()
        await layer.close_pools()
        with pytest.raises(redis.ConnectionError):
            await asyncio.wait_for(receiving, 5)
        assert time.monotonic() - start < 3
    finally:
        await layer.close_pools()
    assert _denied(admin, "crf") == []


@pytest.mark.asyncio
async def test_core_layer_without_client_unblock(acl_server, admin):
    layer = RedisChannelLayer(hosts=[_url(acl_server, "crf-nounblock")])
    layer.brpop_timeout = 1  # how long a stop may take without CLIENT UNBLOCK
    try:
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "a"})
        assert (await asyncio.wait_for(layer.receive(channel), 5))["type"] == "a"
        receiving = asyncio.ensure_future(layer.receive(channel))
        await asyncio.sleep(0.3)
        await asyncio.wait_for(layer.close_pools(), 5)
        with pytest.raises(redis.ConnectionError):
            await asyncio.wait_for(receiving, 5)
        # Usable again afterwards.
        await layer.send(channel, {"type": "b"})
        assert (await asyncio.wait_for(layer.receive(channel), 5))["type"] == "b"
    finally:
        await layer.close_pools()


@pytest.mark.asyncio
async def test_group_send_without_zdiff(acl_server, admin):
    # Under an earlier release's rule the script's ZDIFF is refused and the remembered plan
    # is checked by its digest instead: every send still reaches the members.
    layer = RedisChannelLayer(hosts=[_url(acl_server, "crf-nozdiff")])
    try:
        channels = [await layer.new_channel() for _ in range(SNAPSHOT_MIN_MEMBERS)]  # keeps a snapshot
        for channel in channels:
            await layer.group_add("room", channel)
        for n in range(4):
            await layer.group_send("room", {"type": "g", "n": n})
            for channel in channels:
                assert await asyncio.wait_for(layer.receive(channel), 5) == {"type": "g", "n": n}
        assert "room" in layer._group_plans
        # The refused quick way leaves its snapshot to expire (not refreshed each send),
        # so the refusal is retried, and logged, only once per snapshot ttl.
        assert 0 < admin.ttl(b"asgi:group:room$plan") <= 300
        await asyncio.sleep(1.1)
        await layer.group_send("room", {"type": "g", "n": 9})
        assert admin.ttl(b"asgi:group:room$plan") < 300
    finally:
        await layer.flush()
    refused = {entry["object"] for entry in _denied(admin, "crf-nozdiff")}
    assert refused == {"zdiff"}


def test_user_cannot_keys_or_flush(acl_server, admin):
    admin.set("asgi-guard", "1")
    for user in ("crf", "crf-pubsub"):
        client = redis.Redis(host=acl_server.host, port=acl_server.port, username=user, password=PASSWORD)
        try:
            with pytest.raises(redis.exceptions.NoPermissionError):
                client.keys("asgi*")
            with pytest.raises(redis.exceptions.NoPermissionError):
                client.flushall()
            with pytest.raises(redis.exceptions.NoPermissionError):
                client.flushdb()
            with pytest.raises(redis.exceptions.NoPermissionError):
                client.get("other")
        finally:
            client.close()
    assert admin.get("asgi-guard") == b"1"


@pytest.mark.asyncio
async def test_pubsub_layer_under_least_privilege(acl_server, admin):
    layer = RedisPubSubChannelLayer(hosts=[_url(acl_server, "crf-pubsub")])
    try:
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "p"})
        assert (await asyncio.wait_for(layer.receive(channel), 5))["type"] == "p"
        await layer.group_add("room", channel)
        await layer.group_send("room", {"type": "pg"})
        assert (await asyncio.wait_for(layer.receive(channel), 5))["type"] == "pg"
        receiving = asyncio.ensure_future(layer.receive("chat.lobby"))
        await asyncio.sleep(0.2)
        await layer.send("chat.lobby", {"type": "named"})
        assert (await asyncio.wait_for(receiving, 5))["type"] == "named"
        await layer.group_discard("room", channel)
        await layer.flush()
    finally:
        await layer.close()
    assert _denied(admin, "crf-pubsub") == []
