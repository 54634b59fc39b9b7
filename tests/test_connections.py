"""Sockets: few, per event loop, closed with their loop, never limited by a pool.

The server's CLIENT LIST is the ground truth here: it counts what the layer really holds,
whatever its internal bookkeeping says.
"""
# These tests are about what reaches Redis: their layers run with local_delivery off
# (issue 16; tests/test_local_delivery.py covers the in-process path).


from __future__ import annotations

import asyncio
import threading
import time

from asgiref.sync import async_to_sync
from redis.exceptions import ConnectionError as RedisConnectionError

from channels_redis_fast.core import RedisChannelLayer

BURST = 1000


def _layer_clients(server) -> int:
    """Normal clients connected to ``server``, not counting the harness's own."""
    client = server.client()
    me = client.client_id()
    return sum(1 for c in client.client_list(_type="normal") if int(c["id"]) != me)


def _wait_clients(server, expected: int, timeout: float = 3.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        count = _layer_clients(server)
        if count <= expected or time.monotonic() > deadline:
            return count
        time.sleep(0.05)


async def test_burst_of_concurrent_sends_and_receives_uses_few_sockets(redis_shards, shard_urls):
    layer = RedisChannelLayer(local_delivery=False, hosts=shard_urls, capacity=BURST * 2)
    channels = [await layer.new_channel() for _ in range(BURST)]
    receivers = [asyncio.ensure_future(layer.receive(c)) for c in channels]
    workers = [asyncio.ensure_future(layer.receive("burst.work")) for _ in range(BURST)]
    await asyncio.sleep(0.1)

    await asyncio.wait_for(
        asyncio.gather(
            *[layer.send(c, {"i": i}) for i, c in enumerate(channels)],
            *[layer.send("burst.work", {"w": i}) for i in range(BURST)],
        ),
        20,
    )
    # More concurrent sends than redis-py 8's default pool limit (100), in one go.
    specific = await asyncio.wait_for(asyncio.gather(*receivers), 20)
    assert [m["i"] for m in specific] == list(range(BURST))
    work = await asyncio.wait_for(asyncio.gather(*workers), 20)
    assert sorted(m["w"] for m in work) == list(range(BURST))

    # Per shard: one command connection, plus one pump per key being received on
    # (the process-specific key and burst.work), whatever the number of callers.
    state = layer._layers[asyncio.get_running_loop()]
    assert len(state.pumps) == 2 * len(shard_urls)
    for server in redis_shards:
        assert _layer_clients(server) <= 3, server.client().client_list()
    await layer.flush()


def test_async_to_sync_group_send_from_a_thread_leaves_nothing_behind(redis_server, redis_url):
    layer = RedisChannelLayer(local_delivery=False, hosts=[redis_url], capacity=1000)
    baseline = _layer_clients(redis_server)
    errors: list[BaseException] = []
    seen_layers: list[int] = []

    def sync_code():
        try:
            specific = async_to_sync(layer.new_channel)()
            for member in ("gmember.a", "gmember.b", specific):
                async_to_sync(layer.group_add)("g200", member)
            for n in range(200):
                async_to_sync(layer.group_send)("g200", {"type": "g", "n": n})
                seen_layers.append(len(layer._layers))
            first = async_to_sync(layer.receive)(specific)
            assert first == {"type": "g", "n": 0}
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    thread = threading.Thread(target=sync_code)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "async_to_sync(group_send) wedged"
    assert not errors, errors

    client = redis_server.client()
    assert client.zcard("asgigmember.a") == 200
    assert client.zcard("asgigmember.b") == 200
    # Every call ran on the sync bridge's loop (sync_bridge.py): no loop state piles up,
    # and close_pools() leaves nothing behind.
    assert max(seen_layers) <= 1, max(seen_layers)
    assert list(layer._layers) == [layer._sync.loop]
    async_to_sync(layer.close_pools)()
    assert len(layer._layers) == 0
    assert _wait_clients(redis_server, baseline) == baseline


async def test_close_pools_closes_everything_and_the_layer_still_works(redis_server, redis_url):
    baseline = await asyncio.to_thread(_layer_clients, redis_server)
    layer = RedisChannelLayer(local_delivery=False, hosts=[redis_url])
    specific = await layer.new_channel()
    for channel in (specific, "close.work"):
        await layer.send(channel, {"c": channel})
        assert await asyncio.wait_for(layer.receive(channel), 5) == {"c": channel}
    # A command connection and two pumps, still blocked in BZPOPMIN.
    assert await asyncio.to_thread(_layer_clients, redis_server) == baseline + 3

    start = time.monotonic()
    await layer.close_pools()
    # Pumps are unblocked, not waited out (their block is 5 s).
    assert time.monotonic() - start < 2
    assert layer._layers == {}
    assert await asyncio.to_thread(_wait_clients, redis_server, baseline) == baseline

    for channel in (specific, "close.work"):
        await layer.send(channel, {"again": channel})
        assert await asyncio.wait_for(layer.receive(channel), 5) == {"again": channel}
    await layer.flush()
    assert await asyncio.to_thread(_wait_clients, redis_server, baseline) == baseline


async def test_close_pools_does_not_strand_a_pending_receive(redis_url):
    layer = RedisChannelLayer(local_delivery=False, hosts=[redis_url])
    specific = await layer.new_channel()
    pending = asyncio.ensure_future(layer.receive(specific))
    await asyncio.sleep(0.1)
    await layer.close_pools()
    await layer.send(specific, {"after": "close"})
    # Either delivered (the layer reconnected) or failed loudly; never silent forever.
    done, _ = await asyncio.wait([pending], timeout=5)
    if not done:
        pending.cancel()
    assert done, "a receive pending across close_pools() hangs although a message is there"
    if pending.exception() is None:
        assert pending.result() == {"after": "close"}
    else:
        assert isinstance(pending.exception(), RedisConnectionError), repr(pending.exception())
        # Failing the receive popped nothing: the message is still there.
        assert await asyncio.wait_for(layer.receive(specific), 5) == {"after": "close"}
    await layer.flush()


async def test_idle_receive_outlives_redis_py_default_socket_timeout(redis_url):
    # redis-py 8 gives sockets a 5 s read timeout; a 5 s BZPOPMIN on such a socket
    # raises TimeoutError on every idle receive. Ours must simply keep waiting.
    layer = RedisChannelLayer(local_delivery=False, hosts=[redis_url])
    specific = await layer.new_channel()
    tasks = [
        asyncio.ensure_future(layer.receive(specific)),
        asyncio.ensure_future(layer.receive("idle.work")),
    ]
    await asyncio.sleep(0.2)
    state = layer._layers[asyncio.get_running_loop()]
    connects = [p.connection.connects for p in state.pumps.values()]
    await asyncio.sleep(7)
    assert not any(t.done() for t in tasks), [t.exception() for t in tasks if t.done()]
    assert [p.errors for p in state.pumps.values()] == [0, 0]
    assert [p.connection.connects for p in state.pumps.values()] == connects
    await layer.send(specific, {"late": 1})
    await layer.send("idle.work", {"late": 2})
    assert await asyncio.wait_for(tasks[0], 5) == {"late": 1}
    assert await asyncio.wait_for(tasks[1], 5) == {"late": 2}
    await layer.flush()


async def test_reply_hook_runs_before_the_awaiting_caller_and_not_after_a_cancel(redis_url):
    layer = RedisChannelLayer(local_delivery=False, hosts=[redis_url])
    connection = layer.connection(0)
    assert connection.execute_then(print, "PING") is None  # not connected: no hook taken
    await connection.execute("PING")
    seen = []

    def hook(reply):
        # Runs inside the read that parsed the reply: the caller has not seen it yet, and
        # a command sent from here goes out at once.
        seen.append((reply, future.done()))
        seen.append(connection.execute("INCR", "hooked"))

    future = connection.execute_then(hook, "INCR", "hooked")
    assert await future == 1
    assert seen[0] == (1, False)
    assert await seen[1] == 2

    cancelled = connection.execute_then(seen.append, "INCR", "hooked")
    cancelled.cancel()
    assert await connection.execute("GET", "hooked") == b"3"  # the command still ran
    assert len(seen) == 2 and not connection.protocol._on_reply
    await layer.flush()
