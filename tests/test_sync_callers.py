"""Sync callers (``async_to_sync`` from WSGI views, Celery tasks, commands) keep their
connections: both layers run such calls on one I/O thread (sync_bridge.py).

Connections are counted from the server's side (INFO stats total_connections_received).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import subprocess
import sys
import textwrap
import traceback
import threading

import pytest
import redis.exceptions
from asgiref.sync import async_to_sync
from channels.exceptions import ChannelFull

from channels_redis_fast.core import RedisChannelLayer
from channels_redis_fast.exceptions import InvalidMessageError
from channels_redis_fast.pubsub import RedisPubSubChannelLayer
from channels_redis_fast.sync_bridge import SyncBridge
from channels_redis_fast.testing import RedisServer
from conftest import receive_soon, until

BRIDGE_THREAD = "channels_redis_fast-sync-bridge"


def _opened(server) -> int:
    return server.client().info("stats")["total_connections_received"]


def _bridge_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == BRIDGE_THREAD]


def _make(kind: str, hosts: list, **options):
    if kind == "core":
        return RedisChannelLayer(hosts=hosts, **options)
    return RedisPubSubChannelLayer(hosts=hosts, **options)


def _close(layer) -> None:
    closer = layer.close_pools if isinstance(layer, RedisChannelLayer) else layer.close
    async_to_sync(closer)()


@pytest.fixture(params=["core", "pubsub"])
def kind(request) -> str:
    return request.param


def _thousand_calls(layer, servers: list) -> None:
    before = [_opened(server) for server in servers]
    for n in range(500):
        async_to_sync(layer.send)(f"sync.work{n % 7}", {"type": "s", "n": n})
        async_to_sync(layer.group_send)(f"room{n % 5}", {"type": "g", "n": n})
    opened = [_opened(server) - b for server, b in zip(servers, before)]
    assert max(opened) <= 2, f"1,000 sync calls opened {opened} connections per shard"


def test_a_thousand_sync_calls_open_at_most_two_connections_per_shard(kind, redis_shards, shard_urls):
    layer = _make(kind, shard_urls, capacity=1000)
    _thousand_calls(layer, redis_shards)
    thread = layer._sync.thread
    if kind == "core":
        # And they were all done: 500 sends spread over the work queues of the ring.
        stored = sum(
            server.client().zcard(f"asgisync.work{i}") for server in redis_shards for i in range(7)
        )
        assert stored == 500
    _close(layer)
    assert not thread.is_alive()


def test_a_thousand_sync_calls_over_tls_open_at_most_two_connections(kind, tls_server, certs):
    host = {"address": tls_server.url, "ssl_cert_reqs": "required", "ssl_ca_certs": certs["ca_file"]}
    layer = _make(kind, [host], capacity=1000)
    _thousand_calls(layer, [tls_server])
    _close(layer)
    if kind == "core":
        tls_server.flushall()


def test_eight_threads_at_once_lose_nothing_and_keep_each_threads_order(kind, redis_server, redis_url):
    per_thread = 150
    # Core: the channels of one process share its key, and capacity counts that key.
    layer = _make(kind, [redis_url], capacity=per_thread * 8)
    channels = [async_to_sync(layer.new_channel)() for _ in range(8)]
    opened_before = _opened(redis_server)
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def sender(index: int) -> None:
        try:
            start.wait()
            for n in range(per_thread):
                async_to_sync(layer.send)(channels[index], {"type": "t", "thread": index, "n": n})
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=sender, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(t.is_alive() for t in threads), "a sync sender wedged"
    assert not errors, errors
    # All eight threads shared the bridge's connections.
    assert _opened(redis_server) - opened_before <= 2
    for index, channel in enumerate(channels):
        got = [async_to_sync(layer.receive)(channel) for _ in range(per_thread)]
        assert [m["n"] for m in got] == list(range(per_thread))
        assert {m["thread"] for m in got} == {index}
    _close(layer)


def test_errors_reach_the_sync_caller_and_nothing_is_sent(redis_server, redis_url):
    layer = RedisChannelLayer(hosts=[redis_url], capacity=1)
    async_to_sync(layer.send)("errs", {"type": "first"})
    with pytest.raises(ChannelFull):
        async_to_sync(layer.send)("errs", {"type": "second"})
    with pytest.raises(TypeError):
        async_to_sync(layer.send)("not valid!!", {"type": "x"})
    with pytest.raises(InvalidMessageError):
        async_to_sync(layer.group_send)("room", ["not", "a", "dict"])
    assert redis_server.client().zcard("asgierrs") == 1
    assert redis_server.client().keys("asgi:group:*") == []
    _close(layer)

    pubsub = RedisPubSubChannelLayer(hosts=[redis_url])
    with pytest.raises(TypeError):
        async_to_sync(pubsub.send)("not valid!!", {"type": "x"})
    _close(pubsub)


async def _receive_or_none(layer, channel: str, timeout: float):
    try:
        return await asyncio.wait_for(layer.receive(channel), timeout)
    except asyncio.TimeoutError:
        return None


@pytest.mark.parametrize("process_channel", [True, False], ids=["process", "work-queue"])
def test_sync_receives_that_give_up_lose_nothing(redis_url, process_channel):
    total = 300
    layer = RedisChannelLayer(hosts=[redis_url], capacity=total)
    channel = async_to_sync(layer.new_channel)() if process_channel else "sync.giveup"
    errors: list[BaseException] = []

    def sender() -> None:
        try:
            for n in range(total):
                async_to_sync(layer.send)(channel, {"type": "x", "n": n})
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    thread = threading.Thread(target=sender)
    thread.start()
    got: list[int] = []
    gave_up = 0
    # Timeouts short enough that many land while a message is crossing back.
    for attempt in range(100_000):
        if len(got) == total:
            break
        message = async_to_sync(_receive_or_none)(layer, channel, 0.002 * (attempt % 5))
        if message is None:
            gave_up += 1
        else:
            got.append(message["n"])
    thread.join(60)
    assert not errors, errors
    assert gave_up > 0
    assert got == list(range(total))
    assert async_to_sync(_receive_or_none)(layer, channel, 0.2) is None
    _close(layer)


def test_redis_restarted_under_a_sync_caller_loses_nothing_acknowledged():
    # appendfsync always: what Redis acknowledged survives its restart, so anything
    # missing afterwards was lost by the layer.
    server = RedisServer(extra_args=["--appendonly", "yes", "--appendfsync", "always"])
    try:
        layer = RedisChannelLayer(hosts=[server.url], capacity=10_000)
        acked: list[int] = []
        failed: list[int] = []
        restarted = threading.Event()

        def sender() -> None:
            for n in range(400):
                if n == 100:
                    restarted.wait(60)
                try:
                    async_to_sync(layer.send)("sync.restart", {"type": "r", "n": n})
                except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
                    failed.append(n)
                else:
                    acked.append(n)

        thread = threading.Thread(target=sender)
        thread.start()
        server.restart()
        restarted.set()
        thread.join(120)
        assert not thread.is_alive(), "the sync sender wedged"
        assert len(acked) + len(failed) == 400
        assert acked[-1] == 399, "the layer did not recover after the restart"
        got = []
        while (message := async_to_sync(_receive_or_none)(layer, "sync.restart", 0.5)) is not None:
            got.append(message["n"])
        # Every acknowledged send arrives once, in order; a send that failed may or may
        # not have run (its connection died after writing it) and is never doubled.
        assert set(acked) <= set(got), (sorted(set(acked) - set(got)), failed)
        assert got == sorted(set(got)) and set(got) <= set(acked) | set(failed)
        _close(layer)
    finally:
        server.close()


def _child_round_trip(results) -> None:
    try:
        layer, parent_bridge = _CHILD_LAYER
        # The parent's bridge thread does not exist here, and its loop is forgotten.
        assert parent_bridge not in threading.enumerate()
        assert layer._sync.thread is None
        channel = async_to_sync(layer.new_channel)()
        async_to_sync(layer.send)(channel, {"type": "child", "n": 1})
        got = async_to_sync(layer.receive)(channel)
        assert layer._sync.thread is not None and layer._sync.thread is not parent_bridge
        _close(layer)
        results.put(("ok", got))
    except BaseException:  # noqa: BLE001 - sent to the parent
        results.put(("error", traceback.format_exc()))


_CHILD_LAYER: list = []


def test_a_forked_child_sends_and_receives_on_its_own_bridge(kind, redis_server, redis_url):
    layer = _make(kind, [redis_url])
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.send)(channel, {"type": "parent", "n": 0})
    # The parent's receive leaves its bridge reading its process key (core) or
    # subscribed (pub/sub) while the child works: the child must not take from it.
    assert async_to_sync(layer.receive)(channel) == {"type": "parent", "n": 0}
    parent_bridge = layer._sync.thread
    _CHILD_LAYER[:] = [layer, parent_bridge]
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=_child_round_trip, args=(results,))
    child.start()
    try:
        outcome = results.get(timeout=60)
    finally:
        child.join(30)
    assert outcome == ("ok", {"type": "child", "n": 1}), outcome[1]
    assert child.exitcode == 0
    # The parent's thread and sockets were left alone: it carries on.
    assert layer._sync.thread is parent_bridge and parent_bridge.is_alive()
    async_to_sync(layer.send)(channel, {"type": "parent", "n": 1})
    assert async_to_sync(layer.receive)(channel) == {"type": "parent", "n": 1}
    _close(layer)


def test_close_leaves_no_thread_and_no_connection(kind, redis_server, redis_url):
    client = redis_server.client()
    baseline = len(client.client_list())
    layer = _make(kind, [redis_url])
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.send)(channel, {"type": "x"})
    assert async_to_sync(layer.receive)(channel) == {"type": "x"}
    thread = layer._sync.thread
    assert thread in _bridge_threads()
    _close(layer)
    assert not thread.is_alive() and layer._sync.thread is None
    assert layer._layers == {}
    assert len(client.client_list()) == baseline
    # Usable again: the bridge starts afresh.
    async_to_sync(layer.send)(channel, {"type": "again"})
    again = layer._sync.thread
    assert again is not None and again is not thread
    _close(layer)
    assert not again.is_alive()


def test_exit_leaves_no_thread_behind(kind, redis_url, tmp_path):
    script = textwrap.dedent(
        f"""
        import atexit, threading
        # Registered first, so it runs after the layer's own exit handler.
        atexit.register(lambda: print("left:", [t.name for t in threading.enumerate()
                                                if t.name == {BRIDGE_THREAD!r}]))
        from asgiref.sync import async_to_sync
        from channels_redis_fast.core import RedisChannelLayer
        from channels_redis_fast.pubsub import RedisPubSubChannelLayer
        cls = RedisChannelLayer if {kind!r} == "core" else RedisPubSubChannelLayer
        layer = cls(hosts=[{redis_url!r}])
        channel = async_to_sync(layer.new_channel)()
        async_to_sync(layer.send)(channel, {{"type": "x"}})
        assert async_to_sync(layer.receive)(channel) == {{"type": "x"}}
        print("bridges:", sum(t.name == {BRIDGE_THREAD!r} for t in threading.enumerate()))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "bridges: 1" in done.stdout
    assert "left: []" in done.stdout, done.stdout


