"""In-process delivery (issue 16): the local rows, measured against the Redis path.

Rows (core layer, private Redis started here, one run each, medians of ``--repeats``):

* ``roundtrip``: one coroutine sends to its own process channel and receives it, in the
  *same process*, with ``local_delivery`` on and off (off: through Redis, as before).
  Target: on >= 10x off.
* ``group``: a sender awaiting each ``group_send`` to a group of ``--members`` members.
  *all-remote*: every member in another process (a child started here); *half-local*:
  half of them in the sender's process, half in the child, with local delivery on and
  off. Rate = deliveries/s from the first send to the last delivery in either process.
  Target: half-local (on) >= 1.5x all-remote. Also a group of half that size wholly in
  the sender's process, local delivery on and off.

    python bench/local_delivery.py [--members 200] [--sends 200] [--roundtrips 3000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time

from channels_redis_fast.core import RedisChannelLayer
from channels_redis_fast.testing import RedisServer

CAPACITY = 100_000
GROUP = "bench-local"
TEXT = "x" * 56


def message(n: int) -> dict:
    return {"type": "bench.message", "text": TEXT, "n": n}


# ------------------------------------------------------------------------------ roundtrip


async def roundtrip(url: str, count: int, local: bool) -> float:
    layer = RedisChannelLayer(hosts=[url], capacity=CAPACITY, local_delivery=local)
    channel = await layer.new_channel()
    send, receive = layer.send, layer.receive
    for n in range(200):  # warm-up: connections, scripts, pumps
        await send(channel, message(n))
        await receive(channel)
    start = time.perf_counter()
    for n in range(count):
        await send(channel, message(n))
        await receive(channel)
    rate = count / (time.perf_counter() - start)
    await layer.flush()
    return rate


# ------------------------------------------------------------------------------ groups


async def consume_until(layer, channels: list[str], expected: int) -> float:
    """Receive ``expected`` messages on each channel; time.time() of the last one."""
    last = 0.0

    async def one(channel: str) -> None:
        nonlocal last
        for _ in range(expected):
            await layer.receive(channel)
        last = max(last, time.time())

    await asyncio.gather(*[one(channel) for channel in channels])
    return last


async def remote_main(url: str, members: int, expected: int) -> None:
    """The other process: ``members`` channels in the group, each receiving ``expected``."""
    layer = RedisChannelLayer(hosts=[url], capacity=CAPACITY)
    channels = [await layer.new_channel() for _ in range(members)]
    for channel in channels:
        await layer.group_add(GROUP, channel)
    task = asyncio.ensure_future(consume_until(layer, channels, expected))
    await asyncio.sleep(0.3)  # every receiver waiting, pumps started
    print("ready", flush=True)
    last = await task
    print(json.dumps({"last": last}), flush=True)
    await layer.close_pools()


async def group_run(url: str, members: int, local_members: int, sends: int, local: bool) -> float:
    layer = RedisChannelLayer(hosts=[url], capacity=CAPACITY, local_delivery=local)
    await layer.flush()
    remote_members = members - local_members
    child = None
    if remote_members:
        child = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--remote", url, str(remote_members), str(sends + 1)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        line = await asyncio.get_running_loop().run_in_executor(None, child.stdout.readline)
        if line.strip() != "ready":
            raise RuntimeError(f"the remote process said {line!r}")
    channels = [await layer.new_channel() for _ in range(local_members)]
    for channel in channels:
        await layer.group_add(GROUP, channel)
    local_done = asyncio.ensure_future(consume_until(layer, channels, sends + 1))
    await layer.group_send(GROUP, message(-1))  # warm-up: the plan, the scripts
    await asyncio.sleep(0.2)
    start = time.time()
    for n in range(sends):
        await layer.group_send(GROUP, message(n))
    last = await local_done if channels else 0.0
    if child is not None:
        assert child.stdout is not None
        line = await asyncio.get_running_loop().run_in_executor(None, child.stdout.readline)
        last = max(last, json.loads(line)["last"])
        child.wait(30)
    await layer.flush()
    return members * sends / (last - start)


# ------------------------------------------------------------------------------ report


def median_of(repeats: int, make) -> float:
    return statistics.median(asyncio.run(make()) for _ in range(repeats))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=200)
    parser.add_argument("--sends", type=int, default=200)
    parser.add_argument("--roundtrips", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--remote", nargs=3, metavar=("URL", "MEMBERS", "EXPECTED"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.remote:
        url, members, expected = args.remote
        asyncio.run(remote_main(url, int(members), int(expected)))
        return 0

    server = RedisServer()
    try:
        url = server.url
        on = median_of(args.repeats, lambda: roundtrip(url, args.roundtrips * 10, True))
        off = median_of(args.repeats, lambda: roundtrip(url, args.roundtrips, False))
        half = args.members // 2
        remote = median_of(args.repeats, lambda: group_run(url, args.members, 0, args.sends, True))
        half_on = median_of(args.repeats, lambda: group_run(url, args.members, half, args.sends, True))
        half_off = median_of(args.repeats, lambda: group_run(url, args.members, half, args.sends, False))
        here_on = median_of(args.repeats, lambda: group_run(url, half, half, args.sends, True))
        here_off = median_of(args.repeats, lambda: group_run(url, half, half, args.sends, False))
    finally:
        server.stop()

    rows = [
        ("roundtrip, same process, local on", on, "msg/s"),
        ("roundtrip, same process, local off (Redis)", off, "msg/s"),
        (f"group of {args.members}, all in another process", remote, "deliveries/s"),
        (f"group of {args.members}, half local, local on", half_on, "deliveries/s"),
        (f"group of {args.members}, half local, local off", half_off, "deliveries/s"),
        (f"group of {half}, all in this process, local on", here_on, "deliveries/s"),
        (f"group of {half}, all in this process, local off", here_off, "deliveries/s"),
    ]
    for label, rate, unit in rows:
        print(f"{label:<48}{rate:>14,.0f} {unit}")
    verdicts = [
        ("same-process roundtrip >= 10x the Redis path", on / off, 10.0),
        ("half-local group >= 1.5x all-remote", half_on / remote, 1.5),
    ]
    print(f"half-local group, local on vs off: {half_on / half_off:.2f}x")
    print(f"group all in this process, local on vs off: {here_on / here_off:.2f}x")
    missed = 0
    for label, ratio, target in verdicts:
        ok = ratio >= target
        missed += not ok
        print(f"{'met ' if ok else 'MISSED'} {label}: {ratio:.2f}x")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
