"""In-process delivery (issue 16): messages to a layer's own process channels skip Redis.

Most tests run twice, with ``local_delivery`` on and off, and assert the same outcome:
what a consumer sees must not depend on the path. Where the paths differ by design
(Redis commands issued, what an outside observer finds in Redis, counters), the test
says which side it expects.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from asgiref.sync import async_to_sync

from channels_redis_fast.core import ChannelFull, RedisChannelLayer
from channels_redis_fast.local_delivery import plain_copy
from channels_redis_fast.pubsub import RedisPubSubChannelLayer
from conftest import nothing_arrives, receive_soon, until


@pytest.fixture(params=[True, False], ids=["local", "redis"])
def local_delivery(request) -> bool:
    return request.param


async def _made_layers(cls, redis_url: str, local_delivery: bool):
    """Makes ``cls`` layers on the test server with the parametrized switch; flushes
    them afterwards (and closes the pub/sub ones)."""
    made = []

    def make(**options):
        options.setdefault("local_delivery", local_delivery)
        layer = cls(hosts=[redis_url], **options)
        made.append(layer)
        return layer

    yield make
    for layer in made:
        await layer.flush()
        if isinstance(layer, RedisPubSubChannelLayer):
            await layer.close()


@pytest.fixture
async def layers(redis_url, local_delivery):
    async for make in _made_layers(RedisChannelLayer, redis_url, local_delivery):
        yield make


@pytest.fixture
async def pubsub_layers(redis_url, local_delivery):
    async for make in _made_layers(RedisPubSubChannelLayer, redis_url, local_delivery):
        yield make


def commands(client) -> dict[str, int]:
    """Calls per command the server has run (INFO itself left out)."""
    stats = client.info("commandstats")
    return {name: value["calls"] for name, value in stats.items() if name != "cmdstat_info"}


def difference(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {name: calls - before.get(name, 0) for name, calls in after.items() if calls != before.get(name, 0)}


def process_key(layer: RedisChannelLayer, channel: str) -> str:
    return layer.prefix + channel[: channel.index("!") + 1]


# ------------------------------------------------------------------------------ the copy


def test_plain_copy_shares_nothing_mutable_and_decodes_alike():
    nested = {"list": [1, {"deep": [2]}], "dict": {"a": [3]}, "bytes": bytearray(b"x"), "pair": (1, [2])}
    copy = plain_copy(nested)
    assert copy == {"list": [1, {"deep": [2]}], "dict": {"a": [3]}, "bytes": b"x", "pair": [1, [2]]}
    assert copy["list"] is not nested["list"] and copy["list"][1] is not nested["list"][1]
    assert copy["dict"]["a"] is not nested["dict"]["a"]
    assert type(copy["bytes"]) is bytes


@pytest.mark.parametrize(
    "value", [object(), 2**64, {1: "int key"}, {"set"}, type("Text", (str,), {})("subclass")], ids=repr
)
def test_plain_copy_refuses_what_the_redis_path_would_refuse_or_change(value):
    assert plain_copy({"type": "m", "value": value}) is None


async def test_unpackable_message_raises_as_through_redis(layers):
    layer = layers()
    channel = await layer.new_channel()
    with pytest.raises(TypeError):
        await layer.send(channel, {"type": "m", "value": object()})
    await nothing_arrives(layer, channel)


# ------------------------------------------------------------------------------ core: direct sends


async def test_receiver_gets_a_copy_it_owns(layers, local_delivery):
    layer = layers()
    channel = await layer.new_channel()
    message = {"type": "m", "items": [1, 2], "meta": {"k": "v"}}
    await layer.send(channel, message)
    message["items"].append(3)
    message["meta"]["k"] = "changed"
    message["type"] = "changed"
    received = await receive_soon(layer, channel)
    assert received == {"type": "m", "items": [1, 2], "meta": {"k": "v"}}
    counters = layer.stats_counters
    assert (counters["sent_local"], counters["sent"]) == ((1, 0) if local_delivery else (0, 1))


async def test_local_send_and_receive_issue_no_redis_command(layers, local_delivery, sync_redis):
    layer = layers()
    channel = await layer.new_channel()
    before = commands(sync_redis)
    for n in range(5):
        await layer.send(channel, {"type": "m", "n": n})
    spent_sending = difference(commands(sync_redis), before)
    # Nothing was written to Redis: an outside observer sees no queue for this process.
    assert sync_redis.exists(process_key(layer, channel)) == (0 if local_delivery else 1)
    before = commands(sync_redis)
    assert [(await receive_soon(layer, channel))["n"] for _ in range(5)] == [0, 1, 2, 3, 4]
    spent = {**spent_sending, **difference(commands(sync_redis), before)}
    if local_delivery:
        assert spent == {}
    else:
        assert spent.get("cmdstat_evalsha", 0) + spent.get("cmdstat_eval", 0) >= 5


async def test_capacity_raises_channel_full(layers, local_delivery, sync_redis):
    layer = layers(capacity=3)
    channel = await layer.new_channel()
    for n in range(3):
        await layer.send(channel, {"type": "m", "n": n})
    with pytest.raises(ChannelFull):
        await layer.send(channel, {"type": "m", "n": 3})
    assert (await receive_soon(layer, channel))["n"] == 0
    if not local_delivery:
        # Redis counts the delivered message until the pump's removal lands (Python 3.12+
        # resumes the receiver before the pump's next write).
        key = "asgi" + channel[: channel.index("!") + 1]
        await until(lambda: sync_redis.zcard(key) < 3, what="the delivered message's removal")
    await layer.send(channel, {"type": "m", "n": 4})
    assert [(await receive_soon(layer, channel))["n"] for _ in range(3)] == [1, 2, 4]
    assert layer.stats_counters["channel_full"] == 1


async def test_local_capacity_counts_what_came_through_redis(redis_url):
    layer = RedisChannelLayer(hosts=[redis_url], capacity=3)
    other = RedisChannelLayer(hosts=[redis_url], local_delivery=False)
    try:
        channel = await layer.new_channel()
        for n in range(3):
            await other.send(channel, {"type": "remote", "n": n})
        assert (await receive_soon(layer, channel))["n"] == 0
        # The pump brought the other two into the local buffer: Redis holds none now.
        assert len(layer.receive_buffer[channel]) == 2
        await layer.send(channel, {"type": "local", "n": 3})
        with pytest.raises(ChannelFull):
            await layer.send(channel, {"type": "local", "n": 4})
        received = [(await receive_soon(layer, channel))["n"] for _ in range(3)]
        assert received == [1, 2, 3]
        await nothing_arrives(layer, channel)
    finally:
        await layer.flush()
        await other.flush()


async def test_channel_capacity_patterns(layers):
    layer = layers(capacity=10, channel_capacity={"big*": 5, "small*": 1})
    big = await layer.new_channel("big")
    small = await layer.new_channel("small")
    for n in range(5):
        await layer.send(big, {"type": "m", "n": n})
    with pytest.raises(ChannelFull):
        await layer.send(big, {"type": "m", "n": 5})
    await layer.send(small, {"type": "m", "n": 0})
    with pytest.raises(ChannelFull):
        await layer.send(small, {"type": "m", "n": 1})
    assert [(await receive_soon(layer, big))["n"] for _ in range(5)] == [0, 1, 2, 3, 4]
    assert (await receive_soon(layer, small))["n"] == 0


async def test_local_pattern_above_the_layer_capacity(redis_url):
    """A pattern may allow more than the layer's capacity: a local channel holds that
    many, even one whose buffer a receive made at the layer's capacity."""
    layer = RedisChannelLayer(hosts=[redis_url], capacity=2, channel_capacity={"big*": 5})
    try:
        big = await layer.new_channel("big")
        waiting = asyncio.create_task(layer.receive(big))
        await until(lambda: big in layer.receive_buffer, what="the receive to wait")
        assert layer.receive_buffer[big].maxsize == 5  # the pattern's, not the layer's 2
        await layer.send(big, {"type": "first"})
        assert (await asyncio.wait_for(waiting, 5))["type"] == "first"
        for n in range(5):
            await layer.send(big, {"type": "m", "n": n})
        with pytest.raises(ChannelFull):
            await layer.send(big, {"type": "m", "n": 5})
        assert [(await receive_soon(layer, big))["n"] for _ in range(5)] == [0, 1, 2, 3, 4]
        assert layer.stats_counters["sent_local"] == 6
    finally:
        await layer.flush()


