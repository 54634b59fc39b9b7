"""Multi-process fan-out: one publishing process, P receiving processes, a group of N members.

    python bench/run.py --workloads fanout [--loop uvloop] [--fanout-runs 3]
    python bench/fanout.py [--layers ours-core,nats] [--rows fanout_1000x2] [--runs 1]

The shape of the only published fan-out figures in the field (channels-nats's): P receiving
processes hold N/P member channels each, one receiving coroutine per member; one publishing
process makes M ``group_send`` calls, awaiting each, at a fixed gap (0: back to back). Every
message carries the monotonic time taken just before its ``group_send`` (one clock for all
processes on Linux), so each delivery's latency is its receive time minus that; deliveries per
second run from the first send to the last receive across all processes. Every delivery is
counted per member and message: none may be lost or arrive twice (capacities are set so no
layer drops by design; a drop shows as lost).

Before the measured sends the publisher sends probe messages until every member of every
process has received one, so connections, scripts and subscriptions are in place for every
layer alike. The ``group_send latency`` rows time one call to 100, 1,000 and 5,000 members,
received in one other process, with a gap long enough for the receivers to keep up.

Targets (issue 20, item 5): at gap 0, our core layer at least 2x channels-nats's deliveries
per second and our pub/sub layer at least 3x; at gap 10 ms both at or above channels-nats's
rate; p99 at or below channels-nats's on every row; one core ``group_send`` to 1,000 and to
5,000 members at most a third of channels_redis's.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import dataclasses
import multiprocessing
import os
import statistics
import sys
import threading
import time
from multiprocessing.connection import Connection, wait
from typing import Any

from channels.exceptions import ChannelFull

import loops
import peers
import workloads as wl

clock = time.monotonic  # CLOCK_MONOTONIC: one clock for every process on the machine
GROUP = "fanout"
FAN = "fan.out"
PROBE = "fan.probe"
#: Every layer's capacity (per channel), as in the issue's measurements: above any backlog
#: these rows can build (at most M messages per member), so no layer drops by design.
CAPACITY = 10_000
#: Layers compared on these rows, in order.
LAYERS = ("ours-core", "ours-pubsub", "cr-core", peers.NAME)
#: A receiver reports once it has seen nothing new for this long after the last send.
QUIET_S = 5.0


@dataclasses.dataclass(frozen=True)
class Row:
    name: str
    members: int
    processes: int
    sends: int
    gap_s: float
    #: channels_redis delivers one to two orders slower: fewer sends keep its run near the
    #: others' length (its rate stays per second, so it compares; the JSON says how many).
    anchor_sends: int

    def describe(self) -> str:
        gap = f"gap {self.gap_s * 1e3:g} ms" if self.gap_s else "gap 0"
        return (f"{self.members:,} members over {self.processes} receiving processes, "
                f"{self.sends:,} group_sends, {gap}: deliveries/s and send-to-receive latency")


ROWS = [
    Row("fanout_1000x2", 1000, 2, 1000, 0.0, 100),
    Row("fanout_5000x4", 5000, 4, 200, 0.0, 20),
    Row("fanout_1000x2_gap10", 1000, 2, 200, 0.010, 200),
]
#: group_send latency rows: members (in one other process), calls (one at a time, the next
#: once every member has received the last), and channels_redis's calls: its receivers take
#: seconds to hand a message to 5,000 members in one process.
LATENCY_ROWS = [(100, 300, 100), (1000, 200, 40), (5000, 100, 10)]
LATENCY = "fanout_group_send"
ROW_NAMES = [r.name for r in ROWS]
WORKLOAD_NAMES = [*ROW_NAMES, LATENCY]


# --------------------------------------------------------------------------------------
# the child processes
# --------------------------------------------------------------------------------------


def layer_spec(name: str, nats_url: str, nats_version: str) -> wl.LayerSpec:
    if name == peers.NAME:
        return peers.spec(url=nats_url, server_version_text=nats_version)
    return next(s for s in wl.ALL_LAYERS if s.name == name)


def make_layer(cfg: dict) -> Any:
    spec = layer_spec(cfg["layer"], cfg["nats_url"], cfg["nats_version"])
    if spec.kind == "pubsub" and not spec.anchor:
        # LayerSpec.make leaves a pub/sub layer its default local buffer (channels_redis's
        # has none to set); ours gets the same capacity as every other layer here.
        return spec.load()(hosts=[cfg["redis_url"]], capacity=CAPACITY)
    return spec.make([cfg["redis_url"]], capacity=CAPACITY)


async def close_layer(layer: Any) -> None:
    for method in ("close_pools", "close"):
        closer = getattr(layer, method, None)
        if closer is not None:
            try:
                await asyncio.wait_for(closer(), 10)
            except Exception:  # noqa: BLE001 - best effort at the end of a run
                pass
            return


def _commands(conn: Connection, loop: asyncio.AbstractEventLoop) -> asyncio.Queue:
    """The parent's commands, read on a thread and handed to the loop."""
    queue: asyncio.Queue = asyncio.Queue()

    def reader() -> None:
        while True:
            try:
                item = conn.recv()
            except (EOFError, OSError):
                item = ("quit",)
            loop.call_soon_threadsafe(queue.put_nowait, item)
            if item[0] == "quit":
                return

    threading.Thread(target=reader, daemon=True).start()
    return queue


