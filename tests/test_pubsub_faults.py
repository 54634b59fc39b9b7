"""RedisPubSubChannelLayer under faults: bursts, restarts, cancellation, churn, bad input.

All against real, private Redis servers; the burst publisher is a separate process so
that, as in production, Redis fills our socket while our event loop is busy elsewhere.
"""
# These tests are about what reaches Redis: their layers run with local_delivery off
# (issue 16; tests/test_local_delivery.py covers the in-process path).


from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError

from channels_redis_fast.exceptions import InvalidMessageError
from channels_redis_fast.pubsub import RedisPubSubChannelLayer
from conftest import receive_soon, until

pytestmark = pytest.mark.timeout(60)

BURST = 200_000

# Publishes BURST pipelined PUBLISH commands of ~100-byte msgpack messages as fast as
# Redis takes them, on a raw socket, then prints how long that took.
PUBLISHER = r"""
import socket, sys, threading, time, msgpack
host, port, channel, count = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode(), int(sys.argv[4])
def command(i):
    payload = msgpack.packb({"type": "burst", "i": i, "pad": "x" * 72})
    return b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(channel), channel, len(payload), payload)
chunks = [b"".join(command(i) for i in range(s, min(s + 2000, count))) for s in range(0, count, 2000)]
sock = socket.create_connection((host, port))
replies = [0]
def read():
    buf = b""
    while replies[0] < count:
        data = sock.recv(1 << 20)
        if not data:
            break
        buf += data
        lines = buf.split(b"\r\n")
        buf = lines.pop()
        replies[0] += len(lines)
reader = threading.Thread(target=read)
reader.start()
start = time.perf_counter()
for chunk in chunks:
    sock.sendall(chunk)
reader.join(60)
print(replies[0], f"{time.perf_counter() - start:.3f}", len(msgpack.packb({"type": "burst", "i": count, "pad": "x" * 72})))
"""


def _publish_calls(url):
    stats = redis.Redis.from_url(url).info("commandstats")
    return stats.get("cmdstat_publish", {}).get("calls", 0)


def _client(server_or_url):
    url = server_or_url if isinstance(server_or_url, str) else server_or_url.url
    return redis.Redis.from_url(url, socket_timeout=5)


async def test_burst_is_read_fast_enough_and_bounded(redis_server, redis_url, record_property):
    """200k pipelined publishes to one channel: no output-buffer disconnect, drops counted."""
    layer = RedisPubSubChannelLayer(local_delivery=False, hosts=[redis_url], capacity=100)
    client = _client(redis_url)
    try:
        channel = await layer.new_channel()
        loop_layer = layer._get_layer()
        shard = loop_layer._shards[0]
        local = loop_layer.channels[channel]
        # Redis's own defaults (pubsub 32mb hard, 8mb for 60 s soft), as in production.
        assert client.config_get("client-output-buffer-limit")["client-output-buffer-limit"].endswith(
            "pubsub 33554432 8388608 60"
        )
        log_before = redis_server.log_tail(10_000).count("output buffer limits")
        started = time.perf_counter()
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", PUBLISHER, redis_server.host, str(redis_server.port), channel, str(BURST),
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await asyncio.wait_for(process.communicate(), 60)
        replies, publish_seconds, message_bytes = out.decode().split()
        assert int(replies) == BURST
        await until(lambda: loop_layer.dropped + len(local.buffer) == BURST, 20, "all messages")
        elapsed = time.perf_counter() - started
        record_property("burst_messages_per_second", round(BURST / elapsed))
        print(f"\nburst: {BURST} x {message_bytes}-byte messages published in {float(publish_seconds):.2f}s, "
              f"all read after {elapsed:.2f}s ({BURST / elapsed:,.0f} msg/s)")
        # Still the first subscriber connection: Redis never cut it off.
        assert shard.subscriber.connects == 1 and shard.subscriber.is_connected
        assert redis_server.log_tail(10_000).count("output buffer limits") == log_before
        assert client.pubsub_numsub(channel)[0][1] == 1
        # Bounded: the newest `capacity` messages are kept, everything older was counted.
        assert len(local.buffer) == 100 and local.buffer.dropped == BURST - 100
        assert loop_layer.dropped == BURST - 100
        received = [(await receive_soon(layer, channel))["i"] for _ in range(100)]
        assert received == list(range(BURST - 100, BURST))
    finally:
        await layer.close()
        client.close()


