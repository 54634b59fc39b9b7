"""The drop-in surface of RedisChannelLayer, checked against stock channels_redis 4.3.

Every test runs against a real private Redis (the ``redis_url`` fixture); where the
answer is "the same as channels_redis", the stock package is asked directly.
"""
# These tests are about what reaches Redis: their layers run with local_delivery off
# (issue 16; tests/test_local_delivery.py covers the in-process path).


from __future__ import annotations

import asyncio
import inspect
import logging
import re

import channels.exceptions
import channels.layers
import channels_redis.core as stock_core
import channels_redis.serializers as stock_serializers
import channels_redis.utils as stock_utils
import pytest

from channels_redis_fast import core, serializers, utils
from channels_redis_fast.core import ChannelFull, RedisChannelLayer
from conftest import nothing_arrives, receive_soon


@pytest.fixture
async def layer(redis_url):
    layer = RedisChannelLayer(local_delivery=False, hosts=[redis_url], capacity=3, channel_capacity={"tiny": 1})
    yield layer
    await layer.flush()


# ------------------------------------------------------------------------------ configuration


def test_constructor_signature_matches_stock():
    ours = inspect.signature(RedisChannelLayer.__init__).parameters
    stock = inspect.signature(stock_core.RedisChannelLayer.__init__).parameters
    # Stock's parameters in stock's order; ours adds only local_delivery, last (issue 16).
    assert list(ours) == [*stock, "local_delivery"]
    assert ours["local_delivery"].default is True
    for name, param in stock.items():
        assert ours[name].default == param.default, name
        assert ours[name].kind == param.kind, name
    # the documented defaults, spelled out
    layer = RedisChannelLayer()
    assert layer.prefix == "asgi"
    assert layer.expiry == 60
    assert layer.group_expiry == 86400
    assert layer.capacity == 100
    assert layer.hosts == [{"address": "redis://localhost:6379"}]
    assert layer.ring_size == 1


@pytest.mark.parametrize("key", ["connection_kwargs", "stats_prefix", "max_connections", "hots"])
def test_unknown_config_key_raises_type_error(key):
    with pytest.raises(TypeError):
        RedisChannelLayer(local_delivery=False, hosts=["redis://127.0.0.1:1"], **{key: 1})
    # same as stock
    with pytest.raises(TypeError):
        stock_core.RedisChannelLayer(hosts=["redis://127.0.0.1:1"], **{key: 1})


def test_prefix_must_be_str():
    with pytest.raises(AssertionError):
        RedisChannelLayer(prefix=b"asgi")


def test_user_facing_surface():
    layer = RedisChannelLayer(local_delivery=False, hosts=["redis://127.0.0.1:1"], prefix="pre", expiry=7, group_expiry=9)
    for name in (
        "send",
        "receive",
        "new_channel",
        "group_add",
        "group_discard",
        "group_send",
        "flush",
        "close_pools",
        "wait_received",
    ):
        assert inspect.iscoroutinefunction(getattr(layer, name)), name
    for name in ("serialize", "deserialize", "consistent_hash", "_group_key", "get_capacity"):
        assert callable(getattr(layer, name)), name
    assert layer.extensions == ["groups", "flush"]
    assert isinstance(layer, channels.layers.BaseChannelLayer)
    assert re.fullmatch(r"[0-9a-f]{32}", layer.client_prefix)
    assert RedisChannelLayer().client_prefix != layer.client_prefix
    assert len(layer.receive_buffer) == 0
    assert (layer.capacity, layer.expiry, layer.group_expiry, layer.prefix) == (100, 7, 9, "pre")
    assert layer.hosts == [{"address": "redis://127.0.0.1:1"}]
    assert layer.ring_size == 1
    assert layer.channel_capacity == []
    assert layer._group_key("chat") == b"pre:group:chat"
    assert str(layer) == "RedisChannelLayer(hosts=[{'address': 'redis://127.0.0.1:1'}])"
    assert layer.deserialize(layer.serialize({"a": [1, b"x"]})) == {"a": [1, b"x"]}
    assert layer.consistent_hash("anything") == 0
    # the stock layer has the same surface
    stock = stock_core.RedisChannelLayer(hosts=["redis://127.0.0.1:1"], prefix="pre")
    assert stock._group_key("chat") == layer._group_key("chat")
    assert stock.extensions == layer.extensions