async def test_an_async_caller_on_a_long_lived_loop_does_not_use_the_bridge(kind, redis_url):
    layer = _make(kind, [redis_url])
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "x"})
    assert await asyncio.wait_for(layer.receive(channel), 5) == {"type": "x"}
    await layer.group_add("longlived", channel)
    await layer.group_send("longlived", {"type": "g"})
    assert await asyncio.wait_for(layer.receive(channel), 5) == {"type": "g"}
    await layer.group_discard("longlived", channel)
    assert layer._sync.thread is None
    assert list(layer._layers) == [asyncio.get_running_loop()]
    if kind == "core":
        await layer.flush()
        await layer.close_pools()
    else:
        await layer.flush()
        await layer.close()
    assert layer._sync.thread is None


def test_a_call_that_fails_before_it_starts_reaches_its_caller():
    class Owner:
        _layers: dict = {}

    bridge = SyncBridge(Owner())

    def not_a_coroutine_function(value):
        raise ValueError(f"refused {value}")

    async def run():
        return await bridge.call(not_a_coroutine_function, 7)

    with pytest.raises(ValueError, match="refused 7"):
        async_to_sync(run)()
    assert bridge.thread is not None and bridge.thread.is_alive()
    async_to_sync(bridge.aclose)()
    assert bridge.thread is None


