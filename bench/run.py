"""Side-by-side end-to-end benchmark: channels_redis_fast against channels_redis 4.3.

    python bench/run.py                      # everything: 5 runs of ~2 s per layer per workload
    python bench/run.py --quick              # one shorter run each, smaller churn
    python bench/run.py --workloads stream,group_fanout --out /tmp/bench
    python bench/run.py --render-only --readme   # no runs: report results.json, copy into README

All layers run in this one process, one after another, on private Redis servers started
here (and stopped at exit). Each workload runs round the layers ``--repeat`` times and
reports each layer's median run: a shared 2-core machine changes speed by up to 2x for
seconds at a time. The memory churn runs in one child process per layer, so each gets a
clean RSS. Every run, and every tenth of a churn, prints a line as it ends.

Results merge into ``results.json`` in ``--out`` (default ``bench-results/``): a run of
some workloads replaces just those and keeps the others, each with the date it was
measured. From the merged results come the table (printed, and written to ``table.rst``,
which README.rst copies) and ``results.png``. A missed target exits with status 1, unless
``--report-only``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata

import cluster as cl
import fanout
import loops
import peers
import report as rp
import workloads as wl

for _name in fanout.WORKLOAD_NAMES:
    rp.EXTRA_CHECKS[_name] = fanout.checks

def log(text: str = "") -> None:
    print(text, flush=True)


# --------------------------------------------------------------------------------------
# machine
# --------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def version_of(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "-"


def machine_info(redis_version: str) -> dict:
    import channels_redis_fast

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "redis_server": redis_version,
        "implementation": channels_redis_fast.IMPLEMENTATION,
        "channels_redis_fast": f"{channels_redis_fast.__version__} ({os.path.dirname(channels_redis_fast.__file__)})",
        "channels_redis": version_of("channels-redis"),
        "redis_py": version_of("redis"),
        "hiredis": version_of("hiredis"),
        "platform": platform.platform(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }


# --------------------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------------------


def run_one(name: str, spec: wl.LayerSpec, servers: list, args) -> dict:
    cls = wl.WORKLOADS[name]
    for server in servers:
        server.flushall()
    workload = cls(spec, [s.url for s in servers])
    probe = (wl.NullProbe() if spec.kind == "nats"
             else wl.CommandStats([s.client() for s in servers[: cls.shards]]))
    # The slow anchor gets the same time; it simply delivers fewer messages.
    limit = args.warmup + args.duration + 60
    coro = wl.run_timed(workload, duration=args.duration, warmup=args.warmup, probe=probe)
    started = time.perf_counter()
    try:
        result = loops.run(asyncio.wait_for(coro, limit), args.loop)
    except Exception as exc:  # noqa: BLE001 - report and go on with the next run
        result = {"error": f"{type(exc).__name__}: {exc}", "rate": None}
    result["wall_s"] = time.perf_counter() - started
    return result


def median_run(runs: list[dict]) -> dict:
    """The run with the median rate, with every run's rate beside it."""
    ok = [r for r in runs if not r.get("error")]
    if not ok:
        return runs[0]
    ordered = sorted(ok, key=lambda r: r["rate"])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["rates"] = [r["rate"] for r in ok]
    return chosen


def progress_line(name: str, spec: wl.LayerSpec, result: dict, repeat: int = 0, repeats: int = 1) -> str:
    head = f"  {name:<17} {spec.name:<12}" + (f" {repeat + 1}/{repeats}" if repeats > 1 else "")
    if result.get("error"):
        return f"{head} ERROR {result['error']}"
    parts = [f"{rp.fmt_rate(result['rate']):>8} msg/s"]
    lat = result.get("latency") or {}
    if lat:
        parts.append(f"p50 {lat['p50_ms']:7.2f} ms  p99 {lat['p99_ms']:7.2f} ms")
    cpu = result.get("client_cpu")
    if cpu is not None:
        parts.append(f"client cpu {cpu:4.0%}")
    cpd = result.get("commands_per_delivery")
    if cpd is not None:
        parts.append(f"{cpd:6.2f} cmds/delivery")
    if result.get("lost"):
        parts.append(f"LOST {result['lost']}")
    if result.get("channel_full"):
        parts.append(f"ChannelFull x{result['channel_full']}")
    parts.append(f"({result['deliveries']:,} in {result['seconds']:.1f} s; wall {result['wall_s']:.1f} s)")
    return head + "  ".join(parts)