def test_channel_full_is_channels_exception():
    assert core.ChannelFull is channels.exceptions.ChannelFull
    assert ChannelFull is stock_core.ChannelFull


# ------------------------------------------------------------------------------ new_channel


async def test_new_channel_format():
    layer = RedisChannelLayer(local_delivery=False, hosts=["redis://127.0.0.1:1"])
    name = await layer.new_channel()
    assert len(name) == 74
    assert re.fullmatch(r"specific\.[0-9a-f]{32}![0-9a-f]{32}", name)
    assert name.startswith(f"specific.{layer.client_prefix}!")
    assert layer.require_valid_channel_name(name)
    other = await layer.new_channel()
    assert other != name and other.startswith(f"specific.{layer.client_prefix}!")
    custom = await layer.new_channel("websocket.abc")
    assert re.fullmatch(rf"websocket\.abc\.{layer.client_prefix}![0-9a-f]{{32}}", custom)


# ------------------------------------------------------------------------------ send / receive


async def test_send_receive_normal_channel(layer, sync_redis):
    await layer.send("test.channel", {"type": "test.message", "text": "hi", "b": b"\x00\xff"})
    assert sync_redis.zcard("asgitest.channel") == 1
    assert await receive_soon(layer, "test.channel") == {"type": "test.message", "text": "hi", "b": b"\x00\xff"}
    assert sync_redis.exists("asgitest.channel") == 0


async def test_send_receive_process_channel(layer, sync_redis):
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "test.message", "n": 1})
    # the message sits in the process key, tagged with its full channel name
    key = "asgi" + layer.non_local_name(channel)
    (member,) = sync_redis.zrange(key, 0, -1)
    assert layer.deserialize(member)["__asgi_channel__"] == channel
    message = await receive_soon(layer, channel)
    assert message == {"type": "test.message", "n": 1}


async def test_send_does_not_modify_message(layer):
    channel = await layer.new_channel()
    message = {"type": "x"}
    await layer.send(channel, message)
    assert message == {"type": "x"}
    assert await receive_soon(layer, channel) == {"type": "x"}


async def test_fifo_order(redis_url):
    layer = RedisChannelLayer(local_delivery=False, hosts=[redis_url])
    try:
        channel = await layer.new_channel()
        for i in range(20):
            await layer.send("fifo.normal", {"i": i})
            await layer.send(channel, {"i": i})
        assert [(await receive_soon(layer, "fifo.normal"))["i"] for _ in range(20)] == list(range(20))
        assert [(await receive_soon(layer, channel))["i"] for _ in range(20)] == list(range(20))
    finally:
        await layer.flush()


async def test_abandoned_receive_does_not_steal_work(redis_url):
    # Two worker processes share a work queue. A gives up on a receive (a timeout);
    # B then waits on the queue and must get the next message.
    a = RedisChannelLayer(local_delivery=False, hosts=[redis_url])
    b = RedisChannelLayer(local_delivery=False, hosts=[redis_url])
    try:
        await nothing_arrives(a, "shared.work", 0.3)
        waiting = asyncio.ensure_future(b.receive("shared.work"))
        await asyncio.sleep(0.2)
        await b.send("shared.work", {"type": "job"})
        assert await asyncio.wait_for(waiting, 3) == {"type": "job"}
    finally:
        await a.flush()
        await b.flush()

async def test_capacity_raises_channel_full(layer, sync_redis):
    for i in range(3):
        await layer.send("cap.channel", {"i": i})
    with pytest.raises(channels.exceptions.ChannelFull):
        await layer.send("cap.channel", {"i": 3})
    assert sync_redis.zcard("asgicap.channel") == 3
    # the tiny channel has its own capacity
    await layer.send("tiny", {"i": 0})
    with pytest.raises(ChannelFull):
        await layer.send("tiny", {"i": 1})
    # draining makes room again
    assert (await receive_soon(layer, "cap.channel"))["i"] == 0
    await layer.send("cap.channel", {"i": 4})
    assert [(await receive_soon(layer, "cap.channel"))["i"] for _ in range(3)] == [1, 2, 4]


async def test_capacity_process_channel(layer):
    channel = await layer.new_channel()
    for i in range(3):
        await layer.send(channel, {"i": i})
    with pytest.raises(ChannelFull):
        await layer.send(channel, {"i": 3})
    assert [(await receive_soon(layer, channel))["i"] for _ in range(3)] == [0, 1, 2]


