"""What an operator reads in the log while Redis is away: a first warning, a bounded
number more (each with how long and how many attempts), and one line when it is back."""

from __future__ import annotations

import asyncio
import logging

from channels_redis_fast.core import RedisChannelLayer
from channels_redis_fast.pubsub import RedisPubSubChannelLayer
from conftest import until

OUTAGE = 1.5


async def test_outage_is_logged_once_then_rarely_and_the_return_once(fresh_redis, caplog):
    core = RedisChannelLayer(hosts=[fresh_redis.url])
    pubsub = RedisPubSubChannelLayer(hosts=[fresh_redis.url])
    core_channel = await core.new_channel()
    pubsub_channel = await pubsub.new_channel()
    core_receive = asyncio.ensure_future(core.receive(core_channel))
    pubsub_receive = asyncio.ensure_future(pubsub.receive(pubsub_channel))
    await asyncio.sleep(0.3)  # both listen
    try:
        with caplog.at_level(logging.INFO, logger="channels_redis_fast"):
            await asyncio.to_thread(fresh_redis.stop)
            await asyncio.sleep(OUTAGE)
            await asyncio.to_thread(fresh_redis.start)
            await until(
                lambda: any("works again" in r.getMessage() for r in caplog.records)
                and any("restored after" in r.getMessage() for r in caplog.records),
                10,
                "both layers to log that they are back",
            )
        await core.send(core_channel, {"type": "back"})
        await pubsub.send(pubsub_channel, {"type": "back"})
        assert (await asyncio.wait_for(core_receive, 5)) == {"type": "back"}
        assert (await asyncio.wait_for(pubsub_receive, 5)) == {"type": "back"}
    finally:
        core_receive.cancel()
        pubsub_receive.cancel()
        await core.close_pools()
        await pubsub.close()
    messages = [r.getMessage() for r in caplog.records]
    failing = [m for m in messages if "Receive from" in m and "retrying" in m]
    # The first failure, then at most one line per 30 s: a 1.5 s outage logs one.
    assert len(failing) == 1, failing
    assert "attempts in" in failing[0]
    back = [m for m in messages if "works again after" in m]
    assert len(back) == 1 and "failed attempts" in back[0], back
    restored = [m for m in messages if "restored after" in m]
    assert len(restored) == 1 and "failed attempts" in restored[0], restored
