"""Error replies reach callers as the exception classes redis-py raises for them.

Code written for channels_redis catches redis-py's subclasses (OutOfMemoryError,
ReadOnlyError, NoScriptError, ...), so each reply is provoked on a real server and its
class checked, through our connection and, where a layer is involved, the layer.
"""

from __future__ import annotations

import asyncio

import pytest
import redis
import redis.asyncio
from redis._parsers.base import BaseParser
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    ConnectionError,
    ExecAbortError,
    NoPermissionError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
)

from channels_redis_fast.connection import RedisConnection, make_pool, reply_error
from channels_redis_fast.core import RedisChannelLayer
from channels_redis_fast.pubsub import RedisPubSubChannelLayer
from channels_redis_fast.testing import RedisServer

pytestmark = pytest.mark.timeout(60)

PASSWORD = "crf-errors-pw"


def _url(server: RedisServer, user: str | None = None, password: str | None = None) -> str:
    auth = f"{user or ''}:{password}@" if password else ""
    return f"redis://{auth}{server.host}:{server.port}"


async def _error(connection: RedisConnection, *args) -> Exception:
    with pytest.raises(Exception) as info:
        await connection.execute(*args)
    return info.value


@pytest.mark.parametrize(
    "reply",
    [
        "OOM command not allowed when used memory > 'maxmemory'.",
        "READONLY You can't write against a read only replica.",
        "NOSCRIPT No matching script. Please use EVAL.",
        "LOADING Redis is loading the dataset in memory",
        "NOAUTH Authentication required.",
        "WRONGPASS invalid username-password pair or user is disabled.",
        "NOPERM this user has no permissions to run the 'set' command",
        "EXECABORT Transaction discarded because of previous errors.",
        "BUSY Redis is busy running a script.",
        "WRONGTYPE Operation against a key holding the wrong kind of value",
        "ERR max number of clients reached",
        "ERR unknown command 'NOSUCH'",
    ],
)
def test_reply_error_is_redis_pys_class_and_keeps_the_code(reply):
    ours = reply_error(reply)
    assert type(ours) is type(BaseParser.parse_error(reply))
    # The text stays Redis's whole reply (redis-py drops the code): code that looks for
    # "READONLY" or "NOSCRIPT" at its start keeps working.
    assert str(ours) == reply


async def test_replies_from_a_real_server(fresh_redis):
    admin = fresh_redis.client()
    admin.execute_command("ACL", "SETUSER", "reader", "reset", "on", f">{PASSWORD}", "~*", "+get", "+ping", "+auth")
    loop = asyncio.get_running_loop()
    connection = RedisConnection(make_pool({"address": fresh_redis.url}), loop)
    reader = RedisConnection(make_pool({"address": _url(fresh_redis, "reader", PASSWORD)}), loop)
    try:
        error = await _error(connection, "EVALSHA", "0" * 40, 0)
        assert type(error) is NoScriptError and str(error).startswith("NOSCRIPT ")

        admin.set("text", "x")
        error = await _error(connection, "LPUSH", "text", "x")
        assert type(error) is ResponseError and str(error).startswith("WRONGTYPE ")

        multi = [connection.execute("MULTI"), connection.execute("NOSUCHCOMMAND"), connection.execute("EXEC")]
        results = await asyncio.gather(*multi, return_exceptions=True)
        assert results[0] == b"OK"
        assert type(results[1]) is ResponseError
        assert type(results[2]) is ExecAbortError

        error = await _error(reader, "SET", "k", "v")
        assert type(error) is NoPermissionError
        assert await reader.execute("GET", "text") == b"x"  # the connection stays usable
        error = await _error(reader, "AUTH", "reader", "wrong")
        assert type(error) is AuthenticationError and str(error).startswith("WRONGPASS ")

        admin.setrange("filler", 4 * 1024 * 1024, b"x")
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", int(admin.info("memory")["used_memory"]) - 2 * 1024 * 1024)
        error = await _error(connection, "SET", "k", "v")
        assert type(error) is OutOfMemoryError
        assert isinstance(error, ResponseError)
        admin.delete("filler")
        assert await connection.execute("SET", "k", "v") == b"OK"
    finally:
        await connection.close()
        await reader.close()


async def test_busy_reply_is_a_plain_response_error_as_in_redis_py(fresh_redis):
    # redis-py has no class of its own for BUSY (a script running too long).
    admin = fresh_redis.client()
    admin.config_set("lua-time-limit", 10)
    loop = asyncio.get_running_loop()
    runner = RedisConnection(make_pool({"address": fresh_redis.url}), loop)
    other = RedisConnection(make_pool({"address": fresh_redis.url}), loop)
    redis_py = redis.asyncio.Redis.from_url(fresh_redis.url, protocol=2)
    try:
        await other.execute("PING")
        running = asyncio.ensure_future(runner.execute("EVAL", "while true do end", 0))
        busy = None
        for _ in range(200):
            try:
                await other.execute("PING")
            except ResponseError as exc:
                busy = exc
                break
            await asyncio.sleep(0.02)
        assert busy is not None and str(busy).startswith("BUSY ")
        with pytest.raises(ResponseError) as theirs:
            await redis_py.ping()
        assert type(busy) is type(theirs.value) is ResponseError
        await redis_py.execute_command("SCRIPT", "KILL")
        with pytest.raises(ResponseError):
            await running
        assert await other.execute("PING") == b"PONG"
    finally:
        await runner.close()
        await other.close()
        await redis_py.aclose()


def test_loading_is_busy_loading_error_a_connection_error():
    # LOADING needs a server busy loading a large dataset; the class is redis-py's table's.
    error = reply_error("LOADING Redis is loading the dataset in memory")
    assert type(error) is BusyLoadingError and isinstance(error, ConnectionError)


async def test_layers_raise_redis_py_classes(fresh_redis):
    fresh_redis.client().config_set("repl-diskless-sync-delay", 0)
    replica = RedisServer(replicaof=(fresh_redis.host, fresh_redis.port))
    try:
        on_replica = RedisChannelLayer(hosts=[replica.url])
        with pytest.raises(ReadOnlyError) as info:
            await on_replica.send("work", {"n": 1})
        assert str(info.value).startswith("READONLY ")
        with pytest.raises(ReadOnlyError):
            await on_replica.group_add("room", "work")
        await on_replica.close_pools()
    finally:
        replica.close()

    fresh_redis.client().config_set("requirepass", PASSWORD)
    without_password = RedisChannelLayer(hosts=[_url(fresh_redis)])
    with pytest.raises(AuthenticationError):
        await without_password.send("work", {"n": 1})
    await without_password.close_pools()

    admin = redis.Redis.from_url(_url(fresh_redis, password=PASSWORD))
    admin.execute_command("ACL", "SETUSER", "pubsub", "reset", "on", f">{PASSWORD}", "resetchannels", "&asgi*", "+@all")
    admin.close()
    layer = RedisPubSubChannelLayer(hosts=[_url(fresh_redis, "pubsub", PASSWORD)])
    try:
        with pytest.raises(NoPermissionError):
            await layer.send("other.x", {"n": 1})
        with pytest.raises(NoPermissionError):
            await asyncio.wait_for(layer.receive("other.x"), 5)
    finally:
        await layer.close()
