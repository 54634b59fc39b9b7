"""What ``bench/run.py`` reports: merged results, the targets' verdicts, the table and the chart.

Nothing here measures or needs Redis, so the stored ``results.json`` can be re-read and
re-reported (``run.py --render-only``) and the logic tested on its own. The table is
reStructuredText; the same text is printed, written to ``table.rst`` and copied into
README.rst, so what the README shows is what the benchmark printed.
"""

from __future__ import annotations

import datetime
import json
import os
import textwrap
from typing import Callable, Iterable

#: Layer keys (as in ``workloads.LayerSpec.name``) in table order, with their column labels.
COLUMNS = {
    "ours-core": "this core",
    "ours-pubsub": "this pubsub",
    "cr-pubsub": "channels_redis pubsub",
    "cr-core": "channels_redis core",
    "nats": "channels-nats",
}
OURS_CORE, OURS_PUBSUB, CR_PUBSUB, CR_CORE = list(COLUMNS)[:4]
#: Peers whose chart legend shows their label from results.json (package and server versions).
VERSIONED = ("nats",)

# Ratio of our core layer to channels_redis core that each workload should reach.
TARGETS = {
    "roundtrip": 3,
    "stream": 30,
    "many_consumers": 30,
    "group_fanout": 8,
    "worker_queue": 8,
    "stream_encrypted": 10,
}
# Ratio of our pub/sub layer to channels_redis's pub/sub layer; 1 where not named.
PUBSUB_TARGETS = {"roundtrip": 2, "stream": 2, "many_consumers": 2, "group_fanout": 2}

#: Workloads reported beside the rate table rather than in it.
SIDE_WORKLOADS = ("latency", "fanout_group_send")
#: Checks beyond the ratio targets, by workload (bench/fanout.py registers its rows' here):
#: each a function of (results, workload) returning check dicts as ``checks`` makes them.
EXTRA_CHECKS: dict[str, Callable[[dict, str], list[dict]]] = {}

#: Why a known layer delivers nothing on a workload (a footnote under the table).
ZERO_NOTES = {
    ("stream_sharded", CR_CORE): (
        "``channels_redis`` sends a direct message with several hosts to the shard of the full "
        "channel name while its receiver reads another one, so nothing arrives unless the two "
        "happen to hash alike (about one channel name in four)."
    ),
}
ZERO_NOTE = "delivered nothing in the measured window."

DASH = "\N{EN DASH}"
WRAP = 95  # README.rst's line length
FORMAT = 2


# --------------------------------------------------------------------------------------
# results.json: load and merge
# --------------------------------------------------------------------------------------


def now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


def empty() -> dict:
    return {"format": FORMAT, "machine": {}, "layers": {}, "skipped_layers": {}, "workloads": {},
            "measured": {}, "results": {}, "memory": {}}


def upgrade(data: dict) -> dict:
    """A results.json written before results were merged, in the merged shape.

    Such a file came from one run: every workload in it was measured at its machine date
    with its settings.
    """
    if data.get("format") == FORMAT:
        return data
    new = empty()
    machine = data.get("machine") or {}
    at = machine.get("date")
    new["machine"] = machine
    for key in ("layers", "skipped_layers", "workloads"):
        new[key] = data.get(key) or {}
    settings = data.get("settings") or {}
    for workload, by_layer in (data.get("results") or {}).items():
        new["results"][workload] = {layer: {**r, "measured_at": at} for layer, r in by_layer.items()}
        new["measured"][workload] = {"at": at, "settings": settings, "machine": machine,
                                     "layers": sorted(by_layer)}
    memory = data.get("memory") or {}
    if memory:
        new["memory"] = {layer: {**r, "measured_at": at} for layer, r in memory.items()}
        new["measured"]["memory"] = {"at": at, "settings": settings, "machine": machine,
                                     "layers": sorted(memory)}
    return new


def load(path: str) -> tuple[dict, str | None]:
    """The stored results (or an empty set), and a warning when the file could not be used.

    An unreadable file is moved aside, never overwritten.
    """
    if not os.path.exists(path):
        return empty(), None
    try:
        with open(path) as fh:
            data = json.load(fh)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return upgrade(data), None
    except (OSError, ValueError) as exc:
        aside = f"{path}.unreadable-{datetime.datetime.now():%Y%m%d-%H%M%S}"
        os.replace(path, aside)
        return empty(), f"{path} could not be read ({exc}); moved to {aside}, starting afresh"