class Tally:
    """One receiving process's count of deliveries, per member and message."""

    def __init__(self, members: int, sends: int) -> None:
        self.sends = sends
        self.expected = members * sends
        self.counts = bytearray(self.expected)
        self.received = 0  # distinct (member, message) pairs
        self.duplicated = 0
        self.strays = 0  # messages that were neither probes nor in range
        self.latencies = array.array("d")
        self.last = 0.0  # the last measured delivery
        self.active = 0.0  # the last delivery of any kind (a backlog of probes is progress too)
        self.per_message = [0] * sends  # members that have message n, for lockstep runs
        self.members = members
        self.probed = bytearray(members)
        self.unprobed = members
        self.complete: asyncio.Event = asyncio.Event()
        self.warm: asyncio.Event = asyncio.Event()


async def _receiver(conn: Connection, cfg: dict) -> None:
    layer = make_layer(cfg)
    members, sends = cfg["members"], cfg["sends"]
    commands = _commands(conn, asyncio.get_running_loop())
    started = clock()
    names = [await layer.new_channel() for _ in range(members)]
    for name in names:
        await layer.group_add(GROUP, name)
    tally = Tally(members, sends)
    lockstep = cfg.get("lockstep", False)

    async def consume(index: int, name: str) -> None:
        receive, counts, latencies = layer.receive, tally.counts, tally.latencies
        base = index * sends
        while True:
            message = await receive(name)
            now = tally.active = clock()
            if message.get("type") != FAN:
                if message.get("type") == PROBE and not tally.probed[index]:
                    tally.probed[index] = 1
                    tally.unprobed -= 1
                    if not tally.unprobed:
                        tally.warm.set()
                continue
            n = message["n"]
            if not 0 <= n < sends:
                tally.strays += 1
                continue
            slot = base + n
            if counts[slot]:
                tally.duplicated += 1
            else:
                counts[slot] = 1
                tally.received += 1
                if tally.received == tally.expected:
                    tally.complete.set()
                if lockstep:
                    tally.per_message[n] += 1
                    if tally.per_message[n] == tally.members:
                        conn.send(("got", n))
            latencies.append(now - message["t"])
            tally.last = now

    tasks = [asyncio.ensure_future(consume(i, name)) for i, name in enumerate(names)]
    conn.send(("ready", clock() - started))

    async def report_warm() -> None:
        await tally.warm.wait()
        conn.send(("warm",))

    warm_task = asyncio.ensure_future(report_warm())
    try:
        while True:
            command = await commands.get()
            if command[0] == "quit":
                break
            if command[0] == "drain":
                since = clock()
                while not tally.complete.is_set():
                    for task in tasks:
                        if task.done():
                            raise RuntimeError(f"a receiver failed: {task.exception()!r}")
                    if clock() - max(tally.active, since) > QUIET_S:
                        break
                    try:
                        await asyncio.wait_for(tally.complete.wait(), 0.1)
                    except asyncio.TimeoutError:
                        pass
                conn.send(("result", {
                    "expected": tally.expected, "received": tally.received,
                    "duplicated": tally.duplicated, "strays": tally.strays, "last": tally.last,
                    "latencies": tally.latencies.tobytes(),
                }))
    finally:
        warm_task.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, warm_task, return_exceptions=True)
        await close_layer(layer)