async def test_expired_messages_are_not_delivered(layers, local_delivery):
    layer = layers(expiry=1)
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "old"})
    await asyncio.sleep(1.3)
    await layer.send(channel, {"type": "new"})
    assert (await receive_soon(layer, channel))["type"] == "new"
    await nothing_arrives(layer, channel)
    if local_delivery:
        assert layer.stats_counters["expired"] == 1


def test_expiry_outlives_the_loop_that_buffered(redis_url):
    """asyncio.run per call: the loop that buffered a message is closed before it expires;
    the next loop to deliver locally takes over its expiry."""
    layer = RedisChannelLayer(hosts=[redis_url], expiry=1)

    async def first():
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "old"})
        return channel

    channel = asyncio.run(first())
    time.sleep(1.3)

    async def second():
        await layer.send(channel, {"type": "new"})
        received = await receive_soon(layer, channel)
        await nothing_arrives(layer, channel)
        await layer.flush()
        return received

    assert asyncio.run(second())["type"] == "new"
    assert layer.stats_counters["expired"] == 1


async def test_order_per_sender_across_sends_and_group_sends(layers, local_delivery):
    layer = layers()
    elsewhere = layers()
    channel = await layer.new_channel()
    remote = await elsewhere.new_channel()
    await layer.group_add("ordered", channel)
    await layer.group_add("ordered", remote)
    for n in range(60):
        if n % 3:
            await layer.send(channel, {"type": "direct", "n": n})
        else:
            await layer.group_send("ordered", {"type": "group", "n": n})
    assert [(await receive_soon(layer, channel))["n"] for _ in range(60)] == list(range(60))
    assert [(await receive_soon(elsewhere, remote))["n"] for _ in range(20)] == list(range(0, 60, 3))
    assert layer.stats_counters["group_sent_local"] == (20 if local_delivery else 0)


