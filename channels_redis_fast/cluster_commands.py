"""Commands on a Redis Cluster: following redirections, and group_send per destination key.

The hot paths send as on one Redis (by the router, on the node's multiplexed connection)
and come here only with an error reply, so a healthy cluster costs them nothing extra.
A redirected command did not run, so it is retried: ``MOVED`` records the slot's new
owner (and refreshes the whole map in the background), ``ASK`` sends ``ASKING`` and the
command to the importing node in one write, ``TRYAGAIN`` and ``CLUSTERDOWN`` are retried
with a bounded backoff. A command that was never written (the node is gone) is retried
after a refresh of the map once the slot has a new owner. A command whose connection died
after it was written may have run: its error is raised, never retried.

Group sends: GROUP_SEND touches every destination key in one script, which a cluster
refuses (CROSSSLOT). Here the members are read on the group key's node, and each
destination key gets the single-key SEND script, all of one node's in one write and every
node at once: one round trip for the read, one per node for the writes.

Low level: imports no layer; the layer hands over what it knows (prefix, capacities,
payloads).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Protocol, Sequence

from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .cluster_router import ClusterSlots
from .cluster_slots import parse_redirect
from .connection import RedisConnection
from .exceptions import ReplyLostError
from .group_plan import GroupPlans, ShardPlan, make_plan, member_digest
from .scripts import Script, send_script

__all__ = ["ClusterCommands", "NodeConnections"]

#: Redirections one command may follow (a slot moved twice while we asked is plenty).
MAX_REDIRECTS = 8
#: Seconds a command keeps retrying TRYAGAIN, CLUSTERDOWN or an unreachable owner: long
#: enough for a replica to be promoted after its primary failed.
RETRY_FOR = 15.0
RETRY_START = 0.02
RETRY_MAX = 0.5


class NodeConnections(Protocol):
    """Where a node's multiplexed connection is: LoopConnections, or the pub/sub layer's
    publishers on a cluster (sharded_subscriber.py)."""

    def command(self, node: int) -> RedisConnection: ...


class ClusterCommands:
    """Runs commands and scripts on the node that serves their key, following the cluster."""

    def __init__(self, router: ClusterSlots, connections: Callable[[], NodeConnections]) -> None:
        self.router = router
        self.connections = connections
        self.redirects = 0

    async def ready(self) -> None:
        """Load the slot map if this is the first use (errors name every startup node)."""
        if not self.router.ready:
            await self.router.load()

    # -- one key ------------------------------------------------------------------------
    async def script(
        self, script: Script, keys: Sequence[Any], args: Sequence[Any], error: BaseException | None = None
    ) -> Any:
        """Run ``script`` on the node of ``keys[0]`` (one slot); ``error``: the reply of a
        first try the caller made itself (then it is handled first)."""
        return await self._run(keys[0], lambda by_source: script.command(keys, args, by_source), error)

    async def execute(self, key: Any, *command: Any) -> Any:
        return await self._run(key, lambda _: command, None)

    async def execute_via(self, commands: Sequence[Any], key: Any, *command: Any) -> Any:
        """As :meth:`execute`, first on ``commands`` (a closing loop's connections)."""
        node = self.router.node_of(key)
        if node >= len(commands):
            return await self.execute(key, *command)
        try:
            return await commands[node].execute(*command)
        except ResponseError as exc:
            return await self._run(key, lambda _: command, exc)

    async def execute_many(self, key: Any, commands: Sequence[Sequence[Any]]) -> list:
        """Commands on one key's node, in one write; their replies."""
        return await self._run(key, lambda _: commands, None, many=True)  # type: ignore[no-any-return]

    async def _run(
        self, key: Any, make: Callable[[bool], Any], error: BaseException | None, many: bool = False
    ) -> Any:
        router = self.router
        await self.ready()
        node = router.node_of(key)
        asking = by_source = False
        redirects = 0
        deadline = 0.0
        delay = 0.0
        while True:
            if error is None:
                connection = self.connections().command(node)
                command = make(by_source)
                commands = list(command) if many else [command]
                if asking:
                    commands = [c for one in commands for c in (("ASKING",), one)]
                try:
                    if len(commands) == 1:
                        return await connection.execute(*commands[0])
                    replies = await connection.execute_many(commands)
                    if asking:  # every other reply is ASKING's OK
                        return replies[1::2] if many else replies[1]
                    return replies
                except (ResponseError, RedisConnectionError, OSError) as exc:
                    error = exc
            if isinstance(error, (ReplyLostError, RedisTimeoutError)):
                raise error  # written: it may have run
            if isinstance(error, (RedisConnectionError, OSError)):
                # Never written (connection.py tells the two apart): the node may be
                # gone; retry once the map names another owner for the slot.
                deadline = deadline or time.monotonic() + RETRY_FOR
                if time.monotonic() > deadline:
                    raise error
                await router.refresh()
                new = router.node_of(key)
                if new == node:
                    delay = min(delay * 2 or RETRY_START, RETRY_MAX)
                    await asyncio.sleep(delay)
                node, asking, error = new, False, None
                continue
            if isinstance(error, NoScriptError) and not by_source:
                by_source, error = True, None
                continue
            redirect = parse_redirect(error)
            text = str(error.args[0]) if error.args else ""
            if redirect is not None:
                redirects += 1
                if redirects > MAX_REDIRECTS:
                    raise error
                self.redirects += 1
                default_host = router.hosts[node].get("host", "")
                if redirect.kind == "MOVED":
                    node, asking = router.moved(redirect, default_host), False
                    router.refresh_soon()
                else:
                    node, asking = router.node_at(redirect.node(default_host)), True
            elif text.startswith(("TRYAGAIN", "CLUSTERDOWN")):
                deadline = deadline or time.monotonic() + RETRY_FOR
                if time.monotonic() > deadline:
                    raise error
                delay = min(delay * 2 or RETRY_START, RETRY_MAX)
                await asyncio.sleep(delay)
                if text.startswith("CLUSTERDOWN"):
                    await router.refresh()
                node, asking = router.node_of(key), False
            else:
                raise error
            error = None

    # -- groups -------------------------------------------------------------------------
    async def group_send(self, layer: GroupSender, group: str, message: dict) -> None:
        """Deliver ``message`` to every member of ``group`` (see the module docstring)."""
        now = time.time()
        key = layer._group_key(group)
        _, members = await self.execute_many(
            key, [("ZREMRANGEBYSCORE", key, "-inf", f"({now - layer.group_expiry!r}"), ("ZRANGE", key, 0, -1)]
        )
        plans = layer._group_plans
        if not members:
            plans.pop(group, None)
            return
        # The plan (keys bundled per process, grouped per node) is kept while the members
        # and the map stay the same (the router's listeners drop every plan on a change).
        plan = plans.get(group)
        if plan is None or plan.digest != member_digest(members):
            plan = make_plan(members, -1, layer.prefix, self.router.node_of, layer.get_capacity)
            plans.remember(group, plan)
        state = self.connections()
        cutoff, ttl = now - layer.expiry, layer._key_ttl
        calls: list[tuple[list, list]] = []
        started = []
        for node, shard in plan.by_shard.items():
            connection = state.command(node)
            for dest, payload, capacity in zip(shard.keys, layer._group_payloads(message, shard), shard.capacities):
                keys, args = [dest], [payload, now, cutoff, capacity, ttl]
                calls.append((keys, args))
                started.append(connection.execute(*send_script.command(keys, args)))
        replies = await asyncio.gather(*started, return_exceptions=True)
        failure: BaseException | None = None
        over = 0
        for (keys, args), reply in zip(calls, replies):
            try:
                if isinstance(reply, ResponseError):
                    reply = await self.script(send_script, keys, args, reply)
                elif isinstance(reply, RedisConnectionError) and not isinstance(reply, ReplyLostError):
                    reply = await self.script(send_script, keys, args)  # never written: retried
                elif isinstance(reply, BaseException):
                    raise reply
            except Exception as exc:  # noqa: BLE001 - raised once every key was tried
                failure = failure or exc
                continue
            if not reply:
                over += 1
        layer._count_group_over(over, plan.member_count, group)
        if failure is not None:
            raise failure


class GroupSender(Protocol):
    """What group_send needs of the core layer (declared here: this module imports no layer)."""

    @property
    def prefix(self) -> str: ...

    @property
    def expiry(self) -> float: ...

    @property
    def group_expiry(self) -> float: ...

    @property
    def _group_plans(self) -> GroupPlans: ...

    @property
    def _key_ttl(self) -> int: ...

    def _group_key(self, group: str) -> bytes: ...

    def get_capacity(self, channel: str) -> int: ...

    def _group_payloads(self, message: dict, shard: ShardPlan) -> list[bytes]: ...

    def _count_group_over(self, over: int, members: int, group: str) -> None: ...