async def test_resubscribes_after_restart_and_announces_it(fresh_redis):
    layer = RedisPubSubChannelLayer(
        local_delivery=False,
        hosts=[fresh_redis.url], on_disconnect="redis.disconnect", on_reconnect="redis.reconnect"
    )
    try:
        a = await layer.new_channel()
        b = await layer.new_channel()
        await layer.group_add("room", a)
        await layer.group_add("room", b)
        general = asyncio.ensure_future(layer.receive("general.work"))
        await asyncio.sleep(0.05)

        await asyncio.to_thread(fresh_redis.stop)
        for channel in (a, b):
            assert await receive_soon(layer, channel) == {"type": "redis.disconnect"}
        # Publishing while Redis is down fails loudly rather than pretending.
        with pytest.raises(RedisConnectionError):
            await layer.send(a, {"type": "lost"})

        await asyncio.to_thread(fresh_redis.start)
        for channel in (a, b):
            assert await receive_soon(layer, channel, 10) == {"type": "redis.reconnect"}
        client = _client(fresh_redis)
        subscribed = {c.decode() for c in client.pubsub_channels()}
        assert subscribed == {a, b, "asgi__group__room", "general.work"}

        await layer.send(a, {"type": "direct"})
        await layer.group_send("room", {"type": "group"})
        await layer.send("general.work", {"type": "work"})
        assert await receive_soon(layer, a) == {"type": "direct"}
        assert await receive_soon(layer, a) == {"type": "group"}
        assert await receive_soon(layer, b) == {"type": "group"}
        # The pending receive on the general channel got the disconnect notice first.
        assert await asyncio.wait_for(general, 5) == {"type": "redis.disconnect"}
        assert await receive_soon(layer, "general.work") == {"type": "redis.reconnect"}
        assert await receive_soon(layer, "general.work") == {"type": "work"}
        client.close()
    finally:
        await layer.close()


async def test_closing_the_redis_handle_reconnects(redis_url):
    """channels_redis's suite closes ``_shards[0]._redis``; ours reconnects by itself."""
    from channels_redis_fast.utils import _close_redis

    layer = RedisPubSubChannelLayer(local_delivery=False, hosts=[redis_url], on_reconnect="back")
    try:
        channel = await layer.new_channel()
        shard = layer._shards[0]
        await _close_redis(shard._redis)
        assert await receive_soon(layer, channel) == {"type": "back"}
        assert shard.subscriber.connects == 2
        await layer.send(channel, {"type": "after"})
        assert await receive_soon(layer, channel) == {"type": "after"}
    finally:
        await layer.close()


async def test_cancelled_receive_frees_and_unsubscribes_without_waiting(fresh_redis):
    layer = RedisPubSubChannelLayer(local_delivery=False, hosts=[fresh_redis.url])
    client = _client(fresh_redis)
    try:
        channel = await layer.new_channel()
        await layer.group_add("room", channel)
        receiving = asyncio.ensure_future(layer.receive(channel))
        await asyncio.sleep(0.05)
        # Freeze Redis: the cancellation must still return at once.
        os.kill(fresh_redis.pid, signal.SIGSTOP)
        try:
            receiving.cancel()
            started = time.monotonic()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(receiving, 1)
            assert time.monotonic() - started < 0.5
            loop_layer = layer._get_layer()
            assert loop_layer.channels == {} and loop_layer.groups == {}
            assert loop_layer._shards[0].wanted == set()
        finally:
            os.kill(fresh_redis.pid, signal.SIGCONT)
        await until(lambda: client.pubsub_channels() == [], what="UNSUBSCRIBE on the server")
        # A timeout (wait_for) is a cancellation too, as in channels_redis.
        other = await layer.new_channel()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(layer.receive(other), 0.1)
        assert layer.channels == {}
        await until(lambda: client.pubsub_channels() == [], what="UNSUBSCRIBE after timeout")
    finally:
        await layer.close()
        client.close()


async def test_cancelling_one_of_two_receivers_keeps_the_channel(redis_url):
    layer = RedisPubSubChannelLayer(local_delivery=False, hosts=[redis_url])
    try:
        channel = await layer.new_channel()
        first = asyncio.ensure_future(layer.receive(channel))
        second = asyncio.ensure_future(layer.receive(channel))
        await asyncio.sleep(0.01)
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        await layer.send(channel, {"type": "still.here"})
        assert await asyncio.wait_for(second, 2) == {"type": "still.here"}
    finally:
        await layer.close()


