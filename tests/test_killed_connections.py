"""Connections killed while the receive pump pops: what Redis handed out is not lost.

Redis writes a reply at the end of its event-loop iteration, so a connection killed in
the iteration that ran a pop takes the popped messages with it.  The pump therefore reads
a process key's batch first and removes it only once delivered, and pops a shared work
queue into an in-flight key that it puts back after a lost reply; only the single message
of its blocking pop is at risk, as in channels_redis.  CLIENT PAUSE holds the pop until
the kill is queued behind it, which lands the kill in that very iteration.
"""

from __future__ import annotations

import asyncio
import threading

from channels.exceptions import ChannelFull
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from channels_redis_fast.core import RedisChannelLayer
from conftest import until

QUEUED = 300
BACKLOG = 3000


def _own_key(channel: str) -> str:
    return "asgi" + channel[: channel.index("!") + 1]


class _Traffic:
    """Sends under a thread that kills the clients' connections; counts what arrived."""

    def __init__(self, server, pause_ms: int = 0) -> None:
        self.server = server
        self.pause_ms = pause_ms  # a short CLIENT PAUSE first lands the kill on a pop
        self.got: list[int] = []
        self.accepted: list[int] = []
        self.unknown: list[int] = []  # the send failed: Redis may or may not have it
        self.kills = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._kill)

    def _kill(self) -> None:
        client = self.server.client()
        while not self._stop.wait(0.05):
            if self.pause_ms:
                client.client_pause(self.pause_ms, all=True)
            self.kills += client.client_kill_filter(_type="normal", skipme=True) > 0

    async def consume(self, layer, channel: str) -> None:
        while True:
            self.got.append((await layer.receive(channel))["i"])

    async def produce(self, sender, channel: str, first: int, last: int, every: int) -> None:
        for i in range(first, last):
            try:
                await sender.send(channel, {"type": "t", "i": i})
            except (RedisConnectionError, RedisTimeoutError, ChannelFull):
                self.unknown.append(i)
            else:
                self.accepted.append(i)
            if i % every == 0:
                await asyncio.sleep(0.001)

    async def killing(self, sends) -> None:
        """Run ``sends`` with the killer thread going."""
        self._thread.start()
        try:
            await sends
        finally:
            self._stop.set()
            await asyncio.to_thread(self._thread.join)

    async def settle(self, consumers: list, layers: list) -> None:
        try:
            await until(lambda: set(self.accepted) <= set(self.got), 15, "every accepted message")
            await asyncio.sleep(0.2)  # anything more would be a duplicate
        except BaseException:  # noqa: BLE001 - what is missing is counted in check()
            pass
        finally:
            for consumer in consumers:
                consumer.cancel()
            await asyncio.gather(*consumers, return_exceptions=True)
            for layer in layers:
                await layer.close_pools()

    def check(self) -> None:
        lost = sorted(set(self.accepted) - set(self.got))
        assert self.kills > 0
        # Each kill can take at most the one message its blocking pop had taken.
        assert len(lost) <= self.kills, f"{len(lost)} lost with {self.kills} kills: {lost[:20]}"
        assert len(self.got) == len(set(self.got)), "a message was delivered twice"
        assert set(self.got) <= set(self.accepted) | set(self.unknown)


async def _kill_during_the_pop(server, layer, channel: str, receivers: int) -> list[int]:
    """Queue QUEUED messages, then kill the connections in the iteration that pops them.

    The pump connects (and asks its CLIENT ID) before the pause, so that under the pause
    only its pop waits, and the kill, queued behind it, runs right after it. Returns the
    ids the ``receivers`` receive loops got, in arrival order.
    """
    sender = RedisChannelLayer(hosts=[server.url], capacity=QUEUED)
    await sender.send(channel, {"type": "warm"})
    assert (await asyncio.wait_for(layer.receive(channel), 5)) == {"type": "warm"}
    for i in range(QUEUED):
        await sender.send(channel, {"type": "t", "i": i})
    await sender.close_pools()
    got: list[int] = []

    async def consume():
        while True:
            got.append((await layer.receive(channel))["i"])

    server.client().client_pause(1500, all=True)
    consumers = [asyncio.ensure_future(consume()) for _ in range(receivers)]
    try:
        await asyncio.sleep(0.3)  # the pump's pop waits behind the pause
        killed = await asyncio.to_thread(server.client().client_kill_filter, _type="normal", skipme=True)
        assert killed >= 1  # the pump's connection
        await until(lambda: len(got) >= QUEUED, 15, f"{QUEUED} messages")
        await asyncio.sleep(0.1)  # anything more would be a duplicate
    finally:
        for consumer in consumers:
            consumer.cancel()
        await asyncio.gather(*consumers, return_exceptions=True)
        await layer.close_pools()
    return got


async def test_kill_during_the_pop_loses_no_queued_message(fresh_redis):
    layer = RedisChannelLayer(hosts=[fresh_redis.url], capacity=QUEUED)
    channel = await layer.new_channel()
    got = await _kill_during_the_pop(fresh_redis, layer, channel, receivers=1)
    assert sorted(got) == list(range(QUEUED)), "lost or duplicated messages"
    assert got == list(range(QUEUED)), "out of order"
    admin = fresh_redis.client()
    await until(lambda: admin.zcard(_own_key(channel)) == 0, 5, "delivered messages removed from Redis")


async def test_random_kills_under_traffic_lose_at_most_the_blocking_pops(fresh_redis):
    layer = RedisChannelLayer(hosts=[fresh_redis.url], capacity=10_000)
    sender = RedisChannelLayer(hosts=[fresh_redis.url], capacity=10_000)
    channel = await layer.new_channel()
    traffic = _Traffic(fresh_redis)
    consumers = [asyncio.ensure_future(traffic.consume(layer, channel))]
    await traffic.killing(traffic.produce(sender, channel, 0, 3000, every=20))
    await traffic.settle(consumers, [layer, sender])
    traffic.check()


def _inflight_members(admin) -> int:
    return sum(admin.zcard(key) for key in admin.scan_iter(match="*$inflight*"))


async def test_kill_during_a_work_queue_pop_loses_no_queued_message(fresh_redis):
    layer = RedisChannelLayer(hosts=[fresh_redis.url], capacity=QUEUED)
    # Four receivers waiting in one process: the first pop takes four messages.
    got = await _kill_during_the_pop(fresh_redis, layer, "tasks", receivers=4)
    assert sorted(got) == list(range(QUEUED)), "lost or duplicated messages"
    admin = fresh_redis.client()
    assert admin.zcard("asgitasks") == 0
    await until(lambda: _inflight_members(admin) == 0, 5, "the in-flight backup emptied")


async def test_random_kills_on_a_work_queue_lose_at_most_the_blocking_pops(fresh_redis):
    layers = [RedisChannelLayer(hosts=[fresh_redis.url], capacity=10_000) for _ in range(2)]
    sender = RedisChannelLayer(hosts=[fresh_redis.url], capacity=10_000)
    traffic = _Traffic(fresh_redis, pause_ms=20)
    # A backlog and many receivers per process: pops of many messages each.
    await traffic.produce(sender, "tasks", 0, BACKLOG, every=200)
    consumers = [asyncio.ensure_future(traffic.consume(layer, "tasks")) for layer in layers for _ in range(16)]
    await traffic.killing(traffic.produce(sender, "tasks", BACKLOG, 2 * BACKLOG, every=200))
    await traffic.settle(consumers, [*layers, sender])
    traffic.check()
