"""The cluster rows of ``bench/run.py``: our core layer on a Redis Cluster beside one Redis.

    python bench/run.py --workloads cluster            # just these rows
    python bench/run.py --workloads cluster --quick

The stream, many_consumers and group_fanout workloads (bench/workloads.py, unchanged) run
on one private Redis and on a private 3-primary Redis Cluster (``RedisCluster``, no replicas
by default: a replica's replication stream costs CPU on the machine that also runs the
client, which is not what a deployment's separate machines pay), one run on each in turn,
so a slow spell of a shared machine hits both alike. Each side's median run is reported,
and the verdict against ``TARGET`` judges the median of the paired ratios (each cluster run
over the one-Redis run beside it), which a slow spell that spans a pair cancels out of.

Nothing here knows the layer's internals: the cluster side is the public ``hosts`` option
``[{"cluster": [startup URLs]}]``. The results live under ``"cluster"`` in results.json.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import statistics
import time
from typing import Any, Callable

import report as rp
import workloads as wl

#: The workloads measured on both.
WORKLOADS = ("stream", "many_consumers", "group_fanout")
#: Wanted: cluster throughput at least this share of one Redis's (issue 15).
TARGET = 0.8
PRIMARIES = 3
#: A ratio of two single runs on a shared 2-core machine is noise: --quick gets this many.
MIN_REPEAT = 3
#: The name ``--workloads`` knows these rows by.
NAME = "cluster"
DESCRIPTION = (f"{', '.join(WORKLOADS)} by this core layer on one Redis and on a {PRIMARIES}-primary "
               f"Redis Cluster; target cluster >= {TARGET}x")


@dataclasses.dataclass(frozen=True)
class ClusterSpec(wl.LayerSpec):
    """Our core layer on a cluster: the URLs it is made with are replaced by the startup nodes."""

    startup: tuple[str, ...] = ()

    def make(self, urls: list[str], **options: Any) -> Any:
        return self.load()(hosts=[{"cluster": list(self.startup)}], **options)


def add_arguments(parser: Any) -> None:
    parser.add_argument("--cluster-replicas", type=int, default=0,
                        help="replicas per primary of the cluster rows' Redis Cluster (default 0)")


def _run(name: str, spec: wl.LayerSpec, nodes: list, args: Any) -> dict:
    """One timed run of workload ``name``; ``nodes``: the servers holding its keys."""
    for node in nodes:
        node.flushall()
    workload = wl.WORKLOADS[name](spec, [node.url for node in nodes])
    probe = wl.CommandStats([node.client() for node in nodes])
    coro = wl.run_timed(workload, duration=args.duration, warmup=args.warmup, probe=probe)
    started = time.perf_counter()
    try:
        result = asyncio.run(asyncio.wait_for(coro, args.warmup + args.duration + 60))
    except Exception as exc:  # noqa: BLE001 - report it and go on
        result = {"error": f"{type(exc).__name__}: {exc}", "rate": None}
    result["wall_s"] = time.perf_counter() - started
    return result


def measure(
    args: Any,
    single: Any,
    log: Callable[[str], None],
    line: Callable[..., str],
    median: Callable[[list[dict]], dict],
) -> dict:
    """The cluster rows: ``single`` is run.py's private Redis; ``line`` and ``median`` are
    run.py's progress line and median pick."""
    from channels_redis_fast.testing import RedisCluster

    repeat = max(args.repeat, MIN_REPEAT)
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    cluster = RedisCluster(PRIMARIES, args.cluster_replicas)
    try:
        primaries = cluster.primaries()
        topology = (f"{PRIMARIES} primaries"
                    + (f" + {args.cluster_replicas} replica(s) each" if args.cluster_replicas else ", no replicas"))
        log(f"\n[cluster] {', '.join(WORKLOADS)} by this core layer on one Redis (port {single.port}) and on a "
            f"Redis Cluster of {topology} (ports {', '.join(str(n.port) for n in primaries)}; started in "
            f"{time.monotonic() - started:.1f} s); {repeat} runs each, in turn")
        sides = {
            "single": (wl.OURS_CORE, [single]),
            "cluster": (ClusterSpec(**{**dataclasses.asdict(wl.OURS_CORE), "name": "ours-cluster",
                                       "label": "channels_redis_fast core on a cluster"},
                                    startup=tuple(cluster.urls)), primaries),
        }
        rows: dict[str, dict] = {}
        for name in WORKLOADS:
            runs: dict[str, list[dict]] = {side: [] for side in sides}
            for index in range(repeat):
                for side, (spec, nodes) in sides.items():
                    result = _run(name, spec, nodes, args)
                    runs[side].append(result)
                    log(line(name, spec, result, index, repeat))
            rows[name] = {side: median(done) for side, done in runs.items()}
            pairs = [b["rate"] / a["rate"] for a, b in zip(runs["single"], runs["cluster"])
                     if not a.get("error") and not b.get("error") and a.get("rate") and b.get("rate")]
            rows[name]["paired"] = statistics.median(pairs) if pairs else None
            ratio = _ratio(rows[name])
            log(f"  {name:<17} cluster / one Redis (median of paired runs): {'-' if ratio is None else f'{ratio:.2f}x'} "
                f"(target {TARGET}x)")
        # The machine's 1-minute load around the rows: on a shared 2-core machine a load far
        # above 2 means the client got a slice of a core, and the ratios are noise.
        load = [round(load_before, 1), round(os.getloadavg()[0], 1)]
        log(f"  load average (1 min) before and after the cluster rows: {load[0]}, {load[1]}")
        return {"at": rp.now(), "topology": topology, "load": load, "primaries": PRIMARIES,
                "replicas": args.cluster_replicas, "repeat": repeat, "duration_s": args.duration,
                "target": TARGET, "rows": rows}
    finally:
        cluster.close()


