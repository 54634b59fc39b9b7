"""The Lua scripts of the core layer, sent by SHA once loaded.

Each layer operation is one script so that it costs one round trip and cannot be
interleaved with another client's commands on the same keys. Keys, scores and members
are exactly those channels_redis 4.x reads and writes.
"""

from __future__ import annotations

import hashlib
from typing import Any

from redis.exceptions import ResponseError

from .connection import RedisConnection

# KEYS[1] channel key
# ARGV: member, score (send time), expiry cutoff, capacity, key ttl (whole seconds)
SEND = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then
    return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""

# KEYS: n channel keys
# ARGV: score, expiry cutoff, key ttl, member_1..member_n, capacity_1..capacity_n
# Returns how many keys were at capacity (their message is dropped, as the spec
# wants for group sends).
GROUP_SEND = """
local n = #KEYS
local over = 0
for i = 1, n do
    local key = KEYS[i]
    redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. ARGV[2])
    if redis.call('ZCARD', key) < tonumber(ARGV[3 + n + i]) then
        redis.call('ZADD', key, ARGV[1], ARGV[3 + i])
        redis.call('EXPIRE', key, ARGV[3])
    else
        over = over + 1
    end
end
return over
"""

# As GROUP_SEND, after checking that the group still has the members a cached plan was
# made from (see group_plan.py); returns -1, writing nothing, when it does not.
# KEYS[1] group key, KEYS[2..n+1] channel keys
# ARGV: group cutoff ("(score"), member digest, score, expiry cutoff, key ttl,
#       member_1..member_n, capacity_1..capacity_n
GROUP_SEND_KNOWN = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local members = redis.call('ZRANGE', KEYS[1], 0, -1)
if #members == 0 or redis.sha1hex(table.concat(members, '\\n')) ~= ARGV[2] then
    return -1
end
local n = #KEYS - 1
local over = 0
for i = 1, n do
    local key = KEYS[i + 1]
    redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. ARGV[4])
    if redis.call('ZCARD', key) < tonumber(ARGV[5 + n + i]) then
        redis.call('ZADD', key, ARGV[3], ARGV[5 + i])
        redis.call('EXPIRE', key, ARGV[5])
    else
        over = over + 1
    end
end
return over
"""


class Script:
    """A Lua script called with EVALSHA, falling back to EVAL on NOSCRIPT.

    EVAL also caches the script on the server, so after a Redis restart or a
    SCRIPT FLUSH the first call re-primes it and later calls go by SHA again.
    """

    __slots__ = ("source", "sha")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode("utf-8")).hexdigest()

    async def __call__(self, connection: RedisConnection, keys: list, args: list) -> Any:
        try:
            return await connection.execute("EVALSHA", self.sha, len(keys), *keys, *args)
        except ResponseError as exc:
            return await self.after_error(exc, connection, keys, args)

    async def after_error(
        self, exc: ResponseError, connection: RedisConnection, keys: list, args: list
    ) -> Any:
        """Re-run with EVAL if the server did not know the script; else re-raise.

        Hot paths await ``connection.execute("EVALSHA", ...)`` themselves (one coroutine
        less per call) and come here only when it failed.
        """
        if not str(exc).startswith("NOSCRIPT"):
            raise exc
        return await connection.execute("EVAL", self.source, len(keys), *keys, *args)


send_script = Script(SEND)
group_send_script = Script(GROUP_SEND)
group_send_known_script = Script(GROUP_SEND_KNOWN)
