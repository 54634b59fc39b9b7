"""Memory stays bounded: per-channel buffers are capped, and nothing grows with channel churn.

A busy server creates a process-specific channel per websocket and forgets it when the
socket closes, so every per-channel structure must go away with its channel (or be a
bounded cache), and RSS must level off however many channels come and go.
"""
# These tests are about what reaches Redis: their layers run with local_delivery off
# (issue 16; tests/test_local_delivery.py covers the in-process path).


from __future__ import annotations

import asyncio
import os
import time

import pytest

from channels_redis_fast.core import KEEP_EMPTY_BUFFERS, SWEEP_INTERVAL, RedisChannelLayer
from conftest import nothing_arrives, until

PAGE = os.sysconf("SC_PAGE_SIZE")
CHURN = 100_000
BATCH = 1000
# A leaked entry per channel (a buffer, a waiter list, a set member) costs well over
# 100 bytes; caches may keep up to ~16k names. Anything past this bound grows with churn.
MAX_CONTAINER = 20_000


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE


async def test_local_buffer_is_bounded_and_drops_oldest(redis_url, sync_redis):
    # Redis holds up to 10 for these channels (the pattern, above capacity=5), and so
    # does the local buffer the pump moves them into. Each round Redis accepts b's 9 and
    # a's 1, and the pump empties the process key into the buffers; b's buffer, never
    # read, keeps the newest 10 and drops the oldest.
    layer = RedisChannelLayer(local_delivery=False, hosts=[redis_url], capacity=5, channel_capacity={"specific.*": 10})
    a = await layer.new_channel()
    b = await layer.new_channel()
    for round_ in range(3):
        for i in range(9):
            await layer.send(b, {"round": round_, "i": i})
        await layer.send(a, {"wake": round_})
        # One pump batch brings b's 9 messages along with a's.
        assert await asyncio.wait_for(layer.receive(a), 5) == {"wake": round_}
        # Redis counts the batch until the pump's removal lands (Python 3.12+ resumes the
        # receiver first); the next round's sends would find the channels full.
        await until(lambda: sync_redis.dbsize() == 0, what="the delivered batch's removal")
        buffer = layer.receive_buffer[b]
        held = 9 * (round_ + 1)
        assert buffer.qsize() == min(held, 10), "a local buffer grew past the channel's capacity"
        assert buffer.dropped == max(held - 10, 0)
    # Only the newest ten survived the overflow, in order.
    got = [await asyncio.wait_for(layer.receive(b), 5) for _ in range(10)]
    assert got == [{"round": 1, "i": 8}] + [{"round": 2, "i": i} for i in range(9)]
    await nothing_arrives(layer, b)
    assert b not in layer.receive_buffer, "an emptied buffer was kept"
    await layer.flush()


@pytest.mark.slow
async def test_channel_churn_leaves_no_state_and_rss_levels_off(redis_url):
    layer = RedisChannelLayer(local_delivery=False, hosts=[redis_url], capacity=2 * BATCH)
    samples = []
    start = time.monotonic()
    for batch in range(CHURN // BATCH):
        channels = [await layer.new_channel() for _ in range(BATCH)]
        await asyncio.gather(*[layer.send(c, {"type": "m", "i": i}) for i, c in enumerate(channels)])
        got = await asyncio.gather(*[layer.receive(c) for c in channels])
        assert [m["i"] for m in got] == list(range(BATCH))
        # Some consumers go away while waiting (a websocket closed mid-receive).
        abandoned = [asyncio.ensure_future(layer.receive(c)) for c in channels[:100]]
        await asyncio.sleep(0)
        for task in abandoned:
            task.cancel()
        await asyncio.gather(*abandoned, return_exceptions=True)
        samples.append(_rss())
    elapsed = time.monotonic() - start

    # Buffers emptied by a hand-over wait for their receiver's next wait, a bounded few.
    assert len(layer.receive_buffer) <= KEEP_EMPTY_BUFFERS + BATCH
    # No receiver is left waiting, woken or handed a message on any channel.
    assert not any(local.in_use() for local in layer.receive_buffer.values())
    assert len(layer._key_receivers) == 0
    # The next delivery after a sweep interval drops every buffer nobody came back to.
    await asyncio.sleep(SWEEP_INTERVAL + 0.1)
    last = await layer.new_channel()
    await layer.send(last, {"type": "last"})
    assert await asyncio.wait_for(layer.receive(last), 5) == {"type": "last"}
    await asyncio.sleep(0)  # the sweep runs right after the receivers the batch woke
    assert set(layer.receive_buffer) <= {last}
    state = layer._layers[asyncio.get_running_loop()]
    assert len(state.pumps) == 1  # the process key, on the only shard
    # Every container the layer and its loop state hold is O(1) in the number of channels.
    for owner in (layer, state):
        for name, value in vars(owner).items():
            if hasattr(value, "__len__") and not isinstance(value, (str, bytes)):
                assert len(value) <= MAX_CONTAINER, f"{type(owner).__name__}.{name} has {len(value)} entries"

    half = len(samples) // 2
    first = samples[half - 1] - samples[0]
    second = samples[-1] - samples[half - 1]
    # A per-channel leak of even 100 bytes would add 5 MB over the second half.
    assert second < 4 * 2**20, (
        f"RSS grew {second / 2**20:.1f} MiB over the second {CHURN // 2} channels "
        f"(first half: {first / 2**20:.1f} MiB, {elapsed:.1f}s)"
    )
    await layer.flush()


async def test_buffers_never_received_from_are_swept_after_expiry(redis_url):
    layer = RedisChannelLayer(local_delivery=False, hosts=[redis_url], expiry=1)
    active = await layer.new_channel()
    forgotten = [await layer.new_channel() for _ in range(10)]
    for channel in forgotten:
        await layer.send(channel, {"for": "nobody"})
    await layer.send(active, {"n": 0})
    assert await asyncio.wait_for(layer.receive(active), 5) == {"n": 0}
    # The batch that carried the active channel's message filled the others' buffers.
    assert all(layer.receive_buffer[c].qsize() == 1 for c in forgotten)

    await asyncio.sleep(1.3)
    # The next batch that arrives sweeps buffers untouched for longer than expiry.
    await layer.send(active, {"n": 1})
    assert await asyncio.wait_for(layer.receive(active), 5) == {"n": 1}
    await asyncio.sleep(0)  # the sweep runs right after the receivers the batch woke
    assert not any(c in layer.receive_buffer for c in forgotten), "stale buffers were kept"
    # All that may stay is the active channel's own buffer, emptied by a hand-over and
    # kept for its receiver's next wait.
    assert set(layer.receive_buffer) <= {active}
    assert all(not buffer.qsize() for buffer in layer.receive_buffer.values())
    # Their messages had expired anyway: nothing is delivered late.
    await nothing_arrives(layer, forgotten[0])
    await layer.flush()
