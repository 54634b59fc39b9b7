"""What a layer (from inside) and a deployment (from outside) look like right now.

``RedisChannelLayer.stats()`` and the pub/sub layer's ``stats()`` call into this module.
``python -m channels_redis_fast stats --hosts redis://…`` shows the channels and groups
stored under a prefix, refreshed like ``top``. It only uses SCAN (with COUNT), ZCARD and
``ZRANGE key 0 0 WITHSCORES`` in pipelines: never KEYS, nothing that blocks Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from .connection import describe_host

if TYPE_CHECKING:  # pragma: no cover
    from .core import RedisChannelLayer
    from .pubsub import RedisPubSubLoopLayer

#: Counters every core-layer report carries, zero when nothing happened yet.
CORE_COUNTERS = (
    "sent",
    "received",
    "channel_full",
    "dropped",
    "group_over_capacity",
    "malformed",
    "expired",
    "returned",
    "reconnects",
)


# ------------------------------------------------------------------------------ in process


def _reconnects(connections: Iterable[Any]) -> int:
    return sum(max(0, connection.connects - 1) for connection in connections)


async def layer_stats(layer: "RedisChannelLayer", groups: Iterable[str] | None = None) -> dict:
    """Per shard: depths of the keys this layer receives on, group sizes, reconnects;
    plus local buffer sizes and the layer's counters.

    ``groups``: names whose member counts (ZCARD) to include.
    """
    if isinstance(groups, str):
        groups = [groups]
    groups = list(groups or ())
    state = layer._loop_connections()
    # Keys with pumps on any loop: this process's own key(s) and the general channels
    # it receives on.
    keys: set[str] = set()
    shard_connections: list[list[Any]] = [[] for _ in range(layer.ring_size)]
    for loop_state in list(layer._layers.values()):
        keys.update(loop_state.key_pumps)
        for index, connection in enumerate(loop_state.commands):
            shard_connections[index].append(connection)
        for (_key, index), pump in loop_state.pumps.items():
            shard_connections[index].append(pump.connection)
    keys = sorted(keys)
    group_keys = {group: layer._group_key(group) for group in groups}
    by_shard_groups: dict[int, list[str]] = {}
    for group in groups:
        by_shard_groups.setdefault(layer.consistent_hash(group), []).append(group)

    async def one_shard(index: int) -> dict:
        commands = [("ZCARD", key) for key in keys]
        shard_groups = by_shard_groups.get(index, [])
        commands += [("ZCARD", group_keys[group]) for group in shard_groups]
        replies = await state.commands[index].execute_many(commands) if commands else []
        queues = {key: int(depth) for key, depth in zip(keys, replies)}
        sizes = {group: int(size) for group, size in zip(shard_groups, replies[len(keys) :])}
        return {
            "host": describe_host(layer.hosts[index]),
            "queues": queues,
            "groups": sizes,
            "reconnects": _reconnects(shard_connections[index]),
        }

    shards = await asyncio.gather(*[one_shard(index) for index in range(layer.ring_size)])
    counters = {name: 0 for name in CORE_COUNTERS}
    counters.update(layer.stats_counters)
    # Only buffers holding messages: an emptied one may wait for its receiver's next wait.
    buffers = {
        channel: buffer.qsize() for channel, buffer in list(layer.receive_buffer.items()) if buffer.qsize()
    }
    counters["dropped"] = sum(buffer.dropped for buffer in list(layer.receive_buffer.values()))
    counters["reconnects"] = sum(shard["reconnects"] for shard in shards)
    group_sizes: dict[str, int] = {}
    for shard in shards:
        group_sizes.update(shard["groups"])
    return {
        "prefix": layer.prefix,
        "client_prefix": layer.client_prefix,
        "shards": list(shards),
        "buffers": buffers,
        "buffered": sum(buffers.values()),
        "groups": group_sizes,
        "counters": counters,
    }


async def pubsub_stats(layer: "RedisPubSubLoopLayer", groups: Iterable[str] | None = None) -> dict:
    """Per shard: subscriptions and reconnects; local buffers, local group members, drops."""
    if isinstance(groups, str):
        groups = [groups]
    shards = []
    for shard in layer._shards:
        shards.append(
            {
                "host": shard.name,
                "subscriptions": len(shard.wanted),
                "reconnects": _reconnects([shard.publisher, shard.subscriber]),
            }
        )
    buffers = {name: local.buffer.qsize() for name, local in list(layer.channels.items())}
    sizes = {}
    for group in groups or ():
        sizes[group] = len(layer.groups.get(layer._get_group_channel_name(group), ()))
    return {
        "prefix": layer.prefix,
        "shards": shards,
        "buffers": buffers,
        "buffered": sum(buffers.values()),
        "groups": sizes,
        "counters": {
            "dropped": layer.dropped,
            "reconnects": sum(shard["reconnects"] for shard in shards),
        },
    }


# --------------------------------------------------------------------------- from outside


def client_for(host: dict[str, Any]) -> Any:
    """A synchronous redis-py client for one ``hosts`` entry (URL, sentinel or kwargs dict)."""
    import redis
    from redis.sentinel import Sentinel

    host = dict(host)
    host.setdefault("socket_timeout", 10)
    host.setdefault("socket_connect_timeout", 5)
    if "address" in host:
        return redis.Redis.from_url(host.pop("address"), **host)
    if "master_name" in host:
        sentinels = [tuple(s) for s in host.pop("sentinels")]
        master_name = host.pop("master_name")
        sentinel_kwargs = host.pop("sentinel_kwargs", None)
        return Sentinel(sentinels, sentinel_kwargs=sentinel_kwargs).master_for(master_name, **host)
    return redis.Redis(**host)


def _glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "\\*?[]" else ch for ch in text)


def _classify(name: str, prefix: str) -> tuple[str, str] | None:
    """(kind, display name) of a key under ``prefix``, or None if the layer does not write it."""
    if not name.startswith(prefix):
        return None
    rest = name[len(prefix) :]
    if rest.startswith(":group:"):
        return "group", rest[len(":group:") :]
    if rest.endswith("$inflight"):
        return "inflight", rest[: -len("$inflight")]
    if rest.endswith("!"):
        return "process", rest
    if rest and rest[0] not in ":-":
        return "channel", rest
    return None


def scan_shard(client: Any, prefix: str, count: int = 1000, now: float | None = None) -> list[dict]:
    """Channels and groups on one server: kind, name, size, age of the oldest entry."""
    found: list[tuple[bytes, str, str]] = []
    cursor = 0
    pattern = _glob_escape(prefix) + "*"
    while True:
        cursor, keys = client.scan(cursor=cursor, match=pattern, count=count)
        for key in keys:
            text = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
            kind = _classify(text, prefix)
            if kind is not None:
                found.append((key, *kind))
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
    queues = [r for r in rows if r["kind"] != "group"]
    groups = [r for r in rows if r["kind"] == "group"]
    lines = [
        f"channels_redis_fast stats  {time.strftime('%Y-%m-%d %H:%M:%S')}  prefix {prefix!r}  "
        f"shards: {', '.join(hosts)}",
        f"{len(queues)} queue(s) holding {sum(r['size'] for r in queues)} message(s); "
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


def parse_hosts(values: Sequence[str]) -> list[dict[str, Any]]:
    """``--hosts`` values: URLs (also comma-separated) or JSON host dicts (e.g. sentinel)."""
    from .utils import decode_hosts

    entries: list[Any] = []
    for value in values:
        value = value.strip()
        if value.startswith("{"):
            entries.append(json.loads(value))
        else:
            entries.extend(part for part in value.split(",") if part)
    return decode_hosts(entries)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m channels_redis_fast stats",
        description="Live view of the channels and groups a channel layer keeps in Redis.",
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
    parser.add_argument("--limit", type=int, default=None, help="show at most this many rows")
    parser.add_argument("--count", type=int, default=1000, help="SCAN COUNT hint")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    import redis

    hosts = parse_hosts(args.hosts)
    clients = [client_for(host) for host in hosts]
    names = [describe_host(host) for host in hosts]
    try:
        while True:
            try:
                rows = snapshot(clients, args.prefix, args.count)
            except (redis.RedisError, OSError) as exc:
                if args.once:
                    print(f"error: {exc}", file=sys.stderr)
                    return 1
                sys.stdout.write(f"\x1b[H\x1b[2Jerror: {exc} (retrying)\n")
                sys.stdout.flush()
                time.sleep(args.interval)
                continue
            if args.json:
                text = json.dumps(rows)
            else:
                limit = args.limit
                if limit is None and not args.once:
                    import shutil

                    limit = max(1, shutil.get_terminal_size().lines - 6)
                text = render(rows, names, args.prefix, limit)
            if args.once:
                print(text)
                return 0
            sys.stdout.write("\x1b[H\x1b[2J" + text + "\n")
            sys.stdout.flush()
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0
    finally:
        for client in clients:
            try:
                client.close()
            except Exception:  # noqa: BLE001
                pass