async def test_a_result_given_back_is_back_before_the_callers_next_call_starts():
    # The bridge's side of test_sync_receives_that_give_up_lose_nothing, made exact: the
    # first call finishes (its message in hand) while its caller gives up and makes the
    # next call. The message must be back before the next call runs, or the next receive
    # would take the message after it first.
    class Owner:
        _layers: dict = {}

    bridge = SyncBridge(Owner())
    events: list[str] = []
    started, holding, release = threading.Event(), threading.Event(), threading.Event()
    gate: list[asyncio.Future] = []

    async def receive(tag):
        if tag == "first":
            gate.append(asyncio.get_running_loop().create_future())
            started.set()
            return await gate[0]
        events.append(f"{tag} started")
        return tag

    def give_back(tag, result):
        events.append(f"{result} given back")

    try:
        first = asyncio.ensure_future(bridge.call(receive, "first", give_back=give_back))
        assert await asyncio.to_thread(started.wait, 10)

        def deliver_then_hold():
            gate[0].set_result("message 1")  # the first call's task can finish now...
            holding.set()
            release.wait(10)  # ...but the bridge's loop runs on only after the caller's turn

        bridge.loop.call_soon_threadsafe(deliver_then_hold)
        assert await asyncio.to_thread(holding.wait, 10)
        first.cancel()  # the caller gives up (a timeout)...
        with pytest.raises(asyncio.CancelledError):
            await first
        second = asyncio.ensure_future(bridge.call(receive, "second", give_back=give_back))
        await asyncio.sleep(0)  # ...and makes its next call
        release.set()
        assert await asyncio.wait_for(second, 10) == "second"
        assert events == ["message 1 given back", "second started"]
    finally:
        release.set()
        await bridge.aclose()