def memory_child(layer: str, url: str, channels: int) -> None:
    """Churn in this (child) process; progress and then the result as JSON lines on stdout."""
    spec = next(s for s in wl.ALL_LAYERS if s.name == layer)
    sample_every = max(1, channels // 20)
    report_every = max(1, channels // 10)

    def on_sample(done: int, rss_mb: float, seconds: float) -> None:
        if done % report_every == 0 or done == channels:
            print(json.dumps({"progress": done, "rss_mb": rss_mb, "seconds": seconds}), flush=True)

    result = asyncio.run(wl.churn(spec, url, channels, sample_every, on_sample=on_sample))
    print(json.dumps(result), flush=True)


def run_memory(specs: list[wl.LayerSpec], url: str, channels: int) -> dict:
    """One child process per layer, run side by side (it is RSS we compare, not speed).

    Each child's progress is logged as it comes, so a slow churn is seen to move.
    """
    timeout = 600

    def child(spec: wl.LayerSpec) -> dict:
        cmd = [sys.executable, os.path.abspath(__file__), "--memory-child", spec.name, url, str(channels)]
        # stderr to a file: a chatty child must not block on a pipe nobody reads yet.
        errors = tempfile.TemporaryFile("w+")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errors, text=True)
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        last = None
        try:
            for line in proc.stdout:
                try:
                    last = json.loads(line)
                except ValueError:
                    continue
                if "progress" in last:
                    log(f"  memory   {spec.name:<12} {last['progress']:>9,}/{channels:,} channels  "
                        f"RSS {last['rss_mb']:6.1f} MB  {last['seconds']:6.1f} s")
            proc.wait()
            errors.seek(0)
            stderr = errors.read()
        finally:
            killer.cancel()
            errors.close()
        if proc.returncode != 0:
            why = f"timed out after {timeout} s" if proc.returncode == -9 else (
                stderr.strip().splitlines()[-1:] or ["exit status %d" % proc.returncode])[0]
            return {"layer": spec.name, "error": why}
        if not last or "layer" not in last:
            return {"layer": spec.name, "error": "the child printed no result"}
        return last

    with ThreadPoolExecutor(len(specs)) as pool:
        results = list(pool.map(child, specs))
    return {r["layer"]: r for r in results}


def memory_line(layer: str, m: dict) -> str:
    if m.get("error"):
        return f"  memory   {layer:<12} ERROR {m['error']}"
    trace = " ".join(f"{mb:.0f}" for _, mb in m["samples_mb"][:: max(1, len(m["samples_mb"]) // 10)])
    growth = m.get("growth_second_half_mb")
    return (f"  memory   {layer:<12} RSS {m['start_mb']:.1f} -> {m['end_mb']:.1f} MB "
            f"(second half {'?' if growth is None else f'+{growth:.1f}'} MB) in {m['seconds']:.1f} s; "
            f"samples MB: {trace}")


# --------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------


def side_tables(results: dict, layers: list[str]) -> str:
    """Latency and Redis commands per delivery, as plain text under the rate table."""
    lines = []
    if "latency" in results:
        lines.append("send-to-receive latency under the stream load (16 senders, closed loop, 16 in flight):")
        for name in layers:
            r = results["latency"].get(name)
            if r and not r.get("error") and r.get("latency"):
                lat = r["latency"]
                lines.append(f"  {rp.COLUMNS.get(name, name):<22} p50 {lat['p50_ms']:8.3f} ms   "
                             f"p99 {lat['p99_ms']:8.3f} ms")
        lines.append("")
    counted = [w for w, by_layer in results.items()
               if any((by_layer.get(n) or {}).get("commands_per_delivery") is not None for n in layers)]
    if not counted:
        return "\n".join(lines)
    lines.append("Redis commands per delivery (INFO commandstats, including the commands Lua scripts call):")
    lines.append(f"{'':<17}" + "".join(f"{rp.COLUMNS.get(n, n):>23}" for n in layers))
    for workload in counted:
        by_layer, row = results[workload], f"{workload:<17}"
        for name in layers:
            cpd = (by_layer.get(name) or {}).get("commands_per_delivery")
            row += f"{('-' if cpd is None else f'{cpd:.2f}'):>23}"
        lines.append(row)
    return "\n".join(lines)


def measured_lines(data: dict) -> list[str]:
    out = []
    for workload, m in (data.get("measured") or {}).items():
        settings = m.get("settings") or {}
        what = (f"{settings.get('memory_channels', '?'):,} channels" if workload == "memory"
                else rp.settings_text(settings))
        out.append(f"  {workload:<17} {m.get('at', '?')}  {what}  ({', '.join(m.get('layers') or [])})")
    return out


def report(data: dict, out: str, measured_now: list[str], args) -> int:
    """Print the table and verdicts, write table.rst, results.png (and README); the exit status."""
    order = [*wl.WORKLOADS, *fanout.WORKLOAD_NAMES, "memory"]
    results = data.get("results") or {}
    machine = data.get("machine") or {}
    block = rp.rst(data, order)
    log("\n" + "=" * 100)
    log(f"machine: {machine.get('cpu')}, {machine.get('cores')} cores, {machine.get('python')}, "
        f"redis-server {machine.get('redis_server')}, implementation: {machine.get('implementation')}")
    log("when each workload was measured (results.json keeps the rest when a run measures some):")
    for line in measured_lines(data):
        log(line)
    log("")
    if any(w not in rp.SIDE_WORKLOADS for w in results):
        log(block)
    else:
        log("no rates stored yet: the table is empty")
    layers = [n for n in rp.COLUMNS if any(n in by_layer for by_layer in results.values())]
    side = side_tables(results, layers) if results else ""
    if side:
        log(side)
    cluster_table = cl.table(data.get("cluster"))
    if cluster_table:
        log("\n" + cluster_table)
        with open(os.path.join(out, "cluster.rst"), "w") as fh:
            fh.write(cluster_table)
    side = fanout.side_text(results, rp.COLUMNS)
    if side:
        log(side)
    for layer, m in (data.get("memory") or {}).items():
        log(memory_line(layer, m))

    table_path = os.path.join(out, "table.rst")
    with open(table_path, "w") as fh:
        fh.write(block)
    png_path = os.path.join(out, "results.png")
    try:
        chart = png_path if rp.chart(data, png_path, order) else "no chart (no results)"
    except Exception as exc:  # noqa: BLE001 - the table and JSON are what matter
        chart = f"no chart ({type(exc).__name__}: {exc})"
    written = ([] if args.render_only else [os.path.join(out, "results.json")]) + [table_path, chart]
    log(f"\nwrote {', '.join(written)}")
    if args.readme:
        with open(args.readme) as fh:
            readme = fh.read()
        try:
            if not any(w not in rp.SIDE_WORKLOADS for w in results):
                raise ValueError("no rates stored, and an empty table would replace its table")
            readme = rp.put_in_readme(readme, block)
        except ValueError as exc:
            log(f"{args.readme} not changed: {exc}")
            return 2
        with open(args.readme, "w") as fh:
            fh.write(readme)
        log(f"copied the table into {args.readme}")

    measured_now = [n for w in measured_now for n in (fanout.WORKLOAD_NAMES if w == "fanout" else [w])]
    failures = rp.missed(results, [w for w in measured_now if w in results])
    failures += [f"memory: {layer} failed: {m['error']}" for layer, m in (data.get("memory") or {}).items()
                 if "memory" in measured_now and m.get("error")]
    if cl.NAME in measured_now:
        failures += cl.missed(data.get("cluster"))
    judged = [w for w in measured_now if w in results or w in ("memory", cl.NAME)]
    if not judged:
        log("\nverdict: nothing to judge")
        return 0
    if not failures:
        log(f"\nverdict: no target missed, no layer failed ({', '.join(judged)})")
        return 0
    log(f"\nverdict: {len(failures)} MISSED ({', '.join(judged)}):")
    for line in failures:
        log(f"  {line}")
    if args.report_only:
        log("(--report-only: exit status 0 all the same)")
        return 0
    return 1


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="workloads:\n" + "\n".join(
                                         f"  {n:<17} {cls.description}" for n, cls in wl.WORKLOADS.items())
                                     + f"\n  {cl.NAME:<17} {cl.DESCRIPTION}"
                                     + "\n  memory            RSS while channels are created, used once and "
                                       "abandoned (core layers)"
                                     + "\n  dense             many idle consumers in one process (bench/dense.py)"
                                     + "\n  fanout            " + fanout.ROWS[0].describe() + "; the other fan-out "
                                       "rows and group_send latency (bench/fanout.py)")
    parser.add_argument("--quick", action="store_true", help="short runs (1 s) and a 20k-channel churn")
    parser.add_argument("--workloads", default="", help="comma list (default all, listed below); the results "
                        "of the others stay in results.json")
    parser.add_argument("--layers", default="", help="comma list of layers (default: every importable one)")
    parser.add_argument("--out", default="bench-results",
                        help="directory for results.json, table.rst and results.png")
    parser.add_argument("--duration", type=float, default=None, help="measured seconds per run (default 1.2)")
    parser.add_argument("--repeat", type=int, default=None,
                        help="runs per layer and workload, the median reported (default 5; --quick 1)")
    parser.add_argument("--warmup", type=float, default=None, help="warm-up seconds per run (default 0.5)")
    parser.add_argument("--memory-channels", type=int, default=None, help="channels in the churn (default 100000)")
    parser.add_argument("--loop", choices=loops.CHOICES, default="asyncio",
                        help="event loop for every layer (uvloop: as uvicorn runs it by default)")
    parser.add_argument("--fanout-runs", type=int, default=None,
                        help="runs of each fan-out row per layer, interleaved (default 3; --quick 1)")
    parser.add_argument("--report-only", action="store_true",
                        help="exit 0 even when a target is missed (by default a miss exits 1)")
    parser.add_argument("--render-only", action="store_true",
                        help="measure nothing: print the table and draw the chart from the stored results.json")
    parser.add_argument("--readme", metavar="PATH", nargs="?", const="README.rst", default=None,
                        help="also copy the table into PATH (default README.rst) between its bench-table markers")
    cl.add_arguments(parser)
    parser.add_argument("--memory-child", nargs=3, metavar=("LAYER", "URL", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.duration is None:
        # Many short runs rather than a few long ones: this class of shared machine
        # changes speed by up to 2x for seconds at a time.
        args.duration = 1.0 if args.quick else 1.2
    if args.repeat is None:
        args.repeat = 1 if args.quick else 5
    args.repeat = max(1, args.repeat)
    if args.warmup is None:
        args.warmup = 0.3 if args.quick else 0.5
    if args.memory_channels is None:
        args.memory_channels = 20_000 if args.quick else 100_000
    if args.fanout_runs is None:
        args.fanout_runs = 1 if args.quick else 3
    return args


def measure(wanted: list[str], layers: list[wl.LayerSpec], skipped: dict, args,
            nats: peers.NatsServer | None = None) -> dict:
    """Run the wanted workloads on private Redis servers; results in the shape of rp.empty()."""
    from channels_redis_fast.testing import RedisServer

    shards = max([wl.WORKLOADS[w].shards for w in wanted if w in wl.WORKLOADS] or [1])
    servers = [RedisServer() for _ in range(shards)]
    new = rp.empty()
    try:
        machine = machine_info(servers[0].client().info("server")["redis_version"])
        machine["loop"] = loops.version(args.loop)
        if nats is not None:
            machine.update(nats_server=nats.version, channels_nats=version_of("channels-nats"))
        settings = {"duration_s": args.duration, "warmup_s": args.warmup, "repeat": args.repeat,
                    "reported": "the run with the median rate; 'rates' lists every run's",
                    "capacity": wl.BENCH_CAPACITY,
                    "channel_full_policy": "counted, retried after 1 ms, same for every layer",
                    "memory_channels": args.memory_channels}
        new.update(machine=machine, layers={s.name: s.label for s in layers}, skipped_layers=skipped)
        log("=" * 100)
        log(f"machine: {machine['cpu']}, {machine['cores']} cores, {machine['python']}, "
            f"redis-server {machine['redis_server']}, implementation: {machine['implementation']}")
        log(f"packages: channels_redis_fast {machine['channels_redis_fast']}; channels_redis "
            f"{machine['channels_redis']}; redis-py {machine['redis_py']}; hiredis {machine['hiredis']}")
        log(f"event loop: {machine['loop']}"
            + (f"; channels-nats {machine['channels_nats']} on nats-server {machine['nats_server']} "
               f"at {nats.url}" if nats is not None else ""))
        log(f"layers: {', '.join(s.name for s in layers)}"
            + "".join(f"; skipped {n} ({why})" for n, why in skipped.items()))
        log(f"runs: {args.warmup} s warm-up + {args.duration} s measured, {args.repeat}x per layer per "
            f"workload (round the layers; the median is reported); "
            f"private Redis on {', '.join(str(s.port) for s in servers)}")
        log("=" * 100)
        timed = [w for w in wanted if w in wl.WORKLOADS]
        for index, name in enumerate(timed, 1):
            cls = wl.WORKLOADS[name]
            specs = [s for s in layers if (s.kind != "pubsub" or cls.pubsub_ok) and peers.runs(s, cls)]
            log(f"[{index}/{len(timed)}] {name}: {cls.description}")
            runs: dict[str, list[dict]] = {s.name: [] for s in specs}
            # Repetitions go round the layers, so a slow spell of this shared machine
            # hits every layer alike, and the median run of each layer is reported.
            for repeat in range(args.repeat):
                for spec in specs:
                    done = runs[spec.name]
                    if done and (done[0].get("error") or not done[0]["rate"]):
                        continue  # failed or delivered nothing: once is enough
                    result = run_one(name, spec, servers, args)
                    done.append(result)
                    log(progress_line(name, spec, result, repeat, args.repeat))
            at = rp.now()
            new["results"][name] = {layer: {**median_run(done), "measured_at": at} for layer, done in runs.items()}
            new["measured"][name] = {"at": at, "settings": settings, "machine": machine, "layers": list(runs)}
            new["workloads"][name] = cls.description

        if cl.NAME in wanted:
            new["cluster"] = cl.measure(args, servers[0], log, progress_line, median_run)

        if "memory" in wanted:
            mem_specs = [s for s in layers if s.kind == "core"]
            log(f"\nmemory: {args.memory_channels:,} channels created, sent one message, received, "
                f"abandoned ({', '.join(s.name for s in mem_specs)}, one child process each, side by side; "
                f"a line per tenth)")
            servers[0].flushall()
            memory = run_memory(mem_specs, servers[0].url, args.memory_channels)
            at = rp.now()
            for layer, m in memory.items():
                log(memory_line(layer, m))
            new["memory"] = {layer: {**m, "measured_at": at} for layer, m in memory.items()}
            new["measured"]["memory"] = {"at": at, "settings": settings, "machine": machine,
                                         "layers": list(memory)}

        if "fanout" in wanted:
            log(f"\nfanout: {len(fanout.ROWS)} fan-out rows and group_send latency, "
                f"{args.fanout_runs} run(s) round the layers (one publishing process, receivers in others)")
            rows = fanout.measure(layers, servers[0], nats.url if nats else "", nats.version if nats else "?",
                                  args.loop, args.fanout_runs, log=log)
            at = rp.now()
            fan_settings = {**settings, "repeat": args.fanout_runs, "duration_s": "each row's sends",
                            "capacity": fanout.CAPACITY, "loop": args.loop}
            for name, by_layer in rows.items():
                new["results"][name] = {layer: {**r, "measured_at": at} for layer, r in by_layer.items()}
                new["measured"][name] = {"at": at, "settings": fan_settings, "machine": machine,
                                         "layers": list(by_layer)}
                new["workloads"][name] = next((r.describe() for r in fanout.ROWS if r.name == name),
                                              "time of one group_send to 100, 1,000, 5,000 members")
    finally:
        for server in servers:
            server.close()
    return new


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.memory_child:
        layer, url, n = args.memory_child
        memory_child(layer, url, int(n))
        return 0

    os.makedirs(args.out, exist_ok=True)
    json_path = os.path.join(args.out, "results.json")
    stored, warning = rp.load(json_path)
    if warning:
        log(warning)
    if args.render_only:
        judged = [*stored["results"], *(["memory"] if stored["memory"] else []),
                  *([cl.NAME] if stored.get("cluster") else [])]
        return report(stored, args.out, judged, args)

    wanted = [w.strip() for w in args.workloads.split(",") if w.strip()] or [*wl.WORKLOADS, cl.NAME, "memory", "fanout", "dense"]
    dense_status = run_dense(args) if "dense" in wanted else 0  # bench/dense.py: its own table
    wanted = [w for w in wanted if w != "dense"]
    if not wanted:
        return dense_status
    unknown = [w for w in wanted if w not in wl.WORKLOADS and w not in ("memory", "fanout", cl.NAME)]
    if unknown:
        log(f"unknown workloads: {unknown}; choose from {list(wl.WORKLOADS)}, {cl.NAME}, memory, fanout and dense")
        return 2
    layers, skipped = wl.available_layers()
    if args.layers:
        keep = {n.strip() for n in args.layers.split(",")}
        layers = [s for s in layers if s.name in keep]
    nats = peers.start(layers, skipped, wanted=not args.layers or peers.NAME in keep)
    try:
        data = rp.merge(stored, measure(wanted, layers, skipped, args, nats))
    finally:
        if nats is not None:
            nats.close()
    data.update(targets=rp.TARGETS, pubsub_targets=rp.PUBSUB_TARGETS, verdicts=rp.verdicts(data["results"]))
    with open(json_path, "w") as fh:
        json.dump(data, fh, indent=2)
    return report(data, args.out, wanted, args) or dense_status


def run_dense(args) -> int:
    """The dense-process rows (bench/dense.py, issue 24): fresh child processes of their own."""
    import dense

    return dense.main([*(["--quick"] if args.quick else []), *(["--report-only"] if args.report_only else []),
                       "--out", args.out])


if __name__ == "__main__":
    sys.exit(main())
