"""What a layer holds on one event loop: one multiplexed connection per node, and pumps.

asyncio sockets, futures and redis-py's sentinel clients belong to the loop that made
them, and ``async_to_sync`` makes a fresh loop per call, so everything here is built
per loop and closed with it. The number of sockets is fixed by the shape of the
deployment (shards, and keys being received on), never by the number of concurrent
callers.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

from .connection import DEFAULT_REPLY_TIMEOUT, RedisConnection, make_pool
from .pump import KeyPump
from .reconnect import Reachable
from .routing import Router

logger = logging.getLogger(__name__)


class LoopConnections:
    """Per node of the router: a redis-py pool (only to make sockets), a multiplexed
    command connection (``commands[node]``) and the pumps reading keys there."""

    def __init__(
        self,
        router: Router,
        loop: asyncio.AbstractEventLoop,
        reply_timeout: float = DEFAULT_REPLY_TIMEOUT,
    ) -> None:
        self.router = router
        self.loop = loop
        self.reply_timeout = reply_timeout
        hosts = router.hosts
        self.pools = [make_pool(host) for host in hosts]
        # Per node: any of our connections that reaches it wakes its pumps' reconnect
        # pauses (a send after an outage usually gets there first).
        self.reachable = [Reachable(loop) for _ in hosts]
        self.commands = [
            RedisConnection(pool, loop, reply_timeout, name=router.describe(node), on_connect=reachable.notify)
            for node, (pool, reachable) in enumerate(zip(self.pools, self.reachable))
        ]
        self.pumps: dict[tuple[str, int], KeyPump] = {}
        # key -> its pumps on every node it is read from, so a receive finds them with
        # one lookup.
        self.key_pumps: dict[str, list[KeyPump]] = {}
        self.closed = False

    def pump(
        self,
        key: str,
        node: int,
        wanted: Callable[[], int],
        on_batch: Callable[[list], None],
        block: float,
        batch: int,
        on_error: Callable[[BaseException], None] | None = None,
        may_linger: Callable[[], bool] | None = None,
        inflight: str | None = None,
        inflight_ttl: int = 60,
    ) -> KeyPump:
        pump = self.pumps.get((key, node))
        if pump is None:
            # A blocking pop holds its socket for up to ``block`` seconds, so each pump
            # gets its own connection instead of stalling the shared one.
            reachable = self.reachable[node]
            connection = RedisConnection(
                self.pools[node],
                self.loop,
                self.reply_timeout,
                name=f"{key}@{node}",
                on_connect=reachable.notify,
            )
            pump = KeyPump(
                connection,
                key,
                wanted,
                on_batch,
                block,
                batch,
                description=f"{key} on {self.router.describe(node)}",
                control=self.commands[node],
                on_error=on_error,
                reachable=reachable,
                may_linger=may_linger,
                inflight=inflight,
                inflight_ttl=inflight_ttl,
            )
            self.pumps[(key, node)] = pump
        return pump

    async def close(self, after_pumps: Callable[[], Awaitable[Any]] | None = None) -> None:
        """Stop the pumps cleanly (no pop abandoned mid-reply), then close every socket.

        ``after_pumps`` runs between the two, while the command connections are still
        open: the layer hands back there what the last pops brought in and nobody took.
        """
        if self.closed:
            return
        self.closed = True
        pumps = list(self.pumps.items())
        await asyncio.gather(
            *[pump.stop() for _, pump in pumps],
            return_exceptions=True,
        )
        if after_pumps is not None:
            try:
                await after_pumps()
            except Exception:  # noqa: BLE001 - the sockets must close whatever happened
                logger.exception("Cleanup before closing the connections failed")
        for _, pump in pumps:
            await pump.connection.close()
        for connection in self.commands:
            await connection.close()
        for pool in self.pools:
            await _close_pool(pool)

    def close_nowait(self) -> None:
        """Close from another thread's loop or a loop that no longer runs."""
        self.closed = True
        for pump in self.pumps.values():
            pump.stopping = True
            pump.connection.close_nowait()
        for connection in self.commands:
            connection.close_nowait()


async def _close_pool(pool: Any) -> None:
    # Our sockets never enter redis-py's pool, but a sentinel pool keeps clients to
    # the sentinels themselves, which must not outlive the loop.
    manager = getattr(pool, "sentinel_manager", None)
    if manager is not None:
        for sentinel in manager.sentinels:
            closer = getattr(sentinel, "aclose", None) or sentinel.close
            try:
                await closer()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
    try:
        await pool.disconnect()
    except Exception:  # noqa: BLE001
        pass