async def _publisher(conn: Connection, cfg: dict) -> None:
    layer = make_layer(cfg)
    group_send = layer.group_send
    commands = _commands(conn, asyncio.get_running_loop())
    conn.send(("ready", 0.0))
    try:
        while True:
            command = await commands.get()
            if command[0] == "quit":
                break
            if command[0] == "one":
                t = clock()
                try:
                    await group_send(GROUP, {"type": FAN, "n": command[1], "t": t, "text": wl.TEXT})
                    full = 0
                except ChannelFull:
                    full = 1
                conn.send(("one", (clock() - t, t, full)))
            elif command[0] == "probe":
                await group_send(GROUP, {"type": PROBE, "k": command[1]})
                conn.send(("probed",))
            elif command[0] == "go":
                _, sends, gap = command
                durations = array.array("d")
                full = 0
                text = wl.TEXT
                first = start = clock()
                for n in range(sends):
                    if gap:
                        delay = start + n * gap - clock()
                        if delay > 0:
                            await asyncio.sleep(delay)
                    t = clock()
                    if n == 0:
                        first = t
                    try:
                        await group_send(GROUP, {"type": FAN, "n": n, "t": t, "text": text})
                    except ChannelFull:
                        full += 1  # counted; its deliveries show as lost
                    durations.append(clock() - t)
                conn.send(("sent", {"first": first, "done": clock(), "channel_full": full,
                                    "durations": durations.tobytes()}))
    finally:
        await close_layer(layer)


def child(role: str, conn: Connection, cfg: dict) -> None:
    """A spawned process: a receiver or the publisher, on the loop the parent asked for."""
    main = _receiver if role == "receiver" else _publisher
    try:
        loops.run(main(conn, cfg), cfg["loop"])
    except BaseException as exc:  # noqa: BLE001 - tell the parent before dying
        try:
            conn.send(("error", f"{role}: {type(exc).__name__}: {exc}"))
        except Exception:  # noqa: BLE001
            pass
        raise


# --------------------------------------------------------------------------------------
# the parent: one run of one row for one layer
# --------------------------------------------------------------------------------------


class ChildFailed(RuntimeError):
    pass


def _expect(conn: Connection, kind: str, timeout: float) -> Any:
    if not conn.poll(timeout):
        raise ChildFailed(f"no {kind!r} from a child within {timeout:g} s")
    message = conn.recv()
    if message[0] == "error":
        raise ChildFailed(message[1])
    if message[0] != kind:
        raise ChildFailed(f"expected {kind!r} from a child, got {message[0]!r}")
    return message[1] if len(message) > 1 else None


def percentiles(samples: array.array) -> dict:
    return wl.percentiles(list(samples))


