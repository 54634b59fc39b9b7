"""Cancelling receive() loses nothing, duplicates nothing, reorders nothing, costs no reconnect.

Consumers are cancelled constantly in production (every websocket disconnect cancels the
consumer's pending receive), so these tests cancel receives at random moments, including
before they first run, while senders keep writing. Every message carries a unique id; the
tests then account for each one.
"""
# These tests are about what reaches Redis: their layers run with local_delivery off
# (issue 16; tests/test_local_delivery.py covers the in-process path).


from __future__ import annotations

import asyncio
import random

import pytest

from channels_redis_fast.core import RedisChannelLayer

CHANNELS = 20
MESSAGES = 2000
DEADLINE = 40.0  # seconds; a wedged layer fails here instead of hanging the suite


def _layer(url: str, **kwargs) -> RedisChannelLayer:
    kwargs.setdefault("capacity", 10_000)
    return RedisChannelLayer(local_delivery=False, hosts=[url], **kwargs)


async def _cancelling_receive(layer: RedisChannelLayer, channel: str, rng: random.Random):
    """One receive() that is cancelled at a random moment; returns the message or None."""
    if rng.random() < 0.5:
        task = asyncio.ensure_future(layer.receive(channel))
        delay = rng.choice([0, 0, 0.0001, 0.0005, 0.001, 0.003])
        if delay:
            await asyncio.sleep(delay)
        task.cancel()
        try:
            return await task
        except asyncio.CancelledError:
            return None
    try:
        return await asyncio.wait_for(layer.receive(channel), rng.choice([0, 0.0005, 0.002, 0.01]))
    except asyncio.TimeoutError:
        return None


async def _drain(layer, channel, expected, sink, rng, stats):
    """Keep receiving (with random cancellations) until ``expected`` messages arrived."""
    while len(sink) < expected:
        message = await _cancelling_receive(layer, channel, rng)
        if message is None:
            stats["cancelled"] += 1
        else:
            sink.append(message)


async def _assert_nothing_left(layer, channel):
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(layer.receive(channel), 0.3)


async def test_process_channels_exactly_once_in_order_under_random_cancellation(redis_url):
    layer = _layer(redis_url)
    rng = random.Random(1234)
    channels = [await layer.new_channel() for _ in range(CHANNELS)]
    per_channel = MESSAGES // CHANNELS
    received = {c: [] for c in channels}
    stats = {"cancelled": 0}

    async def sender():
        # Rounds of one message per channel, sent together: interleaved across
        # channels, strictly ordered within each channel.
        for seq in range(per_channel):
            await asyncio.gather(
                *[
                    layer.send(c, {"type": "t", "id": f"{i}:{seq}", "seq": seq})
                    for i, c in enumerate(channels)
                ]
            )
            if seq % 10 == 0:
                await asyncio.sleep(0.001)

    async def run():
        await asyncio.gather(
            sender(),
            *[_drain(layer, c, per_channel, received[c], rng, stats) for c in channels],
        )

    await asyncio.wait_for(run(), DEADLINE)

    ids = [m["id"] for c in channels for m in received[c]]
    assert len(ids) == MESSAGES
    assert len(set(ids)) == MESSAGES, "a message was delivered twice"
    for i, c in enumerate(channels):
        seqs = [m["seq"] for m in received[c]]
        assert seqs == list(range(per_channel)), f"channel {i} lost or reordered messages"
        assert all(m["id"].startswith(f"{i}:") for m in received[c]), "message on the wrong channel"
    assert stats["cancelled"] > 200, "the test did not cancel enough receives to mean anything"
    for c in channels[:3]:
        await _assert_nothing_left(layer, c)
    await layer.flush()


async def _run_workers(url: str, seed: int):
    """2000 messages through one work queue, 4 receivers cancelled at random moments."""
    layer = _layer(url)
    rng = random.Random(seed)
    channel = "work.queue"
    got: list[list[dict]] = [[] for _ in range(4)]
    total: list[dict] = []
    stats = {"cancelled": 0}

    async def sender():
        # Sequential sends: distinct, increasing scores, so the queue order is the id order.
        for i in range(MESSAGES):
            await layer.send(channel, {"type": "t", "id": i})

    async def worker(n):
        while len(total) < MESSAGES:
            message = await _cancelling_receive(layer, channel, rng)
            if message is None:
                stats["cancelled"] += 1
                continue
            got[n].append(message)
            total.append(message)

    await asyncio.wait_for(asyncio.gather(sender(), *[worker(n) for n in range(4)]), DEADLINE)
    assert stats["cancelled"] > 200, "the test did not cancel enough receives to mean anything"
    await _assert_nothing_left(layer, channel)
    await layer.flush()
    return got, total


