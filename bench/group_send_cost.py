"""Time of one awaited group_send, members receiving in another process.

    python bench/group_send_cost.py [--sizes 100,1000,5000] [--rounds 200] [--layers ours,cr]
        [--also NAME=module:Class]   # another core layer beside them (an earlier build)

One private Redis. For each layer a receiving process holds one group per size, every
member a process channel of that process with a receiver waiting on it; the sender (this
process) awaits one group_send at a time and times it. Layers and sizes are interleaved
round by round, so a slow patch of the shared machine hits every row alike. Between two
sends the sender waits long enough for the receivers to drain what they got (a gap that
grows with the group), so a row measures the sender's call, not a backlog. At the end
each receiving process reports how many messages its channels got: every send must have
reached every member once.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from workloads import CR_CORE, OURS_CORE, LayerSpec  # noqa: E402

from channels_redis_fast.testing import RedisServer  # noqa: E402

LAYERS = {"ours": OURS_CORE, "cr": CR_CORE}
CAPACITY = 10_000


def _group(name: str, size: int) -> str:
    return f"cost-{name}-{size}"


async def _receive_all(name: str, url: str, sizes: list[int], idle: bool, conn) -> None:
    layer = LAYERS[name].make([url], capacity=CAPACITY, expiry=600)
    received = 0

    async def consume(channel: str) -> None:
        nonlocal received
        while True:
            await layer.receive(channel)
            received += 1

    tasks = []
    for size in sizes:
        for _ in range(size):
            channel = await layer.new_channel()
            await layer.group_add(_group(name, size), channel)
            if not idle:
                tasks.append(asyncio.ensure_future(consume(channel)))
    await asyncio.sleep(0.5)  # every receiver waiting
    conn.send("ready")
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, conn.recv)  # "stop"
    await asyncio.sleep(1.0)  # the last sends drained
    conn.send(received)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _add_layer(also: str) -> str:
    name, _, target = also.partition("=")
    module, _, cls = target.partition(":")
    LAYERS[name] = LayerSpec(name, name, module, cls, "core", False)
    return name


def _receiver(name: str, url: str, sizes: list[int], idle: bool, also: list[str], conn) -> None:
    for spec in also:
        _add_layer(spec)
    asyncio.run(_receive_all(name, url, sizes, idle, conn))


def _p(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _send(names: list[str], url: str, sizes: list[int], rounds: int, gap_per_member: float) -> dict:
    senders = {name: LAYERS[name].make([url], capacity=CAPACITY, expiry=600) for name in names}
    times: dict[tuple[str, int], list[float]] = {(name, size): [] for name in names for size in sizes}
    message = {"type": "cost.message", "text": "x" * 56, "n": 0}
    for warmup in range(3):  # connections, scripts and plans in place
        for name, layer in senders.items():
            for size in sizes:
                await layer.group_send(_group(name, size), message)
                await asyncio.sleep(0.005 + size * gap_per_member)
    for n in range(rounds):
        order = names if n % 2 == 0 else names[::-1]
        for size in sizes:
            for name in order:
                layer = senders[name]
                start = time.perf_counter()
                await layer.group_send(_group(name, size), message)
                times[name, size].append(time.perf_counter() - start)
                await asyncio.sleep(0.002 + size * gap_per_member)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,1000,5000")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--layers", default="ours,cr")
    parser.add_argument("--also", action="append", default=[],
                        help="NAME=module:Class, one more core layer to time beside the others")
    parser.add_argument("--idle", action="store_true",
                        help="members nobody receives on (messages pile up): the sender alone")
    parser.add_argument("--gap-per-member", type=float, default=8e-6,
                        help="seconds to wait after a send, per member (receivers drain)")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    names = args.layers.split(",") + [_add_layer(also) for also in args.also]
    context = multiprocessing.get_context("spawn")
    with RedisServer() as server:
        receivers = []
        for name in names:
            parent, child = context.Pipe()
            process = context.Process(target=_receiver, args=(name, server.url, sizes, args.idle, args.also, child), daemon=True)
            process.start()
            receivers.append((name, process, parent))
        for _, _, parent in receivers:
            if not parent.poll(120) or parent.recv() != "ready":
                raise SystemExit("a receiving process did not get ready")
        times = asyncio.run(_send(names, server.url, sizes, args.rounds, args.gap_per_member))
        counts = {}
        for name, process, parent in receivers:
            parent.send("stop")
            counts[name] = parent.recv() if parent.poll(60) else None
            process.join(10)
    print(f"one group_send, members in another process; {args.rounds} rounds, interleaved")
    print(f"{'members':>8} " + " ".join(f"{name + ' p50':>10} {name + ' p99':>10}" for name in names)
          + ("   ours/cr p50" if {"ours", "cr"} <= set(names) else ""))
    for size in sizes:
        row = f"{size:>8} "
        medians = []
        for name in names:
            samples = times[name, size]
            medians.append(statistics.median(samples))
            row += f"{medians[-1] * 1e3:8.3f}ms {_p(samples, 0.99) * 1e3:8.3f}ms "
        if {"ours", "cr"} <= set(names):
            row += f"  {medians[names.index('ours')] / medians[names.index('cr')]:.2f}"
        print(row)
    expected = 0 if args.idle else (args.rounds + 3) * sum(sizes)
    for name in names:
        status = "ok" if counts[name] == expected else "receivers behind" if name == "cr" else "MISMATCH"
        print(f"{name}: {counts[name]} of {expected} deliveries ({status})")


if __name__ == "__main__":
    main()