def run_row(spec_name: str, members: int, processes: int, sends: int, gap: float, cfg: dict,
            lockstep: bool = False) -> dict:
    """Start the processes, warm up, measure one row once; a result dict (``error`` on failure)."""
    ctx = multiprocessing.get_context("spawn")
    base = {**cfg, "layer": spec_name, "sends": sends, "lockstep": lockstep}
    procs, conns = [], []
    pub: Connection | None = None
    started = time.perf_counter()
    try:
        for _ in range(processes):
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=child, args=("receiver", theirs, {**base, "members": members // processes}),
                               daemon=True)
            proc.start()
            procs.append(proc)
            conns.append(mine)
        pub, theirs = ctx.Pipe()
        proc = ctx.Process(target=child, args=("publisher", theirs, base), daemon=True)
        proc.start()
        procs.append(proc)
        setup_s = max(_expect(c, "ready", 180) for c in conns)
        _expect(pub, "ready", 60)

        # Warm-up: a probe a second until every member of every process has one (a
        # subscription may not be in place for the first; a slow layer takes a while to
        # hand one to every member, and must not be buried under probes meanwhile).
        warm: set[int] = set()
        deadline, k = clock() + 90, 0
        while len(warm) < len(conns):
            if clock() > deadline:
                raise ChildFailed(f"only {len(warm)} of {len(conns)} receiving processes got a probe in 90 s")
            pub.send(("probe", k))
            _expect(pub, "probed", 30)
            k += 1
            until = clock() + 1.0
            while len(warm) < len(conns) and clock() < until:
                for conn in wait([c for i, c in enumerate(conns) if i not in warm], max(0.0, until - clock())):
                    _expect(conn, "warm", 1)
                    warm.add(conns.index(conn))
        time.sleep(0.3)  # the last probes' deliveries settle before the clock starts

        if lockstep:
            # One call at a time, the next once every member has the last: the time of one
            # group_send with the receivers waiting, not racing a backlog.
            durations, first, full = array.array("d"), 0.0, 0
            for n in range(sends):
                pub.send(("one", n))
                took, t, lost_call = _expect(pub, "one", 60)
                durations.append(took)
                first, full = first or t, full + lost_call
                for conn in conns:
                    _expect(conn, "got", 120)
            sent = {"first": first, "done": clock(), "channel_full": full, "durations": durations.tobytes()}
        else:
            pub.send(("go", sends, gap))
            sent = _expect(pub, "sent", 600)
        for conn in conns:
            conn.send(("drain",))
        results = [_expect(c, "result", 600) for c in conns]
    except ChildFailed as exc:
        return {"error": str(exc), "rate": None, "wall_s": time.perf_counter() - started}
    finally:
        for conn in [*conns, *([pub] if pub is not None else [])]:
            try:
                conn.send(("quit",))
            except OSError:
                pass
        for proc in procs:
            proc.join(20)
            if proc.is_alive():
                proc.kill()
                proc.join()

    latencies = array.array("d")
    for r in results:
        latencies.frombytes(r["latencies"])
    durations = array.array("d")
    durations.frombytes(sent["durations"])
    expected = sum(r["expected"] for r in results)
    received = sum(r["received"] for r in results)
    last = max((r["last"] for r in results if r["received"]), default=sent["done"])
    seconds = last - sent["first"]
    return {
        "rate": received / seconds if seconds > 0 and received else 0.0,
        "deliveries": received,
        "expected": expected,
        "lost": expected - received,
        "duplicated": sum(r["duplicated"] for r in results),
        "strays": sum(r["strays"] for r in results),
        "channel_full": sent["channel_full"],
        "seconds": seconds,
        "send_seconds": sent["done"] - sent["first"],
        "members": members,
        "processes": processes,
        "sends": sends,
        "gap_ms": gap * 1e3,
        "latency": percentiles(latencies),
        "group_send": percentiles(durations),
        "setup_s": setup_s,
        "warmup_probes": k,
        "wall_s": time.perf_counter() - started,
    }


def progress_line(row: str, layer: str, r: dict, run: int, runs: int) -> str:
    head = f"  {row:<20} {layer:<12} {run + 1}/{runs}"
    if r.get("error"):
        return f"{head} ERROR {r['error']}"
    lat, gs = r["latency"], r["group_send"]
    text = (f"{head} {r['rate']:>11,.0f} deliveries/s  p50 {lat.get('p50_ms', 0):8.2f} ms  "
            f"p99 {lat.get('p99_ms', 0):8.2f} ms  group_send p50 {gs.get('p50_ms', 0):6.3f} ms "
            f"p99 {gs.get('p99_ms', 0):6.3f} ms  ({r['deliveries']:,}/{r['expected']:,} in {r['seconds']:.2f} s; "
            f"{r['sends']} sends; wall {r['wall_s']:.1f} s)")
    for key in ("lost", "duplicated", "strays", "channel_full"):
        if r.get(key):
            text += f"  {key.upper()} {r[key]:,}"
    return text


def median_of(runs: list[dict]) -> dict:
    ok = [r for r in runs if not r.get("error")]
    if not ok:
        return dict(runs[0])
    ordered = sorted(ok, key=lambda r: r["rate"])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["rates"] = [r["rate"] for r in ok]
    chosen["p50s_ms"] = [r["latency"].get("p50_ms") for r in ok]
    chosen["p99s_ms"] = [r["latency"].get("p99_ms") for r in ok]
    chosen["lost_all_runs"] = sum(r["lost"] for r in ok)
    chosen["duplicated_all_runs"] = sum(r["duplicated"] for r in ok)
    return chosen


def measure(specs: list[wl.LayerSpec], redis: Any, nats_url: str, nats_version: str, loop: str,
            runs: int, rows: list[str] | None = None, log=print) -> dict[str, dict[str, dict]]:
    """Every fan-out row and the group_send latency rows, ``runs`` times round the layers.

    ``redis`` is the private RedisServer (flushed before each run). Returns
    ``{workload: {layer: result}}`` in the shape of run.py's results.
    """
    names = [n for n in LAYERS if any(s.name == n for s in specs)]
    cfg = {"redis_url": redis.url, "nats_url": nats_url, "nats_version": nats_version, "loop": loop}
    wanted_rows = [r for r in ROWS if rows is None or r.name in rows]
    latency_wanted = rows is None or LATENCY in rows
    collected: dict[str, dict[str, list[dict]]] = {r.name: {n: [] for n in names} for r in wanted_rows}
    calls: dict[int, dict[str, list[dict]]] = {m: {n: [] for n in names} for m, _, _ in LATENCY_ROWS}
    for run in range(runs):
        for row in wanted_rows:
            for name in names:
                done = collected[row.name][name]
                if done and done[0].get("error"):
                    continue
                redis.flushall()
                sends = row.anchor_sends if name == wl.ANCHOR else row.sends
                result = run_row(name, row.members, row.processes, sends, row.gap_s, cfg)
                done.append(result)
                log(progress_line(row.name, name, result, run, runs))
        if not latency_wanted:
            continue
        for members, count, anchor_count in LATENCY_ROWS:
            for name in names:
                done = calls[members][name]
                if done and done[0].get("error"):
                    continue
                redis.flushall()
                calls_made = anchor_count if name == wl.ANCHOR else count
                result = run_row(name, members, 1, calls_made, 0.0, cfg, lockstep=True)
                done.append(result)
                log(progress_line(f"group_send {members:,}", name, result, run, runs))
    out: dict[str, dict[str, dict]] = {row: {n: median_of(rs) for n, rs in by.items() if rs}
                                       for row, by in collected.items()}
    if latency_wanted:
        out[LATENCY] = {}
        for name in names:
            by_members = {}
            for members, rs in calls.items():
                ok = [r for r in rs[name] if not r.get("error")]
                if not ok:
                    by_members[str(members)] = {"error": (rs[name] or [{}])[0].get("error", "not run")}
                    continue
                by_members[str(members)] = {
                    "p50_ms": statistics.median(r["group_send"]["p50_ms"] for r in ok),
                    "p99_ms": statistics.median(r["group_send"]["p99_ms"] for r in ok),
                    "p50s_ms": [r["group_send"]["p50_ms"] for r in ok],
                    "p99s_ms": [r["group_send"]["p99_ms"] for r in ok],
                    "calls": ok[0]["sends"],
                    "lost": sum(r["lost"] for r in ok),
                    "duplicated": sum(r["duplicated"] for r in ok),
                }
            out[LATENCY][name] = {"rate": None, "by_members": by_members}
    return out


# --------------------------------------------------------------------------------------
# verdicts and the text beside the table
# --------------------------------------------------------------------------------------

CORE, PUBSUB, ANCHOR, NATS = "ours-core", "ours-pubsub", wl.ANCHOR, peers.NAME
#: Deliveries per second against channels-nats's at gap 0, by layer.
GAP0_TARGETS = {CORE: 2.0, PUBSUB: 3.0}
#: One core group_send at most this share of channels_redis's, at these group sizes.
GROUP_SEND_SHARE, GROUP_SEND_SIZES = 1 / 3, ("1000", "5000")


def _check(name: str, short: str, wanted: float | None, got: float | None, met: bool) -> dict:
    return {"name": name, "short": short, "wanted": wanted, "got": got, "met": met}


def checks(results: dict, workload: str) -> list[dict]:
    """Issue 20's targets that apply to one of this module's rows (registered in report.py)."""
    by_layer = results.get(workload) or {}
    found = []
    if workload == LATENCY:
        base = (by_layer.get(ANCHOR) or {}).get("by_members") or {}
        mine = (by_layer.get(CORE) or {}).get("by_members") or {}
        for size in GROUP_SEND_SIZES:
            a, m = (base.get(size) or {}).get("p50_ms"), (mine.get(size) or {}).get("p50_ms")
            if a and m:
                share = m / a
                found.append(_check(f"core group_send to {int(size):,} <= 1/3 of channels_redis's "
                                    f"({m:.3f} vs {a:.3f} ms)", f"group_send {size}",
                                    GROUP_SEND_SHARE, share, share <= GROUP_SEND_SHARE))
        for layer in (CORE, PUBSUB):
            for size, r in ((by_layer.get(layer) or {}).get("by_members") or {}).items():
                if r.get("lost") or r.get("duplicated"):
                    found.append(_check(f"{layer} group_send {size}: none lost, none twice "
                                        f"(lost {r.get('lost')}, twice {r.get('duplicated')})",
                                        f"{layer} lost", 0, None, False))
        return found
    row = next((r for r in ROWS if r.name == workload), None)
    if row is None:
        return found
    nats = by_layer.get(NATS) or {}
    for layer in (CORE, PUBSUB):
        r = by_layer.get(layer) or {}
        if r.get("error") or not r:
            continue
        if r.get("lost_all_runs", r.get("lost")) or r.get("duplicated_all_runs", r.get("duplicated")):
            found.append(_check(f"{layer}: none lost, none twice (lost {r.get('lost_all_runs')}, "
                                f"twice {r.get('duplicated_all_runs')} over all runs)", f"{layer} lost",
                                0, None, False))
        if nats.get("error") or not nats.get("rate") or not r.get("rate"):
            continue
        ratio = r["rate"] / nats["rate"]
        wanted = GAP0_TARGETS[layer] if not row.gap_s else 1.0
        short = "core" if layer == CORE else "pubsub"
        found.append(_check(f"{short} >= {wanted:g}x channels-nats deliveries/s", f"{short} vs nats",
                            wanted, ratio, ratio >= wanted))
        p99, nats_p99 = r["latency"].get("p99_ms"), nats["latency"].get("p99_ms")
        if p99 is not None and nats_p99:
            found.append(_check(f"{short} p99 <= channels-nats p99 ({p99:.2f} vs {nats_p99:.2f} ms)",
                                f"{short} p99", 1.0, p99 / nats_p99, p99 <= nats_p99))
    return found


def side_text(results: dict, columns: dict[str, str]) -> str:
    """Latency of the fan-out rows and the group_send latency rows, as plain text."""
    lines = []
    rows = [r for r in ROWS if r.name in results]
    if rows:
        lines.append("fan-out rows (deliveries/s from first send to last receive; latency group_send to receive; "
                     "median run, all runs' rates):")
        for row in rows:
            lines.append(f"  {row.name}: {row.describe()}")
            for layer in LAYERS:
                r = results[row.name].get(layer)
                if not r:
                    continue
                if r.get("error"):
                    lines.append(f"    {columns.get(layer, layer):<22} ERROR {r['error']}")
                    continue
                lat = r.get("latency") or {}
                rates = ", ".join(f"{x / 1e3:,.0f}k" for x in r.get("rates") or [])
                lost = r.get("lost_all_runs", r.get("lost")) or 0
                twice = r.get("duplicated_all_runs", r.get("duplicated")) or 0
                lines.append(f"    {columns.get(layer, layer):<22} {r['rate']:>11,.0f}/s  p50 {lat.get('p50_ms', 0):8.2f} ms"
                             f"  p99 {lat.get('p99_ms', 0):8.2f} ms  ({r['sends']} sends; runs {rates}"
                             + (f"; LOST {lost:,}" if lost else "") + (f"; TWICE {twice:,}" if twice else "") + ")")
    if LATENCY in results:
        sizes = [str(m) for m, _, _ in LATENCY_ROWS]
        lines.append("time of one group_send, members receiving in another process (median of runs' p50 / p99, ms):")
        lines.append(f"  {'members':<22}" + "".join(f"{int(s):>18,}" for s in sizes))
        for layer in LAYERS:
            r = results[LATENCY].get(layer)
            if not r:
                continue
            cells = []
            for size in sizes:
                m = (r.get("by_members") or {}).get(size) or {}
                cells.append("ERR" if m.get("error") or "p50_ms" not in m else f"{m['p50_ms']:.3f} / {m['p99_ms']:.3f}")
            lines.append(f"  {columns.get(layer, layer):<22}" + "".join(f"{c:>18}" for c in cells))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# on its own
# --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", default=",".join(LAYERS))
    parser.add_argument("--rows", default="", help=f"comma list of {', '.join(WORKLOAD_NAMES)} (default all)")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--loop", choices=loops.CHOICES, default="asyncio")
    args = parser.parse_args(argv)
    from channels_redis_fast.testing import RedisServer

    wanted = [n.strip() for n in args.layers.split(",") if n.strip()]
    specs, skipped = wl.available_layers()
    specs = [s for s in specs if s.name in wanted]
    with RedisServer() as redis:
        nats = peers.start(specs, skipped, wanted=peers.NAME in wanted)
        try:
            for name, why in skipped.items():
                print(f"skipped {name}: {why}")
            results = measure(specs, redis, nats.url if nats else "", nats.version if nats else "?",
                              args.loop, args.runs, [r.strip() for r in args.rows.split(",") if r.strip()] or None)
        finally:
            if nats is not None:
                nats.close()
    columns = {s.name: s.name for s in specs}
    print(side_text(results, columns))
    for workload in results:
        for check in checks(results, workload):
            got = "" if check["got"] is None else f" (got {check['got']:.2f})"
            print(f"{'met   ' if check['met'] else 'MISSED'} {workload}: {check['name']}{got}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
