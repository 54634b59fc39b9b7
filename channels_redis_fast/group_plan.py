"""Where a group_send goes: destination keys, bundled channel names and capacities per shard.

A plan is made from one read of the group's members. Members rarely change between two
sends, so the core layer keeps the plan of each group it sends to, with a digest of the
member list it was made from. The next send starts with the GROUP_SEND_KNOWN script on
the group's shard: it prunes the group, checks the digest against the members it finds
(Lua's ``redis.sha1hex``) and only if they match writes the destinations on that shard.
Destinations on other shards are written after that check passed. While the group and
every destination live on one shard, a send is thus one round trip instead of two; on
several shards it skips reading (and decoding, and re-bundling) the whole member list,
which for a 500-member group cost more client time than the sends themselves. When the
digest differs nothing is written and the layer reads the members again and makes a new
plan. A group changed by any process, ours or a stock channels_redis one, is therefore
never sent to from a stale plan.

Computing that digest in Lua costs a Lua string per member plus hashing them all, which
grows with the group. So after one send has checked it, the script keeps a snapshot of
the members of a group that large (``SNAPSHOT_MIN_MEMBERS``) beside it
(``SNAPSHOT_SUFFIX``, marked with the digest), and later sends of the same plan compare
the group with it in C (ZDIFF) instead (see scripts.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Callable

from .exceptions import RESERVED_KEY
from .speedups import pack_message

#: Groups whose plans a layer remembers (all are dropped when it is full).
PLAN_CACHE_SIZE = 1024
#: The group key plus this names its member snapshot ("$" is never in a group name).
SNAPSHOT_SUFFIX = b"$plan"
#: Seconds a snapshot outlives the last send that used it (it holds a copy of the members).
SNAPSHOT_TTL = 300
#: Smaller groups keep no snapshot: their digest costs the script little, and a copy of
#: every small group (one per conversation, say) would double their keys for nothing.
SNAPSHOT_MIN_MEMBERS = 32


def member_digest(members: list[bytes]) -> str:
    """What the script computes from ZRANGE: SHA-1 of the members joined by newlines.

    Valid channel names have no newline, so the joined form is unambiguous.
    """
    return hashlib.sha1(b"\n".join(members)).hexdigest()


@dataclasses.dataclass(frozen=True)
class ShardPlan:
    """The destinations on one node: one key per process (or general channel)."""

    keys: list[str]
    #: Per key, the group's channels behind it (bundled into one message's
    #: ``__asgi_channel__``, as channels_redis does).
    names: list[list[str]]
    capacities: list[int]
    #: Per key, msgpack of ``"__asgi_channel__"`` and its names, packed on first use (see
    #: bundled_payloads): the part of every send's message that only changes with the plan.
    tails: list[bytes] = dataclasses.field(default_factory=list)


def bundled_payloads(message: dict, shard: ShardPlan, prefix_length: int) -> list[bytes] | None:
    """Per key of ``shard``, the bytes ``pack_message`` gives for ``message`` with
    ``__asgi_channel__`` set to that key's names (the key last, as a dict copy puts it),
    the names packed once per plan instead of once per send. None when ``message`` packs
    as a map too large to take one more entry in its one-byte header.

    The keys of one send share one random prefix: they are different sorted sets, and
    each send still gets a prefix of its own.
    """
    head = pack_message(message, prefix_length)
    count = head[prefix_length] if len(head) > prefix_length else 0
    if not 0x80 <= count < 0x8F:  # a fixmap with room for one more entry
        return None
    if not shard.tails:
        key = pack_message(RESERVED_KEY, 0)
        shard.tails.extend(key + pack_message(names, 0) for names in shard.names)
    start = b"".join((head[:prefix_length], bytes((count + 1,)), head[prefix_length + 1 :]))
    return [start + tail for tail in shard.tails]


#: The group's shard part of a plan whose destinations are all elsewhere.
NO_DESTINATIONS = ShardPlan([], [], [])


@dataclasses.dataclass(frozen=True)
class GroupPlan:
    digest: str
    member_count: int
    by_shard: dict[int, ShardPlan]
    #: Every destination is on the group's own shard: the one-script path applies.
    on_group_shard: bool
    #: The snapshot's ttl the check script gets: 0 for a group too small to keep one.
    snapshot_ttl: int = 0


def make_plan(
    members: list[bytes],
    group_node: int,
    prefix: str,
    node_of: Callable[[str], int],
    capacity_of: Callable[[str], int],
) -> GroupPlan:
    """Bundle ``members`` (raw ZRANGE names) by process key, and the keys by the node
    ``node_of`` (the layer's router) says holds them."""
    bundles: dict[str, tuple[list[str], int]] = {}
    for raw in members:
        name = raw.decode("utf-8")
        bang = name.find("!")
        key = prefix + (name if bang < 0 else name[: bang + 1])
        bundle = bundles.get(key)
        if bundle is None:
            bundles[key] = ([name], capacity_of(name))
        else:
            bundle[0].append(name)
    by_shard: dict[int, ShardPlan] = {}
    for key, (names, capacity) in bundles.items():
        node = node_of(key)
        shard = by_shard.get(node)
        if shard is None:
            shard = by_shard[node] = ShardPlan([], [], [])
        shard.keys.append(key)
        shard.names.append(names)
        shard.capacities.append(capacity)
    return GroupPlan(
        digest=member_digest(members),
        member_count=len(members),
        by_shard=by_shard,
        on_group_shard=set(by_shard) == {group_node},
        snapshot_ttl=SNAPSHOT_TTL if len(members) >= SNAPSHOT_MIN_MEMBERS else 0,
    )


class GroupPlans(dict):
    """group name -> GroupPlan, bounded."""

    def remember(self, group: str, plan: GroupPlan) -> None:
        if len(self) >= PLAN_CACHE_SIZE and group not in self:
            self.clear()
        self[group] = plan