async def test_channel_capacity_globs_and_regexes(redis_url):
    config = {
        "http.response!*": 2,
        re.compile(r"^big\."): 5,
        "tiny": 1,
        "web*": 4,
    }
    layer = RedisChannelLayer(local_delivery=False, hosts=[redis_url], capacity=3, channel_capacity=config)
    stock = stock_core.RedisChannelLayer(hosts=[redis_url], capacity=3, channel_capacity=config)
    names = [
        "http.response!abc",
        "http.response",
        "big.one",
        "x.big.one",
        "tiny",
        "tinyx",
        "websocket.send",
        "other",
    ]
    expected = [2, 3, 5, 3, 1, 3, 4, 3]
    assert [layer.get_capacity(n) for n in names] == expected
    assert [stock.get_capacity(n) for n in names] == expected
    try:
        for i in range(5):
            await layer.send("big.queue", {"i": i})
        with pytest.raises(ChannelFull):
            await layer.send("big.queue", {"i": 5})
        for i in range(4):
            await layer.send("websocket.q", {"i": i})
        with pytest.raises(ChannelFull):
            await layer.send("websocket.q", {"i": 4})
        for i in range(3):
            await layer.send("plain.q", {"i": i})
        with pytest.raises(ChannelFull):
            await layer.send("plain.q", {"i": 3})
    finally:
        await layer.flush()


# ------------------------------------------------------------------------------ groups


async def test_group_add_send_discard(redis_url, sync_redis):
    one = RedisChannelLayer(local_delivery=False, hosts=[redis_url])
    two = RedisChannelLayer(local_delivery=False, hosts=[redis_url])
    try:
        a = await one.new_channel()
        b = await two.new_channel()
        await one.group_add("chat", a)
        await two.group_add("chat", b)
        await one.group_add("chat", "worker.queue")
        assert sync_redis.zcard(b"asgi:group:chat") == 3
        assert 86000 < sync_redis.ttl(b"asgi:group:chat") <= 86400
        await one.group_send("chat", {"type": "hello"})
        assert await receive_soon(one, a) == {"type": "hello"}
        assert await receive_soon(two, b) == {"type": "hello"}
        assert await receive_soon(one, "worker.queue") == {"type": "hello"}
        await two.group_discard("chat", b)
        await one.group_discard("chat", "not.a.member")  # a no-op
        assert sync_redis.zcard(b"asgi:group:chat") == 2
        await two.group_send("chat", {"type": "again"})
        assert await receive_soon(one, a) == {"type": "again"}
        await nothing_arrives(two, b, 0.4)
        assert sync_redis.exists("asgi" + two.non_local_name(b)) == 0
    finally:
        await one.flush()
        await two.flush()


async def test_group_send_empty_group_writes_nothing(layer, sync_redis):
    await layer.group_send("nobody", {"type": "x"})
    assert sync_redis.dbsize() == 0


async def test_group_send_bundles_members_of_one_process(redis_url, sync_redis):
    layer = RedisChannelLayer(local_delivery=False, hosts=[redis_url])
    try:
        channels_ = [await layer.new_channel() for _ in range(3)]
        for channel in channels_:
            await layer.group_add("bundle", channel)
        await layer.group_send("bundle", {"type": "fan"})
        key = "asgi" + layer.non_local_name(channels_[0])
        members = sync_redis.zrange(key, 0, -1)
        assert len(members) == 1
        assert sorted(layer.deserialize(members[0])["__asgi_channel__"]) == sorted(channels_)
        for channel in channels_:
            assert await receive_soon(layer, channel) == {"type": "fan"}
    finally:
        await layer.flush()


async def test_group_over_capacity_is_logged(redis_url, caplog):
    layer = RedisChannelLayer(local_delivery=False, hosts=[redis_url], capacity=1)
    try:
        await layer.group_add("crowd", "full.one")
        await layer.group_add("crowd", "full.two")
        await layer.group_add("crowd", "room.three")
        await layer.send("full.one", {"fill": 1})
        await layer.send("full.two", {"fill": 2})
        with caplog.at_level(logging.INFO, logger="channels_redis_fast"):
            await layer.group_send("crowd", {"type": "g"})
        records = [r for r in caplog.records if "over capacity" in r.getMessage()]
        assert len(records) == 1
        assert records[0].levelno == logging.INFO
        assert records[0].getMessage() == "2 of 3 channels over capacity in group crowd"
        # the full channels kept only their old message; the free one got the group's
        assert await receive_soon(layer, "full.one") == {"fill": 1}
        assert await receive_soon(layer, "room.three") == {"type": "g"}
        await nothing_arrives(layer, "full.one", 0.3)
    finally:
        await layer.flush()


