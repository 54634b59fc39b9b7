"""A host configuration that fails only at connect time raises from send() and receive().

A misspelt redis-py option, a port that is not a number or a wrong password cannot be
cured by waiting: each operation of either layer raises it at once (the receive pump
used to die with it and leave receive() waiting forever), and nothing is written.
"""

from __future__ import annotations

import asyncio

import pytest
import redis
from redis.exceptions import AuthenticationError

from channels_redis_fast.core import RedisChannelLayer
from channels_redis_fast.pubsub import RedisPubSubChannelLayer
from channels_redis_fast.testing import RedisServer

LAYERS = [RedisChannelLayer, RedisPubSubChannelLayer]
#: Bounds a hang only; the errors come at once.
HANG = 5.0


@pytest.fixture(scope="module")
def locked_server():
    server = RedisServer(password="the-right-one")
    yield server
    server.close()


def _bad_hosts(url: str, locked: RedisServer) -> dict:
    return {
        "misspelt option": ({"address": url, "socket_timout": 1}, TypeError, "socket_timout"),
        "port not a number": ("redis://127.0.0.1:notaport", ValueError, "notaport"),
        "wrong password": (
            {"address": f"redis://:wrong@{locked.host}:{locked.port}"},
            AuthenticationError,
            "password",
        ),
    }


@pytest.mark.parametrize("case", ["misspelt option", "port not a number", "wrong password"])
@pytest.mark.parametrize("operation", ["send", "receive"])
@pytest.mark.parametrize("layer_class", LAYERS, ids=["core", "pubsub"])
async def test_bad_host_raises_instead_of_hanging(redis_url, locked_server, layer_class, operation, case):
    host, error, names = _bad_hosts(redis_url, locked_server)[case]
    layer = layer_class(hosts=[host])
    try:
        with pytest.raises(error, match=names):
            if operation == "send":
                await asyncio.wait_for(layer.send("errors.work", {"type": "t"}), HANG)
            else:
                channel = await layer.new_channel()
                await asyncio.wait_for(layer.receive(channel), HANG)
    finally:
        await (layer.close_pools() if layer_class is RedisChannelLayer else layer.close())
    assert redis.Redis.from_url(redis_url).dbsize() == 0
    assert redis.Redis.from_url(locked_server.url).dbsize() == 0


async def test_core_receive_raises_again_after_a_config_error(redis_url):
    # The failed pump does not stay around: the next receive tries, and fails, again.
    layer = RedisChannelLayer(hosts=[{"address": redis_url, "socket_timout": 1}])
    channel = await layer.new_channel()
    for _ in range(2):
        with pytest.raises(TypeError, match="socket_timout"):
            await asyncio.wait_for(layer.receive(channel), HANG)
    await layer.close_pools()
