"""Every ``hosts`` form channels_redis 4.3 accepts, through a real send/receive round trip."""
# These tests are about what reaches Redis: their layers run with local_delivery off
# (issue 16; tests/test_local_delivery.py covers the in-process path).


from __future__ import annotations

import asyncio
import logging
import uuid

import pytest
import redis

from channels_redis_fast.connection import PUSH_TYPE
from channels_redis_fast.core import RedisChannelLayer
from channels_redis_fast.testing import RedisServer
from conftest import receive_soon, until


async def round_trip(layer):
    """Direct, worker-channel and group messages; returns the process channel used."""
    tag = uuid.uuid4().hex
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "direct", "tag": tag})
    await layer.send("hosts.worker", {"type": "worker", "tag": tag})
    await layer.group_add("hosts-group", channel)
    await layer.group_send("hosts-group", {"type": "group", "tag": tag})
    assert await receive_soon(layer, channel) == {"type": "direct", "tag": tag}
    assert await receive_soon(layer, channel) == {"type": "group", "tag": tag}
    assert await receive_soon(layer, "hosts.worker") == {"type": "worker", "tag": tag}
    return channel


async def check_lands_then_round_trip(layer, client):
    """A message sent through ``layer`` is visible via ``client``, then is received."""
    channel = await layer.new_channel()
    key = "asgi" + layer.non_local_name(channel)
    await layer.send(channel, {"type": "probe"})
    assert client.zcard(key) == 1
    assert await receive_soon(layer, channel) == {"type": "probe"}
    # Removed by the pump's next write, after the receivers it woke have run (on Python
    # 3.12+ this test's own wait_for resumes before that write).
    await until(lambda: client.exists(key) == 0, what="the delivered message's removal")
    await round_trip(layer)
    await layer.flush()


@pytest.fixture
def client(redis_server, redis_url):
    return redis_server.client()


# ------------------------------------------------------------------------------ URL forms


async def test_redis_url(redis_url, client):
    await check_lands_then_round_trip(RedisChannelLayer(local_delivery=False, hosts=[redis_url]), client)


async def test_redis_url_with_db(redis_server, redis_url, client):
    db3 = redis_server.client(db=3)
    try:
        db3.flushdb()
        await check_lands_then_round_trip(RedisChannelLayer(local_delivery=False, hosts=[redis_url + "/3"]), db3)
        # nothing reached db 0
        assert client.dbsize() == 0
    finally:
        db3.flushdb()
        db3.close()


async def test_host_port_tuple(redis_server, redis_url, client):
    layer = RedisChannelLayer(local_delivery=False, hosts=[(redis_server.host, redis_server.port)])
    assert layer.hosts == [{"host": redis_server.host, "port": redis_server.port}]
    await check_lands_then_round_trip(layer, client)
    layer = RedisChannelLayer(local_delivery=False, hosts=[[redis_server.host, redis_server.port]])
    await check_lands_then_round_trip(layer, client)


async def test_address_dict_with_redis_py_options(redis_url, client):
    name = "crf-hosts-" + uuid.uuid4().hex[:8]
    layer = RedisChannelLayer(
        local_delivery=False,
        hosts=[{"address": redis_url, "client_name": name, "socket_connect_timeout": 3, "retry_on_timeout": True}]
    )
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "named"})
    # redis-py made the connection, so its options (here CLIENT SETNAME) applied
    assert any(c.get("name") == name for c in client.client_list())
    assert await receive_soon(layer, channel) == {"type": "named"}
    await round_trip(layer)
    await layer.flush()


async def test_plain_connection_kwargs_dict(redis_server, redis_url, client):
    db5 = redis_server.client(db=5)
    try:
        db5.flushdb()
        layer = RedisChannelLayer(local_delivery=False, hosts=[{"host": redis_server.host, "port": redis_server.port, "db": 5}])
        await check_lands_then_round_trip(layer, db5)
        assert client.dbsize() == 0
    finally:
        db5.flushdb()
        db5.close()


@pytest.fixture(scope="module")
def unix_server():
    server = RedisServer(unixsocket=True)
    yield server
    server.close()


async def test_unix_socket(unix_server):
    unix_server.flushall()
    client = unix_server.client()
    await check_lands_then_round_trip(RedisChannelLayer(local_delivery=False, hosts=[unix_server.unix_url]), client)
    db2 = unix_server.client(db=2)
    try:
        await check_lands_then_round_trip(
            RedisChannelLayer(local_delivery=False, hosts=[{"address": unix_server.unix_url + "?db=2"}]), db2
        )
        assert client.dbsize() == 0
    finally:
        db2.close()


