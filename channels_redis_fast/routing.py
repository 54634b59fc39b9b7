"""Where a layer's Redis keys live: one routing seam for both layers.

Everything that picks a server asks a :class:`Router`: which node owns a key, which node a
new work-queue message is written to, which nodes a receiver of a key must pop from, and
which nodes there are (for flush's SCAN, stats, the pub/sub layer's subscribers). A node
is a small int, the position of its connection options in ``router.hosts``; per event
loop, ``LoopConnections.commands[node]`` is its multiplexed connection.

:class:`HashRing` is the static list of hosts that channels_redis shards over: CRC32 of
the name, folded onto the ring (speedups.consistent_hash). A Redis Cluster router is the
other implementation the seam is shaped for:

* ``node_of`` maps a key to its hash slot's primary (CRC16 of the key or its ``{tag}``),
  where the ring hashes the channel or group *name* the key was made from (that is where
  channels_redis puts it, and processes of both share a Redis during a migration);
* ``work_node`` is that owner too (the ring spreads work-queue messages round robin), and
  ``pump_nodes`` only the owner (the ring pops from every host: stock senders put a
  process channel's messages on the shard of its full name);
* ``hosts`` grows as nodes are discovered, and never renumbers, so a node number held by
  a connection, a pump or a cached group plan stays valid; ``nodes`` lists the primaries
  holding slots now;
* after a topology change (a MOVED reply, a failover) it calls the ``on_change``
  listeners: the core layer drops its cached group plans there (their keys are grouped
  by node), and a pump whose key moved must look it up again.

No module under this one imports a layer; the layers hand it their prefix.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Iterator, Protocol, Sequence

from .connection import describe_host
from .speedups import consistent_hash

__all__ = ["HashRing", "Router"]

#: What follows a core layer's prefix in a group key (``{prefix}:group:{group}``).
GROUP_INFIX = ":group:"
#: Keys whose node a ring remembers (all are forgotten when it is full).
KNOWN_KEYS = 16384


class Router(Protocol):
    """Maps a layer's Redis keys to the nodes that hold them."""

    @property
    def hosts(self) -> Sequence[dict[str, Any]]:
        """Connection options of every node ever known, by node number (append-only)."""
        ...

    @property
    def nodes(self) -> Sequence[int]:
        """The nodes that hold keys now: flush scans them, stats reports them."""
        ...

    def node_of(self, key: str | bytes) -> int:
        """The node that owns ``key`` (a channel key, group key or pub/sub channel)."""
        ...

    def work_node(self, key: str) -> int:
        """The node a new message for the general (work-queue) channel ``key`` goes to."""
        ...

    def pump_nodes(self, key: str) -> Sequence[int]:
        """Every node a receiver of ``key`` must pop from."""
        ...

    def describe(self, node: int) -> str:
        """A short, password-free name of ``node`` for logs, errors and stats."""
        ...

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` whenever ``node_of`` may answer differently than before."""
        ...


class HashRing:
    """channels_redis's sharding: a fixed list of hosts and a CRC32 ring over names.

    ``prefix`` is the core layer's key prefix: its channel keys are hashed by the channel
    name after it, its group keys (``{prefix}:group:{group}``) by the group name. The
    pub/sub layer's keys are its Redis channel names, hashed whole (no prefix).
    """

    __slots__ = (
        "hosts", "_nodes", "_size", "_skip", "_group_str", "_group_bytes", "_spread", "_listeners", "_known"
    )

    def __init__(self, hosts: Sequence[dict[str, Any]], prefix: str | None = None) -> None:
        if not hosts:
            raise ValueError("A router needs at least one host")
        self.hosts = list(hosts)
        self._size = len(self.hosts)
        self._nodes = tuple(range(self._size))
        self._skip = len(prefix) if prefix is not None else 0
        group = None if prefix is None else prefix + GROUP_INFIX
        self._group_str = group
        self._group_bytes = group.encode("utf-8") if group is not None else None
        # channels_redis fills a work queue round robin over the ring, starting at 0.
        self._spread: Iterator[int] = itertools.cycle(self._nodes)
        self._listeners: list[Callable[[], None]] = []
        self._known: dict[str | bytes, int] = {}

    @property
    def nodes(self) -> Sequence[int]:
        return self._nodes

    def node_of(self, key: str | bytes) -> int:
        if self._size == 1:
            return 0
        node = self._known.get(key)
        if node is None:
            node = self._place(key)
        return node

    def _place(self, key: str | bytes) -> int:
        # The ring hashes the channel or group name the key was made from. Remembered:
        # a process sends to the same few process keys and groups over and over, and a
        # lookup costs less than slicing the name out and hashing it again.
        if type(key) is str:
            group = self._group_str
            name: str | bytes = key[len(group) :] if group is not None and key.startswith(group) else key[self._skip :]
        elif type(key) is bytes:
            group_bytes = self._group_bytes
            if group_bytes is not None and key.startswith(group_bytes):
                name = key[len(group_bytes) :]
            else:
                name = key[self._skip :]
        else:
            raise TypeError(f"A Redis key is str or bytes, not {type(key).__name__}")
        node = consistent_hash(name, self._size)
        known = self._known
        if len(known) >= KNOWN_KEYS:
            known.clear()
        known[key] = node
        return node

    def work_node(self, key: str) -> int:
        return next(self._spread)

    def pump_nodes(self, key: str) -> Sequence[int]:
        return self._nodes

    def describe(self, node: int) -> str:
        return describe_host(self.hosts[node])

    def on_change(self, listener: Callable[[], None]) -> None:
        # The ring never changes; kept so that listeners work the same with any router.
        self._listeners.append(listener)
