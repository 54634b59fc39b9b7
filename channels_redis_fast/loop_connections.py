"""What a layer holds on one event loop: one multiplexed connection per node, and pumps.

asyncio sockets, futures and redis-py's sentinel clients belong to the loop that made
them, and ``async_to_sync`` makes a fresh loop per call, so everything here is built
per loop and closed with it. The number of sockets is fixed by the shape of the
deployment (shards, and keys being received on), never by the number of concurrent
callers.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, Awaitable, Callable, Sequence

from redis.exceptions import ResponseError

from .cluster_config import PlainHostErrors
from .cluster_router import ClusterSlots
from .cluster_slots import parse_redirect
from .connection import DEFAULT_REPLY_TIMEOUT, Arg, RedisConnection, RedisProtocol, make_pool
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
        # A cluster's connections follow redirections (cluster_commands.py); a plain
        # host's explain a cluster node's MOVED instead (PlainHostErrors).
        self.cluster = isinstance(router, ClusterSlots)
        self.pools: list[Any] = []
        # Per node: any of our connections that reaches it wakes its pumps' reconnect
        # pauses (a send after an outage usually gets there first).
        self.reachable: list[Reachable] = []
        self.commands: list[RedisConnection] = []
        self.add_nodes()
        self.pumps: dict[tuple[str, int], KeyPump] = {}
        # key -> its pumps on every node it is read from, so a receive finds them with
        # one lookup.
        self.key_pumps: dict[str, list[KeyPump]] = {}
        self.closed = False

    def add_nodes(self) -> None:
        """Connections for the nodes the router learnt since (a cluster's hosts grow)."""
        for node in range(len(self.commands), len(self.router.hosts)):
            self.pools.append(make_pool(self.router.hosts[node]))
            self.reachable.append(Reachable(self.loop))
            self.commands.append(self._connection(node, self.router.describe(node)))

    def command(self, node: int) -> RedisConnection:
        """The multiplexed connection to ``node`` (made if the router learnt it since)."""
        if node >= len(self.commands):
            self.add_nodes()
        return self.commands[node]

    def _connection(self, node: int, name: str, asking: Callable[[], bool] | None = None) -> RedisConnection:
        factory: Callable[[asyncio.AbstractEventLoop, float], RedisProtocol] | None = None
        if not self.cluster:
            factory = functools.partial(RedisProtocol, errors=PlainHostErrors(self.router.describe(node)))
        elif asking is not None:
            factory = functools.partial(AskingProtocol, asking=asking)
        return RedisConnection(
            self.pools[node], self.loop, self.reply_timeout, name=name,
            protocol_factory=factory, on_connect=self.reachable[node].notify,
        )

    def relocate(self, pump: KeyPump, error: BaseException) -> bool:
        """Point a cluster pump at its key's owner after ``error``; whether it moved.

        Called by the pump between two pops (nothing in flight on its connection). A MOVED
        reply names the new owner; after a connection error the map is fetched again in
        the background (a failed primary's replica takes over), and the pump moves once
        it names another owner. An ASK reply (the key left a slot being migrated) moves the
        pump to the importing node with ASKING before each command, until the map names
        that node the owner: a receive gets what senders put there while the migration
        lasts, not only once it ends. The pump goes on with what it holds: the members it
        delivered and the in-flight key moved with their slot.
        """
        if not self.cluster:
            return False
        router: ClusterSlots = self.router  # type: ignore[assignment]
        old = pump.node
        redirect = parse_redirect(error) if isinstance(error, ResponseError) else None
        asking: Callable[[], bool] | None = None
        if redirect is not None and redirect.kind == "MOVED":
            node = router.moved(redirect, router.hosts[old].get("host", ""))
            router.refresh_soon()
            if node == old:
                return True
        elif redirect is not None and redirect.kind == "ASK":
            node = router.node_at(redirect.node(router.hosts[old].get("host", "")))
            if node == old:
                return False
            asking = functools.partial(_importing, router, pump.key, node)
        elif isinstance(error, ResponseError):
            return False
        else:
            router.refresh_soon()
            try:
                node = router.node_of(pump.key)
            except LookupError:  # no primary serves the slot yet: the pump backs off
                return False
            if node == old:
                return False
        self.command(node)
        self.pumps.pop((pump.key, old), None)
        self.pumps[(pump.key, node)] = pump
        pumps = self.key_pumps.get(pump.key)
        if pumps is not None:
            self.key_pumps[pump.key] = [p for p in pumps if p is not pump] + [pump]
        pump.move_to(
            node,
            self._connection(node, f"{pump.key}@{node}", asking),
            self.commands[node],
            self.reachable[node],
            f"{pump.key} on {router.describe(node)}",
        )
        logger.info(
            "Receiving %s from %s now (its slot %s)", pump.key, router.describe(node),
            "is being migrated there" if asking else "moved",
        )
        return True

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
            connection = self._connection(node, f"{key}@{node}")
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
                node=node,
                relocate=self.relocate if self.cluster else None,
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


class AskingProtocol(RedisProtocol):
    """A pump's socket to the importing node of a slot being migrated: while ``asking()``,
    every command goes after an ASKING (which the server forgets after one command), and
    the ASKING replies are dropped, so the pump's futures are those of its own commands."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, reply_timeout: float, asking: Callable[[], bool]
    ) -> None:
        super().__init__(loop, reply_timeout)
        self.asking = asking

    def execute(self, args: Sequence[Arg], block: float = 0.0) -> asyncio.Future:
        if self.asking():
            super().execute(("ASKING",)).add_done_callback(_retrieve)
        return super().execute(args, block)

    def execute_pipeline(
        self, commands: Sequence[Sequence[Arg]], block: float = 0.0, blocking: int = 0
    ) -> list[asyncio.Future]:
        if not self.asking():
            return super().execute_pipeline(commands, block, blocking)
        paired = [one for command in commands for one in (("ASKING",), command)]
        futures = super().execute_pipeline(paired, block, 2 * blocking + 1)
        for future in futures[0::2]:
            future.add_done_callback(_retrieve)
        return futures[1::2]


def _importing(router: ClusterSlots, key: str, node: int) -> bool:
    """Whether ``node`` still only imports ``key``'s slot, as far as the map knows."""
    try:
        return router.node_of(key) != node
    except LookupError:
        return True


def _retrieve(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()


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
