"""Concurrent group_adds to one group, coalesced into one script call per loop iteration.

A deploy or a network blip reconnects every websocket at once, and each consumer joins its
group: a ZADD and an EXPIRE of the same key, thousands of times over. Sent one by one,
that is a script run, a reply and a future per member, and Redis spends more on running
scripts than on the ZADDs. Here the members that join one group during one event-loop
iteration go in one GROUP_ADD_MANY call (a few, for a very large wave), which every one of
their group_adds awaits: the cost per member is its two arguments in that call.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from .connection import RedisConnection
from .scripts import group_add_many_script

__all__ = ["GroupJoins"]

#: Members per script call: a call runs to the end before Redis serves anyone else, so a
#: huge wave goes in several calls (all in the same write).
MEMBERS_PER_CALL = 2000


class GroupJoins:
    """The waves of joins of one event loop, one per (connection, group key)."""

    __slots__ = ("_waves",)

    def __init__(self) -> None:
        self._waves: dict[tuple[RedisConnection, bytes], tuple[list[Any], list[asyncio.Future]]] = {}

    def join(self, connection: RedisConnection, key: bytes, score: float, channel: str, ttl: int) -> asyncio.Future:
        """Add ``channel`` to the group at ``key``; a future that ends once Redis has it
        (or raises what the call raised, for every member of the wave)."""
        wave = self._waves.get((connection, key))
        if wave is None:
            wave = self._waves[(connection, key)] = ([ttl], [])
            # The task's first step runs on the next loop iteration: every join issued
            # until then rides along.
            sent = asyncio.ensure_future(self._send(connection, key, wave[0]))
            sent.add_done_callback(functools.partial(_tell, wave[1]))
        wave[0].append(score)
        wave[0].append(channel)
        # A future of its own per joiner (not a shield around the call): a joiner
        # cancelled cancels only that, and a wave of thousands allocates the least.
        waiter = asyncio.get_running_loop().create_future()
        wave[1].append(waiter)
        return waiter

    async def _send(self, connection: RedisConnection, key: bytes, args: list[Any]) -> None:
        del self._waves[(connection, key)]  # later joins start the next wave
        ttl, pairs = args[0], args[1:]
        step = 2 * MEMBERS_PER_CALL
        calls = [
            group_add_many_script(connection, [key], [ttl, *pairs[first:first + step]])
            for first in range(0, len(pairs), step)
        ]
        await (calls[0] if len(calls) == 1 else asyncio.gather(*calls))


def _tell(waiters: list[asyncio.Future], sent: asyncio.Future) -> None:
    """The wave's outcome to each joiner still waiting."""
    error = sent.exception() if not sent.cancelled() else asyncio.CancelledError()
    for waiter in waiters:
        if not waiter.done():
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)
