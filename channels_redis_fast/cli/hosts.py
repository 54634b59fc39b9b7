"""``--hosts`` arguments and synchronous redis-py clients for the layers' ``hosts`` entries.

The entries are decoded by the layers' own ``decode_hosts`` and normalised as
``connection.make_pool`` normalises them (``bounded_timeouts``, no ``decode_responses``),
so a command reaches a shard the way the layer would; these clients always speak RESP2.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from ..connection import bounded_timeouts, describe_host
from ..utils import decode_hosts

__all__ = ["describe_host", "parse_hosts", "sentinel_for", "sync_client"]


def parse_hosts(values: Sequence[str]) -> list[dict[str, Any]]:
    """``--hosts`` values: URLs (also comma-separated) or JSON host dicts (e.g. sentinel)."""
    entries: list[Any] = []
    for value in values:
        value = value.strip()
        if value.startswith("{"):
            entries.append(json.loads(value))
        else:
            entries.extend(part for part in value.split(",") if part)
    return decode_hosts(entries)


def _one_attempt() -> Retry:
    return Retry(NoBackoff(), 0)


def sentinel_for(host: dict[str, Any], retry: bool = True) -> Sentinel:
    """redis-py's Sentinel for a sentinel ``hosts`` entry, with bounded timeouts."""
    sentinels = [tuple(address) for address in host["sentinels"]]
    options = bounded_timeouts(host.get("sentinel_kwargs") or {})
    if not retry:
        options["retry"] = _one_attempt()
    return Sentinel(sentinels, sentinel_kwargs=options)


def sync_client(host: dict[str, Any], retry: bool = True) -> redis.Redis:
    """A synchronous client for one ``hosts`` entry (URL, sentinel or kwargs dict).

    For a sentinel entry the client finds the current master through the sentinels on
    each (re)connect, as the layer does. ``retry=False``: one attempt per command, so a
    diagnosis reports the first failure at once instead of after redis-py's back-off.
    """
    options = bounded_timeouts(host)
    if not retry:
        options["retry"] = _one_attempt()
    options["protocol"] = 2
    options.pop("decode_responses", None)
    if "address" in options:
        return redis.Redis.from_url(options.pop("address"), **options)
    if "master_name" in options:
        master_name = options.pop("master_name")
        sentinel = sentinel_for(options, retry)
        options.pop("sentinels")
        options.pop("sentinel_kwargs", None)
        client: redis.Redis = sentinel.master_for(master_name, **options)
        return client
    return redis.Redis(**options)
