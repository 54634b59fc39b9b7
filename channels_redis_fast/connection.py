"""Multiplexed, auto-pipelined Redis connections.

redis-py does everything up to a ready socket: URL and option parsing, TLS, AUTH,
SELECT, sentinel discovery, connect timeouts and retries. We then take the socket's
transport over with our own asyncio protocol, because redis-py's per-command overhead
caps a pipeline several times below what a protocol that encodes in compiled code and
parses with hiredis reaches. Every command issued during one event-loop iteration
leaves in a single write, and replies are matched to callers in order.

Connections speak RESP2 unless a host asks for ``protocol: 3`` (RESP3). Replies are
matched to requests strictly in order, so a RESP3 push frame (client tracking, maintenance
notifications) is never taken for a reply: hiredis gives it its own type
(``hiredis.PushNotification``, from hiredis 3.0), and we skip it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Any, Callable, Sequence
from urllib.parse import parse_qs

import hiredis
from redis.asyncio import ConnectionPool
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.exceptions import AuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .exceptions import ReplyLostError
from .speedups import encode_command, encode_commands

try:
    # Every redis-py from 5 to 8 keeps its reply-error table (OOM -> OutOfMemoryError,
    # READONLY -> ReadOnlyError, ...) on the base parser.
    from redis._parsers.base import BaseParser

    _parse_error: Callable[[str], Exception] = BaseParser.parse_error
except (ImportError, AttributeError):  # pragma: no cover - a redis-py we do not know
    _parse_error = ResponseError

logger = logging.getLogger(__name__)

Arg = bytes | str | int | float

#: The type hiredis gives RESP3 push frames (None before hiredis 3.0, whose pushes are
#: plain lists: RESP3 is refused there, see check_protocol).
PUSH_TYPE: type | None = getattr(hiredis, "PushNotification", None)

#: Seconds a non-blocking command may wait for its reply before the connection is
#: declared dead (redis-py 8 uses 5 s for the same purpose). Blocking commands add
#: their block time on top.
DEFAULT_REPLY_TIMEOUT = 10.0
DEFAULT_CONNECT_TIMEOUT = 5.0
#: For how long a command whose connection could not be made is retried. It was never
#: written, so a retry cannot duplicate it; this rides out a restart or a sentinel
#: failover (discovery briefly finds no healthy master) without failing the caller.
CONNECT_RETRY_SECONDS = 2.0


def reply_error(message: str) -> Exception:
    """The exception redis-py raises for the error reply ``message``.

    Same class (OutOfMemoryError, ReadOnlyError, NoScriptError, BusyLoadingError,
    AuthenticationError, NoPermissionError, ...) and attributes; the text keeps Redis's
    error code in front ("READONLY You can't write..."), where redis-py drops it.
    """
    error = _parse_error(message)
    if error.args != (message,):
        error.args = (message,)
    return error


def make_pool(host: dict[str, Any]) -> ConnectionPool:
    """A redis-py pool for one shard's host config, used only to make connections.

    Accepts the same host dicts as channels_redis: ``address`` (a redis://, rediss://
    or unix:// URL plus redis-py options), sentinel dicts (``sentinels``,
    ``master_name``, ``sentinel_kwargs``), or plain redis-py connection kwargs.
    """
    # redis-py's socket timeouts only ever apply to its handshake on our connections:
    # after it, reads are timed by RedisProtocol (blocking pops would trip a plain
    # socket timeout, channels_redis issue 422).
    host = bounded_timeouts(host)
    # RESP2 unless the host asks for RESP3 (a ``?protocol=3`` in an address URL wins
    # over this, as redis-py lets URL options win over keyword arguments).
    host["protocol"] = check_protocol(host)
    # Decoding is ours too: payloads are bytes.
    host.pop("decode_responses", None)
    if "address" in host:
        address = host.pop("address")
        return ConnectionPool.from_url(address, **host)
    if "master_name" in host:
        sentinels = host.pop("sentinels")
        master_name = host.pop("master_name")
        sentinel_kwargs = host.pop("sentinel_kwargs", None)
        return SentinelConnectionPool(
            master_name,
            Sentinel(sentinels, sentinel_kwargs=sentinel_kwargs),
            **host,
        )
    return ConnectionPool(**host)


def bounded_timeouts(options: dict[str, Any]) -> dict[str, Any]:
    """A copy of redis-py connection ``options`` whose socket timeouts are bounded.

    Where they are unset or None (redis-py before 8 defaults them to None, "wait
    forever") they become DEFAULT_CONNECT_TIMEOUT, so a dead or frozen server fails in
    seconds.
    """
    options = dict(options)
    for name in ("socket_timeout", "socket_connect_timeout"):
        if options.get(name) is None:
            options[name] = DEFAULT_CONNECT_TIMEOUT
    return options


def check_protocol(host: dict[str, Any]) -> int:
    """The RESP version a host entry asks for (2 or 3); ValueError for anything else.

    Read from the ``protocol`` key and from a ``protocol`` query option of its address
    URL (which redis-py lets win). RESP3 needs hiredis >= 3.0, the first to tell push
    frames from replies.
    """
    asked = [host.get("protocol", 2)]
    address = host.get("address")
    if isinstance(address, str) and "?" in address:
        asked += parse_qs(address.partition("?")[2]).get("protocol", [])
    versions = set()
    for value in asked:
        try:
            versions.add(int(value))
        except (TypeError, ValueError):
            versions.add(-1)
    if not versions <= {2, 3}:
        raise ValueError(f"protocol must be 2 (RESP2) or 3 (RESP3), not {asked[-1]!r} ({describe_host(host)})")
    if 3 in versions and PUSH_TYPE is None:
        raise ValueError(
            f"protocol 3 (RESP3) needs hiredis >= 3.0, which tells push frames from replies; "
            f"hiredis {getattr(hiredis, '__version__', '?')} is installed ({describe_host(host)})"
        )
    return int(host.get("protocol", 2))


def describe_host(host: dict[str, Any]) -> str:
    """A short, password-free description of a host config for logs and errors."""
    if "address" in host:
        address = str(host["address"])
        if "@" in address:
            scheme, _, rest = address.partition("://")
            address = f"{scheme}://***@{rest.rpartition('@')[2]}"
        return address
    if "master_name" in host:
        return f"sentinel:{host['master_name']}"
    return f"{host.get('host', 'localhost')}:{host.get('port', 6379)}"


class RedisProtocol(asyncio.Protocol):
    """One socket: commands queued during a loop iteration go out in one write."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        reply_timeout: float,
        errors: Callable[[str], Exception] = reply_error,
    ) -> None:
        self.loop = loop
        self.reply_timeout = reply_timeout
        self.transport: asyncio.Transport | None = None
        self.closed: BaseException | None = None
        # ``errors`` makes the exception of an error reply (reply_error, or one that also
        # explains a cluster node's MOVED to a plain host entry).
        self._reader = hiredis.Reader(replyError=errors)
        # (future, extra seconds this reply may take because the command blocks)
        self._pending: collections.deque[tuple[asyncio.Future, float]] = collections.deque()
        self._queued: list[Sequence[Arg]] = []
        #: future -> a function called with its reply inside data_received (see
        #: RedisConnection.execute_then).
        self._on_reply: dict[asyncio.Future, Callable[[Any], None]] = {}
        self._flush_handle: asyncio.Handle | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._last_reply = time.monotonic()
        self._closed_waiter: asyncio.Future = loop.create_future()

    # -- asyncio.Protocol ---------------------------------------------------------------
    def attach(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        transport.set_protocol(self)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        pending = self._pending
        self._last_reply = time.monotonic()
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self.abort(RedisConnectionError(f"Protocol error from Redis: {exc}"))
                return
            if reply is False:
                return
            if type(reply) is PUSH_TYPE:
                continue  # RESP3 out-of-band frame: nobody's reply
            if not pending:
                # Nothing asked for this (a stray push frame): drop the connection
                # rather than hand the next caller a reply that is not theirs.
                self.abort(RedisConnectionError("Unexpected reply from Redis"))
                return
            future = pending.popleft()[0]
            if self._on_reply:
                self._run_on_reply(future, reply)
            # A cancelled caller's reply is consumed and dropped, keeping the stream
            # in step for everyone after it.
            if not future.done():
                if isinstance(reply, RedisError):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)

    def _run_on_reply(self, future: asyncio.Future, reply: Any) -> None:
        hook = self._on_reply.pop(future, None)
        if hook is not None and not future.done():
            try:
                hook(reply)
            except Exception:  # pragma: no cover - a bug in the hook, never in the stream
                logger.exception("A reply hook failed")

    def connection_lost(self, exc: Exception | None) -> None:
        error = self.closed or RedisConnectionError(
            f"Connection to Redis lost{': ' + str(exc) if exc else ''}"
        )
        self._shutdown(error)

    def pause_writing(self) -> None:  # pragma: no cover - only under huge bursts
        pass

    def resume_writing(self) -> None:  # pragma: no cover
        pass

    # -- commands -------------------------------------------------------------------
    def execute(self, args: Sequence[Arg], block: float = 0.0) -> asyncio.Future:
        """Queue one command; the returned future resolves to its reply."""
        future = self.loop.create_future()
        if self.closed is not None:
            future.set_exception(self._not_sent_error())
            return future
        if not self._pending:
            self._last_reply = time.monotonic()
            transport = self.transport
            if self._flush_handle is None and transport is not None and not transport.is_closing():
                # An idle connection writes at once: a lone request/response exchange
                # skips the loop iteration that batching costs; commands issued while
                # replies are outstanding are batched into one write.
                self._pending.append((future, block))
                transport.write(encode_command(args))
                if self._watchdog is None:
                    self._arm_watchdog()
                return future
        self._queued.append(args)
        self._pending.append((future, block))
        if self._flush_handle is None:
            self._flush_handle = self.loop.call_soon(self._flush)
        if self._watchdog is None:
            self._arm_watchdog()
        return future

    def execute_then(self, args: Sequence[Arg], on_reply: Callable[[Any], None]) -> asyncio.Future:
        """Queue one command; ``on_reply(reply)`` runs inside the read that parses its
        reply, before the future's awaiter (see RedisConnection.execute_then)."""
        future = self.execute(args)
        if not future.done():
            self._on_reply[future] = on_reply
        return future

    def execute_pipeline(
        self, commands: Sequence[Sequence[Arg]], block: float = 0.0, blocking: int = 0
    ) -> list[asyncio.Future]:
        """Queue commands that go out in one write; a future per reply.

        ``block`` is the blocking time of the command at index ``blocking`` (the
        BZPOPMIN among the pump's pops).
        """
        futures = [self.loop.create_future() for _ in commands]
        if self.closed is not None:
            error = self._not_sent_error()
            for future in futures:
                future.set_exception(error)
            return futures
        idle = not self._pending
        if idle:
            self._last_reply = time.monotonic()
        pending = self._pending
        for index, future in enumerate(futures):
            pending.append((future, block if index == blocking else 0.0))
        transport = self.transport
        if idle and self._flush_handle is None and transport is not None and not transport.is_closing():
            transport.write(encode_commands(commands))
        else:
            self._queued.extend(commands)
            if self._flush_handle is None:
                self._flush_handle = self.loop.call_soon(self._flush)
        if self._watchdog is None:
            self._arm_watchdog()
        return futures

    def _flush(self) -> None:
        self._flush_handle = None
        transport = self.transport
        # A closing transport drops writes silently: keep them queued, so that
        # _shutdown reports them as never sent.
        if self._queued and transport is not None and self.closed is None and not transport.is_closing():
            queued, self._queued = self._queued, []
            transport.write(encode_commands(queued))

    def _arm_watchdog(self) -> None:
        self._watchdog = self.loop.call_later(self.reply_timeout / 2, self._check_replies)

    def _check_replies(self) -> None:
        # A reply that never comes (a hung server, a silently dropped network) must
        # not wedge the layer: fail everything pending and let callers reconnect.
        self._watchdog = None
        if not self._pending or self.closed is not None:
            return
        allowed = self.reply_timeout + self._pending[0][1]
        if time.monotonic() - self._last_reply > allowed:
            self.abort(RedisTimeoutError(f"No reply from Redis within {allowed:.1f}s"))
        else:
            self._arm_watchdog()

    # -- shutdown -------------------------------------------------------------------
    def abort(self, error: BaseException) -> None:
        self._shutdown(error)
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        self._shutdown(RedisConnectionError("Connection closed by the channel layer"))
        if self.transport is not None:
            self.transport.close()

    def _shutdown(self, error: BaseException) -> None:
        if self.closed is None:
            self.closed = error
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        # Commands still queued are the newest pending ones and never reached the
        # socket: Redis cannot have run them. Those written before them may have run.
        unsent = len(self._queued)
        self._queued.clear()
        self._on_reply.clear()
        pending = self._pending
        if pending:
            written = len(pending) - unsent
            if written > 0:
                lost = self._reply_lost_error()
                for _ in range(written):
                    future = pending.popleft()[0]
                    if not future.done():
                        future.set_exception(lost)
            if pending:
                not_sent = self._not_sent_error()
                while pending:
                    future = pending.popleft()[0]
                    if not future.done():
                        future.set_exception(not_sent)
        if not self._closed_waiter.done():
            self._closed_waiter.set_result(None)

    def _reply_lost_error(self) -> BaseException:
        """For a command written before the connection closed: it may have run."""
        closed = self.closed
        if type(closed) is RedisConnectionError:
            lost = ReplyLostError(f"{closed} (the command was sent; whether Redis ran it is unknown)")
            lost.__cause__ = closed
            return lost
        # A TimeoutError says as much already; other reasons are kept as they are.
        return closed  # type: ignore[return-value]

    def _not_sent_error(self) -> BaseException:
        """For a command that never reached the socket: a plain ConnectionError."""
        closed = self.closed
        if isinstance(closed, RedisConnectionError) and not isinstance(closed, ReplyLostError):
            return closed
        not_sent = RedisConnectionError(f"{closed} (the command was not sent)")
        not_sent.__cause__ = closed
        return not_sent

    async def wait_closed(self) -> None:
        await self._closed_waiter


