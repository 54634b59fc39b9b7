"""layer.stats() after known traffic, and the `python -m channels_redis_fast stats` command."""
# These tests are about what reaches Redis: their layers run with local_delivery off
# (issue 16; tests/test_local_delivery.py covers the in-process path).


from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time

import pytest
import redis
from channels.exceptions import ChannelFull

from channels_redis_fast.core import RedisChannelLayer
from channels_redis_fast.pubsub import RedisPubSubChannelLayer
from conftest import until


@pytest.mark.asyncio
async def test_layer_stats_after_known_traffic(redis_server, redis_url):
    layer = RedisChannelLayer(local_delivery=False, hosts=[redis_url], capacity=5)
    other = RedisChannelLayer(local_delivery=False, hosts=[redis_url], capacity=5)
    try:
        stats = await layer.stats()
        assert stats["counters"]["sent"] == 0 and stats["counters"]["reconnects"] == 0
        assert stats["buffers"] == {} and stats["shards"][0]["queues"] == {}

        # A general channel this process receives on, then more messages it has not taken.
        await layer.send("stats.work", {"type": "w"})
        assert (await asyncio.wait_for(layer.receive("stats.work"), 5))["type"] == "w"
        for _ in range(3):
            await other.send("stats.work", {"type": "w"})

        # Process channels: A overflows its local buffer while B's receiver keeps the pump busy.
        a = await layer.new_channel()
        b = await layer.new_channel()
        waiting = asyncio.ensure_future(layer.receive(b))
        for _ in range(5):
            await layer.send(a, {"type": "a"})
        await until(lambda: layer._buffered(a) == 5, what="5 messages in A's buffer")
        for _ in range(3):
            await layer.send(a, {"type": "a"})
        await until(lambda: _dropped(layer) == 3, what="3 dropped from A's buffer")

        # channel_full on a channel nobody reads.
        for _ in range(5):
            await layer.send("stats.full", {"type": "f"})
        with pytest.raises(ChannelFull):
            await layer.send("stats.full", {"type": "f"})

        # Groups: three members, one of them full, so one over capacity.
        await layer.group_add("room", a)
        await layer.group_add("room", b)
        await layer.group_add("room", "stats.full")
        await layer.group_send("room", {"type": "g"})
        assert (await asyncio.wait_for(waiting, 5))["type"] == "g"

        stats = await layer.stats(groups=["room", "empty"])
        counters = stats["counters"]
        assert counters["sent"] == 1 + 5 + 3 + 5
        assert counters["channel_full"] == 1
        assert counters["group_over_capacity"] == 1
        assert counters["dropped"] == 3 + 1  # the group message overflowed A again
        assert counters["received"] == 2
        assert counters["malformed"] == 0 and counters["reconnects"] == 0
        assert stats["groups"] == {"room": 3, "empty": 0}
        assert stats["buffers"] == {a: 5}
        assert stats["buffered"] == 5
        (shard,) = stats["shards"]
        assert shard["queues"]["asgistats.work"] == 3
        own_key = "asgi" + a[: a.index("!") + 1]
        assert shard["queues"][own_key] == 0
        assert "asgistats.full" not in shard["queues"]  # not received on here
        assert shard["groups"] == {"room": 3, "empty": 0}

        # A dropped connection shows up as a reconnect once it is used again.
        redis_server.client().client_kill_filter(_type="normal", skipme=True)
        await asyncio.sleep(0.1)
        try:
            await layer.send("stats.work", {"type": "w"})
        except Exception:  # noqa: BLE001 - the kill may race the send; the next one reconnects
            await layer.send("stats.work", {"type": "w"})
        stats = await layer.stats()
        assert stats["counters"]["reconnects"] >= 1
    finally:
        await layer.flush()
        await other.close_pools()


def _dropped(layer) -> int:
    return sum(buffer.dropped for buffer in layer.receive_buffer.values())


@pytest.mark.asyncio
async def test_stats_across_shards(shard_urls):
    layer = RedisChannelLayer(local_delivery=False, hosts=shard_urls)
    try:
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "x"})
        await asyncio.wait_for(layer.receive(channel), 5)
        groups = [f"g{i}" for i in range(6)]
        for group in groups:
            await layer.group_add(group, channel)
        stats = await layer.stats(groups=groups)
        assert len(stats["shards"]) == len(shard_urls)
        assert stats["groups"] == {group: 1 for group in groups}
        assert sum(len(s["groups"]) for s in stats["shards"]) == len(groups)
        for shard in stats["shards"]:  # the process key is pumped on every shard
            assert list(shard["queues"].values()) == [0]
    finally:
        await layer.flush()


