"""The Redis Cluster implementation of the routing seam (routing.Router) over a slot map.

A node is a primary's position in ``hosts``; nodes are appended as they are discovered
(the first map, a MOVED or ASK naming a node we did not know, a refresh after a failover)
and never renumbered, so a node number held by a connection, a pump or a group plan stays
valid. ``nodes`` are the primaries that serve slots now. Keys are hashed as Redis does
(CRC16 of the key or of its ``{tag}``), whole keys, prefix included: that is what the
server checks, and what makes a script touching one key (or one key and its
``$inflight{key}`` backup) run on one slot.

The map is learnt on first use from an event loop (:meth:`ClusterSlots.ready`): the
layers await it before they write anything, so an unreachable cluster fails the first
operation with ClusterUnreachableError naming every startup node, nothing written. A MOVED
reply updates its slot at once (:meth:`moved`) and asks for a full refresh in the
background; listeners registered with :meth:`on_change` hear of every change.

Low level: imports no layer.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Sequence

from .cluster_config import ClusterConfig
from .cluster_slots import SLOT_COUNT, Node, Redirect, SlotMap, UncoveredSlotError, fetch_from_node, fetch_slot_map
from .speedups import key_slot

logger = logging.getLogger(__name__)

__all__ = ["ClusterSlots", "check_prefix"]

#: A slot no known primary serves (the cluster is down for it, or not loaded yet).
UNCOVERED = -1


def check_prefix(prefix: str) -> str:
    """``prefix``, if every key under it hashes like its work-queue backup; else ValueError.

    A work-queue pump's in-flight key is ``<key>$inflight{<key>}...``: its hash tag is the
    queue key, or the prefix's own tag, so both land in one slot, unless the prefix has a
    brace that is no complete, non-empty ``{tag}``.
    """
    if "{" in prefix or "}" in prefix:
        start = prefix.find("{")
        end = prefix.find("}", start + 1) if start >= 0 else -1
        if start < 0 or end <= start + 1:
            raise ValueError(
                f"On a Redis Cluster a prefix with braces must hold a complete hash tag such as "
                f"'{{asgi}}' (which puts every key in one slot), not {prefix!r}"
            )
    return prefix


class ClusterSlots:
    """Routes keys to the primary that serves their hash slot."""

    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self.hosts: list[dict[str, Any]] = []
        self._addresses: list[Node] = []
        self._index: dict[Node, int] = {}
        self._slot_node: list[int] = [UNCOVERED] * SLOT_COUNT
        self._nodes: tuple[int, ...] = ()
        self.slot_map: SlotMap | None = None
        self._listeners: list[Callable[[], None]] = []
        # Per event loop: the first load, and a refresh in progress (each its own future,
        # as futures and tasks belong to one loop).
        self._loading: dict[asyncio.AbstractEventLoop, asyncio.Future] = {}
        self._refreshing: dict[asyncio.AbstractEventLoop, asyncio.Future] = {}
        self.refreshes = 0

    # -- Router ---------------------------------------------------------------------------
    @property
    def nodes(self) -> Sequence[int]:
        return self._nodes

    def node_of(self, key: str | bytes) -> int:
        node = self._slot_node[key_slot(key)]
        if node < 0:
            if self.slot_map is None:
                raise RuntimeError("The Redis Cluster slot map is not loaded yet (await ready() first)")
            raise UncoveredSlotError(f"No primary of the Redis Cluster serves the slot of {key!r} now")
        return node

    def work_node(self, key: str) -> int:
        return self.node_of(key)

    def pump_nodes(self, key: str) -> Sequence[int]:
        return (self.node_of(key),)

    def describe(self, node: int) -> str:
        return str(self._addresses[node])

    def on_change(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    # -- the map --------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.slot_map is not None

    async def load(self) -> None:
        """Learn the slot map from the startup nodes, once (concurrent callers share it)."""
        if self.slot_map is not None:
            return
        loop = asyncio.get_running_loop()
        loading = self._loading.get(loop)
        if loading is None:
            loading = self._loading[loop] = asyncio.ensure_future(
                fetch_slot_map(self.config.startup, self.config.options)
            )
            loading.add_done_callback(lambda _: self._loading.pop(loop, None))
        slot_map = await asyncio.shield(loading)
        if self.slot_map is None:
            self.install(slot_map)

    def node_at(self, address: Node) -> int:
        """The node number of ``address``, appended (and announced) if it is new."""
        node = self._index.get(address)
        if node is None:
            node = len(self.hosts)
            self.hosts.append(self.config.node_kwargs(address))
            self._addresses.append(address)
            self._index[address] = node
            self._changed()
        return node

    def install(self, slot_map: SlotMap) -> None:
        """Route by ``slot_map`` from now on; listeners hear of it if anything moved."""
        index = self._index
        for address in slot_map.primaries:
            if address not in index:
                self.node_at(address)
        owners: list[int] = [UNCOVERED] * SLOT_COUNT
        for start, end, address in slot_map.ranges():
            owners[start : end + 1] = [index[address]] * (end - start + 1)
        primaries = tuple(index[address] for address in slot_map.primaries)
        changed = owners != self._slot_node or primaries != self._nodes
        self.slot_map = slot_map
        self._slot_node = owners
        self._nodes = primaries
        if changed:
            self._changed()

    def moved(self, redirect: Redirect, default_host: str) -> int:
        """Record a MOVED reply (its slot is served elsewhere now); the new owner's node."""
        node = self.node_at(redirect.node(default_host))
        if self._slot_node[redirect.slot] != node:
            self._slot_node[redirect.slot] = node
            if self.slot_map is not None:
                self.slot_map.assign(redirect.slot, redirect.node(default_host))
            if node not in self._nodes:
                self._nodes = (*self._nodes, node)
            self._changed()
        return node

    def refresh_soon(self) -> None:
        """Fetch the whole map again in the background (a MOVED rarely comes alone)."""
        loop = asyncio.get_running_loop()
        if loop not in self._refreshing:
            self._start_refresh(loop)

    async def refresh(self) -> None:
        """Fetch the whole map again now (after a node stopped answering)."""
        loop = asyncio.get_running_loop()
        refreshing = self._refreshing.get(loop) or self._start_refresh(loop)
        await asyncio.shield(refreshing)

    def _start_refresh(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future:
        task = self._refreshing[loop] = asyncio.ensure_future(self._fetch_again())
        task.add_done_callback(lambda _: self._refreshing.pop(loop, None))
        return task

    async def _fetch_again(self) -> None:
        # Known primaries first (the startup nodes may be a configuration endpoint that
        # answers from one of them anyway), then the startup nodes.
        self.refreshes += 1
        failures = []
        for address in [self._addresses[node] for node in self._nodes] + [
            address for address in self._addresses if self._index[address] not in self._nodes
        ]:
            try:
                slot_map = await fetch_from_node(self.config.node_kwargs(address))
            except Exception as exc:  # noqa: BLE001 - the next node may answer
                failures.append(f"{address} ({type(exc).__name__}: {exc})")
                continue
            if slot_map.covers_all:
                self.install(slot_map)
                return
        try:
            self.install(await fetch_slot_map(self.config.startup, self.config.options))
        except Exception as exc:  # noqa: BLE001 - routing goes on with the map it has
            logger.warning(
                "Could not refresh the Redis Cluster slot map (%s: %s); tried %s",
                type(exc).__name__, exc, "; ".join(failures) or "the startup nodes",
            )

    def _changed(self) -> None:
        for listener in list(self._listeners):
            listener()
