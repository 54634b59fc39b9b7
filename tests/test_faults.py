"""Redis restarts, outages, hangs, failovers and script-cache flushes.

Each test breaks a private server (``fresh_redis``) or a private master/replica/sentinel
set and checks that the layer fails fast and loud while Redis is gone, never hangs, and
works again, without losing a pending receive, once Redis is back.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import time

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from channels_redis_fast.core import RedisChannelLayer
from channels_redis_fast.testing import SentinelServer
from conftest import until


@pytest.fixture(autouse=True)
async def loop_errors():
    """Fails the test if a future of its loop holds an error nobody will ever retrieve.

    asyncio only reports those when the future is collected, which may be long after the
    test (log records keep the exception alive), so look for them directly.
    """
    loop = asyncio.get_running_loop()
    errors: list[dict] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    yield errors
    await asyncio.sleep(0)
    gc.collect()
    loop.set_exception_handler(previous)
    unretrieved = [
        obj
        for obj in gc.get_objects()
        if type(obj) is asyncio.Future and obj._loop is loop and obj._log_traceback
    ]
    assert not unretrieved, f"futures whose error nobody retrieves: {unretrieved}"
    assert not errors, [(e.get("message"), e.get("exception")) for e in errors]


async def test_pending_receive_survives_restart(fresh_redis):
    layer = RedisChannelLayer(hosts=[fresh_redis.url])
    specific = await layer.new_channel()
    # Connections are up and a pump is blocked on each key when the server goes away.
    await layer.send(specific, {"type": "before"})
    assert (await layer.receive(specific))["type"] == "before"
    pending = asyncio.ensure_future(layer.receive(specific))
    pending_worker = asyncio.ensure_future(layer.receive("work.restart"))
    await asyncio.sleep(0.2)

    await asyncio.to_thread(fresh_redis.restart)
    assert not pending.done() and not pending_worker.done()

    await layer.send(specific, {"type": "after"})
    await layer.send("work.restart", {"type": "after-worker"})
    assert (await asyncio.wait_for(pending, 5))["type"] == "after"
    assert (await asyncio.wait_for(pending_worker, 5))["type"] == "after-worker"
    await layer.flush()


async def test_send_with_redis_down_fails_fast_then_recovers(fresh_redis):
    layer = RedisChannelLayer(hosts=[fresh_redis.url])
    await layer.send("down.test", {"n": 1})
    await asyncio.to_thread(fresh_redis.stop)

    for attempt in range(2):  # the broken connection, then a fresh connect attempt
        start = time.monotonic()
        with pytest.raises((RedisConnectionError, RedisTimeoutError)):
            await asyncio.wait_for(layer.send("down.test", {"n": 2}), 30)
        assert time.monotonic() - start < 6, f"attempt {attempt} took too long to fail"

    await asyncio.to_thread(fresh_redis.start)
    await layer.send("down.test", {"n": 3})
    message = await asyncio.wait_for(layer.receive("down.test"), 5)
    # The restart emptied Redis (no persistence), so only the message sent after it is there.
    assert message == {"n": 3}
    await layer.flush()


async def test_hung_server_fails_pending_sends_with_timeout(fresh_redis):
    layer = RedisChannelLayer(hosts=[fresh_redis.url])
    layer.reply_timeout = 1.0
    await layer.send("hung.test", {"n": 0})
    pid = fresh_redis.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        results = await asyncio.wait_for(
            asyncio.gather(
                *[layer.send("hung.test", {"n": i}) for i in range(1, 11)], return_exceptions=True
            ),
            20,
        )
        elapsed = time.monotonic() - start
        assert all(isinstance(r, RedisTimeoutError) for r in results), results
        # The watchdog checks every reply_timeout / 2, so failing takes at most ~1.5x.
        assert elapsed < 3.0, f"pending sends hung for {elapsed:.1f}s"
    finally:
        os.kill(pid, signal.SIGCONT)
    await layer.send("hung.test", {"n": 99})
    first = await asyncio.wait_for(layer.receive("hung.test"), 5)
    assert first == {"n": 0}
    await layer.flush()


async def test_hung_server_fails_a_new_connection_within_seconds(fresh_redis):
    # TCP connects to a stopped process still succeed (the kernel accepts), so only a
    # read timeout on redis-py's handshake keeps a fresh layer from hanging.
    layer = RedisChannelLayer(hosts=[fresh_redis.url])
    pid = fresh_redis.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        with pytest.raises((RedisConnectionError, RedisTimeoutError)):
            await asyncio.wait_for(layer.send("hung.new", {"n": 1}), 30)
        assert time.monotonic() - start < 6
    finally:
        os.kill(pid, signal.SIGCONT)
    await layer.send("hung.new", {"n": 2})
    assert await asyncio.wait_for(layer.receive("hung.new"), 5) == {"n": 2}
    await layer.flush()


async def test_hung_server_pending_receive_recovers(fresh_redis):
    layer = RedisChannelLayer(hosts=[fresh_redis.url])
    layer.reply_timeout = 1.0
    layer.brpop_timeout = 1
    specific = await layer.new_channel()
    await layer.send(specific, {"type": "warm"})
    assert (await layer.receive(specific))["type"] == "warm"
    pending = asyncio.ensure_future(layer.receive(specific))
    await asyncio.sleep(0.1)
    pid = fresh_redis.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(3.5)  # longer than block + reply timeout: the pump's socket is declared dead
        assert not pending.done()
    finally:
        os.kill(pid, signal.SIGCONT)
    await layer.send(specific, {"type": "after"})
    assert (await asyncio.wait_for(pending, 8))["type"] == "after"
    await layer.flush()


async def test_script_flush_between_sends(fresh_redis):
    layer = RedisChannelLayer(hosts=[fresh_redis.url])
    client = fresh_redis.client()
    specific = await layer.new_channel()
    await layer.group_add("flushers", specific)
    for n in range(3):
        await layer.send(specific, {"n": n})
        await layer.group_send("flushers", {"g": n})
        client.script_flush()
        assert client.script_exists(*[s.sha for s in _scripts()]) == [False, False]
    for n in range(3):
        assert await asyncio.wait_for(layer.receive(specific), 5) == {"n": n}
        assert await asyncio.wait_for(layer.receive(specific), 5) == {"g": n}
    # Concurrent sends right after a flush all take the fallback and all land.
    client.script_flush()
    await asyncio.gather(*[layer.send("flush.many", {"n": n}) for n in range(50)])
    assert client.zcard("asgiflush.many") == 50
    await layer.flush()


def _wait_master_healthy(sentinel: SentinelServer, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    flags = None
    while time.monotonic() < deadline:
        reply = sentinel.client().execute_command("SENTINEL", "MASTER", sentinel.name)
        state = reply if isinstance(reply, dict) else dict(zip(reply[::2], reply[1::2]))
        flags = {k.decode() if isinstance(k, bytes) else k: v for k, v in state.items()}["flags"]
        flags = flags.decode() if isinstance(flags, bytes) else flags
        if flags == "master":
            return
        time.sleep(0.1)
    raise AssertionError(f"sentinel still flags the new master {flags!r}")


def _scripts():
    from channels_redis_fast.scripts import group_send_script, send_script

    return [send_script, group_send_script]


async def test_sentinel_failover_keeps_sending_and_receiving(failover_set):
    master, replica, sentinel = failover_set
    layer = RedisChannelLayer(hosts=[sentinel.hosts_entry()])
    specific = await layer.new_channel()
    await layer.send(specific, {"n": 0})
    assert await asyncio.wait_for(layer.receive(specific), 5) == {"n": 0}
    # Removed by the pump's next write, once the receiver it woke has run.
    key = "asgi" + layer.non_local_name(specific)
    await until(lambda: master.client().zcard(key) == 0, what="the delivered message's removal")
    pending = asyncio.ensure_future(layer.receive(specific))
    await asyncio.sleep(0.1)

    await asyncio.to_thread(master.kill)
    await asyncio.to_thread(sentinel.wait_for_master, (replica.host, replica.port), 20)
    replica.wait_for_role("master")
    # get-master-addr-by-name flips first; redis-py's discovery also wants the sentinel
    # to see the new master up (no s_down/o_down flag), which can take a moment more.
    await asyncio.to_thread(_wait_master_healthy, sentinel)

    # Promotion done: sends go to the new master and the pending receive gets them.
    failures = []
    while True:
        try:
            await layer.send(specific, {"n": 1})
            break
        except (RedisConnectionError, RedisTimeoutError) as exc:
            failures.append(exc)
            assert len(failures) < 20, "sends never recovered after the failover"
            await asyncio.sleep(0.2)
    # The dead master's socket is already known to be closed: no send may fail.
    assert not failures, failures
    assert await asyncio.wait_for(pending, 10) == {"n": 1}
    for n in range(2, 12):
        await layer.send(specific, {"n": n})
    for n in range(2, 12):
        assert await asyncio.wait_for(layer.receive(specific), 5) == {"n": n}
    await layer.send("work.failover", {"w": 1})
    assert await asyncio.wait_for(layer.receive("work.failover"), 5) == {"w": 1}
    assert replica.client().info("replication")["role"] == "master"
    await layer.flush()