# ------------------------------------------------------------------------------ auth


@pytest.fixture(scope="module")
def auth_server():
    server = RedisServer(password="admin-pw-" + "x" * 8)
    server.client().acl_setuser(
        "alice", enabled=True, passwords=["+alice-pw"], keys=["*"], channels=["*"], commands=["+@all"]
    )
    yield server
    server.close()


async def test_password_in_url(auth_server):
    auth_server.flushall()
    assert auth_server.url.startswith("redis://:admin-pw-")
    await check_lands_then_round_trip(RedisChannelLayer(local_delivery=False, hosts=[auth_server.url]), auth_server.client())


async def test_acl_user_forms(auth_server):
    auth_server.flushall()
    client = auth_server.client()
    host, port = auth_server.host, auth_server.port
    for hosts in (
        [f"redis://alice:alice-pw@{host}:{port}"],
        [{"address": f"redis://{host}:{port}", "username": "alice", "password": "alice-pw"}],
        [{"host": host, "port": port, "username": "alice", "password": "alice-pw"}],
    ):
        layer = RedisChannelLayer(local_delivery=False, hosts=hosts)
        await check_lands_then_round_trip(layer, client)


@pytest.mark.parametrize(
    "make_hosts",
    [
        lambda s: [f"redis://alice:wrong@{s.host}:{s.port}"],
        lambda s: [f"redis://{s.host}:{s.port}"],  # no password at all
        lambda s: [{"host": s.host, "port": s.port, "password": "wrong"}],
    ],
    ids=["wrong-acl-password", "no-password", "wrong-requirepass"],
)
async def test_bad_credentials_fail_clearly(auth_server, make_hosts):
    auth_server.flushall()
    layer = RedisChannelLayer(local_delivery=False, hosts=make_hosts(auth_server))
    with pytest.raises(redis.exceptions.ConnectionError) as info:
        await asyncio.wait_for(layer.send("auth.test", {"type": "x"}), 15)
    assert isinstance(info.value, redis.exceptions.AuthenticationError) or "auth" in str(info.value).lower()
    assert auth_server.client().dbsize() == 0
    await layer.close_pools()


# ------------------------------------------------------------------------------ sentinel, RESP3


async def test_sentinel_hosts(sentinel, sentinel_hosts):
    entry = sentinel_hosts[0]
    assert set(entry) >= {"sentinels", "master_name", "sentinel_kwargs"}
    layer = RedisChannelLayer(local_delivery=False, hosts=sentinel_hosts)
    await check_lands_then_round_trip(layer, sentinel.master_server.client())


async def test_protocol_3_requested(redis_url, client):
    if PUSH_TYPE is None:  # hiredis < 3 cannot tell pushes from replies: refused up front
        with pytest.raises(ValueError, match="hiredis >= 3.0"):
            RedisChannelLayer(hosts=[{"address": redis_url, "protocol": 3}])
        return
    layer = RedisChannelLayer(local_delivery=False, hosts=[{"address": redis_url, "protocol": 3}])
    await check_lands_then_round_trip(layer, client)


# ------------------------------------------------------------------------------ timeouts


async def test_idle_receive_outlives_socket_timeouts(redis_url, caplog):
    # redis-py 8 defaults socket_timeout to 5 s, as does an explicit 5: stock
    # channels_redis raises TimeoutError from an idle receive after ~5 s (its #422).
    layers = {
        "default": RedisChannelLayer(local_delivery=False, hosts=[redis_url]),
        "socket_timeout=5": RedisChannelLayer(local_delivery=False, hosts=[{"address": redis_url, "socket_timeout": 5}]),
        "plain-kwargs": RedisChannelLayer(
            local_delivery=False,
            hosts=[{"host": redis_url.split("//")[1].split(":")[0], "port": int(redis_url.rsplit(":", 1)[1]), "socket_timeout": 5}]
        ),
    }
    channels_ = {name: await layer.new_channel() for name, layer in layers.items()}

    async def late_sender():
        await asyncio.sleep(6.5)
        for name, layer in layers.items():
            await layer.send(channels_[name], {"type": "late", "for": name})
            await layer.send(f"idle.{name.replace('=', '-')}", {"type": "late-worker", "for": name})

    with caplog.at_level(logging.WARNING, logger="channels_redis_fast"):
        sender = asyncio.ensure_future(late_sender())
        received = await asyncio.wait_for(
            asyncio.gather(
                *[layer.receive(channels_[name]) for name, layer in layers.items()],
                *[layer.receive(f"idle.{name.replace('=', '-')}") for name, layer in layers.items()],
            ),
            12,
        )
        await sender
    names = list(layers)
    assert received == [{"type": "late", "for": n} for n in names] + [
        {"type": "late-worker", "for": n} for n in names
    ]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    for layer in layers.values():
        await layer.flush()