def merge(old: dict, new: dict) -> dict:
    """``old`` with what ``new`` measured put in: per workload and layer, newest wins.

    A run of some workloads (or some layers) replaces just those; everything else stays,
    with the date it was measured. ``new`` has the shape of ``empty()``.
    """
    merged = json.loads(json.dumps(old))  # a deep copy that also checks it is plain JSON
    for key in ("layers", "skipped_layers", "workloads"):
        merged.setdefault(key, {}).update(new.get(key) or {})
    if new.get("machine"):
        merged["machine"] = new["machine"]
    merged.setdefault("measured", {}).update(new.get("measured") or {})
    for workload, by_layer in (new.get("results") or {}).items():
        merged.setdefault("results", {}).setdefault(workload, {}).update(by_layer)
    merged.setdefault("memory", {}).update(new.get("memory") or {})
    if new.get("cluster"):  # bench/cluster.py's rows, replaced as a whole
        merged["cluster"] = new["cluster"]
    merged["format"] = FORMAT
    return merged


# --------------------------------------------------------------------------------------
# verdicts
# --------------------------------------------------------------------------------------


def rate(results: dict, workload: str, layer: str) -> float | None:
    r = (results.get(workload) or {}).get(layer) or {}
    return None if r.get("error") else r.get("rate")


def ratio(results: dict, workload: str, layer: str, anchor: str) -> float | None:
    mine, base = rate(results, workload, layer), rate(results, workload, anchor)
    if not mine or not base:
        return None
    return mine / base


def checks(results: dict, workload: str) -> list[dict]:
    """Every target that applies to a workload's row, with whether it was met.

    A target applies when both layers it compares delivered something; a layer that
    failed is a check of its own, never met.
    """
    found = []
    for layer, r in sorted((results.get(workload) or {}).items()):
        if r.get("error"):
            found.append({"name": f"{layer} ran", "short": f"{layer} failed", "wanted": None,
                          "got": None, "met": False})
    core = ratio(results, workload, OURS_CORE, CR_CORE)
    target = TARGETS.get(workload)
    if core is not None and target is not None:
        found.append({"name": f"this core >= {target}x channels_redis core", "short": "core",
                      "wanted": target, "got": core, "met": core >= target})
    vs_cr_pubsub = ratio(results, workload, OURS_CORE, CR_PUBSUB)
    if vs_cr_pubsub is not None:
        found.append({"name": "this core >= channels_redis pubsub", "short": "core vs cr pubsub",
                      "wanted": 1, "got": vs_cr_pubsub, "met": vs_cr_pubsub >= 1})
    pubsub = ratio(results, workload, OURS_PUBSUB, CR_PUBSUB)
    if pubsub is not None:
        wanted = PUBSUB_TARGETS.get(workload, 1)
        found.append({"name": f"this pubsub >= {wanted}x channels_redis pubsub", "short": "pubsub",
                      "wanted": wanted, "got": pubsub, "met": pubsub >= wanted})
    extra = EXTRA_CHECKS.get(workload)
    if extra is not None:
        found += extra(results, workload)
    return found


def verdicts(results: dict) -> dict[str, list[dict]]:
    return {w: checks(results, w) for w in results if w not in SIDE_WORKLOADS or w in EXTRA_CHECKS}


def missed(results: dict, workloads: Iterable[str]) -> list[str]:
    """One line per check that failed among ``workloads`` (those this run measured)."""
    lines = []
    for workload in workloads:
        for check in checks(results, workload):
            if not check["met"]:
                got = "" if check["got"] is None else f" (got {check['got']:.2f}x)"
                lines.append(f"{workload}: {check['name']} MISSED{got}")
    return lines


# --------------------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------------------


def fmt_rate(value: float | None) -> str:
    """Three significant figures with thousands commas: 9,380 / 21,000 / 971."""
    if value is None:
        return DASH
    if value <= 0:
        return "0"
    digits = len(str(int(value)))
    return f"{round(value, 3 - digits) if digits < 3 else round(value, -(digits - 3)):,.0f}"


def fmt_ratio(value: float | None, target: float | None) -> str:
    if value is None:
        return DASH
    text = f"{value:.1f}x" if value >= 1.95 else f"{value:.2f}x"
    return text if target is None else f"{text} ({target:g}x)"


HEADER = [
    ("workload",),
    ("this core",),
    ("this pubsub",),
    ("channels_redis", "pubsub"),
    ("channels_redis", "core"),
    ("channels-nats",),
    ("core ratio", "(target)"),
    ("pubsub ratio", "(target)"),
    ("verdict",),
]


