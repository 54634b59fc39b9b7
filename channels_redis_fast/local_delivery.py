"""In-process delivery: a layer's messages to its own process channels skip Redis.

A process channel made by this layer instance (its client prefix in the core layer; a
``new_channel()`` of this loop layer in the pub/sub layer) is only ever received here, so
a message for it needs neither Redis nor serialization: it goes straight into the
channel's :class:`~.local_channel.LocalChannel`, waking its receiver. The rules are those
of the Redis path, so a consumer cannot tell the two apart:

* the receiver gets a copy it owns, equal to what decoding would give, never the sender's
  dict; a message the Redis path would refuse (or change) takes that path instead;
* capacity counts what the channel already holds, however it came (``ChannelFull`` in the
  core layer; the oldest dropped in the pub/sub layer, as its buffers do);
* a buffered message older than ``expiry`` is removed before anyone receives it;
* order per sender holds because one loop does all local deliveries (see
  :meth:`CoreDelivery.loop_ok`); anything else takes the Redis path as before.

Group membership stays in Redis: the core layer still learns a group's members from its
cached plan and digest check (group_plan.py) and only delivers the members behind its own
process key here (:meth:`CoreDelivery.split`). Work-queue channels and channels of other
instances, even in this process, keep going through Redis.

Nothing here imports a layer: the core layer is reached through :class:`CoreOwner`.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import heapq
import itertools
import time
from typing import Any, Callable, Protocol

from channels.exceptions import ChannelFull

from .group_plan import GroupPlan, ShardPlan
from .local_channel import LocalChannel

__all__ = ["CoreDelivery", "CoreOwner", "Expiry", "plain_copy"]

#: A channel's expiry records are pruned of messages already received once they number
#: this many times the channel's buffer size (so they stay bounded by the buffer).
PRUNE_FACTOR = 2
#: Seconds an expiry sweep waits when another loop receives (it must not touch buffers
#: from a thread other than the receiving one).
SWEEP_RETRY = 1.0


class _NotPlain(Exception):
    """A value the Redis path would refuse or change: such a message takes that path."""


#: msgpack's integer range.
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


def plain_copy(message: dict) -> dict | None:
    """A copy of ``message`` the receiver owns, equal to what decoding it would give: new
    dicts and lists (tuples become lists, bytearrays bytes, as msgpack makes them), shared
    immutable values. None when it holds anything else (an object msgpack cannot pack, an
    out-of-range int, a map key that is not str or bytes, a subclass): the Redis path then
    raises or converts exactly as before."""
    try:
        return _plain_dict(message)
    except _NotPlain:
        return None


def _plain_dict(mapping: dict) -> dict:
    copy = {}
    for key, value in mapping.items():
        if type(key) is not str and type(key) is not bytes:
            raise _NotPlain
        kind = type(value)
        if kind is str or kind is float or kind is bool or value is None or kind is bytes:
            copy[key] = value
        else:
            copy[key] = _plain(value)
    return copy


def _plain(value: Any) -> Any:
    kind = type(value)
    if kind is str or kind is float or kind is bool or value is None or kind is bytes:
        return value
    if kind is int:
        if _INT_MIN <= value <= _INT_MAX:
            return value
        raise _NotPlain
    if kind is dict:
        return _plain_dict(value)
    if kind is list or kind is tuple:
        return [_plain(item) for item in value]
    if kind is bytearray:
        return bytes(value)
    raise _NotPlain


def make_room(local: LocalChannel, capacity: int) -> None:
    """Let ``local`` hold ``capacity`` messages without dropping one (a ``channel_capacity``
    pattern may allow more than the buffer was made for, which Redis would have held)."""
    if capacity > local.capacity:
        local.capacity = capacity
        local.refit()


class Expiry:
    """Removes buffered local messages nobody received within ``seconds``.

    Through Redis a message older than ``expiry`` is skipped when popped; a local message
    is never popped, so each one buffered (not handed straight to a receiver) is noted
    with its deadline, and a timer on the delivering loop takes out those still buffered
    when it passes. Records are per channel and pruned against the buffer, so they never
    outgrow it.
    """

    def __init__(
        self,
        seconds: float,
        on_expired: Callable[[LocalChannel, int], None],
        may_sweep: Callable[[asyncio.AbstractEventLoop], bool],
    ) -> None:
        self.seconds = seconds
        self._on_expired = on_expired
        self._may_sweep = may_sweep
        #: Per channel: (deadline, message) of each local message buffered there, oldest first.
        self._records: dict[LocalChannel, collections.deque[tuple[float, Any]]] = {}
        #: (first deadline, serial, channel) of each channel with records.
        self._due: list[tuple[float, int, LocalChannel]] = []
        self._serial = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None

    def note(self, local: LocalChannel, item: Any, now: float, loop: asyncio.AbstractEventLoop) -> None:
        """``item`` was buffered in ``local`` at ``now`` on ``loop``."""
        deadline = now + self.seconds
        records = self._records.get(local)
        if records is None:
            records = self._records[local] = collections.deque()
            heapq.heappush(self._due, (deadline, next(self._serial), local))
        if self._timer is None:
            self._schedule(loop, now)
        else:
            self.adopt(loop, now)
        records.append((deadline, item))
        if len(records) > PRUNE_FACTOR * max(local.maxsize, 32):
            self._prune(local, records, now, expire=False)

    def adopt(self, loop: asyncio.AbstractEventLoop, now: float) -> None:
        """Move the timer to ``loop`` if its own loop was closed since (``asyncio.run`` per
        call): a timer there never fires."""
        old = self._timer_loop
        if self._due and old is not None and old is not loop and old.is_closed():
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._sweep(loop)  # what is overdue goes now, before anything else is put

    def _schedule(self, loop: asyncio.AbstractEventLoop, now: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_later(max(0.0, self._due[0][0] - now), self._sweep, loop)
        self._timer_loop = loop

    def clear(self) -> None:
        """Forget every record (flush dropped the buffers)."""
        self._records.clear()
        self._due.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        if not self._may_sweep(loop):
            self._timer = loop.call_later(SWEEP_RETRY, self._sweep, loop)
            self._timer_loop = loop
            return
        now = time.time()
        due = self._due
        while due and due[0][0] <= now:
            _, _, local = heapq.heappop(due)
            records = self._records.get(local)
            if records:
                self._prune(local, records, now, expire=True)
            if records:
                heapq.heappush(due, (records[0][0], next(self._serial), local))
            else:
                self._records.pop(local, None)
        if due:
            self._schedule(loop, now)

    def _prune(self, local: LocalChannel, records: collections.deque, now: float, expire: bool) -> None:
        """Drop records of messages no longer buffered; with ``expire``, also take the
        messages past their deadline out of the buffer (keeping the others in order)."""
        # Only this module's own copies are recorded, so identity tells them apart.
        late = set()
        if expire:
            while records and records[0][0] <= now:
                late.add(id(records.popleft()[1]))
        held = [local.get_nowait() for _ in range(len(local))]
        kept = [item for item in held if id(item) not in late]
        for item in kept:
            local.put_nowait(item)
        present = {id(item) for item in kept}
        alive = [record for record in records if id(record[1]) in present]
        records.clear()
        records.extend(alive)
        if len(kept) != len(held):
            self._on_expired(local, len(held) - len(kept))


class CoreOwner(Protocol):
    """What in-process delivery reads of a core ``RedisChannelLayer``."""

    capacity: int
    receive_buffer: dict[str, LocalChannel]
    receive_event_loop: asyncio.AbstractEventLoop | None
    stats_counters: Any
    _own_suffix: str

    @property
    def expiry(self) -> float: ...

    def get_capacity(self, channel: str) -> int: ...

    def _drop_if_idle(self, local: LocalChannel) -> None: ...


class CoreDelivery:
    """In-process delivery for one core layer instance."""

    def __init__(self, layer: CoreOwner) -> None:
        self.layer = layer
        #: The loop that delivers locally while nobody receives (see loop_ok).
        self._loop: asyncio.AbstractEventLoop | None = None
        self.expiry = Expiry(layer.expiry, self._expired, self._may_sweep)
        #: group -> (the plan as cached, the plan without our process keys, our members).
        self._splits: dict[str, tuple[GroupPlan, GroupPlan, tuple[str, ...]]] = {}

    def forked(self) -> None:
        """A forked child: nothing of the parent's loops or records is ours."""
        self._loop = None
        self.expiry = Expiry(self.layer.expiry, self._expired, self._may_sweep)
        self._splits.clear()

    def loop_ok(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Whether ``loop`` may deliver locally now.

        Local channels belong to the loop that receives on them: a delivery from another
        thread's loop could not wake its receivers safely, and two loops delivering would
        lose the per-sender order. So: the receiving loop, or, while nobody receives,
        the one loop that delivered locally before (another once that one is closed).
        Other callers take the Redis path, as before.
        """
        receiving = self.layer.receive_event_loop
        if receiving is not None:
            return receiving is loop
        owner = self._loop
        if owner is loop:
            return True
        if owner is None or owner.is_closed():
            self._loop = loop
            self.expiry.adopt(loop, time.time())
            return True
        return False

    def _may_sweep(self, loop: asyncio.AbstractEventLoop) -> bool:
        return self.layer.receive_event_loop in (None, loop)

    def _expired(self, local: LocalChannel, count: int) -> None:
        self.layer.stats_counters["expired"] += count
        self.layer._drop_if_idle(local)

    # -- direct sends -------------------------------------------------------------------
    def send(self, channel: str, bang: int, message: dict, loop: asyncio.AbstractEventLoop) -> bool:
        """Deliver ``message`` here if ``channel`` is one of ours (True), else False.

        Raises ChannelFull when the channel already holds its capacity."""
        if not channel[: bang + 1].endswith(self.layer._own_suffix) or not self.loop_ok(loop):
            return False
        item = plain_copy(message)
        if item is None:
            return False
        if not self._put(channel, item, time.time(), loop):
            self.layer.stats_counters["channel_full"] += 1
            raise ChannelFull(channel)
        self.layer.stats_counters["sent_local"] += 1
        return True

    def _put(self, channel: str, item: dict, now: float, loop: asyncio.AbstractEventLoop) -> bool:
        """Buffer (or hand over) ``item`` in ``channel``; False if it is at capacity."""
        layer = self.layer
        capacity = layer.get_capacity(channel)
        local = layer.receive_buffer.get(channel)
        if local is None:
            local = layer.receive_buffer[channel] = LocalChannel(channel, max(capacity, layer.capacity))
        elif len(local) >= capacity:
            return False
        else:
            make_room(local, capacity)
        local.touched = now
        local.put(item)
        if local.handed_item is not item:
            self.expiry.note(local, item, now, loop)
        return True

    # -- groups -------------------------------------------------------------------------
    def split(
        self, group: str, plan: GroupPlan, group_node: int, message: dict, loop: asyncio.AbstractEventLoop
    ) -> tuple[GroupPlan, tuple[str, ...], Any]:
        """(what Redis still delivers, our members, the message for them) of a group's plan.

        The plan's digest still covers every member, so the group's check in Redis sees
        a membership change made by any process exactly as before."""
        if not self.loop_ok(loop):
            return plan, (), None
        known = self._splits.get(group)
        if known is None or known[0] is not plan:
            known = self._split(group, plan, group_node)
        if not known[2]:
            return plan, (), None
        item = plain_copy(message)
        if item is None:
            return plan, (), None
        return known[1], known[2], item

    def _split(
        self, group: str, plan: GroupPlan, group_node: int
    ) -> tuple[GroupPlan, GroupPlan, tuple[str, ...]]:
        suffix = self.layer._own_suffix
        here: list[str] = []
        by_shard: dict[int, ShardPlan] = {}
        for node, shard in plan.by_shard.items():
            keep = [i for i, key in enumerate(shard.keys) if not key.endswith(suffix)]
            if len(keep) == len(shard.keys):
                by_shard[node] = shard
                continue
            for i, names in enumerate(shard.names):
                if i not in keep:
                    here.extend(names)
            if keep:
                by_shard[node] = ShardPlan(
                    [shard.keys[i] for i in keep],
                    [shard.names[i] for i in keep],
                    [shard.capacities[i] for i in keep],
                )
        remote = plan
        if here:
            # With no destination left elsewhere, the group's check is the one script.
            remote = dataclasses.replace(plan, by_shard=by_shard, on_group_shard=set(by_shard) <= {group_node})
        if len(self._splits) >= 1024:
            self._splits.clear()
        known = self._splits[group] = (plan, remote, tuple(here))
        return known

    def group(self, names: tuple[str, ...], item: dict, loop: asyncio.AbstractEventLoop) -> int:
        """Deliver a group message (split's copy) to our members ``names``; how many were
        at capacity (skipped, as Redis skips a full process key)."""
        now = time.time()
        over = 0
        put = self._put
        for name in names:
            if not put(name, item, now, loop):
                over += 1
        self.layer.stats_counters["group_sent_local"] += len(names) - over
        return over

    def flushed(self) -> None:
        """flush() dropped every buffer and plan."""
        self.expiry.clear()
        self._splits.clear()