@pytest.mark.asyncio
async def test_pubsub_stats(redis_url):
    layer = RedisPubSubChannelLayer(local_delivery=False, hosts=[redis_url], capacity=2)
    try:
        channel = await layer.new_channel()
        await layer.group_add("room", channel)
        for i in range(3):
            await layer.send(channel, {"type": "p", "i": i})
        await asyncio.sleep(0.2)
        stats = await layer.stats(groups=["room"])
        assert stats["buffers"] == {channel: 2}
        assert stats["counters"]["dropped"] == 1
        assert stats["groups"] == {"room": 1}
        assert stats["shards"][0]["subscriptions"] == 2  # the channel and the group
    finally:
        await layer.flush()
        await layer.close()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "channels_redis_fast", "stats", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=dict(os.environ),
        cwd=tempfile.gettempdir(),  # import the installed package, not the checkout
    )


@pytest.mark.asyncio
async def test_cli_once(redis_server, redis_url, shard_urls):
    layer = RedisChannelLayer(local_delivery=False, hosts=[redis_url])
    sharded = RedisChannelLayer(local_delivery=False, hosts=shard_urls, prefix="shp")
    try:
        for _ in range(2):
            await layer.send("cli.work", {"type": "w"})
        process_channel = await layer.new_channel()
        await layer.send(process_channel, {"type": "p"})
        for name in ("m1", "m2", "m3"):
            await layer.group_add("room", f"cli.{name}")
        redis_server.client().set("asgi-unrelated", "x")  # not a sorted set: not listed
        for i in range(6):
            await sharded.send("spread", {"type": "s", "i": i})

        result = _cli("--hosts", redis_url, "--once")
        assert result.returncode == 0, result.stderr
        out = result.stdout
        assert "\x1b[2J" not in out
        lines = {line.split()[-1]: line.split() for line in out.splitlines()[4:] if line.strip()}
        assert lines["cli.work"][1:3] == ["channel", "2"]
        assert lines[process_channel[: process_channel.index("!") + 1]][1:3] == ["process", "1"]
        assert lines["room"][1:3] == ["group", "3"]
        assert "asgi-unrelated" not in out and "unrelated" not in out
        assert "1 group(s) with 3 member(s)" in out

        result = _cli("--hosts", ",".join(shard_urls), "--prefix", "shp", "--once", "--json")
        assert result.returncode == 0, result.stderr
        rows = json.loads(result.stdout)
        assert sorted(r["shard"] for r in rows) == [0, 1, 2]  # round-robin over the shards
        assert all(r["name"] == "spread" and r["size"] == 2 for r in rows)
        assert all(r["age"] is not None and 0 <= r["age"] < 30 for r in rows)
    finally:
        await layer.flush()
        await sharded.flush()


@pytest.mark.asyncio
async def test_cli_through_sentinel(sentinel, sentinel_hosts):
    layer = RedisChannelLayer(local_delivery=False, hosts=sentinel_hosts)
    try:
        await layer.send("via.sentinel", {"type": "s"})
        result = _cli("--hosts", json.dumps(sentinel_hosts[0]), "--once", "--json")
        assert result.returncode == 0, result.stderr
        rows = json.loads(result.stdout)
        assert [(r["kind"], r["name"], r["size"]) for r in rows] == [("channel", "via.sentinel", 1)]
    finally:
        await layer.flush()


def test_cli_off_a_terminal_prints_plain_snapshots(redis_url):
    sync = redis.Redis.from_url(redis_url)
    sync.zadd("asgiplain.work", {b"m1": time.time(), b"m2": time.time()})
    result = _cli("--hosts", redis_url, "--interval", "0.05", "--snapshots", "2")
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout
    headers = [line for line in result.stdout.splitlines() if line.startswith("channels_redis_fast stats")]
    assert len(headers) == 2
    assert result.stdout.count("1 channel(s) holding 2 message(s); 0 group(s) with 0 member(s)") == 2
    assert "queue" not in result.stdout


def test_cli_on_a_terminal_redraws_in_place(redis_url):
    import pty

    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "channels_redis_fast", "stats", "--hosts", redis_url,
             "--interval", "0.05", "--snapshots", "2"],
            stdout=terminal,
            stderr=subprocess.PIPE,
            cwd=tempfile.gettempdir(),
        )
        os.close(terminal)
        terminal = -1
        output = b""
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the terminal closed with the process
                break
            if not chunk:
                break
            output += chunk
        assert process.wait(timeout=30) == 0, process.stderr.read()
        process.stderr.close()
    finally:
        os.close(controller)
        if terminal >= 0:
            os.close(terminal)
    assert output.count(b"\x1b[H\x1b[2J") == 2
    assert b"0 channel(s) holding 0 message(s)" in output
