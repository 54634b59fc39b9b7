"""``flush()`` on one node: delete the core layer's keys there (SCAN, never KEYS).

Only names the layer writes go: channel keys, their ``$inflight`` backups (stock
processes', and our work-queue pumps' suffixed ones) and group keys, and only when they
are sorted sets. Another application's ``asgifoo:bar`` or ``asgi-meta`` in the same Redis
stays.
"""

from __future__ import annotations

import re

from .connection import RedisConnection
from .utils import glob_escape

#: Keys one SCAN step asks for.
SCAN_COUNT = 1000


async def flush_node(connection: RedisConnection, prefix: str, per_key: bool = False) -> None:
    """Delete the keys of a layer with ``prefix`` that live on ``connection``'s node.

    ``per_key``: one UNLINK per key, in one write (a Redis Cluster node refuses one UNLINK
    of keys in several slots)."""
    pattern = glob_escape(prefix) + "*"
    ours = own_key_pattern(prefix)
    cursor = b"0"
    while True:
        cursor, keys = await connection.execute("SCAN", cursor, "MATCH", pattern, "COUNT", SCAN_COUNT)
        mine = [k for k in keys if ours.match(k)]
        if mine:
            # Every key the layer writes is a sorted set; a foreign string or hash
            # whose name happens to look like a channel (say "asgi-meta") stays.
            types = await connection.execute_many([("TYPE", k) for k in mine])
            mine = [k for k, t in zip(mine, types) if t in (b"zset", "zset")]
        if mine and per_key:
            await connection.execute_many([("UNLINK", k) for k in mine])
        elif mine:
            await connection.execute("UNLINK", *mine)
        if cursor in (b"0", 0, "0"):
            return


def own_key_pattern(prefix: str) -> re.Pattern:
    """A regex that matches exactly the key names a layer with ``prefix`` writes."""
    escaped = re.escape(prefix.encode("utf-8"))
    name = rb"[a-zA-Z\d\-_.]+(?:![\w\-.]*)?"
    # A work-queue pump's backup names its queue key in braces: the prefix may hold
    # braces of its own (a cluster hash tag such as "{asgi}").
    inflight = rb"\$inflight(?:\{(?:[^{}]*|" + escaped + name + rb")\}[0-9a-f]+\.\d+)?"
    channel = name + rb"(?:" + inflight + rb")?"
    group = rb":group:[a-zA-Z\d\-_.]+(?:\$plan)?"  # with group_plan's member snapshot
    return re.compile(escaped + rb"(?:" + channel + rb"|" + group + rb")\Z")

