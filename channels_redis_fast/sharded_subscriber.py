"""The pub/sub layer on a Redis Cluster: sharded pub/sub (SSUBSCRIBE, SPUBLISH; Redis 7.0+).

A plain PUBLISH on a cluster is broadcast over the cluster bus to every node, so every
node carries every message and the bus caps the throughput. A sharded channel belongs to
the slot of its name, like a key: SPUBLISH goes to the shard that serves the slot (its
primary relays it to its replicas, and a replica to its primary), and SSUBSCRIBE listens
there. So, per primary, the layer holds what it holds per host on one Redis (a
:class:`NodeShard`): one multiplexed connection for SPUBLISH and one subscriber socket,
subscribed to every name of this layer whose slot the primary serves.

Following the cluster:

* A publish runs through cluster_commands: ``MOVED`` (the SPUBLISH was refused, so it did
  not run) records the slot's owner and retries there; a publish that was never written
  (the node is gone) is retried once the refreshed map names another owner; one written
  on a connection that then died raises ReplyLostError: it may have been delivered.
* The server takes subscriptions away when their slot leaves the shard (a migration's
  ``SETSLOT NODE``, a failover): it pushes a SUNSUBSCRIBE for each such channel. Those
  names are placed again: the map is refreshed and they are subscribed on the slot's
  owner, following ``MOVED``.
* A subscriber socket that is lost reconnects and re-subscribes as on one Redis; while
  its node does not answer the map is fetched again, and the names whose slot another
  primary serves now (a replica promoted in place of a crashed primary) move there.

What is published between the server dropping a subscription and the SSUBSCRIBE on the
new owner reaches nobody, as a message published while a single Redis restarts: pub/sub
is at most once. Every message published after the re-subscription arrives.

Low level: imports no layer (the pub/sub layer is reached through SubscriberOwner).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Sequence, cast

from redis.exceptions import RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from .cluster_commands import MAX_REDIRECTS, RETRY_FOR, RETRY_MAX, RETRY_START, ClusterCommands
from .cluster_config import ClusterConfig
from .cluster_router import ClusterSlots
from .cluster_slots import parse_redirect
from .connection import PUSH_TYPE, Arg, RedisConnection
from .reconnect import Backoff
from .speedups import key_slot
from .subscriber import Shard, SubscriberOwner, SubscriberProtocol

logger = logging.getLogger(__name__)

__all__ = ["NodeShard", "ShardedProtocol", "ShardedPubSub", "ShardedPubSubUnsupportedError"]

_SUNSUBSCRIBE = b"sunsubscribe"
#: Seconds between two map refreshes a publish to no receiver asks for (see publish).
STALE_CHECK_INTERVAL = 1.0
#: Seconds between two map refreshes while a node does not answer: a node down with no
#: replica to replace it must not make every process ask the cluster at the reconnect pace.
UNREACHABLE_REFRESH_INTERVAL = 0.25
#: Node number of a wanted name that is subscribed nowhere right now.
NOWHERE = -1


class ShardedPubSubUnsupportedError(ResponseError):
    """The server does not know sharded pub/sub (Redis or Valkey before 7.0)."""


def _explained(error: ResponseError) -> ResponseError:
    text = str(error.args[0]) if error.args else str(error)
    if "unknown command" in text.lower():
        new = ShardedPubSubUnsupportedError(
            f"{text}: on a Redis Cluster the pub/sub layer uses sharded pub/sub (SSUBSCRIBE, "
            f"SPUBLISH), which needs Redis or Valkey 7.0 or later"
        )
        new.__cause__ = error
        return new
    return error


def _as_bytes(value: Any) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


class ShardedProtocol(SubscriberProtocol):
    """A cluster node's subscriber socket: ``smessage`` frames are routed, and a
    SUNSUBSCRIBE the server pushes on its own is told from the reply to ours."""

    MESSAGE = b"smessage"

    def __init__(self, loop: asyncio.AbstractEventLoop, reply_timeout: float, shard: Shard) -> None:
        super().__init__(loop, reply_timeout, shard)
        #: The channel name of each SSUBSCRIBE/SUNSUBSCRIBE in flight, by its future.
        self._names: dict[asyncio.Future, tuple[bytes, bytes]] = {}

    def execute(self, args: Sequence[Arg], block: float = 0.0) -> asyncio.Future:
        future = super().execute(args, block)
        if len(args) == 2 and not future.done():
            self._names[future] = (_as_bytes(args[0]).upper(), _as_bytes(args[1]))
        return future

    def execute_pipeline(
        self, commands: Sequence[Sequence[Arg]], block: float = 0.0, blocking: int = 0
    ) -> list[asyncio.Future]:
        futures = super().execute_pipeline(commands, block, blocking)
        for future, args in zip(futures, commands):
            if len(args) == 2 and not future.done():
                self._names[future] = (_as_bytes(args[0]).upper(), _as_bytes(args[1]))
        return futures

    def _answer(self, reply: Any) -> bool:
        pending = self._pending
        head = pending[0][0] if pending else None
        command, name = self._names.get(head, (b"", b"")) if head is not None else (b"", b"")
        kind = type(reply)
        if (kind is list or kind is PUSH_TYPE) and len(reply) == 3 and reply[0] == _SUNSUBSCRIBE:
            if command != b"SUNSUBSCRIBE" or reply[1] != name:
                # Not our SUNSUBSCRIBE's reply: the slot of this channel left the node.
                cast(NodeShard, self.shard).slot_left(reply[1])
                return True
        elif isinstance(reply, ResponseError) and name:
            redirect = parse_redirect(reply)
            if redirect is not None and redirect.slot != key_slot(name):
                # The MOVED of a SUNSUBSCRIBE whose place a pushed SUNSUBSCRIBE of the
                # same channel took (both came as its slot left): nobody's reply.
                return True
        if head is not None:
            self._names.pop(head, None)
        return super()._answer(reply)

    def _shutdown(self, error: BaseException) -> None:
        super()._shutdown(error)
        self._names.clear()


class NodeShard(Shard):
    """One primary of the cluster: an SPUBLISH connection and an SSUBSCRIBE socket."""

    PUBLISH = "SPUBLISH"
    SUBSCRIBE = "SSUBSCRIBE"
    UNSUBSCRIBE = "SUNSUBSCRIBE"
    protocol_class = ShardedProtocol

    def __init__(self, cluster: "ShardedPubSub", host: dict[str, Any], index: int) -> None:
        self.cluster = cluster
        super().__init__(cluster.layer, host, index)

    def slot_left(self, wire_name: bytes) -> None:
        """The server unsubscribed ``wire_name``: its slot is served elsewhere now."""
        self.cluster.slot_left(self, wire_name.decode("utf-8", "replace"))

    async def _resubscribe(self) -> None:
        started = time.monotonic()
        try:
            failures = await self._reconnect()
        finally:
            self.reachable.resign(self)
        if self.closing:
            return
        if self.subscriber.is_connected:
            logger.warning(
                "Pub/sub connection to cluster node %s restored after %.1f s (%d failed attempts, "
                "%d subscriptions)", self.name, time.monotonic() - started, failures, len(self.wanted),
            )
        else:
            logger.warning(
                "Cluster node %s is gone; after %.1f s its channels are being subscribed on the "
                "primaries that serve their slots now", self.name, time.monotonic() - started,
            )
        self._announced_up = True
        self.layer._notify_all(self.layer.on_reconnect)

    async def _reconnect(self) -> int:
        """As on one Redis, but for as long as names are left here: while the node does
        not answer, the map is fetched again and names another primary serves now move."""
        backoff = Backoff()
        while not self.closing and self.wanted:
            error: BaseException | None
            try:
                protocol = cast(SubscriberProtocol, await self.subscriber.connect())
                names = list(protocol.replayed)  # the order of protocol.ready's replies
                replies = await asyncio.shield(protocol.ready) if protocol.ready is not None else []
                error = protocol.closed
                if error is None:
                    self._check_replayed(names, replies)
                    break
            except (RedisError, OSError) as exc:
                error = exc
            if backoff.failed():
                logger.warning(
                    "Re-subscribing on cluster node %s failed (%s); retrying, and following the "
                    "cluster if another primary takes over (%d attempts in %.1f s so far)",
                    self.name, error, backoff.failures, backoff.down_for,
                )
            await self.cluster.node_unreachable(self)
            if self.wanted:
                await self.reachable.pause(self, backoff.next_delay())
        return backoff.failures

    def _check_replayed(self, names: list[str], replies: list) -> None:
        # A node that came back as a replica of another shard, or whose slots moved
        # meanwhile, answers MOVED: those names go to the owner.
        refused = []
        for name, reply in zip(names, replies):
            if isinstance(reply, ResponseError) and parse_redirect(reply) is not None:
                self.cluster.moved_away(self, name, reply)
            elif isinstance(reply, BaseException):
                refused.append(reply)
        self._log_refused(refused)


class ShardedPubSub:
    """Where a pub/sub layer's names are subscribed on a cluster, and its publishes go.

    Stands in for a layer's Shard: ``publish``, ``subscribe`` and ``unsubscribe`` take
    any name and go to the node that serves its slot. ``shards`` are the nodes' NodeShards
    by node number (the router's: append-only, so a number stays valid).
    """

    def __init__(self, layer: SubscriberOwner, config: ClusterConfig) -> None:
        self.layer = layer
        self.router = ClusterSlots(config)
        self.shards: list[Shard] = []
        self.commands = ClusterCommands(self.router, self._connections)
        #: Every wanted name -> the node it is subscribed (or being subscribed) on.
        self.placed: dict[str, int] = {}
        #: Names being placed again in the background, after the cluster moved them.
        self._placing: dict[str, asyncio.Task] = {}
        #: Names subscribed again on another node since the layer was made.
        self.moves = 0
        self.closing = False
        self._stale_checked = 0.0
        self._unreachable_refreshed = 0.0

    # -- publishing ---------------------------------------------------------------------
    def _connections(self) -> "ShardedPubSub":
        return self

    def command(self, node: int) -> RedisConnection:
        """The SPUBLISH connection to ``node`` (cluster_commands.NodeConnections)."""
        return self.shard(node).publisher

    def shard(self, node: int) -> Shard:
        shards = self.shards
        while len(shards) <= node:
            shards.append(NodeShard(self, self.router.hosts[len(shards)], len(shards)))
        return shards[node]

    async def publish(self, channel: str, data: bytes) -> int:
        try:
            receivers: int = await self.commands.execute(channel, "SPUBLISH", channel, data)
        except ResponseError as exc:
            raise _explained(exc) from None
        if not receivers:
            self._check_route()
        return receivers

    def _check_route(self) -> None:
        # A demoted primary still takes SPUBLISH (as a replica of its shard, which relays
        # it to the new primary over the cluster bus, best effort) and answers no MOVED,
        # so a process that publishes without subscribing there would never learn of the
        # failover. What it sees is a count of 0 receivers, as the subscribers moved on:
        # then the map is fetched again, at most once per interval.
        now = time.monotonic()
        if now - self._stale_checked >= STALE_CHECK_INTERVAL:
            self._stale_checked = now
            self.router.refresh_soon()

    # -- subscribing --------------------------------------------------------------------
    async def subscribe(self, name: str, shared: bool = False) -> None:
        """SSUBSCRIBE ``name`` on its slot's owner; raises if that fails for RETRY_FOR.

        ``shared`` is the single-Redis shard's hint (many callers subscribe one name);
        here every call is placed on its own, as before the hint existed."""
        await self.commands.ready()
        self.placed.setdefault(name, NOWHERE)
        await self._place(name, give_up=True)

    def unsubscribe_nowait(self, name: str) -> asyncio.Future | None:
        node = self.placed.pop(name, NOWHERE)
        if node == NOWHERE:
            return None
        return self.shards[node].unsubscribe_nowait(name)

    async def unsubscribe(self, name: str) -> None:
        node = self.placed.pop(name, NOWHERE)
        if node != NOWHERE:
            await self.shards[node].unsubscribe(name)

    async def _place(self, name: str, give_up: bool) -> None:
        """Subscribe ``name`` where its slot is served, for as long as it is wanted.

        ``MOVED`` names the owner; a node that cannot be reached is retried once the
        refreshed map names another owner (or it answers again). ``give_up``: raise
        the last error after RETRY_FOR seconds instead of retrying on.
        """
        router = self.router
        deadline = time.monotonic() + RETRY_FOR
        redirects = 0
        delay = 0.0
        while not self.closing and name in self.placed:
            error: BaseException
            node = NOWHERE
            try:
                node = router.node_of(name)
            except LookupError as exc:  # no primary serves the slot yet
                error = exc
            else:
                old = self.placed[name]
                if old != node:
                    if old != NOWHERE:
                        self.shards[old].unsubscribe_nowait(name)
                    self.placed[name] = node
                shard = self.shard(node)
                try:
                    await shard.subscribe(name)
                    return
                except ResponseError as exc:
                    redirect = parse_redirect(exc)
                    if redirect is None:
                        raise _explained(exc) from None
                    redirects += 1
                    if redirects > MAX_REDIRECTS:
                        raise
                    # Not subscribed there: nothing to unsubscribe when it moves on.
                    shard.wanted.discard(name)
                    if self.placed.get(name) == node:
                        self.placed[name] = NOWHERE
                    if redirect.kind == "MOVED":
                        router.moved(redirect, router.hosts[node].get("host", ""))
                        router.refresh_soon()
                    else:  # ASK is not used for sharded channels; the map will say
                        await router.refresh()
                    continue
                except (RedisConnectionError, OSError) as exc:
                    error = exc
            if give_up and time.monotonic() > deadline:
                raise error
            await router.refresh()
            try:
                unchanged = router.node_of(name) == node
            except LookupError:
                unchanged = True
            if unchanged:
                delay = min(delay * 2 or RETRY_START, RETRY_MAX)
                await asyncio.sleep(delay)

    # -- the cluster moved names --------------------------------------------------------
    def slot_left(self, shard: Shard, name: str) -> None:
        """The server of ``shard`` unsubscribed ``name`` (its slot moved): place it again."""
        if self.placed.get(name) != shard.index:
            return  # not wanted any more, or already placed elsewhere
        logger.info("Redis Cluster node %s gave up channel %s (its slot moved); re-subscribing", shard.name, name)
        self._forget(shard, name)
        self._place_soon(name, avoid=shard.index)

    def moved_away(self, shard: Shard, name: str, error: BaseException) -> None:
        """``shard`` answered a re-subscription of ``name`` with a redirection."""
        if self.placed.get(name) != shard.index:
            return
        redirect = parse_redirect(error)
        if redirect is not None and redirect.kind == "MOVED":
            self.router.moved(redirect, shard.host.get("host", ""))
        self._forget(shard, name)
        self._place_soon(name, avoid=shard.index)

    async def node_unreachable(self, shard: Shard) -> None:
        """``shard``'s node did not answer: refresh the map; move the names it lost."""
        if self.closing:
            return
        now = time.monotonic()
        if now - self._unreachable_refreshed >= UNREACHABLE_REFRESH_INTERVAL:
            self._unreachable_refreshed = now
            await self.router.refresh()
        for name in list(shard.wanted):
            try:
                node = self.router.node_of(name)
            except LookupError:
                continue
            if node != shard.index and self.placed.get(name) == shard.index:
                self._forget(shard, name)
                self._place_soon(name, avoid=shard.index)

    def _forget(self, shard: Shard, name: str) -> None:
        # The server no longer has it subscribed: nothing to send, just stop wanting it there.
        shard.wanted.discard(name)
        protocol = cast("SubscriberProtocol | None", shard.subscriber.protocol)
        if protocol is not None:
            protocol.replayed.pop(name, None)
        self.placed[name] = NOWHERE

    def _place_soon(self, name: str, avoid: int) -> None:
        if name in self._placing or self.closing:
            return
        task = self.layer.loop.create_task(self._place_again(name, avoid))
        self._placing[name] = task
        task.add_done_callback(lambda done: self._placed(name, done))

    def _placed(self, name: str, task: asyncio.Task) -> None:
        if self._placing.get(name) is task:
            del self._placing[name]

    def _owner(self, name: str) -> int:
        try:
            return self.router.node_of(name)
        except LookupError:
            return NOWHERE

    async def _place_again(self, name: str, avoid: int) -> None:
        """Place ``name`` again, which node ``avoid`` no longer serves.

        The map is fetched until it agrees: a node asked right after a failover may not
        know of it yet, and a subscription made on the demoted primary would be served
        there as a replica's (which hears its shard), off the one socket per primary.
        """
        try:
            deadline = time.monotonic() + RETRY_FOR
            delay = 0.0
            while self._owner(name) == avoid and name in self.placed and time.monotonic() < deadline:
                await self.router.refresh()
                if self._owner(name) == avoid:
                    delay = min(delay * 2 or RETRY_START, RETRY_MAX)
                    await asyncio.sleep(delay)
            await self._place(name, give_up=False)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a background task: say it, do not lose it
            logger.error(
                "Could not subscribe channel %s again on the Redis Cluster (%s: %s); messages to "
                "it are not heard until it is subscribed again", name, type(exc).__name__, exc,
            )
            return
        if name in self.placed:
            self.moves += 1

    # -- flush / close ------------------------------------------------------------------
    async def _stop_placing(self) -> None:
        tasks = list(self._placing.values())
        self._placing.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def reset(self) -> None:
        """Forget every name and stop moving any (flush); the layer resets the shards."""
        self.placed.clear()
        await self._stop_placing()

    async def close(self) -> None:
        """Stop moving names for good; the layer closes the shards."""
        self.closing = True
        self.placed.clear()
        await self._stop_placing()