async def test_cancelled_receives_lose_and_duplicate_nothing(layers):
    layer = layers(capacity=1000)
    channel = await layer.new_channel()
    total = 150
    got = []
    for n in range(total):
        task = asyncio.create_task(layer.receive(channel))
        for _ in range(n % 3):
            await asyncio.sleep(0)
        await layer.send(channel, {"type": "m", "n": n})
        for _ in range(n % 2):
            await asyncio.sleep(0)
        task.cancel()
        try:
            got.append((await task)["n"])
        except asyncio.CancelledError:
            pass
    while len(got) < total:
        got.append((await receive_soon(layer, channel))["n"])
    await nothing_arrives(layer, channel)
    assert sorted(got) == list(range(total))


async def test_flush_empties_local_buffers(layers):
    layer = layers()
    channel = await layer.new_channel()
    for n in range(3):
        await layer.send(channel, {"type": "m", "n": n})
    await layer.flush()
    await nothing_arrives(layer, channel)
    await layer.send(channel, {"type": "after"})
    assert (await receive_soon(layer, channel))["type"] == "after"


async def test_stats_count_local_deliveries_separately(layers, local_delivery):
    layer = layers()
    elsewhere = layers()
    channel = await layer.new_channel()
    await layer.group_add("counted", channel)
    await layer.group_add("counted", await elsewhere.new_channel())
    await layer.send(channel, {"type": "a"})
    await layer.send(channel, {"type": "b"})
    await layer.group_send("counted", {"type": "c"})
    stats = await layer.stats()
    counters = stats["counters"]
    if local_delivery:
        assert (counters["sent_local"], counters["group_sent_local"], counters["sent"]) == (2, 1, 0)
        # Held in process, not in Redis: the local buffer shows them.
        assert stats["buffers"] == {channel: 3}
    else:
        assert (counters["sent_local"], counters["group_sent_local"], counters["sent"]) == (0, 0, 2)
        assert stats["buffers"] == {}
    for _ in range(3):
        await receive_soon(layer, channel)
    assert layer.stats_counters["received"] == 3