# ------------------------------------------------------------------------------ shards


async def test_several_shards(redis_shards, shard_urls):
    layer = RedisChannelLayer(local_delivery=False, hosts=shard_urls)
    other = RedisChannelLayer(local_delivery=False, hosts=shard_urls)
    assert layer.ring_size == 3
    clients = [s.client() for s in redis_shards]
    try:
        # direct: each process key lives on the shard of its non-local name
        channels_ = [await layer.new_channel() for _ in range(6)] + [await other.new_channel() for _ in range(6)]
        for i, channel in enumerate(channels_):
            owner = layer if i < 6 else other
            await owner.send(channel, {"type": "direct", "i": i})
        for i, channel in enumerate(channels_):
            owner = layer if i < 6 else other
            key = "asgi" + owner.non_local_name(channel)
            index = owner.consistent_hash(owner.non_local_name(channel))
            assert clients[index].zcard(key) >= 1
            assert all(not c.exists(key) for j, c in enumerate(clients) if j != index)
        for i, channel in enumerate(channels_):
            owner = layer if i < 6 else other
            assert await receive_soon(owner, channel) == {"type": "direct", "i": i}
        # worker channel: round robin over every shard, all received
        for i in range(9):
            await layer.send("sharded.worker", {"i": i})
        assert [c.zcard("asgisharded.worker") for c in clients] == [3, 3, 3]
        got = sorted([(await receive_soon(other, "sharded.worker"))["i"] for _ in range(9)])
        assert got == list(range(9))
        # groups: the group key on the group's shard, members across both processes
        for channel in channels_:
            owner = layer if channel.startswith(f"specific.{layer.client_prefix}") else other
            await owner.group_add("sharded-group", channel)
        await layer.group_add("sharded-group", "sharded.worker")
        group_index = layer.consistent_hash("sharded-group")
        assert clients[group_index].zcard(b"asgi:group:sharded-group") == 13
        await other.group_send("sharded-group", {"type": "group"})
        for i, channel in enumerate(channels_):
            owner = layer if i < 6 else other
            assert await receive_soon(owner, channel) == {"type": "group"}
        # ``other`` received on this work queue last and its pumps may still be blocked
        # on it; what they pop with nobody waiting goes back to Redis, so ``layer``
        # gets the group message (test_layer_api.py::test_abandoned_receive_...).
        assert await receive_soon(layer, "sharded.worker") == {"type": "group"}
        await layer.group_discard("sharded-group", channels_[0])
        assert clients[group_index].zcard(b"asgi:group:sharded-group") == 12
    finally:
        await layer.flush()
        await other.flush()
    assert sum(c.dbsize() for c in clients) == 0


async def test_mixed_host_forms_as_shards(redis_shards, shard_urls):
    a, b, c = redis_shards
    hosts = [a.url, (b.host, b.port), {"address": c.url, "socket_timeout": None}]
    layer = RedisChannelLayer(local_delivery=False, hosts=hosts)
    try:
        for _ in range(3):
            await round_trip(layer)
        for i in range(3):
            await layer.send("mixed.worker", {"i": i})
        assert [s.client().zcard("asgimixed.worker") for s in redis_shards] == [1, 1, 1]
        assert sorted([(await receive_soon(layer, "mixed.worker"))["i"] for _ in range(3)]) == [0, 1, 2]
    finally:
        await layer.flush()


# ------------------------------------------------------------------------------ bad hosts


@pytest.mark.parametrize("hosts", ["redis://127.0.0.1:6380", b"redis://127.0.0.1:6380"])
def test_bare_string_hosts_raise(hosts):
    with pytest.raises(ValueError, match="list of Redis hosts"):
        RedisChannelLayer(local_delivery=False, hosts=hosts)


def test_shard_index_out_of_range():
    layer = RedisChannelLayer(local_delivery=False, hosts=["redis://127.0.0.1:1"])
    with pytest.raises(ValueError, match="only 1 hosts"):
        layer.connection(1)
