"""Client cost of one group delivery to 500 local receivers, with Redis out of the hot path.

    python bench/fanout_cost.py [floor|pubsub|core ...] [--rounds N]

Each round hands one group message to 500 waiting receiver tasks, as the layer does when it
reads one from Redis, and lets them all run: ``pubsub`` feeds the subscriber protocol the
raw RESP frame, ``core`` calls the pump's batch delivery with a bundled member, ``floor``
is a bare asyncio future per receiver (the cost no asyncio layer can go below). It prints
CPU microseconds per delivery. Those vary between runs on a shared machine; for a
repeatable figure count instructions and take the difference of two round counts:

    valgrind --tool=callgrind --callgrind-out-file=/dev/null python bench/fanout_cost.py pubsub --rounds 40
    valgrind --tool=callgrind --callgrind-out-file=/dev/null python bench/fanout_cost.py pubsub --rounds 140
    # (second total - first total) / (100 * 500) = instructions per delivery

A Redis server is started only because the core layer's pump wants one to block on.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

from channels_redis_fast.testing import RedisServer

MEMBERS = 500


def _message(n: int) -> dict:
    return {"type": "bench.message", "text": "x" * 56, "n": n, "t": 1.0}


async def _pubsub(url: str, rounds: int):
    from channels_redis_fast.pubsub import RedisPubSubChannelLayer, _SubscriberProtocol

    proxy = RedisPubSubChannelLayer(hosts=[url])
    layer = proxy._get_layer()
    group = layer._get_group_channel_name("bench")
    names = [f"{layer.prefix}specific.{uuid.uuid4().hex}" for _ in range(MEMBERS)]
    for name in names:
        layer._local_channel(name).groups.add(group)
    layer.groups[group] = set(names)
    protocol = _SubscriberProtocol(asyncio.get_running_loop(), 10.0, layer._shards[0])
    wire = group.encode()

    def frame(n: int) -> bytes:
        data = proxy.serialize(_message(n))
        return b"*3\r\n$7\r\nmessage\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(wire), wire, len(data), data)

    frames = [frame(n) for n in range(rounds)]
    return layer.receive, names, lambda n: protocol.data_received(frames[n])


async def _core(url: str, rounds: int):
    from channels_redis_fast.core import RedisChannelLayer

    layer = RedisChannelLayer(hosts=[url])
    names = [await layer.new_channel() for _ in range(MEMBERS)]
    score = str(time.time() + 86400).encode()
    batches = []
    for n in range(rounds):
        bundled = _message(n)
        bundled["__asgi_channel__"] = names
        batches.append([layer.serialize(bundled), score])
    return layer.receive, names, lambda n: layer._deliver_process_batch(batches[n])


async def _floor(url: str, rounds: int):
    loop = asyncio.get_running_loop()
    waiters: dict[int, asyncio.Future] = {}

    async def receive(index: int):
        waiter = waiters[index] = loop.create_future()
        return await waiter

    def push(n: int) -> None:
        for waiter in waiters.values():
            waiter.set_result(n)

    return receive, list(range(MEMBERS)), push


async def measure(kind: str, url: str, rounds: int) -> float:
    receive, names, push = await {"floor": _floor, "pubsub": _pubsub, "core": _core}[kind](url, rounds)
    delivered = 0

    async def consume(name) -> None:
        nonlocal delivered
        while True:
            await receive(name)
            delivered += 1

    tasks = [asyncio.ensure_future(consume(name)) for name in names]
    await asyncio.sleep(0.3)  # every receiver waiting, pumps started
    cpu = time.process_time()
    for n in range(rounds):
        push(n)
        await asyncio.sleep(0)  # the woken receivers run, then wait again
    cpu = time.process_time() - cpu
    if delivered != MEMBERS * rounds:
        raise AssertionError(f"{kind}: {delivered} of {MEMBERS * rounds} delivered")
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return cpu / delivered


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kinds", nargs="*", default=["floor", "pubsub", "core"])
    parser.add_argument("--rounds", type=int, default=600)
    args = parser.parse_args()
    with RedisServer() as server:
        for kind in args.kinds:
            per_delivery = asyncio.run(measure(kind, server.url, args.rounds))
            print(f"{kind:<7} {per_delivery * 1e6:6.2f} us CPU per delivery")


if __name__ == "__main__":
    main()
