"""The Lua scripts of the core layer, sent by SHA once loaded.

Each layer operation is one script so that it costs one round trip and cannot be
interleaved with another client's commands on the same keys. Keys, scores and members
are exactly those channels_redis 4.x reads and writes.

Under ``maxmemory`` with ``noeviction`` Redis refuses a memory-growing command inside a
script only while the script has not written anything yet: after a first write it cannot
stop half way. So every script only reads until its first ZADD, which goes through
``redis.pcall``: that is where a full Redis refuses the whole operation, with nothing
written, and the caller gets redis-py's OutOfMemoryError. Pruning expired members and
EXPIRE come after it. The reads use only commands the README's ACL rule already grants.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any, Awaitable, Callable, Sequence

from redis.exceptions import NoScriptError, ResponseError

from .connection import RedisConnection

# A redis.pcall error as a plain error reply. Redis 6.2 hands pcall errors over as
# "@user_script: 3: -OOM ...\r\n", which would hide the error code from clients.
REFUSED = """
local function refused(reply)
    local message = string.match(reply.err, '^@[^:]*: %d+: %-(.*)$') or reply.err
    return redis.error_reply((string.gsub(message, '%s+$', '')))
end
"""

# Whether ``key`` has fewer live members (score >= cutoff) than ``capacity``, found
# without pruning: past capacity - 1 members the rest must be expired, so at most that
# many expired ones are fetched (none below capacity, one at it).
HAS_ROOM = """
local function has_room(key, cutoff, capacity)
    local size = redis.call('ZCARD', key)
    if size < capacity then
        return true
    end
    local need = size - capacity + 1
    return #redis.call('ZRANGE', key, '-inf', '(' .. cutoff, 'BYSCORE', 'LIMIT', 0, need) >= need
end
"""

# KEYS[1] channel key
# ARGV: member, score (send time), expiry cutoff, capacity, key ttl (whole seconds)
SEND = REFUSED + HAS_ROOM + """
if not has_room(KEYS[1], ARGV[3], tonumber(ARGV[4])) then
    redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3])
    return 0
end
local added = redis.pcall('ZADD', KEYS[1], ARGV[2], ARGV[1])
if type(added) == 'table' then
    return refused(added)
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""

# For the group scripts: the message ARGV[mbase + i] goes to KEYS[kbase + i] (i = 1..n)
# where there is room (capacity ARGV[cbase + i]), then all n keys are pruned. Returns how
# many keys were at capacity (their message is dropped, as the spec wants for group
# sends), or an error reply when Redis refused the first ZADD, with nothing written.
DELIVER = REFUSED + HAS_ROOM + """
local function deliver(kbase, n, score, cutoff, ttl, mbase, cbase)
    local open = {}
    for i = 1, n do
        if has_room(KEYS[kbase + i], cutoff, tonumber(ARGV[cbase + i])) then
            open[#open + 1] = i
        end
    end
    for j = 1, #open do
        local i = open[j]
        local key = KEYS[kbase + i]
        if j == 1 then
            local added = redis.pcall('ZADD', key, score, ARGV[mbase + i])
            if type(added) == 'table' then
                return refused(added)
            end
        else
            redis.call('ZADD', key, score, ARGV[mbase + i])
        end
        redis.call('EXPIRE', key, ttl)
    end
    for i = 1, n do
        redis.call('ZREMRANGEBYSCORE', KEYS[kbase + i], '-inf', '(' .. cutoff)
    end
    return n - #open
end
"""

# A shared work queue cannot be read first and removed later (other processes pop it
# too), so the pump pops into a backup instead: the members it takes stay in its own
# in-flight key, with their scores, until it has them, and a pop whose reply was lost
# with its connection is put back into the queue (WORK_RESTORE). Chunks of 1000 keep
# unpack() under Lua's stack limit.
ZADD_ALL = """
local function zadd_all(key, pairs)
    for first = 1, #pairs, 2000 do
        local args = {}
        for i = first, math.min(first + 1999, #pairs), 2 do
            args[#args + 1] = pairs[i + 1]
            args[#args + 1] = pairs[i]
        end
        redis.call('ZADD', key, unpack(args))
    end
end
"""

# KEYS: n channel keys
# ARGV: score, expiry cutoff, key ttl, member_1..member_n, capacity_1..capacity_n
GROUP_SEND = DELIVER + """
return deliver(0, #KEYS, ARGV[1], ARGV[2], ARGV[3], 3, 3 + #KEYS)
"""