async def test_channels_of_another_instance_go_through_redis(layers, sync_redis):
    layer = layers()
    same_process = layers()
    channel = await same_process.new_channel()
    await layer.send(channel, {"type": "across"})
    assert sync_redis.exists(process_key(same_process, channel)) == 1
    assert (await receive_soon(same_process, channel))["type"] == "across"
    assert (layer.stats_counters["sent"], layer.stats_counters["sent_local"]) == (1, 0)


async def test_work_queue_channels_go_through_redis(layers, sync_redis):
    layer = layers()
    worker = layers()
    await layer.send("jobs", {"type": "job"})
    assert sync_redis.zcard(layer.prefix + "jobs") == 1
    assert (await receive_soon(worker, "jobs"))["type"] == "job"
    assert (layer.stats_counters["sent"], layer.stats_counters["sent_local"]) == (1, 0)


# ------------------------------------------------------------------------------ core: groups


async def test_half_local_group_delivers_each_member_once(layers, local_delivery):
    layer = layers()
    elsewhere = layers()
    here = [await layer.new_channel() for _ in range(2)]
    there = [await elsewhere.new_channel() for _ in range(2)]
    for channel in here + there:
        await layer.group_add("half", channel)
    for n in range(3):  # the first reads the members, the others use the cached plan
        await layer.group_send("half", {"type": "g", "n": n})
    for channel in here:
        assert [(await receive_soon(layer, channel))["n"] for _ in range(3)] == [0, 1, 2]
    for channel in there:
        assert [(await receive_soon(elsewhere, channel))["n"] for _ in range(3)] == [0, 1, 2]
    # Another process changes the membership: the next send sees it (digest check).
    await elsewhere.group_discard("half", here[1])
    await layer.group_send("half", {"type": "g", "n": 3})
    assert (await receive_soon(layer, here[0]))["n"] == 3
    for channel in there:
        assert (await receive_soon(elsewhere, channel))["n"] == 3
    await nothing_arrives(layer, here[1])
    assert layer.stats_counters["group_sent_local"] == (7 if local_delivery else 0)


async def test_all_local_group_writes_nothing(layers, local_delivery, sync_redis):
    layer = layers()
    members = [await layer.new_channel() for _ in range(3)]
    for channel in members:
        await layer.group_add("mine", channel)
    await layer.group_send("mine", {"type": "g", "n": 0})
    before = commands(sync_redis)
    await layer.group_send("mine", {"type": "g", "n": 1})
    spent = difference(commands(sync_redis), before)
    if local_delivery:
        # Only the membership check: one script on the group's server (commandstats also
        # counts the reads it makes), which writes nothing.
        assert spent.get("cmdstat_evalsha", 0) == 1
        assert "cmdstat_zadd" not in spent
        assert sync_redis.exists(process_key(layer, members[0])) == 0
    for channel in members:
        assert [(await receive_soon(layer, channel))["n"] for _ in range(2)] == [0, 1]


async def test_group_skips_a_full_member(layers):
    layer = layers(capacity=1)
    elsewhere = layers(capacity=1)
    full, remote = await layer.new_channel(), await elsewhere.new_channel()
    await layer.group_add("g", full)
    await layer.group_add("g", remote)
    await layer.send(full, {"type": "direct"})
    await layer.group_send("g", {"type": "group"})
    assert (await receive_soon(layer, full))["type"] == "direct"
    assert (await receive_soon(elsewhere, remote))["type"] == "group"
    await nothing_arrives(layer, full)
    assert layer.stats_counters["group_over_capacity"] == 1


# ------------------------------------------------------------------------------ core: sync callers


def test_sync_caller_round_trip(redis_url, local_delivery):
    layer = RedisChannelLayer(hosts=[redis_url], local_delivery=local_delivery)
    try:
        channel = async_to_sync(layer.new_channel)()
        async_to_sync(layer.send)(channel, {"type": "sync", "n": 1})
        async_to_sync(layer.group_add)("syncers", channel)
        async_to_sync(layer.group_send)("syncers", {"type": "sync", "n": 2})
        assert async_to_sync(layer.receive)(channel)["n"] == 1
        assert async_to_sync(layer.receive)(channel)["n"] == 2
        counters = layer.stats_counters
        assert (counters["sent_local"], counters["group_sent_local"]) == ((1, 1) if local_delivery else (0, 0))
    finally:
        async_to_sync(layer.flush)()