# ------------------------------------------------------------------------------ serializers


def test_serializer_registry_matches_stock():
    for fmt, cls in (("json", serializers.JSONSerializer), ("msgpack", serializers.MsgPackSerializer)):
        ours = serializers.registry.get_serializer(fmt)
        assert type(ours) is cls
        assert isinstance(ours, serializers.BaseMessageSerializer)
        stock = stock_serializers.registry.get_serializer(fmt)
        message = {"type": "m", "n": [1, 2], "s": "é"}
        if fmt == "msgpack":
            message["b"] = b"\x00\x01"
        # same bytes without a random prefix, and each side reads the other's
        assert ours.serialize(message) == stock.serialize(message)
        assert stock.deserialize(ours.serialize(message)) == message
        with_prefix = serializers.registry.get_serializer(fmt, random_prefix_length=12)
        stock_prefix = stock_serializers.registry.get_serializer(fmt, random_prefix_length=12)
        data = with_prefix.serialize(message)
        assert len(data) == len(stock_prefix.serialize(message))
        assert stock_prefix.deserialize(data) == message
        assert with_prefix.deserialize(stock_prefix.serialize(message)) == message
    with pytest.raises(TypeError):
        serializers.BaseMessageSerializer()  # abstract


def test_serializer_does_not_exist():
    assert issubclass(serializers.SerializerDoesNotExist, KeyError)
    with pytest.raises(serializers.SerializerDoesNotExist):
        serializers.registry.get_serializer("no-such-format")
    with pytest.raises(KeyError):
        RedisChannelLayer(serializer_format="no-such-format")


def test_register_serializer_rejects_non_serializers():
    with pytest.raises(AssertionError):
        serializers.registry.register_serializer("bogus", object)


class _CountingSerializer(serializers.JSONSerializer):
    calls = {"as_bytes": 0, "from_bytes": 0}

    def as_bytes(self, message, *args, **kwargs):
        type(self).calls["as_bytes"] += 1
        return b"C" + super().as_bytes(message)

    def from_bytes(self, message, *args, **kwargs):
        type(self).calls["from_bytes"] += 1
        assert message[:1] == b"C"
        return super().from_bytes(message[1:])


async def test_custom_serializer_format(redis_url, sync_redis):
    serializers.registry.register_serializer("test-counting", _CountingSerializer)
    layer = RedisChannelLayer(local_delivery=False, hosts=[redis_url], serializer_format="test-counting")
    try:
        assert isinstance(layer._serializer, _CountingSerializer)
        await layer.send("custom.q", {"type": "c", "n": 5})
        (member,) = sync_redis.zrange("asgicustom.q", 0, -1)
        assert member[12:] == b'C{"type": "c", "n": 5}'
        assert await receive_soon(layer, "custom.q") == {"type": "c", "n": 5}
        assert _CountingSerializer.calls["as_bytes"] >= 1
        assert _CountingSerializer.calls["from_bytes"] >= 1
    finally:
        await layer.flush()


async def test_json_serializer_layer(redis_url):
    layer = RedisChannelLayer(local_delivery=False, hosts=[redis_url], serializer_format="json")
    try:
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "j", "list": [1, "a"]})
        assert await receive_soon(layer, channel) == {"type": "j", "list": [1, "a"]}
    finally:
        await layer.flush()


# ------------------------------------------------------------------------------ utils