class RedisConnection:
    """A lazily (re)connecting multiplexed connection to one shard.

    Callers never see a half-open connection: if the socket dies, pending commands
    fail with a redis ConnectionError/TimeoutError, and the next command reconnects
    (through sentinel discovery where configured).
    """

    def __init__(
        self,
        pool: ConnectionPool,
        loop: asyncio.AbstractEventLoop,
        reply_timeout: float = DEFAULT_REPLY_TIMEOUT,
        name: str = "",
        protocol_factory: Callable[[asyncio.AbstractEventLoop, float], RedisProtocol] | None = None,
        on_connect: Callable[[], None] | None = None,
    ) -> None:
        self.pool = pool
        # Called after each successful connect: the server is reachable again (reconnect.py).
        self.on_connect = on_connect
        # Pub/sub connections plug in a protocol that also routes pushed messages.
        self.protocol_factory = protocol_factory or RedisProtocol
        self.loop = loop
        self.reply_timeout = reply_timeout
        self.name = name
        self.protocol: RedisProtocol | None = None
        self._redis_py_connection: Any = None
        self._connecting: asyncio.Future | None = None
        self.connects = 0
        self.closed = False

    @property
    def is_connected(self) -> bool:
        return self.protocol is not None and self.protocol.closed is None

    def execute(self, *args: Arg, block: float = 0.0) -> Any:
        """Send one command; returns an awaitable of its reply."""
        protocol = self.protocol
        if protocol is not None and protocol.closed is None:
            return protocol.execute(args, block)
        return self._execute_after_connect(args, block)

    def execute_then(self, on_reply: Callable[[Any], None], *args: Arg) -> asyncio.Future | None:
        """Send one command and call ``on_reply(reply)`` the moment its reply is parsed.

        For a command whose reply decides what to send next (group_send's membership
        check before it writes to other shards): the next commands leave from inside
        ``data_received`` instead of a loop iteration later, when the awaiting task
        would run, which under a fan-out load is behind hundreds of woken receivers.
        The hook is not called when the caller was cancelled or the connection fails.
        Returns None when not connected (the caller then goes the awaited way).
        """
        protocol = self.protocol
        if protocol is None or protocol.closed is not None:
            return None
        return protocol.execute_then(args, on_reply)

    def execute_many(self, commands: Sequence[Sequence[Arg]]) -> Any:
        """Send several commands in one write; returns an awaitable of all replies."""
        protocol = self.protocol
        if protocol is not None and protocol.closed is None:
            return asyncio.gather(*protocol.execute_pipeline(commands))
        return self._execute_many_after_connect(commands)

    async def _execute_after_connect(self, args: Sequence[Arg], block: float) -> Any:
        protocol = await self._connect_retrying()
        return await protocol.execute(args, block)

    async def _execute_many_after_connect(self, commands: Sequence[Sequence[Arg]]) -> list:
        protocol = await self._connect_retrying()
        return await asyncio.gather(*protocol.execute_pipeline(commands))

    async def _connect_retrying(self) -> RedisProtocol:
        deadline = time.monotonic() + CONNECT_RETRY_SECONDS
        delay = 0.05
        while True:
            try:
                return await self.connect()
            except AuthenticationError:
                raise  # a wrong password does not fix itself
            except (RedisConnectionError, OSError):
                if self.closed or time.monotonic() + delay > deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def connect(self) -> RedisProtocol:
        if self.closed:
            raise RedisConnectionError("The channel layer closed this connection")
        protocol = self.protocol
        if protocol is not None and protocol.closed is None:
            return protocol
        # One connect attempt at a time; concurrent callers share its outcome. The
        # attempt runs in its own task so a cancelled caller cannot abandon a
        # half-made connection.
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
            self._connecting.add_done_callback(self._connect_done)
        return await asyncio.shield(self._connecting)

    def _connect_done(self, future: asyncio.Future) -> None:
        self._connecting = None
        if not future.cancelled():
            future.exception()  # mark retrieved; callers re-raise it themselves

    async def _open(self) -> RedisProtocol:
        connection = self.pool.make_connection()
        await connection.connect()
        writer = getattr(connection, "_writer", None)
        if writer is None:  # pragma: no cover - a redis-py we do not know
            raise RedisConnectionError("Unsupported redis-py connection object")
        if self.closed:
            writer.transport.close()
            raise RedisConnectionError("The channel layer closed this connection")
        protocol = self.protocol_factory(self.loop, self.reply_timeout)
        protocol.attach(writer.transport)
        # Keep redis-py's connection object alive while we use its socket: its
        # StreamWriter closes the transport when collected (Python 3.12+).
        self._release_redis_py()
        self._redis_py_connection = connection
        self.protocol = protocol
        self.connects += 1
        if self.on_connect is not None:
            self.on_connect()
        return protocol

    def _release_redis_py(self) -> None:
        # Only once our transport is closed or replaced: tell redis-py's object it no
        # longer owns a socket, so it does not warn "unclosed Connection" when collected.
        old = self._redis_py_connection
        self._redis_py_connection = None
        if old is not None:
            old._reader = None
            old._writer = None

    def drop(self, error: BaseException | None = None) -> None:
        """Abort the current socket (e.g. after READONLY from a demoted master)."""
        if self.protocol is not None and self.protocol.closed is None:
            self.protocol.abort(error or RedisConnectionError("Connection dropped"))

    async def close(self) -> None:
        self.closed = True
        connecting = self._connecting
        if connecting is not None:
            connecting.cancel()
        protocol = self.protocol
        if protocol is not None:
            protocol.close()
            await protocol.wait_closed()
        self.protocol = None
        self._release_redis_py()

    def close_nowait(self) -> None:
        """Close from outside this connection's loop or while that loop is closing."""
        self.closed = True
        if self.protocol is not None:
            self.protocol.close()
        self.protocol = None
        self._release_redis_py()