async def test_a_sync_give_back_is_not_overtaken_by_a_pop_still_on_the_wire(redis_server, redis_url):
    # What test_sync_receives_that_give_up_lose_nothing[work-queue] caught under load: a
    # receiver left a blocking pop waiting in Redis; a sync caller gave up message 1; its
    # grace ran out while message 2, sent meanwhile, was being taken by that pop. Handed
    # back then, message 1 sat in Redis while message 2 went to the next receiver.
    layer = RedisChannelLayer(hosts=[redis_url])
    channel = "sync.order"
    admin = redis_server.client()
    try:
        await layer.send(channel, {"type": "t", "n": 1})
        first = await receive_soon(layer, channel)
        waiting = asyncio.ensure_future(layer.receive(channel))
        await until(lambda: admin.info("clients")["blocked_clients"] == 1, what="the pump's blocking pop")
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        layer._put_back(channel, first)  # as the sync bridge does for a caller who gave up

        def send_from_another_process() -> None:
            other = RedisChannelLayer(hosts=[redis_url])

            async def send() -> None:
                await other.send(channel, {"type": "t", "n": 2})
                await other.close_pools()

            asyncio.run(send())

        # Blocks this loop: message 2 is taken by the pop before this process reads the reply.
        sender = threading.Thread(target=send_from_another_process)
        sender.start()
        sender.join(10)
        local = layer.receive_buffer[channel]
        local.give_back_timer.cancel()
        layer._work._give_back_if_unclaimed(local)  # the grace runs out now
        got = [(await receive_soon(layer, channel))["n"] for _ in range(2)]
        assert got == [1, 2]
    finally:
        await layer.flush()
        await layer.close_pools()
