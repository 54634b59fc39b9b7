"""A send cut off by a lost connection says whether Redis may have run it.

A plain redis ConnectionError promises the command never left the process (a retry
cannot duplicate it); ReplyLostError (a ConnectionError subclass) says it was written
and its reply lost, so it may or may not have been applied. Each outcome is checked
against what Redis really holds, message by message.
"""

from __future__ import annotations

import asyncio

import pytest
import redis
import redis.asyncio
from redis.exceptions import ConnectionError as RedisConnectionError

from channels_redis_fast.core import RedisChannelLayer
from channels_redis_fast.exceptions import ReplyLostError
from channels_redis_fast.pubsub import RedisPubSubChannelLayer

pytestmark = pytest.mark.timeout(60)


def _outcomes(results: list) -> dict[str, set[int]]:
    """Send index -> "sent" / "not sent" / "unknown"; anything else fails the test."""
    outcomes: dict[str, set[int]] = {"sent": set(), "not sent": set(), "unknown": set()}
    for i, result in enumerate(results):
        if result is None:
            outcomes["sent"].add(i)
        elif type(result) is ReplyLostError:
            outcomes["unknown"].add(i)
        elif type(result) is RedisConnectionError:
            outcomes["not sent"].add(i)
        else:
            raise AssertionError(f"send {i}: unexpected outcome {result!r}")
    return outcomes


async def _stored(url: str, channel: str) -> set[int]:
    """The indices of the messages Redis holds on ``channel`` (read by another layer)."""
    reader = RedisChannelLayer(hosts=[url])
    count = redis.Redis.from_url(url).zcard(f"asgi{channel}")
    found = [(await asyncio.wait_for(reader.receive(channel), 5))["i"] for _ in range(count)]
    await reader.close_pools()
    assert len(set(found)) == len(found), "a message was stored twice"
    return set(found)


async def test_queued_sends_fail_as_not_sent_and_never_reach_redis(redis_url):
    layer = RedisChannelLayer(hosts=[redis_url])
    await layer.send("outcome", {"i": -1})  # connected, script loaded
    connection = layer._loop_connections().commands[0]
    loop = asyncio.get_running_loop()
    # The first send finds the connection idle and is written at once; the other four
    # are queued for the write at the end of the loop iteration, which the drop beats.
    sends = [asyncio.ensure_future(layer.send("outcome", {"i": i})) for i in range(5)]
    loop.call_soon(connection.drop)
    outcomes = _outcomes(await asyncio.gather(*sends, return_exceptions=True))
    assert outcomes == {"sent": set(), "not sent": {1, 2, 3, 4}, "unknown": {0}}
    assert isinstance(sends[0].exception(), RedisConnectionError)  # old handlers catch it
    stored = await _stored(redis_url, "outcome")
    assert stored - {-1, 0} == set()
    # The layer reconnects for the next send.
    await layer.send("outcome", {"i": 5})
    assert await _stored(redis_url, "outcome") == {5}
    await layer.flush()


async def test_killed_connection_while_redis_is_paused(fresh_redis):
    """Sends written while Redis is paused, then the connection killed as the pause
    ends: Redis runs them and the kill takes their replies (what CLIENT KILL, a
    Sentinel failover or an output-buffer limit does to a busy client)."""
    admin = fresh_redis.client()
    layer = RedisChannelLayer(hosts=[fresh_redis.url], capacity=10_000)
    await layer.send("paused", {"i": -1})
    connection = layer._loop_connections().commands[0]
    admin.execute_command("CLIENT", "PAUSE", 500, "ALL")
    in_flight = [asyncio.ensure_future(layer.send("paused", {"i": i})) for i in range(100)]
    while connection.protocol._queued or connection.protocol._flush_handle:
        await asyncio.sleep(0)
    # Queued behind the paused sends, so it runs after them when the pause ends.
    kill = asyncio.ensure_future(asyncio.to_thread(admin.execute_command, "CLIENT", "KILL", "TYPE", "normal"))
    # More sends keep coming while the kill lands: some are written, some are not yet.
    later: list[asyncio.Future] = []
    while not kill.done():
        later.append(asyncio.ensure_future(layer.send("paused", {"i": 100 + len(later)})))
        await asyncio.sleep(0.001)
    assert await kill >= 1
    results = await asyncio.gather(*in_flight, *later, return_exceptions=True)
    outcomes = _outcomes(results)
    stored = await _stored(fresh_redis.url, "paused") - {-1}
    assert outcomes["sent"] <= stored, "a send that returned is missing"
    assert not (outcomes["not sent"] & stored), "a send reported as not sent was applied"
    assert stored <= outcomes["sent"] | outcomes["unknown"]
    # Every paused send had been written before the kill: none may claim "not sent".
    assert not (outcomes["not sent"] & set(range(100)))
    await layer.flush()


async def test_pubsub_publish_outcomes(redis_url):
    subscriber = redis.asyncio.Redis.from_url(redis_url).pubsub()
    await subscriber.subscribe("outcome.pub")
    await subscriber.get_message(timeout=1)  # the subscribe confirmation
    layer = RedisPubSubChannelLayer(hosts=[redis_url])
    await layer.send("outcome.pub", {"i": -1})
    shard = layer._get_shard("outcome.pub")
    loop = asyncio.get_running_loop()
    sends = [asyncio.ensure_future(layer.send("outcome.pub", {"i": i})) for i in range(5)]
    loop.call_soon(shard.publisher.drop)
    outcomes = _outcomes(await asyncio.gather(*sends, return_exceptions=True))
    assert outcomes == {"sent": set(), "not sent": {1, 2, 3, 4}, "unknown": {0}}
    await layer.send("outcome.pub", {"i": 5})
    received = []
    while 5 not in received:
        message = await asyncio.wait_for(subscriber.get_message(ignore_subscribe_messages=True, timeout=5), 6)
        if message is not None:
            received.append(layer.deserialize(message["data"])["i"])
    assert set(received) - {-1, 0, 5} == set(), "a publish reported as not sent went out"
    await layer.close()
    await subscriber.aclose()