def rows(results: dict, order: Iterable[str]) -> tuple[list[list[str]], list[str]]:
    """The table's rows and footnotes, workloads in ``order`` first, then any others."""
    order = [w for w in order if w in results]
    order += [w for w in results if w not in order]
    body, notes = [], []
    for workload in order:
        if workload in SIDE_WORKLOADS:
            continue
        by_layer = results[workload]
        row = [workload]
        for layer in COLUMNS:
            r = by_layer.get(layer)
            if r is None:
                row.append(DASH)
            elif r.get("error"):
                row.append("ERR")
            elif not r.get("rate"):
                note = ZERO_NOTES.get((workload, layer), f"{COLUMNS[layer]}: {ZERO_NOTE}")
                if note not in notes:
                    notes.append(note)
                row.append(f"0 [{notes.index(note) + 1}]_")
            else:
                row.append(fmt_rate(r["rate"]))
        found = checks(results, workload)
        core = ratio(results, workload, OURS_CORE, CR_CORE)
        pubsub = ratio(results, workload, OURS_PUBSUB, CR_PUBSUB)
        row.append(fmt_ratio(core, TARGETS.get(workload) if core is not None else None))
        row.append(fmt_ratio(pubsub, PUBSUB_TARGETS.get(workload, 1) if pubsub is not None else None))
        failed = [c["short"] for c in found if not c["met"]]
        row.append(f"MISSED: {', '.join(failed)}" if failed else ("met" if found else DASH))
        body.append(row)
    return body, notes


def rst_table(results: dict, order: Iterable[str] = ()) -> str:
    """A reStructuredText simple table (and its footnotes): names left, numbers right."""
    body, notes = rows(results, order)
    depth = max(len(h) for h in HEADER)
    head = [[h[i] if i < len(h) else "" for h in HEADER] for i in range(depth)]
    widths = [max(len(line[c]) for line in head + body) for c in range(len(HEADER))]
    left = {0, len(HEADER) - 1}

    def line(cells: list[str], header: bool = False) -> str:
        out = [cell.ljust(w) if header or c in left else cell.rjust(w)
               for c, (cell, w) in enumerate(zip(cells, widths))]
        return "  ".join(out).rstrip()

    rule = "  ".join("=" * w for w in widths)
    text = [rule, *(line(h, header=True) for h in head), rule, *(line(r) for r in body), rule]
    for n, note in enumerate(notes, 1):
        text += ["", textwrap.fill(f".. [{n}] {note}", WRAP, subsequent_indent="   ")]
    return "\n".join(text)


def settings_text(settings: dict) -> str:
    repeat, duration = settings.get("repeat"), settings.get("duration_s")
    runs = "run" if repeat == 1 else "runs"
    return f"{repeat} {runs} of {duration}" + ("" if isinstance(duration, str) else " s")


def caption(data: dict, order: Iterable[str] = ()) -> str:
    """Where and how the table's rows were measured, as one paragraph."""
    machine = data.get("machine") or {}
    measured = {w: m for w, m in (data.get("measured") or {}).items()
                if w in (data.get("results") or {}) and w not in SIDE_WORKLOADS}
    dates = sorted(str(m.get("at"))[:10] for m in measured.values() if m.get("at"))
    when = DASH if not dates else dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}"
    kinds: dict[str, list[str]] = {}
    for workload in [w for w in order if w in measured] + [w for w in measured if w not in order]:
        kinds.setdefault(settings_text(measured[workload].get("settings") or {}), []).append(workload)
    usual = max(kinds, key=lambda k: len(kinds[k])) if kinds else DASH
    others = "; ".join(f"{', '.join(ws)}: {k}" for k, ws in kinds.items() if k != usual)
    return textwrap.fill(
        f"Measured with ``make bench`` (``bench/run.py``) on {when}: {machine.get('cpu', '?')}, "
        f"{machine.get('cores', '?')} cores shared by Redis and the client, {machine.get('python', '?')}, "
        f"Redis {machine.get('redis_server', '?')}, redis-py {machine.get('redis_py', '?')}, "
        f"{machine.get('implementation', '?')} extension"
        + (f", {machine['loop']} event loop" if machine.get("loop") not in (None, "asyncio") else "")
        + (f"; channels-nats {machine['channels_nats']} on a private nats-server {machine['nats_server']}"
           if machine.get("nats_server") else "")
        + ". All layers run in one process on private "
        f"servers, each workload {usual} round the layers"
        + (f" ({others})" if others else "")
        + "; the table shows each layer's median run in deliveries per second, and a ratio's "
        "target in brackets:",
        WRAP,
    )


def rst(data: dict, order: Iterable[str] = ()) -> str:
    """The caption and the table: what table.rst holds and README.rst copies."""
    return caption(data, order) + "\n\n" + rst_table(data.get("results") or {}, order) + "\n"


README_START = ".. bench-table: written by bench/run.py --readme; edit bench/report.py, not this"
README_END = ".. bench-table: end"


def readme_block(readme: str) -> tuple[int, int]:
    """Character offsets of the text between README's markers."""
    start, end = readme.find(README_START), readme.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"README has no bench table markers ({README_START!r} ... {README_END!r})")
    return start + len(README_START), end


def put_in_readme(readme: str, block: str) -> str:
    start, end = readme_block(readme)
    return readme[:start] + "\n\n" + block.rstrip("\n") + "\n\n" + readme[end:]


