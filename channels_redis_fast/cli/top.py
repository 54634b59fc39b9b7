"""``python -m channels_redis_fast stats``: the channels and groups stored under a prefix.

Refreshed like ``top`` on a terminal; anywhere else (a pipe, a file, ``less``) each
snapshot is printed plainly after the last, without escape codes. It only uses SCAN
(with COUNT), ZCARD and ``ZRANGE key 0 0 WITHSCORES`` in pipelines: never KEYS, nothing
that blocks Redis.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from typing import Any, Sequence, TextIO

import redis

from ..utils import glob_escape
from .hosts import describe_host, parse_hosts, sync_client

#: Home the cursor and clear the screen: only ever written to a terminal.
CLEAR_SCREEN = "\x1b[H\x1b[2J"


def _classify(name: str, prefix: str) -> tuple[str, str] | None:
    """(kind, display name) of a key under ``prefix``, or None if the layer does not write it."""
    if not name.startswith(prefix):
        return None
    rest = name[len(prefix) :]
    if rest.startswith(":group:"):
        return "group", rest[len(":group:") :]
    if "$inflight" in rest:  # stock's "<channel>$inflight", or a pump's, suffixed (core.py)
        return "inflight", rest[: rest.index("$inflight")]
    if rest.endswith("!"):
        return "process", rest
    if rest and rest[0] not in ":-":
        return "channel", rest
    return None


def scan_shard(client: Any, prefix: str, count: int = 1000, now: float | None = None) -> list[dict]:
    """Channels and groups on one server: kind, name, size, age of the oldest entry."""
    found: list[tuple[bytes, str, str]] = []
    cursor = 0
    pattern = glob_escape(prefix) + "*"
    while True:
        cursor, keys = client.scan(cursor=cursor, match=pattern, count=count)
        for key in keys:
            text = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
            classified = _classify(text, prefix)
            if classified is not None:
                found.append((key, *classified))
        if not cursor:
            break
    rows: list[dict] = []
    now = time.time() if now is None else now
    for start in range(0, len(found), 500):
        chunk = found[start : start + 500]
        pipe = client.pipeline(transaction=False)
        for key, _, _ in chunk:
            pipe.zcard(key)
            pipe.zrange(key, 0, 0, withscores=True)
        replies = pipe.execute(raise_on_error=False)
        for i, (_key, kind, name) in enumerate(chunk):
            size, oldest = replies[2 * i], replies[2 * i + 1]
            if isinstance(size, Exception) or isinstance(oldest, Exception):
                continue  # not a sorted set: someone else's key under the prefix
            age = max(0.0, now - float(oldest[0][1])) if oldest else None
            rows.append({"kind": kind, "name": name, "size": int(size), "age": age})
    return rows


def snapshot(clients: Sequence[Any], prefix: str, count: int = 1000) -> list[dict]:
    """Rows for every shard, with a ``shard`` index, biggest first."""
    rows = []
    for index, client in enumerate(clients):
        for row in scan_shard(client, prefix, count):
            row["shard"] = index
            rows.append(row)
    order = {"channel": 0, "process": 1, "inflight": 2, "group": 3}
    rows.sort(key=lambda r: (order[r["kind"]], -r["size"], r["name"]))
    return rows


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def render(rows: list[dict], hosts: Sequence[str], prefix: str, limit: int | None = None) -> str:
    channels = [r for r in rows if r["kind"] != "group"]
    groups = [r for r in rows if r["kind"] == "group"]
    lines = [
        f"channels_redis_fast stats  {time.strftime('%Y-%m-%d %H:%M:%S')}  prefix {prefix!r}  "
        f"shards: {', '.join(hosts)}",
        f"{len(channels)} channel(s) holding {sum(r['size'] for r in channels)} message(s); "
        f"{len(groups)} group(s) with {sum(r['size'] for r in groups)} member(s)",
        "",
        f"{'SHARD':>5}  {'KIND':<8}  {'SIZE':>7}  {'OLDEST':>7}  NAME",
    ]
    shown = rows if limit is None else rows[:limit]
    for row in shown:
        lines.append(
            f"{row['shard']:>5}  {row['kind']:<8}  {row['size']:>7}  {_age(row['age']):>7}  {row['name']}"
        )
    if len(shown) < len(rows):
        lines.append(f"... and {len(rows) - len(shown)} more")
    return "\n".join(lines)


def _show(out: TextIO, text: str, on_terminal: bool, first: bool) -> None:
    if on_terminal:
        out.write(CLEAR_SCREEN + text + "\n")
    else:
        # A log of snapshots, one blank line between them.
        out.write(("" if first else "\n") + text + "\n")
    out.flush()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m channels_redis_fast stats",
        description="Live view of the channels and groups a channel layer keeps in Redis. "
        "On a terminal the view is redrawn in place; when the output is not a terminal, "
        "each snapshot is printed after the previous one, without escape codes.",
    )
    parser.add_argument(
        "--hosts",
        action="append",
        required=True,
        help="a shard: redis://, rediss:// or unix:// URL, or a JSON host dict such as "
        '\'{"sentinels": [["10.0.0.1", 26379]], "master_name": "mymaster"}\'; repeat or '
        "separate URLs with commas for several shards, in the layer's order",
    )
    parser.add_argument("--prefix", default="asgi")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    parser.add_argument("--once", action="store_true", help="print one snapshot and exit")
    parser.add_argument(
        "--snapshots", type=int, default=None, metavar="N", help="exit after N snapshots"
    )
    parser.add_argument("--limit", type=int, default=None, help="show at most this many rows")
    parser.add_argument("--count", type=int, default=1000, help="SCAN COUNT hint")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    if args.once:
        args.snapshots = 1
    if args.snapshots is not None and args.snapshots < 1:
        parser.error("--snapshots must be at least 1")

    out = sys.stdout
    on_terminal = out.isatty() and args.snapshots != 1
    hosts = parse_hosts(args.hosts)
    clients = [sync_client(host) for host in hosts]
    names = [describe_host(host) for host in hosts]
    shown = 0
    try:
        while True:
            try:
                rows = snapshot(clients, args.prefix, args.count)
            except (redis.RedisError, OSError) as exc:
                if args.snapshots == 1:
                    print(f"error: {exc}", file=sys.stderr)
                    return 1
                if on_terminal:
                    _show(out, f"error: {exc} (retrying)", on_terminal, False)
                else:
                    print(f"error: {exc} (retrying)", file=sys.stderr)
                time.sleep(args.interval)
                continue
            if args.json:
                text = json.dumps(rows)
            else:
                limit = args.limit
                if limit is None and on_terminal:
                    limit = max(1, shutil.get_terminal_size().lines - 6)
                text = render(rows, names, args.prefix, limit)
            if args.json and not on_terminal:
                out.write(text + "\n")  # JSON lines: one snapshot per line
                out.flush()
            else:
                _show(out, text, on_terminal, shown == 0)
            shown += 1
            if args.snapshots is not None and shown >= args.snapshots:
                return 0
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0
    finally:
        for client in clients:
            try:
                client.close()
            except Exception:  # noqa: BLE001
                pass