# As GROUP_SEND, after checking that the group still has the members a cached plan was
# made from (see group_plan.py); returns -1, writing nothing, when it does not.
#
# The check has two ways. The quick one compares the group with its snapshot (a copy of
# the members, all scored 0, whose first member is "\0" followed by the digest of the plan
# it was made for): the snapshot is of this plan, the group has as many members plus none
# expired, and ZDIFF (in C, no Lua string per member) finds no member outside it. Only
# then are the live members exactly the plan's. Otherwise the slow way: the digest of the
# live members, computed in Lua; when it matches, the snapshot is made anew after the
# delivery, so the next send of this plan takes the quick way. A ZDIFF the ACL refuses
# means the slow way, and the snapshot is left to expire instead of being kept alive, so
# ZDIFF is tried (and logged as refused) again only once per snapshot ttl. A snapshot ttl of 0 (a
# small group, whose digest costs little) means the slow way and no snapshot.
# KEYS[1] group key, KEYS[2] its snapshot, KEYS[3..n+2] channel keys
# ARGV: group cutoff ("(score"), member digest, score, expiry cutoff, key ttl,
#       snapshot ttl (whole seconds), member_1..member_n, capacity_1..capacity_n
GROUP_SEND_KNOWN = DELIVER + ZADD_ALL + """
local group, snapshot, mark = KEYS[1], KEYS[2], '\\0' .. ARGV[2]
local size = redis.call('ZCARD', group)
if size == 0 then
    return -1
end
local kept = ARGV[6] ~= '0'
local quick, refused = false, false
if kept and redis.call('ZRANGE', snapshot, 0, 0)[1] == mark and redis.call('ZCARD', snapshot) == size + 1
        and #redis.call('ZRANGE', group, '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, 1) == 0 then
    local outside = redis.pcall('ZDIFF', 2, group, snapshot)
    if outside.err then
        refused = true
    else
        quick = #outside == 0
    end
end
local members
if not quick then
    members = redis.call('ZRANGE', group, string.sub(ARGV[1], 2), '+inf', 'BYSCORE')
    if #members == 0 or redis.sha1hex(table.concat(members, '\\n')) ~= ARGV[2] then
        return -1
    end
end
local n = #KEYS - 2
local over = deliver(2, n, ARGV[3], ARGV[4], ARGV[5], 6, 6 + n)
if type(over) == 'table' then
    return over
end
redis.call('ZREMRANGEBYSCORE', group, '-inf', ARGV[1])
if members and kept and not refused then
    -- Under maxmemory the snapshot (only a shortcut) is skipped when its first write
    -- is refused; once one went through, the rest cannot be.
    if type(redis.pcall('ZADD', snapshot, 0, mark)) == 'number' then
        redis.call('ZREMRANGEBYSCORE', snapshot, '-inf', '+inf')
        local entries = {mark, 0}
        for i = 1, #members do
            entries[#entries + 1] = members[i]
            entries[#entries + 1] = 0
        end
        zadd_all(snapshot, entries)
    end
end
if kept and not refused then
    redis.call('EXPIRE', snapshot, ARGV[6])
end
return over
"""

# KEYS[1] group key
# ARGV: score (now), channel, key ttl (whole seconds)
GROUP_ADD = REFUSED + """
local added = redis.pcall('ZADD', KEYS[1], ARGV[1], ARGV[2])
if type(added) == 'table' then
    return refused(added)
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return added
"""

# Members joining one group at once (group_joins.py): ARGV[1] the key's TTL, then score,
# member pairs, ZADDed in chunks that keep unpack() under Lua's stack limit.
GROUP_ADD_MANY = REFUSED + """
local added = 0
for first = 2, #ARGV, 2000 do
    local n = redis.pcall('ZADD', KEYS[1], unpack(ARGV, first, math.min(first + 1999, #ARGV)))
    if type(n) == 'table' then
        return refused(n)
    end
    added = added + n
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return added
"""

# KEYS[1] work-queue key, KEYS[2] this pump's in-flight key
# ARGV: how many to pop, in-flight key ttl (whole seconds)
# ZPOPMIN's reply (member, score, ...). Its write comes first, so maxmemory never stops
# the ZADD half way (see above); the backup is as large as what left the queue.
WORK_POP = ZADD_ALL + """
local popped = redis.call('ZPOPMIN', KEYS[1], ARGV[1])
if #popped > 0 then
    zadd_all(KEYS[2], popped)
    redis.call('EXPIRE', KEYS[2], ARGV[2])
end
return popped
"""

# KEYS[1] work-queue key, KEYS[2] this pump's in-flight key
# ARGV: queue key ttl (whole seconds), then members the pump already delivered
# Empties the in-flight key: delivered members are dropped, the rest go back to the
# queue with their scores (ahead of anything sent since). Returns how many went back.
WORK_RESTORE = ZADD_ALL + """
local held = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
if #held == 0 then
    return 0
end
local delivered = {}
for i = 2, #ARGV do
    delivered[ARGV[i]] = true
end
local back = {}
for i = 1, #held, 2 do
    redis.call('ZREM', KEYS[2], held[i])
    if not delivered[held[i]] then
        back[#back + 1] = held[i]
        back[#back + 1] = held[i + 1]
    end
end
if #back > 0 then
    zadd_all(KEYS[1], back)
    redis.call('EXPIRE', KEYS[1], ARGV[1])
end
return #back / 2
"""


#: One run of a script: the connection of the node it runs on, its KEYS and its ARGV.
Call = tuple[RedisConnection, list, list]