def test_consistent_hash_matches_stock():
    assert utils._consistent_hash("key_one", 2) == 1
    assert utils._consistent_hash("key_one", 10) == 6
    assert utils._consistent_hash("key_two", 2) == 0
    assert utils._consistent_hash("key_two", 10) == 4
    assert utils._consistent_hash("anything", 1) == 0
    values = [f"specific.{i:032x}!" for i in range(300)] + ["é", "", "a!b"]
    values += [v.encode() for v in values[:50]]
    for ring in (1, 2, 3, 4, 7, 10, 64):
        for value in values:
            assert utils._consistent_hash(value, ring) == stock_utils._consistent_hash(value, ring)
    layer = RedisChannelLayer(local_delivery=False, hosts=["redis://127.0.0.1:1", "redis://127.0.0.1:2", "redis://127.0.0.1:3"])
    assert layer.ring_size == 3
    assert [layer.consistent_hash(v) for v in values] == [stock_utils._consistent_hash(v, 3) for v in values]


def test_decode_hosts_matches_stock():
    cases = [
        None,
        [],
        ["redis://a:1"],
        [("a", 1), ["b", 2]],
        [{"address": "redis://a:1", "socket_timeout": 3}],
        [{"sentinels": [("s", 26379)], "master_name": "m"}],
        ["redis://a:1", ("b", 2), {"host": "c", "port": 3, "db": 4}],
    ]
    for hosts in cases:
        assert utils.decode_hosts(hosts) == stock_utils.decode_hosts(hosts), hosts
    for bad in ("redis://a:1", b"redis://a:1"):
        with pytest.raises(ValueError):
            utils.decode_hosts(bad)


# ------------------------------------------------------------------------------ flush


async def test_flush_removes_only_our_keys_with_scan(redis_url, sync_redis):
    foreign = {
        b"asgifoo:bar": b"1",
        b"asgi-meta": b"2",
        b"asgi-meta:counters": b"3",
        b"other": b"4",
        b"asgi:group": b"5",
    }
    for key, value in foreign.items():
        sync_redis.set(key, value)
    sync_redis.zadd("otherspecific.x!", {b"m": 1})
    layer = RedisChannelLayer(local_delivery=False, hosts=[redis_url])
    other_prefix = RedisChannelLayer(local_delivery=False, hosts=[redis_url], prefix="otherapp")
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "a"})
    await layer.send("normal.channel", {"type": "b"})
    await layer.group_add("g1", channel)
    await other_prefix.send("kept.channel", {"type": "c"})
    await other_prefix.group_add("g2", "kept.channel")
    ours = [b"asgi" + layer.non_local_name(channel).encode(), b"asginormal.channel", b"asgi:group:g1"]
    # stock's in-flight backup key is ours to flush as well
    sync_redis.zadd(b"asginormal.channel$inflight", {b"m": 1})
    # and so is a work-queue pump's (core.py _inflight_key)
    pumps_backup = layer._inflight_key("asginormal.channel").encode()
    sync_redis.zadd(pumps_backup, {b"m": 1})
    assert all(sync_redis.exists(k) for k in ours)
    sync_redis.config_resetstat()
    await layer.flush()
    stats = sync_redis.info("commandstats")
    assert "cmdstat_scan" in stats
    assert "cmdstat_keys" not in stats
    for key in ours + [b"asginormal.channel$inflight", pumps_backup]:
        assert not sync_redis.exists(key), key
    for key, value in foreign.items():
        assert sync_redis.get(key) == value, key
    assert sync_redis.exists("otherspecific.x!", "otherappkept.channel", b"otherapp:group:g2") == 3
    assert len(layer.receive_buffer) == 0
    # the layer reconnects after a flush
    await layer.send("normal.channel", {"type": "again"})
    assert await receive_soon(layer, "normal.channel") == {"type": "again"}
    await layer.flush()
    await other_prefix.flush()
    assert sync_redis.exists("otherappkept.channel", b"otherapp:group:g2") == 0


def test_glob_escape_matches_exactly_its_prefix_in_redis_scan(sync_redis):
    # Redis's own matcher decides: every key that starts with the prefix, nothing else.
    prefixes = ["a*b", "a?b", "a[bc]d", "a\\b", "a]b", "[", "a^b", "a[^x]b", "a-b", "\\*"]
    decoys = ["aXb", "aXYb", "abd", "acd", "a*bX", "b", "ab", "a\\\\b", "*", "a[b"]
    keys = {p + suffix for p in prefixes for suffix in ("", "1", ":x")} | set(decoys)
    for key in keys:
        sync_redis.set(key, b"v")
    looser = 0
    for prefix in prefixes:
        expected = {k for k in keys if k.startswith(prefix)}
        found = {k.decode() for k in sync_redis.scan_iter(match=utils.glob_escape(prefix) + "*", count=1000)}
        assert found == expected, prefix
        raw = {k.decode() for k in sync_redis.scan_iter(match=prefix + "*", count=1000)}
        looser += raw != expected
    assert looser >= 5  # the unescaped patterns would have matched other keys (or none)


