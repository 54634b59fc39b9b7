"""Dense processes: many idle consumers in one process (issue 24).

    python bench/dense.py                 # 50,000 consumers; joins of 10,000 and 50,000
    python bench/dense.py --quick         # 20,000 consumers; joins of 5,000 and 20,000
    python bench/dense.py --layers floor,ours-core --rounds 5

One process holds N consumers, each with a pending ``receive()`` on its own channel and in
one group. For the bare-asyncio floor (N tasks awaiting futures that are all set at once, a
dict copied per wake-up), this project's core and pub/sub layers and channels_redis 4.3's core
layer, each row is measured in a fresh child process:

* memory per idle consumer: the child's RSS after all N joined and wait, minus its RSS with
  the layer built and connected, over N (everything included);
* idle CPU: the child's CPU time over a quiet spell while all N wait, as a share of a core;
* fan-out: one ``group_send`` from this (another) process through Redis, until all N received
  it (the message carries the sender's clock; the child notes the last arrival); the median
  of ``--rounds``, and its ratio to the floor's wake-all;
* join rate: N concurrent ``new_channel()`` + ``group_add()`` in a fresh child, at two sizes.
  channels_redis is chunked (100 at a time): on redis-py 8 it raises MaxConnectionsError
  with thousands in flight.

channels-nats rows are measured when ``bench/workloads.py`` registers a layer named
``*nats*`` that builds on the bench's URLs; otherwise they are skipped with the reason.
Verdicts against issue 24's targets; a miss exits 1 unless ``--report-only``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import sys
import time
from typing import Any

import workloads as wl

GROUP = "dense"
#: Joins in flight at once while consumers are set up for the memory and fan-out rows
#: (the join rows measure concurrency; these rows measure what stays).
SETUP_CHUNK = 1000
#: channels_redis cannot take thousands of concurrent group_adds (its pool's limit).
ANCHOR_CHUNK = 100
TARGET_KB = 1.5
TARGET_FANOUT_RATIO = 1.5
TARGET_JOIN_VS_ANCHOR = 5.0
TARGET_JOIN_FALL = 0.20
JUDGED = ("ours-core", "ours-pubsub")


def log(text: str = "") -> None:
    print(text, flush=True)


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def rss() -> int:
    return wl.rss_bytes()


def spec_of(name: str) -> wl.LayerSpec:
    return next(s for s in wl.ALL_LAYERS if s.name == name)


def nats_spec() -> tuple[wl.LayerSpec | None, str]:
    spec = next((s for s in wl.ALL_LAYERS if "nats" in s.name), None)
    if spec is None:
        return None, "no channels-nats layer registered in bench/workloads.py"
    try:
        spec.load()
    except Exception as exc:  # noqa: BLE001 - any import problem means "skip"
        return None, f"{type(exc).__name__}: {exc}"
    return spec, ""


# --------------------------------------------------------------------------------------
# children (one measurement each, in a fresh process)
# --------------------------------------------------------------------------------------


async def quiet_cpu(seconds: float) -> float:
    """CPU share of one core this process used over ``seconds`` of waiting."""
    gc.collect()
    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.sleep(seconds)
    return (time.process_time() - cpu) / (time.perf_counter() - started)


async def floor_child(n: int, rounds: int, quiet: float) -> None:
    loop = asyncio.get_running_loop()
    waiting: list[asyncio.Future] = [None] * n  # type: ignore[list-item]
    state = {"count": 0, "done": None}

    async def consumer(i: int) -> None:
        while True:
            future = waiting[i] = loop.create_future()
            message = await future
            dict(message)  # what a layer's receive does per wake-up: a copy of its own
            state["count"] += 1
            if state["count"] == n:
                state["done"].set_result(time.perf_counter())

    gc.collect()
    base = rss()
    tasks = [asyncio.ensure_future(consumer(i)) for i in range(n)]
    await asyncio.sleep(0.5)
    gc.collect()
    kb = (rss() - base) / n / 1024
    emit(memory_kb=kb, idle_cpu=await quiet_cpu(quiet))
    times = []
    for r in range(rounds):
        state["count"], state["done"] = 0, loop.create_future()
        message = {"type": "dense.message", "text": "x" * 40, "round": r}
        started = time.perf_counter()
        for future in list(waiting):
            future.set_result(message)
        times.append((await state["done"]) - started)
        await asyncio.sleep(0.2)
    emit(fanout_ms=[t * 1000 for t in times])
    for task in tasks:
        task.cancel()


async def layer_child(name: str, url: str, n: int, rounds: int, quiet: float) -> None:
    """N consumers; then waits for ``rounds`` group messages the parent sends, one at a time."""
    spec = spec_of(name)
    layer = spec.make([url])
    # Connected before the baseline: sockets are not a per-consumer cost.
    warm = await layer.new_channel()
    await layer.group_add("dense-warmup", warm)
    await layer.send(warm, {"type": "warm"})
    await layer.receive(warm)
    loop = asyncio.get_running_loop()
    state: dict[str, Any] = {"joined": 0, "count": [0] * rounds, "last": [0.0] * rounds, "sent": [0.0] * rounds}
    all_joined = loop.create_future()
    round_done: list[asyncio.Future] = [loop.create_future() for _ in range(rounds)]
    gate = asyncio.Semaphore(ANCHOR_CHUNK // 2 if spec.anchor else SETUP_CHUNK)

    async def consumer() -> None:
        try:
            async with gate:
                channel = await layer.new_channel()
                await layer.group_add(GROUP, channel)
        except Exception as exc:
            if not all_joined.done():
                all_joined.set_exception(exc)
            raise
        state["joined"] += 1
        if state["joined"] == n:
            all_joined.set_result(None)
        while True:
            message = await layer.receive(channel)
            r = message["round"]
            count = state["count"][r] = state["count"][r] + 1
            if count == n:
                state["last"][r] = time.time()
                state["sent"][r] = message["t"]
                round_done[r].set_result(None)

    gc.collect()
    base = rss()
    started = time.perf_counter()
    tasks = [asyncio.ensure_future(consumer()) for _ in range(n)]
    await all_joined
    join_s = time.perf_counter() - started
    await asyncio.sleep(1.0)  # every consumer reaches its receive()
    gc.collect()
    kb = (rss() - base) / n / 1024
    emit(memory_kb=kb, idle_cpu=await quiet_cpu(quiet), setup_join_s=join_s)
    times = []
    for r in range(rounds):
        emit(ready=r)
        await round_done[r]
        times.append(state["last"][r] - state["sent"][r])
    emit(fanout_ms=[t * 1000 for t in times])
    for task in tasks:
        task.cancel()


async def join_child(name: str, url: str, n: int) -> None:
    spec = spec_of(name)
    layer = spec.make([url])
    warm = await layer.new_channel()
    await layer.group_add("dense-warmup", warm)
    gate = asyncio.Semaphore(ANCHOR_CHUNK if spec.anchor else n)

    async def join() -> None:
        async with gate:
            channel = await layer.new_channel()
            await layer.group_add(GROUP, channel)

    started = time.perf_counter()
    await asyncio.gather(*[join() for _ in range(n)])
    seconds = time.perf_counter() - started
    emit(join_s=seconds, rate=n / seconds, chunked=ANCHOR_CHUNK if spec.anchor else None)


def child_main(argv: list[str]) -> int:
    kind, name, url, n, rounds, quiet = argv[0], argv[1], argv[2], int(argv[3]), int(argv[4]), float(argv[5])
    if kind == "floor":
        asyncio.run(floor_child(n, rounds, quiet))
    elif kind == "idle":
        asyncio.run(layer_child(name, url, n, rounds, quiet))
    else:
        asyncio.run(join_child(name, url, n))
    return 0


# --------------------------------------------------------------------------------------
# parent
# --------------------------------------------------------------------------------------


async def run_child(args: list[str], sender: Any = None, timeout: float = 300) -> dict:
    """One child; ``sender(round)`` is called each time it reports ``ready``."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, os.path.abspath(__file__), "--child", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    result: dict = {}
    try:
        async def read() -> None:
            assert proc.stdout is not None
            async for line in proc.stdout:
                try:
                    fields = json.loads(line)
                except ValueError:
                    continue
                if "ready" in fields:
                    await asyncio.sleep(0.3)  # the child's consumers settle after the last round
                    await sender(fields["ready"])
                else:
                    result.update(fields)

        await asyncio.wait_for(read(), timeout)
        stderr = (await proc.stderr.read()).decode() if proc.stderr else ""
        await proc.wait()
    except (asyncio.TimeoutError, Exception) as exc:  # noqa: BLE001 - reported as the row's error
        proc.kill()
        await proc.wait()
        return {"error": f"{type(exc).__name__}: {exc}"}
    if proc.returncode != 0:
        last = (stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        return {"error": last}
    return result


async def measure_layer(spec: wl.LayerSpec, url: str, server: Any, n: int, rounds: int, quiet: float) -> dict:
    server.flushall()
    layer = spec.make([url])  # the sender: another process than the consumers'

    async def send(r: int) -> None:
        await layer.group_send(GROUP, {"type": "dense.message", "text": "x" * 40, "round": r, "t": time.time()})

    try:
        # channels_redis sets up tens of thousands of waiting consumers slowly (chunked joins).
        timeout = 900 if spec.anchor else 300
        return await run_child(["idle", spec.name, url, str(n), str(rounds), str(quiet)], send, timeout)
    finally:
        closing = getattr(layer, "close_pools", None) or getattr(layer, "close", None)
        if closing is not None:
            await closing()


def median(values: list[float]) -> float:
    return statistics.median(values)


async def measure(args: argparse.Namespace, specs: list[wl.LayerSpec], url: str, server: Any) -> dict:
    results: dict[str, dict] = {}
    n, rounds, quiet = args.consumers, args.rounds, args.quiet
    if args.do_floor:
        floor = await run_child(["floor", "floor", url, str(n), str(rounds), str(quiet)])
        results["floor"] = floor
        log(f"  floor        {row_text(floor)}")
    for spec in specs:
        r = await measure_layer(spec, url, server, n, rounds, quiet)
        for size in args.joins:
            server.flushall()
            joined = await run_child(["join", spec.name, url, str(size), "0", "0"])
            r.setdefault("joins", {})[str(size)] = joined
        results[spec.name] = r
        log(f"  {spec.name:<12} {row_text(r)}")
    return results


def row_text(r: dict) -> str:
    if r.get("error"):
        return f"ERROR {r['error']}"
    parts = [f"{r['memory_kb']:.2f} kB/consumer", f"idle cpu {r['idle_cpu']:.2%}"]
    if r.get("fanout_ms"):
        parts.append("fan-out " + "/".join(f"{t:.0f}" for t in r["fanout_ms"]) + " ms")
    for size, j in (r.get("joins") or {}).items():
        parts.append(f"join {int(size):,}: " + (f"ERROR {j['error']}" if j.get("error") else f"{j['rate']:,.0f}/s"))
    return "  ".join(parts)


def table(results: dict, args: argparse.Namespace) -> tuple[str, list[str]]:
    """The rows and the missed targets."""
    columns = [name for name in ("floor", "ours-core", "ours-pubsub", "cr-core", *results) if name in results]
    columns = list(dict.fromkeys(columns))
    floor = results.get("floor") or {}
    floor_ms = median(floor["fanout_ms"]) if floor.get("fanout_ms") else None
    lines = [f"dense: {args.consumers:,} consumers in one process, each with a pending receive() in one group",
             f"{'':<34}" + "".join(f"{c:>16}" for c in columns)]

    def row(label: str, cell) -> None:
        lines.append(f"{label:<34}" + "".join(f"{cell(results[c], c):>16}" for c in columns))

    def ok(r: dict) -> bool:
        return not r.get("error")

    row("memory per idle consumer (kB)", lambda r, c: f"{r['memory_kb']:.2f}" if ok(r) else "error")
    row("idle CPU while all wait", lambda r, c: f"{r['idle_cpu']:.2%}" if ok(r) else "error")
    row("group_send to all, until all (ms)",
        lambda r, c: f"{median(r['fanout_ms']):.0f}" if ok(r) and r.get("fanout_ms") else "-")
    row("  ratio to the floor", lambda r, c: (f"{median(r['fanout_ms']) / floor_ms:.2f}x"
                                             if ok(r) and r.get("fanout_ms") and floor_ms else "-"))
    for size in args.joins:
        def join_cell(r: dict, c: str, size: int = size) -> str:
            j = (r.get("joins") or {}).get(str(size))
            if not j:
                return "-"
            if j.get("error"):
                return "error"
            return f"{j['rate']:,.0f}" + ("*" if j.get("chunked") else "")
        row(f"join/s, {size:,} concurrent", join_cell)
    lines.append(f"(* chunked: {ANCHOR_CHUNK:,} joins in flight at a time; fan-out: median of {args.rounds} rounds)")

    missed: list[str] = []
    anchor = results.get("cr-core") or {}
    big, small = str(max(args.joins)), str(min(args.joins))
    for name in JUDGED:
        r = results.get(name)
        if r is None:
            continue
        if r.get("error"):
            missed.append(f"{name}: failed: {r['error']}")
            continue
        if r["memory_kb"] > TARGET_KB:
            missed.append(f"{name}: {r['memory_kb']:.2f} kB per idle consumer > {TARGET_KB} kB")
        if floor_ms and r.get("fanout_ms") and median(r["fanout_ms"]) > TARGET_FANOUT_RATIO * floor_ms:
            missed.append(f"{name}: fan-out {median(r['fanout_ms']) / floor_ms:.2f}x the floor > {TARGET_FANOUT_RATIO}x")
        joins = r.get("joins") or {}
        if any(j.get("error") for j in joins.values()):
            missed.append(f"{name}: a join run failed")
            continue
        rate_big = joins[big]["rate"]
        rate_small = joins[small]["rate"]
        if rate_big < (1 - TARGET_JOIN_FALL) * rate_small:
            missed.append(f"{name}: join rate falls {1 - rate_big / rate_small:.0%} from {int(small):,} to "
                          f"{int(big):,} in flight (> {TARGET_JOIN_FALL:.0%})")
        anchor_join = (anchor.get("joins") or {}).get(big) or {}
        if anchor_join.get("rate") and rate_big < TARGET_JOIN_VS_ANCHOR * anchor_join["rate"]:
            missed.append(f"{name}: join at {int(big):,} is {rate_big / anchor_join['rate']:.1f}x channels_redis's "
                          f"(< {TARGET_JOIN_VS_ANCHOR}x)")
    return "\n".join(lines), missed


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20,000 consumers, joins of 5,000 and 20,000")
    parser.add_argument("--consumers", type=int, default=None)
    parser.add_argument("--joins", default=None, help="comma list of join sizes")
    parser.add_argument("--rounds", type=int, default=None, help="group_sends per fan-out row (median)")
    parser.add_argument("--quiet", type=float, default=None, help="seconds of the idle-CPU spell")
    parser.add_argument("--layers", default="", help="comma list: floor, ours-core, ours-pubsub, cr-core, ...")
    parser.add_argument("--out", default="bench-results", help="directory for dense.json")
    parser.add_argument("--report-only", action="store_true", help="exit 0 even when a target is missed")
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.consumers is None:
        args.consumers = 20_000 if args.quick else 50_000
    args.joins = ([int(s) for s in args.joins.split(",")] if args.joins
                  else [5_000, 20_000] if args.quick else [10_000, 50_000])
    if args.rounds is None:
        args.rounds = 3 if args.quick else 5
    if args.quiet is None:
        args.quiet = 1.0 if args.quick else 2.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args.child)
    from channels_redis_fast.testing import RedisServer

    wanted = {n.strip() for n in args.layers.split(",") if n.strip()}
    available, skipped = wl.available_layers()
    specs = [s for s in available if s.name in ("ours-core", "ours-pubsub", "cr-core") and (not wanted or s.name in wanted)]
    nats, why = nats_spec()
    if nats is not None and (not wanted or nats.name in wanted):
        specs.append(nats)
    elif not wanted or any("nats" in w for w in wanted):
        skipped["channels-nats"] = why
    args.do_floor = not wanted or "floor" in wanted
    server = RedisServer()
    log("=" * 100)
    log(f"dense: {args.consumers:,} consumers; joins of {', '.join(f'{j:,}' for j in args.joins)}; "
        f"layers: floor, {', '.join(s.name for s in specs)}; each row in a fresh process; "
        f"private Redis on {server.port}")
    for name, reason in skipped.items():
        log(f"  skipped {name}: {reason}")
    try:
        results = asyncio.run(measure(args, specs, server.url, server))
    finally:
        server.close()
    text, missed = table(results, args)
    log("\n" + text)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "dense.json"), "w") as fh:
        json.dump({"consumers": args.consumers, "joins": args.joins, "rounds": args.rounds,
                   "results": results, "missed": missed, "skipped": skipped,
                   "at": time.strftime("%Y-%m-%dT%H:%M:%S")}, fh, indent=2)
    if not missed:
        log("\ndense verdict: no target missed")
        return 0
    log(f"\ndense verdict: {len(missed)} MISSED:")
    for line in missed:
        log(f"  {line}")
    return 0 if args.report_only else 1


if __name__ == "__main__":
    sys.exit(main())