async def test_send_from_another_thread_while_a_loop_receives(layers):
    """A receiver waits on this loop; a thread's sync send runs on the bridge's loop,
    which must not touch this loop's receivers: it takes the Redis path."""
    layer = layers()
    channel = await layer.new_channel()
    waiting = asyncio.create_task(layer.receive(channel))
    await until(lambda: layer.receive_event_loop is not None, what="the receive to start")

    def send_from_a_thread() -> None:
        # Made in the thread: made on this loop, asgiref before 3.10 would run the call
        # here (on the receiving loop) instead of on a loop of the thread's own.
        async_to_sync(layer.send)(channel, {"type": "threaded"})

    thread = threading.Thread(target=send_from_a_thread)
    thread.start()
    received = await asyncio.wait_for(waiting, 5)
    thread.join()
    assert received["type"] == "threaded"
    assert (layer.stats_counters["sent"], layer.stats_counters["sent_local"]) == (1, 0)
    await layer._sync.aclose()


# ------------------------------------------------------------------------------ pub/sub layer


async def test_pubsub_round_trip_without_publish(pubsub_layers, local_delivery, sync_redis):
    layer = pubsub_layers()
    channel = await layer.new_channel()
    before = commands(sync_redis)
    message = {"type": "m", "items": [1]}
    await layer.send(channel, message)
    message["items"].append(2)
    assert await receive_soon(layer, channel) == {"type": "m", "items": [1]}
    spent = difference(commands(sync_redis), before)
    assert spent.get("cmdstat_publish", 0) == (0 if local_delivery else 1)
    assert (await layer.stats())["counters"]["sent_local"] == (1 if local_delivery else 0)


async def test_pubsub_full_buffer_drops_the_oldest(pubsub_layers):
    layer = pubsub_layers(capacity=2)
    channel = await layer.new_channel()
    for n in range(3):
        await layer.send(channel, {"type": "m", "n": n})
    await until(lambda: layer.dropped == 1, what="the oldest message to be dropped")
    assert [(await receive_soon(layer, channel))["n"] for _ in range(2)] == [1, 2]
    await nothing_arrives(layer, channel)


async def test_pubsub_other_layers_and_subscribed_names_use_redis(pubsub_layers, sync_redis):
    layer = pubsub_layers()
    other = pubsub_layers()
    theirs = await other.new_channel()
    listening = asyncio.create_task(layer.receive("plain.name"))
    # A receiver waits only once its SUBSCRIBE was confirmed.
    await until(lambda: "plain.name" in layer.channels and layer.channels["plain.name"].waiters, what="the subscription")
    before = commands(sync_redis)
    await layer.send(theirs, {"type": "to-other"})
    assert (await receive_soon(other, theirs))["type"] == "to-other"
    await layer.send("plain.name", {"type": "plain"})
    assert (await asyncio.wait_for(listening, 5))["type"] == "plain"
    assert difference(commands(sync_redis), before).get("cmdstat_publish", 0) == 2
    assert layer.sent_local == 0


async def test_pubsub_flush_empties_local_buffers(pubsub_layers):
    layer = pubsub_layers()
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "m"})
    await layer.flush()
    await nothing_arrives(layer, channel)


async def test_pubsub_group_with_local_members(pubsub_layers):
    layer = pubsub_layers()
    other = pubsub_layers()
    mine, theirs = await layer.new_channel(), await other.new_channel()
    await layer.group_add("room", mine)
    await other.group_add("room", theirs)
    await layer.group_send("room", {"type": "g"})
    assert (await receive_soon(layer, mine))["type"] == "g"
    assert (await receive_soon(other, theirs))["type"] == "g"
    await nothing_arrives(layer, mine)


def test_pubsub_sync_caller_round_trip(redis_url, local_delivery):
    layer = RedisPubSubChannelLayer(hosts=[redis_url], local_delivery=local_delivery)
    try:
        channel = async_to_sync(layer.new_channel)()
        async_to_sync(layer.send)(channel, {"type": "sync"})
        assert async_to_sync(layer.receive)(channel) == {"type": "sync"}
    finally:
        async_to_sync(layer.close)()
