"""The delivery shortcuts keep the semantics of the plain path.

* A waiting receiver is handed its message through its future; if it is cancelled before
  it runs, the message goes back to the head of the buffer (core and pub/sub).
* A pub/sub group message is decoded once for all local members; every member still gets
  a message of its own.
* ``running_loop()`` (no getpid() per call before Python 3.12) always names the loop that
  runs the calling code, across threads and loops.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time

import pytest
from asgiref.sync import async_to_sync

from channels_redis_fast.core import RedisChannelLayer
from channels_redis_fast.pubsub import RedisPubSubChannelLayer
from channels_redis_fast.utils import running_loop
from conftest import receive_soon

pytestmark = pytest.mark.timeout(30)


async def _waiting(task: asyncio.Task) -> None:
    """Let ``task`` reach its await on the layer."""
    for _ in range(50):
        await asyncio.sleep(0.01)
    assert not task.done()


async def test_core_receive_cancelled_after_handover_keeps_its_message(redis_url):
    layer = RedisChannelLayer(hosts=[redis_url])
    channel = await layer.new_channel()
    task = asyncio.ensure_future(layer.receive(channel))
    await _waiting(task)
    now = repr(time.time()).encode()
    # A pump batch, delivered the way the pump delivers it: the first message is handed
    # to the waiting receive, which is then cancelled before it can run.
    layer._deliver_process_batch(
        [
            layer.serialize({"n": 1, "__asgi_channel__": channel}), now,
            layer.serialize({"n": 2, "__asgi_channel__": channel}), now,
        ]
    )
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await receive_soon(layer, channel) == {"n": 1}
    assert await receive_soon(layer, channel) == {"n": 2}
    await layer.flush()


async def test_core_handover_wakes_each_waiting_receiver_once(redis_url):
    layer = RedisChannelLayer(hosts=[redis_url])
    channel = await layer.new_channel()
    tasks = [asyncio.ensure_future(layer.receive(channel)) for _ in range(3)]
    await _waiting(tasks[0])
    for n in range(5):
        await layer.send(channel, {"n": n})
    got = [await asyncio.wait_for(task, 5) for task in tasks]
    assert [m["n"] for m in got] == [0, 1, 2]
    assert [(await receive_soon(layer, channel))["n"] for _ in range(2)] == [3, 4]
    assert not layer.receive_buffer.get(channel)  # gone, or kept empty for the next wait
    await layer.flush()


async def test_pubsub_receive_cancelled_after_handover_keeps_its_message(redis_url):
    layer = RedisPubSubChannelLayer(hosts=[redis_url])
    channel = await layer.new_channel()
    first = asyncio.ensure_future(layer.receive(channel))
    second = asyncio.ensure_future(layer.receive(channel))
    await _waiting(second)
    loop_layer = layer._get_layer()
    local = loop_layer.channels[channel]
    # Delivered as the subscriber socket delivers: the first message is handed to the
    # first receive, which is cancelled before it runs.
    loop_layer._put(local, layer.serialize({"n": 1}))
    loop_layer._put(local, layer.serialize({"n": 2}))
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await asyncio.wait_for(second, 5) == {"n": 1}
    assert await receive_soon(layer, channel) == {"n": 2}
    await layer.close()


@pytest.mark.parametrize(
    "message",
    [
        {"type": "chat.message", "text": "hello", "n": 1, "ratio": 0.5, "raw": b"\x00", "none": None},
        {"type": "chat.message", "data": {"items": [1, 2]}, "tags": ["a"]},
    ],
    ids=["flat", "nested"],
)
async def test_pubsub_group_members_each_get_their_own_message(redis_url, message):
    layer = RedisPubSubChannelLayer(hosts=[redis_url])
    members = [await layer.new_channel() for _ in range(3)]
    for channel in members:
        await layer.group_add("room", channel)
    await layer.group_send("room", message)
    got = [await receive_soon(layer, channel) for channel in members]
    assert all(m == message for m in got)
    assert len({id(m) for m in got}) == 3
    # One consumer mutating its message (at any depth) leaves the others' alone.
    got[0]["type"] = "changed"
    if "data" in message:
        got[0]["data"]["items"].append(3)
    assert got[1] == message and got[2] == message
    await layer.close()


async def test_pubsub_group_message_that_does_not_decode_fails_each_receive(redis_url):
    layer = RedisPubSubChannelLayer(hosts=[redis_url])
    members = [await layer.new_channel() for _ in range(2)]
    for channel in members:
        await layer.group_add("room", channel)
    group_channel = layer._get_layer()._get_group_channel_name("room")
    await layer._get_layer()._get_shard(group_channel).publish(group_channel, b"\xc1 not msgpack")
    for channel in members:
        with pytest.raises(Exception):
            await receive_soon(layer, channel)
    await layer.group_send("room", {"type": "ok"})
    assert [await receive_soon(layer, c) for c in members] == [{"type": "ok"}] * 2
    await layer.close()


def test_running_loop_follows_loops_and_threads():
    seen: dict[str, object] = {}

    async def report(name: str) -> None:
        seen[name] = (running_loop(), asyncio.get_running_loop())

    def in_thread(name: str, loop: asyncio.AbstractEventLoop) -> None:
        loop.run_until_complete(report(name))

    loop_a = asyncio.new_event_loop()
    loop_b = asyncio.new_event_loop()
    try:
        loop_a.run_until_complete(report("a-main"))
        loop_b.run_until_complete(report("b-main"))
        # loop_a again, now in another thread, while this thread's last loop was loop_b.
        thread = threading.Thread(target=in_thread, args=("a-thread", loop_a))
        thread.start()
        thread.join()
        loop_b.run_until_complete(report("b-again"))
        asyncio.run(report("fresh"))
    finally:
        loop_a.close()
        loop_b.close()
    for name, (ours, asyncio_says) in seen.items():
        assert ours is asyncio_says, name
    with pytest.raises(RuntimeError):
        running_loop()


def test_pubsub_proxy_methods_are_coroutine_functions_in_and_out_of_a_loop(redis_url):
    layer = RedisPubSubChannelLayer(hosts=[redis_url])
    names = ("new_channel", "send", "receive", "group_add", "group_discard", "group_send", "flush")
    for name in names:
        assert inspect.iscoroutinefunction(getattr(RedisPubSubChannelLayer, name)), name
        assert inspect.iscoroutinefunction(getattr(layer, name)), name  # no running loop

    async def in_a_loop() -> None:
        for name in names:
            method = getattr(layer, name)
            assert inspect.iscoroutinefunction(method), name
            assert method.__self__ is layer._get_layer(), name  # one frame, no forwarding
        channel = await layer.new_channel()
        receive = layer.receive  # bound once, as a consumer does
        await layer.send(channel, {"type": "a"})
        await layer.send(channel, {"type": "b"})
        assert [await receive(channel), await receive(channel)] == [{"type": "a"}, {"type": "b"}]
        await layer.close()

    asyncio.run(in_a_loop())
    # Unbound from any loop, the methods find the running loop's layer per call.
    assert async_to_sync(layer.new_channel)().startswith("asgispecific.")
    async_to_sync(layer.close)()  # that call started the sync bridge's thread (sync_bridge.py)


@pytest.mark.parametrize("waiting", [True, False], ids=["handed-over", "from-buffer"])
async def test_core_group_members_of_one_process_each_get_their_own_message(redis_url, waiting):
    # The members share one bundled message in Redis and one decoded dict in the local
    # buffers; each receiver must still get a dict of its own.
    layer = RedisChannelLayer(hosts=[redis_url])
    members = [await layer.new_channel() for _ in range(3)]
    for channel in members:
        await layer.group_add("room", channel)
    message = {"type": "chat.message", "text": "hello", "n": 1}
    if waiting:
        receives = [asyncio.ensure_future(layer.receive(channel)) for channel in members]
        await asyncio.sleep(0.05)
        await layer.group_send("room", message)
        got = await asyncio.wait_for(asyncio.gather(*receives), 5)
    else:
        await layer.group_send("room", message)
        await receive_soon(layer, members[0])  # starts the pump: the others are buffered
        await layer.group_send("room", message)
        await asyncio.sleep(0.05)
        got = [await receive_soon(layer, channel) for channel in members]
    assert all(m == message for m in got)
    assert len({id(m) for m in got}) == 3
    got[0]["type"] = "changed"
    assert got[1] == message and got[2] == message
    await layer.flush()
