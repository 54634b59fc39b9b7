"""Helpers shared by both layers, under the names channels_redis's users import."""

from __future__ import annotations

import asyncio
import functools
import sys
import threading
import types
from typing import Any, Callable, Iterable

from .connection import check_protocol
from .speedups import consistent_hash


def _consistent_hash(value: str | bytes, ring_size: int) -> int:
    """Shard index of ``value`` on a ring of ``ring_size`` hosts (CRC32 & 0xFFF)."""
    return consistent_hash(value, ring_size)


if sys.version_info >= (3, 12):
    running_loop = asyncio.get_running_loop
else:

    class _ThreadLoop(threading.local):
        loop: Any = None

    _thread_loop = _ThreadLoop()

    def running_loop() -> asyncio.AbstractEventLoop:
        """asyncio.get_running_loop() without its getpid() system call.

        Before Python 3.12 every call makes one (~0.2 us, a few percent of a delivery).
        A thread runs one loop at a time, so this thread's last loop is the running
        one while it is running in this thread.
        """
        loop = _thread_loop.loop
        if loop is not None and loop._thread_id == threading.get_ident():
            return loop  # type: ignore[no-any-return]  # Any: _thread_id is private to BaseEventLoop
        loop = asyncio.get_running_loop()
        # Only loops built on BaseEventLoop say which thread runs them.
        _thread_loop.loop = loop if hasattr(loop, "_thread_id") else None
        return loop


class ValidNames(set):
    """Names that passed ``check``, remembered (at most ``limit`` at a time).

    channels' name validation runs regexes (~0.5 us a call) and a consumer's channel name
    repeats for its whole life. Hot paths test ``name in cache`` inline and call
    :meth:`require` only on a miss.
    """

    __slots__ = ("_check", "_limit")

    def __init__(self, check: Callable[[Any], Any], limit: int = 16384) -> None:
        super().__init__()
        self._check = check
        self._limit = limit

    def require(self, name: Any) -> None:
        if type(name) is str and name in self:
            return
        self._check(name)
        if len(self) >= self._limit:
            self.clear()
        self.add(name)


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
    for host in result:
        check_protocol(host)  # a RESP version we cannot speak fails here, not at first use
    return result


def glob_escape(text: str) -> str:
    """``text`` as a Redis glob (SCAN MATCH, KEYS, PSUBSCRIBE) that matches only itself.

    Redis's matcher gives ``*``, ``?``, ``[`` and ``\\`` a meaning anywhere in a pattern;
    ``]`` only closes a class, escaped here too so that no character is left to chance.
    A backslash before any character makes it literal.
    """
    return "".join("\\" + ch if ch in "\\*?[]" else ch for ch in text)


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
