"""Workers on a general (work-queue) channel restarted the way operators restart them.

A graceful stop (``runworker`` on SIGTERM: the receive loop cancelled, the layer closed,
the loop ended) must hand back whatever the last pops brought in, so no task is lost;
nothing is delivered twice.  Each worker is a real subprocess.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import redis

from channels_redis_fast.core import RedisChannelLayer

TASKS = 2000
RESTARTS = 8

WORKER = textwrap.dedent(
    """
    import asyncio, signal, sys
    from channels_redis_fast.core import RedisChannelLayer

    async def main(url):
        layer = RedisChannelLayer(hosts=[url], capacity=10_000)
        loop = asyncio.get_running_loop()

        async def work():
            while True:
                message = await layer.receive("tasks")
                # No await between taking a task and reporting it.
                sys.stdout.write(f"{message['i']}\\n")
                sys.stdout.flush()
                await asyncio.sleep(0.001)  # the task's work

        task = asyncio.ensure_future(work())
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        sys.stdout.write("ready\\n")
        sys.stdout.flush()
        try:
            await task
        except asyncio.CancelledError:
            pass
        await layer.close_pools()

    asyncio.run(main(sys.argv[1]))
    """
)


def _start_worker(url: str) -> subprocess.Popen:
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, url],
        stdout=subprocess.PIPE,
        text=True,
        cwd="/",  # the installed package, never the source tree
    )
    assert worker.stdout.readline().strip() == "ready"
    return worker


def _finish(worker: subprocess.Popen) -> str:
    """The rest of a stopping worker's output. Read through the same buffered file as
    the "ready" line: ``communicate(timeout=...)`` reads the raw pipe and would miss any
    ids that readline() had already buffered."""
    out = worker.stdout.read()
    worker.wait(timeout=30)
    return out


def _ids(output: str) -> list[int]:
    return [int(line) for line in output.split() if line.strip().isdigit()]


def _queue_tasks(url: str) -> None:
    async def fill():
        layer = RedisChannelLayer(hosts=[url], capacity=TASKS)
        for i in range(TASKS):
            await layer.send("tasks", {"type": "t", "i": i})
        await layer.close_pools()

    asyncio.run(fill())


def _drain(url: str) -> list[int]:
    """One last worker takes what is left, then stops gracefully; the ids it took."""
    client = redis.Redis.from_url(url)
    worker = _start_worker(url)
    deadline = time.monotonic() + 60
    while client.zcard("asgitasks") and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    worker.send_signal(signal.SIGTERM)
    out = _finish(worker)
    return _ids(out)


async def test_minimal_graceful_stop_hands_back_the_popped_task(redis_url):
    first = RedisChannelLayer(hosts=[redis_url])
    for i in range(3):
        await first.send("tasks", {"type": "t", "i": i})
    receiving = asyncio.ensure_future(first.receive("tasks"))
    await asyncio.sleep(0)  # the receive starts its pump, whose pop is on the wire
    receiving.cancel()
    await first.close_pools()
    second = RedisChannelLayer(hosts=[redis_url])
    try:
        got = [(await asyncio.wait_for(second.receive("tasks"), 5))["i"] for _ in range(3)]
    finally:
        await second.close_pools()
    assert got == [0, 1, 2]


@pytest.mark.slow
def test_graceful_restarts_lose_and_repeat_nothing(redis_url):
    _queue_tasks(redis_url)
    client = redis.Redis.from_url(redis_url)
    seen: list[int] = []
    for _ in range(RESTARTS):
        worker = _start_worker(redis_url)
        time.sleep(0.2)  # let it take some tasks
        worker.send_signal(signal.SIGTERM)
        out = _finish(worker)
        assert worker.returncode == 0
        seen.extend(_ids(out))
    seen.extend(_drain(redis_url))
    assert client.zcard("asgitasks") == 0
    lost = sorted(set(range(TASKS)) - set(seen))
    assert lost == [], f"{len(lost)} tasks lost: {lost[:20]}"
    assert len(seen) == len(set(seen)) == TASKS, "a task was delivered twice"


def test_sigkill_loses_at_most_the_task_in_hand(redis_url):
    """A killed worker loses at most what its one receive had popped; nothing repeats.

    The documented guarantee for general channels (README, reliability): at most once
    on a crash, each crash losing at most one message per receive that was waiting.
    """

    _queue_tasks(redis_url)
    seen: list[int] = []
    kills = 4
    for _ in range(kills):
        worker = _start_worker(redis_url)
        time.sleep(0.2)
        worker.kill()
        out = _finish(worker)
        seen.extend(_ids(out))
    seen.extend(_drain(redis_url))
    lost = sorted(set(range(TASKS)) - set(seen))
    print(f"SIGKILL: {len(lost)} of {TASKS} tasks lost by {kills} kills")
    assert len(lost) <= kills, f"{len(lost)} tasks lost by {kills} kills: {lost}"
    assert len(seen) == len(set(seen)), "a task was delivered twice"
