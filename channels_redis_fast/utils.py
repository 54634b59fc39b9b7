"""Helpers shared by both layers, under the names channels_redis's users import."""

from __future__ import annotations

import asyncio
import functools
import types
from typing import Any, Callable, Iterable

from .speedups import consistent_hash


def _consistent_hash(value: str | bytes, ring_size: int) -> int:
    """Shard index of ``value`` on a ring of ``ring_size`` hosts (CRC32 & 0xFFF)."""
    return consistent_hash(value, ring_size)


def decode_hosts(hosts: Iterable[Any] | None) -> list[dict[str, Any]]:
    """Normalise the ``hosts`` option into one connection-options dict per shard."""
    if not hosts:
        return [{"address": "redis://localhost:6379"}]
    if isinstance(hosts, (str, bytes)):
        raise ValueError("You must pass a list of Redis hosts, even if there is only one.")
    result: list[dict[str, Any]] = []
    for entry in hosts:
        if isinstance(entry, dict):
            result.append(dict(entry))
        elif isinstance(entry, (tuple, list)):
            result.append({"host": entry[0], "port": entry[1]})
        else:
            result.append({"address": entry})
    return result


async def _close_redis(connection: Any) -> None:
    """Close a redis-py client, whichever close method its version has."""
    closer = getattr(connection, "aclose", None) or connection.close
    await closer(close_connection_pool=True)


def _wrap_close(owner: Any, loop: asyncio.AbstractEventLoop, on_close: Callable[[], Any] | None = None) -> None:
    """Run the owner's per-loop cleanup when ``loop`` is closed.

    ``async_to_sync`` runs each call on a fresh loop and closes it afterwards; without
    this hook every such call would leave its sockets behind until garbage collection.
    """
    original_close = loop.close
    cleanup = on_close or functools.partial(owner._close_loop, loop)

    def close(self: asyncio.AbstractEventLoop) -> None:
        try:
            if not self.is_closed() and not self.is_running():
                self.run_until_complete(cleanup())
        finally:
            original_close()

    loop.close = types.MethodType(close, loop)  # type: ignore[method-assign]