async def test_flush_many_keys(redis_url, sync_redis):
    layer = RedisChannelLayer(local_delivery=False, hosts=[redis_url])
    pipe = sync_redis.pipeline()
    for i in range(2500):
        pipe.zadd(f"asgichan{i}", {b"m": 1})
    pipe.set("keep", 1)
    pipe.execute()
    await layer.flush()
    assert sync_redis.dbsize() == 1


# ------------------------------------------------------------------------------ expiry


async def test_fractional_expiry_send_and_group_send(redis_url, sync_redis):
    layer = RedisChannelLayer(local_delivery=False, hosts=[redis_url], expiry=2.5)
    try:
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "direct"})
        await layer.send("frac.queue", {"type": "queued"})
        await layer.group_add("frac", channel)
        await layer.group_add("frac", "frac.queue")
        await layer.group_send("frac", {"type": "group"})
        ttl = sync_redis.ttl("asgifrac.queue")
        assert 1 <= ttl <= 3
        assert await receive_soon(layer, channel) == {"type": "direct"}
        assert await receive_soon(layer, channel) == {"type": "group"}
        assert await receive_soon(layer, "frac.queue") == {"type": "queued"}
        assert await receive_soon(layer, "frac.queue") == {"type": "group"}
    finally:
        await layer.flush()


async def test_expired_messages_are_never_delivered(redis_url, sync_redis):
    # expiry 1.5: the key TTL is rounded up to 2 s, so after 1.7 s the stale messages
    # are still in Redis and only the receiver's own check stands between them and us.
    layer = RedisChannelLayer(local_delivery=False, hosts=[redis_url], expiry=1.5)
    try:
        channel = await layer.new_channel()
        grouped = await layer.new_channel()
        await layer.send(channel, {"type": "stale"})
        await layer.send("stale.queue", {"type": "stale"})
        await layer.group_add("stale", grouped)
        await layer.group_add("stale", "stale.group.queue")
        await layer.group_send("stale", {"type": "stale"})
        await asyncio.sleep(1.7)
        process_key = "asgi" + layer.non_local_name(channel)
        assert sync_redis.zcard(process_key) == 2
        assert sync_redis.exists("asgistale.queue", "asgistale.group.queue") == 2
        for name in (channel, grouped, "stale.queue", "stale.group.queue"):
            await nothing_arrives(layer, name, 0.3)
        # a fresh message still gets through
        await layer.send(channel, {"type": "fresh"})
        assert await receive_soon(layer, channel) == {"type": "fresh"}
    finally:
        await layer.flush()


async def test_expiry_one_second(redis_url):
    layer = RedisChannelLayer(local_delivery=False, hosts=[redis_url], expiry=1)
    try:
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "stale"})
        await layer.group_add("g", channel)
        await layer.group_send("g", {"type": "stale"})
        await asyncio.sleep(1.2)
        await nothing_arrives(layer, channel, 0.3)
    finally:
        await layer.flush()


# ------------------------------------------------------------------------------ Django settings


@pytest.fixture
def channel_layers_settings(redis_url):
    from django.conf import settings
    from django.test.utils import override_settings

    if not settings.configured:
        settings.configure()
    config = {
        "default": {
            "BACKEND": "channels_redis_fast.core.RedisChannelLayer",
            "CONFIG": {"hosts": [redis_url], "capacity": 7, "prefix": "django", "expiry": 30, "local_delivery": False},
        }
    }
    with override_settings(CHANNEL_LAYERS=config):
        yield
    channels.layers.channel_layers.backends = {}


async def test_get_channel_layer_from_settings(channel_layers_settings, sync_redis):
    layer = channels.layers.get_channel_layer()
    assert type(layer) is RedisChannelLayer
    assert (layer.capacity, layer.prefix, layer.expiry) == (7, "django", 30)
    assert channels.layers.get_channel_layer() is layer
    try:
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "via.settings"})
        assert sync_redis.exists("django" + layer.non_local_name(channel))
        assert await receive_soon(layer, channel) == {"type": "via.settings"}
    finally:
        await layer.flush()