class Script:
    """A Lua script called with EVALSHA, falling back to EVAL on NOSCRIPT.

    EVAL also caches the script on the server, so after a Redis restart or a
    SCRIPT FLUSH the first call re-primes it and later calls go by SHA again. Every
    script call of the package goes through here: one call (``await script(...)``), a
    hot path's first write (:meth:`start`, then :meth:`after_error`), a pipelined
    command (:meth:`command`), the same script on several nodes (:meth:`run_each`), and
    a second node's writes chained on a first script's reply (:meth:`chain`).
    """

    __slots__ = ("source", "sha")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode("utf-8")).hexdigest()

    def command(self, keys: Sequence[Any], args: Sequence[Any], by_source: bool = False) -> tuple:
        """The command that runs this script, for a pipeline: EVALSHA, or EVAL when the
        server said NOSCRIPT to the last one (``by_source``)."""
        if by_source:
            return ("EVAL", self.source, len(keys), *keys, *args)
        return ("EVALSHA", self.sha, len(keys), *keys, *args)

    def start(self, connection: RedisConnection, keys: Sequence[Any], args: Sequence[Any]) -> Awaitable[Any]:
        """Send EVALSHA now; the awaitable of its reply (a NoScriptError included).

        For hot paths, which await it themselves and call :meth:`after_error` on a
        ResponseError: that saves the coroutine :meth:`__call__` costs per call.
        """
        reply: Awaitable[Any] = connection.execute("EVALSHA", self.sha, len(keys), *keys, *args)
        return reply

    async def __call__(self, connection: RedisConnection, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        try:
            return await self.start(connection, keys, args)
        except ResponseError as exc:
            return await self.after_error(exc, connection, keys, args)

    async def after_error(
        self, exc: ResponseError, connection: RedisConnection, keys: Sequence[Any], args: Sequence[Any]
    ) -> Any:
        """Re-run with EVAL if the server did not know the script; else re-raise."""
        if not isinstance(exc, NoScriptError):
            raise exc
        return await connection.execute("EVAL", self.source, len(keys), *keys, *args)

    async def run_each(self, calls: Sequence[Call]) -> list:
        """Run on every ``(connection, keys, args)`` at once; their replies, in order.

        A NOSCRIPT is re-run with EVAL on its own node; any other error is raised once
        every call has settled (the first in call order), so no reply is left unread.
        """
        if len(calls) == 1:
            connection, keys, args = calls[0]
            return [await self(connection, keys, args)]
        return await self._settle(calls, [self.start(*call) for call in calls])

    async def chain(
        self,
        connection: RedisConnection,
        keys: Sequence[Any],
        args: Sequence[Any],
        proceed: Callable[[Any], bool],
        then: Script,
        calls: Sequence[Call],
    ) -> tuple[Any, list]:
        """Run this script, then (only if ``proceed(reply)``) ``then`` on every call.

        The second writes leave from this script's reply hook (RedisConnection.execute_then),
        inside the read that parsed the reply, so the pair costs about one loop iteration,
        not two. Returns this script's reply and the replies of ``calls`` (empty when
        ``proceed`` said no, in which case nothing of them was sent).
        """
        followers = _Followers(then, calls, proceed)
        first = connection.execute_then(followers, *self.command(keys, args))
        if first is None:  # not connected yet: the plain awaited way
            reply = await self(connection, keys, args)
        else:
            try:
                reply = await first
            except ResponseError as exc:  # NOSCRIPT: EVAL, and the hook did not proceed
                reply = await self.after_error(exc, connection, keys, args)
        if not proceed(reply):
            return reply, []
        followers(reply)  # if the hook did not start them (NOSCRIPT, not connected)
        return reply, await then._settle(calls, followers.started)

    async def _settle(self, calls: Sequence[Call], started: Sequence[Awaitable[Any]]) -> list:
        replies = await asyncio.gather(*started, return_exceptions=True)
        for index, ((connection, keys, args), reply) in enumerate(zip(calls, replies)):
            if isinstance(reply, ResponseError):
                replies[index] = await self.after_error(reply, connection, keys, args)
            elif isinstance(reply, BaseException):
                raise reply
        return replies


class _Followers:
    """Script.chain's reply hook: starts the second script's calls, once, if allowed."""

    __slots__ = ("script", "calls", "proceed", "started")

    def __init__(self, script: Script, calls: Sequence[Call], proceed: Callable[[Any], bool]) -> None:
        self.script = script
        self.calls = calls
        self.proceed = proceed
        self.started: list[Awaitable[Any]] = []

    def __call__(self, reply: Any) -> None:
        if not self.started and self.proceed(reply):
            start = self.script.start
            self.started = [start(*call) for call in self.calls]


send_script = Script(SEND)
group_send_script = Script(GROUP_SEND)
group_send_known_script = Script(GROUP_SEND_KNOWN)
group_add_script = Script(GROUP_ADD)
group_add_many_script = Script(GROUP_ADD_MANY)
work_pop_script = Script(WORK_POP)
work_restore_script = Script(WORK_RESTORE)