# --------------------------------------------------------------------------------------
# the chart
# --------------------------------------------------------------------------------------


def spread(result: dict) -> tuple[float, float] | None:
    """(below, above) the reported rate: the slowest and fastest of the runs."""
    rates = [r for r in result.get("rates") or [] if r is not None]
    if len(rates) < 2 or not result.get("rate"):
        return None
    return max(0.0, result["rate"] - min(rates)), max(0.0, max(rates) - result["rate"])


def chart(data: dict, path: str, order: Iterable[str] = ()) -> bool:
    """Rates (median bar, min-max whiskers) and, if measured, RSS during the churn.

    False when there is nothing to draw (no file is written).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = data.get("results") or {}
    workloads = [w for w in order if w in results] + [w for w in results if w not in order]
    workloads = [w for w in workloads if w not in SIDE_WORKLOADS]
    memory = {k: v for k, v in (data.get("memory") or {}).items() if not v.get("error")}
    if not workloads and not memory:
        return False
    panels = [p for p in ("rates", "memory") if (p == "rates" and workloads) or (p == "memory" and memory)]
    widths = [max(8, 1.4 * len(workloads)) if p == "rates" else 6 for p in panels]
    fig, axes = plt.subplots(1, len(panels), figsize=(sum(widths), 5.5),
                             gridspec_kw={"width_ratios": widths}, squeeze=False)
    colours = dict(zip(COLUMNS, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    labels = {**COLUMNS, **{k: v for k, v in (data.get("layers") or {}).items() if k in VERSIONED}}
    for ax, panel in zip(axes[0], panels):
        if panel == "rates":
            _rates(ax, results, workloads, colours, labels)
        else:
            _memory(ax, memory, colours)
    machine = data.get("machine") or {}
    fig.suptitle(f"channel layers end to end: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, "
                 f"{machine.get('python', '?')}, Redis {machine.get('redis_server', '?')}, "
                 f"{machine.get('implementation', '?')}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _rates(ax, results: dict, workloads: list[str], colours: dict, labels: dict | None = None) -> None:
    labels = labels or COLUMNS
    layers = [layer for layer in COLUMNS if any(layer in results[w] for w in workloads)]
    width = 0.8 / max(1, len(layers))
    most_runs = 1
    for i, layer in enumerate(layers):
        xs, ys, low, high = [], [], [], []
        for j, workload in enumerate(workloads):
            r = results[workload].get(layer)
            x = j + (i - (len(layers) - 1) / 2) * width
            if r is None:
                continue
            if r.get("error") or not r.get("rate"):
                ax.annotate("ERR" if r.get("error") else "0", (x, 0), xycoords=("data", "axes fraction"),
                            ha="center", va="bottom", fontsize=7, color=colours[layer])
                continue
            most_runs = max(most_runs, len(r.get("rates") or [1]))
            below, above = spread(r) or (0.0, 0.0)
            xs.append(x)
            ys.append(r["rate"])
            low.append(below)
            high.append(above)
        ax.bar(xs, ys, width, label=labels.get(layer, COLUMNS[layer]), color=colours[layer],
               yerr=[low, high], capsize=2, error_kw={"elinewidth": 1, "ecolor": "black"})
    ax.set_yscale("log")
    ax.set_xticks(range(len(workloads)))
    runs = [max((len((r or {}).get("rates") or [1]) for r in results[w].values()), default=1) for w in workloads]
    ax.set_xticklabels([f"{w} ({n} run{'s' if n > 1 else ''})" for w, n in zip(workloads, runs)],
                       rotation=20, ha="right")
    ax.set_ylabel("deliveries per second (log scale)")
    ax.set_title("bar: median run; whisker: slowest to fastest run" if most_runs > 1 else
                 "one run per layer: no spread to show (--repeat 5 for a spread)", fontsize=9)
    ax.legend(title="layer", fontsize=8, title_fontsize=8)
    ax.grid(axis="y", which="both", alpha=0.3)


def _memory(ax, memory: dict, colours: dict) -> None:
    channels = 0
    for layer in [name for name in COLUMNS if name in memory] + [n for n in memory if n not in COLUMNS]:
        m = memory[layer]
        samples = m.get("samples_mb") or []
        channels = max(channels, m.get("channels") or 0)
        ax.plot([n for n, _ in samples], [mb for _, mb in samples], marker=".",
                label=COLUMNS.get(layer, layer), color=colours.get(layer))
    ax.set_xlabel("channels created, used once and abandoned")
    ax.set_ylabel("client RSS (MB)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"memory during a {channels:,}-channel churn", fontsize=9)
    ax.legend(title="layer", fontsize=8, title_fontsize=8)
    ax.grid(alpha=0.3)