async def test_channel_churn_leaves_nothing_behind(redis_url):
    layer = RedisPubSubChannelLayer(local_delivery=False, hosts=[redis_url])
    client = _client(redis_url)
    try:
        loop_layer = layer._get_layer()
        shard = loop_layer._shards[0]

        async def consumer_lifetime(i):
            channel = await layer.new_channel()
            await layer.group_add(f"room-{i % 50}", channel)
            receiving = asyncio.ensure_future(layer.receive(channel))
            await asyncio.sleep(0)
            receiving.cancel()
            await asyncio.gather(receiving, return_exceptions=True)

        for start in range(0, 20_000, 1000):
            await asyncio.gather(*[consumer_lifetime(i) for i in range(start, start + 1000)])
            assert len(loop_layer.channels) == 0 and len(loop_layer.groups) == 0
        assert shard.wanted == set()
        await until(lambda: client.pubsub_channels() == [], 10, "server-side unsubscribes")
        # The server has run every UNSUBSCRIBE once it lists no channels, but its replies may
        # still be on their way to the subscriber: wait for them to be read, not just sent.
        await until(lambda: len(shard.subscriber.protocol._pending) == 0, 10, "unsubscribe replies read")
        assert shard.subscriber.connects == 1
    finally:
        await layer.close()
        client.close()


async def test_bad_input_raises_before_anything_is_published(redis_url):
    layer = RedisPubSubChannelLayer(local_delivery=False, hosts=[redis_url])
    strict = RedisPubSubChannelLayer(local_delivery=False, hosts=[redis_url], strict_messages=True)
    raw = redis.Redis.from_url(redis_url).pubsub()
    try:
        raw.psubscribe("*")
        assert raw.get_message(timeout=2)["type"] == "psubscribe"
        channel = await layer.new_channel()
        ok = {"type": "ok"}
        publishes_before = _publish_calls(redis_url)
        for bad_name in ("=+135!", "x" * 100, "spaces here", 123, None):
            with pytest.raises(TypeError):
                await layer.send(bad_name, ok)
            with pytest.raises(TypeError):
                await layer.receive(bad_name)
            with pytest.raises(TypeError):
                await layer.group_send(bad_name, ok)
            with pytest.raises(TypeError):
                await layer.group_add(bad_name, channel)
            with pytest.raises(TypeError):
                await layer.group_discard(bad_name, channel)
        with pytest.raises(TypeError):
            await layer.new_channel(prefix="not valid!")
        with pytest.raises(TypeError):  # msgpack cannot pack it
            await layer.send(channel, {"type": "x", "obj": object()})
        for not_a_dict in ("message.1", ["type"], None):
            with pytest.raises(InvalidMessageError) as info:
                await strict.send(channel, not_a_dict)
            assert isinstance(info.value, AssertionError)
            with pytest.raises(AssertionError):
                await strict.group_send("room", not_a_dict)
        assert layer.channels.keys() == {channel}

        await layer.send(channel, ok)
        first = raw.get_message(timeout=2)
        assert first["channel"] == channel.encode() and layer.deserialize(first["data"]) == ok
        assert raw.get_message(timeout=0.2) is None
        assert _publish_calls(redis_url) == publishes_before + 1
    finally:
        raw.close()
        await layer.close()
        await strict.close()


async def test_subscribe_failure_leaves_no_channel(fresh_redis):
    layer = RedisPubSubChannelLayer(local_delivery=False, hosts=[fresh_redis.url])
    try:
        await asyncio.to_thread(fresh_redis.stop)
        with pytest.raises(RedisConnectionError):
            await layer.new_channel()
        loop_layer = layer._get_layer()
        assert loop_layer.channels == {} and loop_layer._shards[0].wanted == set()
        await asyncio.to_thread(fresh_redis.start)
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "up"})
        assert await receive_soon(layer, channel) == {"type": "up"}
    finally:
        await layer.close()


async def test_silent_dead_subscriber_is_detected_by_ping(fresh_redis, monkeypatch):
    """A frozen server never closes the socket; the idle PING notices and we recover."""
    from channels_redis_fast import subscriber

    monkeypatch.setattr(subscriber, "HEALTH_CHECK_INTERVAL", 0.2)
    layer = RedisPubSubChannelLayer(
        local_delivery=False,
        hosts=[fresh_redis.url], reply_timeout=0.5, on_disconnect="down", on_reconnect="up"
    )
    try:
        channel = await layer.new_channel()
        os.kill(fresh_redis.pid, signal.SIGSTOP)
        try:
            assert await receive_soon(layer, channel, 5) == {"type": "down"}
        finally:
            os.kill(fresh_redis.pid, signal.SIGCONT)
        assert await receive_soon(layer, channel, 10) == {"type": "up"}
        await layer.send(channel, {"type": "after"})
        assert await receive_soon(layer, channel) == {"type": "after"}
    finally:
        await layer.close()
