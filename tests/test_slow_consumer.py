"""A consumer slower than its senders loses nothing that Redis accepted.

The receive pump pops a batch only while a receiver waits.  A receiver it has just handed
a message still counts as waiting until its task runs; popping again in that moment
brings a second batch into a buffer that already holds the first, and the bound (the
layer's capacity) pushes out the oldest messages, which Redis had accepted.
"""

from __future__ import annotations

import asyncio

from channels.exceptions import ChannelFull

from channels_redis_fast.core import RedisChannelLayer

CAPACITY = 5
SENDS = 3000
SENDERS = 4


async def test_slow_consumer_loses_no_accepted_message(redis_url):
    receiver = RedisChannelLayer(hosts=[redis_url], capacity=CAPACITY)
    sender = RedisChannelLayer(hosts=[redis_url], capacity=CAPACITY)
    channel = await receiver.new_channel()
    got: list[int] = []
    accepted: list[int] = []

    async def consume():
        while True:
            got.append((await receiver.receive(channel))["i"])
            await asyncio.sleep(0)  # a consumer that yields once per message

    async def produce(first: int):
        for i in range(first, SENDS, SENDERS):
            try:
                await sender.send(channel, {"type": "t", "i": i})
            except ChannelFull:
                continue
            accepted.append(i)

    consumer = asyncio.ensure_future(consume())
    try:
        await asyncio.gather(*(produce(k) for k in range(SENDERS)))
        deadline = asyncio.get_running_loop().time() + 10
        while len(got) < len(accepted) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
    finally:
        consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)
        await receiver.close_pools()
        await sender.close_pools()
    assert len(accepted) > 3 * CAPACITY  # the senders did outrun the consumer
    lost = sorted(set(accepted) - set(got))
    assert lost == [], f"{len(lost)} of {len(accepted)} accepted messages were lost"
    assert len(got) == len(set(got)), "a message was delivered twice"
    dropped = sum(buffer.dropped for buffer in receiver.receive_buffer.values())
    assert dropped == 0
    for first in range(SENDERS):  # each sender's messages arrive in the order sent
        mine = [i for i in got if i % SENDERS == first]
        assert mine == sorted(mine)


async def test_a_channel_capacity_above_the_layers_keeps_every_message_redis_accepted(redis_url):
    # Redis accepts up to the pattern's capacity for the channel; the receiving process's
    # buffer for it must hold as many, not the layer's smaller default.
    options = {"hosts": [redis_url], "capacity": CAPACITY, "channel_capacity": {"big.*": 50}}
    receiver = RedisChannelLayer(local_delivery=False, **options)
    sender = RedisChannelLayer(local_delivery=False, **options)
    channel = await receiver.new_channel("big.")
    for n in range(40):
        await sender.send(channel, {"n": n})
    got = [(await asyncio.wait_for(receiver.receive(channel), 5))["n"] for _ in range(40)]
    assert got == list(range(40))
    await receiver.flush()
    await receiver.close_pools()
    await sender.close_pools()