async def test_worker_channel_exactly_once_with_four_cancelled_receivers(redis_url):
    got, total = await _run_workers(redis_url, 99)
    ids = [m["id"] for m in total]
    assert len(ids) == MESSAGES
    assert sorted(ids) == list(range(MESSAGES)), "lost or duplicated messages"
    assert sum(1 for g in got if g) >= 2, "only one receiver ever got messages"


async def test_worker_channel_order_with_four_cancelled_receivers(redis_url):
    got, _ = await _run_workers(redis_url, 99)
    for n in range(4):
        mine = [m["id"] for m in got[n]]
        # Each receiver takes from the head of one FIFO, so what it sees only grows.
        assert mine == sorted(mine), f"receiver {n} saw messages out of queue order"


def _connects(layer: RedisChannelLayer) -> int:
    state = layer._layers[asyncio.get_running_loop()]
    return sum(c.connects for c in state.commands) + sum(
        p.connection.connects for p in state.pumps.values()
    )


async def test_cancelled_receives_cost_no_reconnect(redis_url, redis_server):
    layer = _layer(redis_url)
    rng = random.Random(7)
    specific = await layer.new_channel()
    channels = [specific, "work.reconnect"]
    # Warm up: every connection this test will need is open.
    for c in channels:
        await layer.send(c, {"type": "warm"})
        assert (await asyncio.wait_for(layer.receive(c), 5))["type"] == "warm"
    client = redis_server.client()
    connects_before = _connects(layer)
    server_before = client.info("stats")["total_connections_received"]

    delivered = 0
    for n in range(200):
        channel = channels[n % 2]
        if n % 5 == 0:
            await layer.send(channel, {"type": "t", "n": n})
        task = asyncio.ensure_future(layer.receive(channel))
        await asyncio.sleep(rng.choice([0, 0, 0.0002, 0.001, 0.004]))
        task.cancel()
        try:
            await task
            delivered += 1
        except asyncio.CancelledError:
            pass
    # Whatever the cancelled receives did not take is still there.
    while delivered < 40:
        pending = [asyncio.ensure_future(layer.receive(c)) for c in channels]
        done, rest = await asyncio.wait(pending, timeout=5, return_when=asyncio.FIRST_COMPLETED)
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)
        assert done, "a message sent before a cancelled receive was lost"
        delivered += len(done)
    assert delivered == 40
    for c in channels:
        await _assert_nothing_left(layer, c)

    assert _connects(layer) == connects_before, "a cancelled receive reconnected"
    server_after = client.info("stats")["total_connections_received"]
    assert server_after == server_before, "the server saw new connections"
    await layer.flush()


async def test_upstream_style_receive_cancel_never_blocks(redis_url):
    layer = _layer(redis_url)
    rng = random.Random(42)
    delivered_by_task: dict[str, dict] = {}
    channels = []

    async def iteration(i):
        channel = await layer.new_channel()
        channels.append(channel)
        await layer.send(channel, {"type": "test.message", "i": i})
        task = asyncio.ensure_future(layer.receive(channel))
        await asyncio.sleep(rng.uniform(0, 10) / 1000)
        task.cancel()
        try:
            delivered_by_task[channel] = await task
        except asyncio.CancelledError:
            pass

    for i in range(100):
        await asyncio.wait_for(iteration(i), 2)

    for i, channel in enumerate(channels):
        if channel in delivered_by_task:
            assert delivered_by_task[channel]["i"] == i
            await _assert_nothing_left_quick(layer, channel)
        else:
            message = await asyncio.wait_for(layer.receive(channel), 5)
            assert message["i"] == i
    await layer.flush()


async def _assert_nothing_left_quick(layer, channel):
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(layer.receive(channel), 0.02)
