"""Side-by-side end-to-end benchmark: channels_redis_fast against channels_redis 4.3.

    python bench/run.py                      # everything: 5 runs of ~2 s per layer per workload
    python bench/run.py --quick              # one shorter run each, smaller churn
    python bench/run.py --workloads stream,group_fanout --out /tmp/bench

All layers run in this one process, one after another, on private Redis servers started
here (and stopped at exit). Each workload runs round the layers ``--repeat`` times and
reports each layer's median run: a shared 2-core machine changes speed by up to 2x for
seconds at a time. Results: a table on stdout, ``results.json`` and ``results.png`` in
``--out`` (default ``bench-results/``). The memory churn runs in one child process per
layer, so each gets a clean RSS.
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
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata

import workloads as wl

# Ratio of our core layer to channels_redis core that each workload should reach.
TARGETS = {
    "roundtrip": 3,
    "stream": 30,
    "many_consumers": 30,
    "group_fanout": 8,
    "worker_queue": 8,
    "stream_encrypted": 10,
}
# Ratio of our pub/sub layer to channels_redis's pub/sub layer (issue "pub/sub").
PUBSUB_TARGETS = {"roundtrip": 2, "stream": 2, "many_consumers": 2, "group_fanout": 2}


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


def fmt_rate(rate: float | None) -> str:
    if rate is None:
        return "-"
    if rate >= 100_000:
        return f"{rate / 1000:,.0f}k"
    if rate >= 10_000:
        return f"{rate / 1000:,.1f}k"
    return f"{rate:,.0f}"


def run_one(name: str, spec: wl.LayerSpec, servers: list, args) -> dict:
    cls = wl.WORKLOADS[name]
    for server in servers:
        server.flushall()
    workload = cls(spec, [s.url for s in servers])
    probe = wl.CommandStats([s.client() for s in servers[: cls.shards]])
    # The slow anchor gets the same time; it simply delivers fewer messages.
    limit = args.warmup + args.duration + 60
    coro = wl.run_timed(workload, duration=args.duration, warmup=args.warmup, probe=probe)
    started = time.perf_counter()
    try:
        result = asyncio.run(asyncio.wait_for(coro, limit))
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
    parts = [f"{fmt_rate(result['rate']):>8} msg/s"]
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
    spec = next(s for s in wl.ALL_LAYERS if s.name == layer)
    sample_every = max(1, channels // 20)
    result = asyncio.run(wl.churn(spec, url, channels, sample_every))
    print(json.dumps(result))


def run_memory(specs: list[wl.LayerSpec], url: str, channels: int) -> dict:
    """One child process per layer, run side by side (it is RSS we compare, not speed)."""

    def child(spec: wl.LayerSpec) -> dict:
        cmd = [sys.executable, os.path.abspath(__file__), "--memory-child", spec.name, url, str(channels)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired:
            return {"layer": spec.name, "error": "timed out after 600 s"}
        if proc.returncode != 0:
            return {"layer": spec.name, "error": proc.stderr.strip().splitlines()[-1:] or ["?"]}
        return json.loads(proc.stdout.strip().splitlines()[-1])

    with ThreadPoolExecutor(len(specs)) as pool:
        results = list(pool.map(child, specs))
    return {r["layer"]: r for r in results}


# --------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------


def ratio(results: dict, workload: str, layer: str, anchor: str) -> float | None:
    mine = (results.get(workload, {}).get(layer) or {}).get("rate")
    base = (results.get(workload, {}).get(anchor) or {}).get("rate")
    if not mine or not base:
        return None
    return mine / base


def table(results: dict, layers: list[wl.LayerSpec]) -> tuple[str, list[dict]]:
    names = [s.name for s in layers]
    lines = []
    header = f"{'workload':<17}" + "".join(f"{n:>13}" for n in names)
    header += f"{'ours/cr-core':>14}{'target':>8}{'ours/cr-pubsub':>16}{'pubsub/cr-pubsub':>18}  verdict"
    lines.append(header)
    lines.append("-" * len(header))
    verdicts = []
    for workload, by_layer in results.items():
        row = f"{workload:<17}"
        for n in names:
            r = by_layer.get(n)
            row += f"{'n/a' if r is None else ('ERR' if r.get('error') else fmt_rate(r['rate'])):>13}"
        vs_core = ratio(results, workload, wl.OURS_CORE.name, wl.ANCHOR)
        vs_pubsub = ratio(results, workload, wl.OURS_CORE.name, wl.CR_PUBSUB.name)
        target = TARGETS.get(workload)
        row += f"{(f'{vs_core:.1f}x' if vs_core else '-'):>14}"
        row += f"{(f'>={target}x' if target else '-'):>8}"
        row += f"{(f'{vs_pubsub:.2f}x' if vs_pubsub else '-'):>16}"
        ours_ps = ratio(results, workload, wl.OURS_PUBSUB.name, wl.CR_PUBSUB.name)
        row += f"{(f'{ours_ps:.2f}x' if ours_ps else '-'):>18}"
        checks = []
        if target is not None and vs_core is not None:
            checks.append(("core target", vs_core >= target))
        if vs_pubsub is not None:
            checks.append((">= cr-pubsub", vs_pubsub >= 1.0))
        if ours_ps is not None:
            wanted = PUBSUB_TARGETS.get(workload, 1)
            checks.append((f"our pubsub >= {wanted}x cr-pubsub", ours_ps >= wanted))
        verdict = ", ".join(f"{label} {'met' if ok else 'MISSED'}" for label, ok in checks) or "-"
        row += f"  {verdict}"
        lines.append(row)
        verdicts.append({"workload": workload, "ours_vs_cr_core": vs_core, "target": target,
                         "ours_vs_cr_pubsub": vs_pubsub, "ours_pubsub_vs_cr_pubsub": ours_ps,
                         "checks": dict(checks)})
    if "latency" in results:
        lines.append("")
        lines.append("send-to-receive latency under the stream load (16 senders, closed loop, 16 in flight):")
        for n in names:
            r = results["latency"].get(n)
            if r and not r.get("error") and r.get("latency"):
                lat = r["latency"]
                lines.append(f"  {n:<12} p50 {lat['p50_ms']:8.3f} ms   p99 {lat['p99_ms']:8.3f} ms")
    lines.append("")
    lines.append("Redis commands per delivery (INFO commandstats, including the commands Lua scripts call):")
    lines.append(f"{'':<17}" + "".join(f"{n:>13}" for n in names))
    for workload, by_layer in results.items():
        row = f"{workload:<17}"
        for n in names:
            cpd = (by_layer.get(n) or {}).get("commands_per_delivery")
            row += f"{('-' if cpd is None else f'{cpd:.2f}'):>13}"
        lines.append(row)
    return "\n".join(lines), verdicts


def chart(results: dict, layers: list[wl.LayerSpec], machine: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = list(results)
    names = [s.name for s in layers]
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(max(8, 1.5 * len(workloads)), 5))
    for i, name in enumerate(names):
        xs, ys = [], []
        for j, workload in enumerate(workloads):
            rate = (results[workload].get(name) or {}).get("rate")
            if rate:
                xs.append(j + (i - (len(names) - 1) / 2) * width)
                ys.append(rate)
        ax.bar(xs, ys, width, label=name)
    ax.set_yscale("log")
    ax.set_xticks(range(len(workloads)))
    ax.set_xticklabels(workloads, rotation=20, ha="right")
    ax.set_ylabel("messages (deliveries) per second, log scale")
    ax.set_title(f"channel layers, end to end - {machine['cpu']}, {machine['cores']} cores, "
                 f"{machine['python']}, Redis {machine['redis_server']}, {machine['implementation']}",
                 fontsize=9)
    ax.legend()
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short runs (1 s) and a 20k-channel churn")
    parser.add_argument("--workloads", default="", help=f"comma list; default all: {','.join(wl.WORKLOADS)}"
                        ",memory")
    parser.add_argument("--layers", default="", help="comma list of layers (default: every importable one)")
    parser.add_argument("--out", default="bench-results", help="directory for results.json and results.png")
    parser.add_argument("--duration", type=float, default=None, help="measured seconds per run (default 1.2)")
    parser.add_argument("--repeat", type=int, default=None,
                        help="runs per layer and workload, the median reported (default 5; --quick 1)")
    parser.add_argument("--warmup", type=float, default=None, help="warm-up seconds per run (default 0.5)")
    parser.add_argument("--memory-channels", type=int, default=None, help="channels in the churn (default 100000)")
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
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.memory_child:
        layer, url, n = args.memory_child
        memory_child(layer, url, int(n))
        return 0

    from channels_redis_fast.testing import RedisServer

    wanted = [w.strip() for w in args.workloads.split(",") if w.strip()] or [*wl.WORKLOADS, "memory"]
    unknown = [w for w in wanted if w not in wl.WORKLOADS and w != "memory"]
    if unknown:
        log(f"unknown workloads: {unknown}; choose from {list(wl.WORKLOADS)} and memory")
        return 2
    layers, skipped = wl.available_layers()
    if args.layers:
        keep = {n.strip() for n in args.layers.split(",")}
        layers = [s for s in layers if s.name in keep]
    os.makedirs(args.out, exist_ok=True)

    shards = max([wl.WORKLOADS[w].shards for w in wanted if w in wl.WORKLOADS] or [1])
    servers = [RedisServer() for _ in range(shards)]
    try:
        machine = machine_info(servers[0].client().info("server")["redis_version"])
        log("=" * 100)
        log(f"machine: {machine['cpu']}, {machine['cores']} cores, {machine['python']}, "
            f"redis-server {machine['redis_server']}, implementation: {machine['implementation']}")
        log(f"packages: channels_redis_fast {machine['channels_redis_fast']}; channels_redis "
            f"{machine['channels_redis']}; redis-py {machine['redis_py']}; hiredis {machine['hiredis']}")
        log(f"layers: {', '.join(s.name for s in layers)}"
            + "".join(f"; skipped {n} ({why})" for n, why in skipped.items()))
        log(f"runs: {args.warmup} s warm-up + {args.duration} s measured, {args.repeat}x per layer per "
            f"workload (round the layers; the median is reported); "
            f"private Redis on {', '.join(str(s.port) for s in servers)}")
        log("=" * 100)
        results: dict = {}
        for name in wanted:
            if name == "memory":
                continue
            cls = wl.WORKLOADS[name]
            specs = [s for s in layers if s.kind != "pubsub" or cls.pubsub_ok]
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
            results[name] = {layer: median_run(done) for layer, done in runs.items()}

        memory = {}
        if "memory" in wanted:
            mem_specs = [s for s in layers if s.kind == "core"]
            log(f"\nmemory: {args.memory_channels:,} channels created, sent one message, received, "
                f"abandoned ({', '.join(s.name for s in mem_specs)}, one child process each, side by side)")
            servers[0].flushall()
            memory = run_memory(mem_specs, servers[0].url, args.memory_channels)
            for layer, m in memory.items():
                if m.get("error"):
                    log(f"  memory   {layer:<12} ERROR {m['error']}")
                    continue
                trace = " ".join(f"{mb:.0f}" for _, mb in m["samples_mb"][:: max(1, len(m["samples_mb"]) // 10)])
                log(f"  memory   {layer:<12} RSS {m['start_mb']:.1f} -> {m['end_mb']:.1f} MB "
                    f"(second half +{m['growth_second_half_mb']:.1f} MB) in {m['seconds']:.1f} s; "
                    f"samples MB: {trace}")

        text, verdicts = table(results, layers)
        log("\n" + "=" * 100)
        log(f"machine: {machine['cpu']}, {machine['cores']} cores, {machine['python']}, "
            f"redis-server {machine['redis_server']}, implementation: {machine['implementation']}")
        log("messages (deliveries) per second, median of the runs; ratios are ours-core over the "
            "other layer, same run\n")
        log(text)
        data = {
            "machine": machine,
            "settings": {"duration_s": args.duration, "warmup_s": args.warmup, "repeat": args.repeat,
                         "reported": "the run with the median rate; 'rates' lists every run's",
                         "capacity": wl.BENCH_CAPACITY,
                         "channel_full_policy": "counted, retried after 1 ms, same for every layer",
                         "memory_channels": args.memory_channels},
            "layers": {s.name: s.label for s in layers},
            "skipped_layers": skipped,
            "workloads": {n: wl.WORKLOADS[n].description for n in results},
            "targets": TARGETS,
            "pubsub_targets": PUBSUB_TARGETS,
            "results": results,
            "verdicts": verdicts,
            "memory": memory,
        }
        json_path = os.path.join(args.out, "results.json")
        with open(json_path, "w") as fh:
            json.dump(data, fh, indent=2)
        png_path = os.path.join(args.out, "results.png")
        try:
            chart(results, layers, machine, png_path)
        except Exception as exc:  # noqa: BLE001 - the table and JSON are what matter
            log(f"chart not written: {exc}")
            png_path = None
        log(f"\nwrote {json_path}" + (f" and {png_path}" if png_path else ""))
    finally:
        for server in servers:
            server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