# ------------------------------------------------------------------------------ report


def _ratio(row: dict) -> float | None:
    """The median paired ratio (the ratio of the medians for rows stored without one)."""
    one, many = (row.get("single") or {}), (row.get("cluster") or {})
    if one.get("error") or many.get("error") or not one.get("rate") or not many.get("rate"):
        return None
    paired = row.get("paired")
    return paired if paired is not None else many["rate"] / one["rate"]


def missed(section: dict | None) -> list[str]:
    """One line per row that missed the target or failed."""
    lines = []
    for name, row in ((section or {}).get("rows") or {}).items():
        for side in ("single", "cluster"):
            error = (row.get(side) or {}).get("error")
            if error:
                lines.append(f"cluster rows: {name} on {side} failed: {error}")
        ratio = _ratio(row)
        if ratio is not None and ratio < TARGET:
            lines.append(f"cluster rows: {name}: cluster >= {TARGET}x one Redis MISSED (got {ratio:.2f}x)")
    return lines


def table(section: dict | None) -> str:
    """The cluster rows as a reStructuredText simple table, with a caption line."""
    rows = (section or {}).get("rows") or {}
    if not rows:
        return ""
    head = ("workload", "one Redis", f"cluster ({section['topology']})", "paired ratio (target)", "verdict")
    body = []
    for name, row in rows.items():
        ratio = _ratio(row)
        cells = [name]
        for side in ("single", "cluster"):
            r = row.get(side) or {}
            cells.append("ERR" if r.get("error") else rp.fmt_rate(r.get("rate")))
        cells.append(rp.fmt_ratio(ratio, TARGET) if ratio is not None else rp.DASH)
        cells.append(rp.DASH if ratio is None else "met" if ratio >= TARGET else "MISSED")
        body.append(cells)
    widths = [max(len(r[c]) for r in [list(head), *body]) for c in range(len(head))]
    rule = "  ".join("=" * w for w in widths)

    def fmt(cells: list[str] | tuple[str, ...], header: bool = False) -> str:
        return "  ".join(c.ljust(w) if header or i in (0, len(cells) - 1) else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    caption = (f"Cluster rows ({section.get('at', '?')}): this core layer on one Redis and on a Redis "
               f"Cluster of {section['topology']}, {section.get('repeat')} runs of {section.get('duration_s')} s "
               f"each in turn; median deliveries per second, and the median of the paired ratios"
               + (f" (load average {section['load'][0]} before, {section['load'][1]} after)"
                  if section.get("load") else "") + ":")
    return "\n".join([caption, "", rule, fmt(head, True), rule, *(fmt(r) for r in body), rule]) + "\n"
