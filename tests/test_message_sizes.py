"""The largest messages README's Limits section promises, through both layers.

Redis takes bulk strings up to 512 MB, but a subscriber connection is dropped by Redis
once more than ``client-output-buffer-limit pubsub`` (32 MB hard, 8 MB for 60 s by default)
waits for it, so the sizes here are well inside that for the pub/sub layer too.
"""

from __future__ import annotations

import asyncio

import pytest

from channels_redis_fast.core import RedisChannelLayer
from channels_redis_fast.pubsub import RedisPubSubChannelLayer

SIZES = [1024 * 1024, 8 * 1024 * 1024]


@pytest.mark.parametrize("size", SIZES, ids=["1MB", "8MB"])
@pytest.mark.parametrize("layer_class", [RedisChannelLayer, RedisPubSubChannelLayer], ids=["core", "pubsub"])
async def test_large_message_send_and_group_send(redis_url, layer_class, size):
    receiver = layer_class(hosts=[redis_url])
    sender = layer_class(hosts=[redis_url])
    payload = bytes(range(256)) * (size // 256)
    try:
        channel = await receiver.new_channel()
        await receiver.group_add("big", channel)
        waiting = asyncio.ensure_future(receiver.receive(channel))
        await asyncio.sleep(0.1)  # the pub/sub layer subscribes on its first receive
        await sender.send(channel, {"type": "big", "body": payload})
        assert (await asyncio.wait_for(waiting, 20))["body"] == payload
        waiting = asyncio.ensure_future(receiver.receive(channel))
        await asyncio.sleep(0.1)
        await sender.group_send("big", {"type": "big", "body": payload, "text": "x" * 1000})
        message = await asyncio.wait_for(waiting, 20)
        assert message["body"] == payload and message["text"] == "x" * 1000
    finally:
        for layer in (receiver, sender):
            await (layer.close_pools() if layer_class is RedisChannelLayer else layer.close())
