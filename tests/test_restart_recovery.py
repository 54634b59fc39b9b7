"""Both layers hear again as soon as Redis is back, however long it was away.

5,000 consumers wait in one layer instance, each on its own channel, for each layer; Redis
goes away and comes back; another instance sends one message to every channel starting a
quarter of a second after the server answers again. Pub/sub drops what is published while
nobody is subscribed, so that start only passes if the subscriber reconnected and
re-subscribed by then; the core layer keeps messages, so for it the check is that every
pump listens again and nothing is lost or doubled. Both layers share one server per test.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio.sentinel import Sentinel

from channels_redis_fast.core import RedisChannelLayer
from channels_redis_fast.pubsub import RedisPubSubChannelLayer

# A soak (5,000 consumers, every restart length): `make test` runs it, the matrix does not.
pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]

CONSUMERS = 5000
#: When the sends start, after the server (or the new master) can be reached again.
SEND_AFTER = 0.25
#: Generous: all messages usually arrive well within a second of being sent.
ARRIVAL_BOUND = 30.0


class _Consumers:
    """CONSUMERS pending receive() calls on a layer, each on its own channel, counting
    what arrives: ``after`` messages (the ones under test), then one ``fence`` each, sent
    after all of them, so that once every fence is in, any duplicate is in too."""

    def __init__(self, layer, channels: list[str]) -> None:
        self.layer = layer
        self.channels = channels
        self.after = dict.fromkeys(channels, 0)
        self.fenced = dict.fromkeys(channels, 0)
        self.misrouted = 0
        self.warmed = 0
        self.tasks = [asyncio.ensure_future(self._consume(channel)) for channel in channels]

    @classmethod
    async def start(cls, layer) -> "_Consumers":
        channels = await asyncio.gather(*[layer.new_channel() for _ in range(CONSUMERS)])
        return cls(layer, channels)

    async def _consume(self, channel: str) -> None:
        while True:
            message = await self.layer.receive(channel)
            if message.get("to") != channel:
                self.misrouted += 1
            elif message["type"] == "restart.after":
                self.after[channel] += 1
            elif message["type"] == "restart.fence":
                self.fenced[channel] += 1
            elif message["type"] == "restart.warm":
                self.warmed += 1

    def all_fenced(self) -> bool:
        return all(self.fenced.values())

    def report(self) -> dict:
        return {
            "lost": sum(1 for count in self.after.values() if count == 0),
            "duplicated": sum(count - 1 for count in self.after.values() if count > 1),
            "misrouted": self.misrouted,
        }

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def _listening(consumers: list[_Consumers], senders: list) -> None:
    """Every consumer is waiting and every sender has a connection (which the outage breaks)."""
    await asyncio.sleep(0.1)  # the receive() calls have started their pumps
    for group, sender in zip(consumers, senders):
        channel = group.channels[0]
        await sender.send(channel, {"type": "restart.warm", "to": channel})
    deadline = time.monotonic() + 10
    while not all(group.warmed for group in consumers):
        assert time.monotonic() < deadline, "the warm-up message never arrived"
        await asyncio.sleep(0.01)


async def _first_pong(host: str, port: int) -> float:
    """When the server first answers PING (polled tightly, with a raw socket)."""
    while True:
        try:
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(b"PING\r\n")
                if (await reader.readline()).startswith(b"+PONG"):
                    return time.monotonic()
            finally:
                writer.close()
        except OSError:
            pass
        await asyncio.sleep(0.002)


async def _send_to_all(consumers: list[_Consumers], senders: list, kind: str) -> None:
    await asyncio.gather(
        *[
            sender.send(channel, {"type": kind, "to": channel})
            for group, sender in zip(consumers, senders)
            for channel in group.channels
        ]
    )


async def _check_every_message_arrives_once(consumers: list[_Consumers], senders: list, t0: float) -> None:
    await asyncio.sleep(t0 + SEND_AFTER - time.monotonic())
    await _send_to_all(consumers, senders, "restart.after")
    await _send_to_all(consumers, senders, "restart.fence")
    deadline = time.monotonic() + ARRIVAL_BOUND
    while not all(group.all_fenced() for group in consumers) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    clean = {"lost": 0, "duplicated": 0, "misrouted": 0}
    faults = {type(group.layer).__name__: group.report() for group in consumers if group.report() != clean}
    assert not faults, f"of {CONSUMERS} messages per layer: {faults}"


def _layers(hosts: list) -> tuple[list, list]:
    """A receiving and a sending instance of each layer."""
    # Every core send goes to this process's one key: let it hold them all.
    core = [RedisChannelLayer(hosts=hosts, capacity=4 * CONSUMERS) for _ in range(2)]
    pubsub = [RedisPubSubChannelLayer(hosts=hosts) for _ in range(2)]
    return [core[0], pubsub[0]], [core[1], pubsub[1]]


async def _close(layers: list) -> None:
    for layer in layers:
        if isinstance(layer, RedisChannelLayer):
            await layer.close_pools()
        else:
            await layer.close()


@pytest.mark.parametrize("outage", [1, 2, 4, 10])
async def test_every_message_sent_right_after_a_restart_arrives_once(fresh_redis, outage):
    receivers, senders = _layers([fresh_redis.url])
    consumers: list[_Consumers] = []
    try:
        consumers = [await _Consumers.start(layer) for layer in receivers]
        await _listening(consumers, senders)

        await asyncio.to_thread(fresh_redis.stop)
        await asyncio.sleep(outage)
        starting = asyncio.ensure_future(asyncio.to_thread(fresh_redis.start))
        t0 = await _first_pong(fresh_redis.host, fresh_redis.port)
        await starting

        await _check_every_message_arrives_once(consumers, senders, t0)
    finally:
        for group in consumers:
            await group.stop()
        await _close(receivers + senders)


async def _new_master_discovered(sentinel, address: tuple[str, int]) -> float:
    """When discovery through the sentinel, as the layers do it, first finds ``address``."""
    discovery = Sentinel([sentinel.address], sentinel_kwargs=sentinel.sentinel_kwargs)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if await discovery.discover_master(sentinel.name) == address:
                    return time.monotonic()
            except Exception:  # noqa: BLE001 - no healthy master yet
                pass
            await asyncio.sleep(0.005)
        raise AssertionError(f"the sentinel never handed out {address} as the master")
    finally:
        for client in discovery.sentinels:
            await client.aclose()


async def test_every_message_sent_right_after_a_sentinel_failover_arrives_once(failover_set):
    master, replica, sentinel = failover_set
    receivers, senders = _layers([sentinel.hosts_entry()])
    consumers: list[_Consumers] = []
    try:
        consumers = [await _Consumers.start(layer) for layer in receivers]
        await _listening(consumers, senders)

        await asyncio.to_thread(master.kill)
        t0 = await _new_master_discovered(sentinel, (replica.host, replica.port))

        await _check_every_message_arrives_once(consumers, senders, t0)
    finally:
        for group in consumers:
            await group.stop()
        await _close(receivers + senders)


# -- the wake-up on its own: with a reconnect pace far too slow to matter, only a connection
# -- of the layer that reaches Redis can bring a listener back within the test's bound.


@pytest.fixture
def slow_retries(monkeypatch):
    from channels_redis_fast import reconnect

    monkeypatch.setattr(reconnect, "RETRY_START", 600.0)
    monkeypatch.setattr(reconnect, "RETRY_MAX", 600.0)
    monkeypatch.setattr(reconnect, "PROBER_STALE", 600.0)


async def _until(predicate, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def test_a_send_reaching_redis_wakes_the_core_pumps(fresh_redis, slow_retries):
    layer = RedisChannelLayer(hosts=[fresh_redis.url])
    try:
        specific = await layer.new_channel()
        pending = asyncio.ensure_future(layer.receive(specific))
        worker = asyncio.ensure_future(layer.receive("work.wake"))
        state = layer._loop_connections()
        await _until(lambda: len(state.pumps) == 2, "both pumps")

        await asyncio.to_thread(fresh_redis.stop)
        await _until(lambda: all(pump.errors for pump in state.pumps.values()), "both pumps to fail")
        assert state.reachable[0].probing
        await asyncio.to_thread(fresh_redis.start)

        # The send's own connection reaches Redis: both pumps (the prober and the one
        # waiting on it) pop again at once instead of after their pause.
        await layer.send(specific, {"type": "after"})
        await layer.send("work.wake", {"type": "work"})
        assert await asyncio.wait_for(pending, 10) == {"type": "after"}
        assert await asyncio.wait_for(worker, 10) == {"type": "work"}
        assert not state.reachable[0].probing
    finally:
        await layer.close_pools()


async def test_a_send_reaching_redis_wakes_the_subscriber(fresh_redis, slow_retries):
    layer = RedisPubSubChannelLayer(hosts=[fresh_redis.url], on_reconnect="back")
    try:
        channel = await layer.new_channel()
        shard = layer._shards[0]
        await asyncio.to_thread(fresh_redis.stop)
        await _until(lambda: shard.reachable.probing, "the subscriber's first reconnect attempt")
        await asyncio.to_thread(fresh_redis.start)

        # Published before the subscriber is back, so lost; but its connection wakes it.
        await layer.send("elsewhere", {"type": "wake"})
        assert await asyncio.wait_for(layer.receive(channel), 10) == {"type": "back"}
        await layer.send(channel, {"type": "heard"})
        assert await asyncio.wait_for(layer.receive(channel), 10) == {"type": "heard"}
    finally:
        await layer.close()


async def test_a_resigning_prober_hands_over_at_once(slow_retries):
    from channels_redis_fast.reconnect import Reachable

    reachable = Reachable(asyncio.get_running_loop())
    prober, follower = object(), object()
    probing = asyncio.ensure_future(reachable.pause(prober, 600.0))
    await asyncio.sleep(0)
    following = asyncio.ensure_future(reachable.pause(follower, 0.0))
    await asyncio.sleep(0.05)
    assert not following.done()  # it waits on the prober, not on its own pace

    probing.cancel()
    reachable.resign(prober)
    await asyncio.wait_for(following, 10)
    assert reachable.probing  # the follower probes now

    waiting = [asyncio.ensure_future(reachable.pause(object(), 600.0)) for _ in range(3)]
    await asyncio.sleep(0.05)
    reachable.notify()
    await asyncio.wait_for(asyncio.gather(*waiting), 10)
    assert not reachable.probing


async def test_a_new_subscriber_socket_subscribes_everything_before_anything_else(fresh_redis, slow_retries):
    layer = RedisPubSubChannelLayer(hosts=[fresh_redis.url])
    try:
        first = await layer.new_channel()
        await layer.group_add("room", first)
        shard = layer._shards[0]
        await asyncio.to_thread(fresh_redis.stop)
        await _until(lambda: shard.reachable.probing, "the subscriber's first reconnect attempt")
        await asyncio.to_thread(fresh_redis.start)

        # This subscription opens the new socket. The old names were subscribed on it
        # before it: when its reply is in, Redis has processed theirs too.
        second = await layer.new_channel()
        numsub = dict(await asyncio.to_thread(fresh_redis.client().pubsub_numsub, first, "asgi__group__room", second))
        assert numsub == {first.encode(): 1, b"asgi__group__room": 1, second.encode(): 1}
        await layer.group_send("room", {"type": "group"})
        assert await asyncio.wait_for(layer.receive(first), 10) == {"type": "group"}
    finally:
        await layer.close()
