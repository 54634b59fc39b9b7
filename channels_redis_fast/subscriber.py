"""The pub/sub layer's side of one Redis host: a PUBLISH connection and a subscriber socket.

The subscriber socket is read by an asyncio protocol that routes pushed ``message`` frames
to the layer's local channels inside ``data_received``. When it is lost, every wanted name
is subscribed again: the SUBSCRIBE commands are the first thing written on the new socket,
before anyone else can use it, so the layer hears again as soon as it reconnects, and it
reconnects at the short pace of reconnect.py, woken early by any of its connections that
reaches the host. Redis drops what is published while nobody listens.

Nothing here imports the layer: it is reached through :class:`SubscriberOwner`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any, Awaitable, Protocol, cast

import hiredis
from redis.exceptions import RedisError
from redis.exceptions import ConnectionError as RedisConnectionError

from .connection import PUSH_TYPE, RedisConnection, RedisProtocol, describe_host, make_pool
from .loop_connections import _close_pool
from .reconnect import Backoff, Reachable

logger = logging.getLogger(__name__)

__all__ = ["Shard", "SubscriberOwner", "SubscriberProtocol"]

#: Seconds of silence on a subscriber socket before we PING it. A subscriber only
#: listens, so without this a silently dead connection would lose messages forever.
HEALTH_CHECK_INTERVAL = 30.0
_MESSAGE = b"message"


class SubscriberOwner(Protocol):
    """What a shard needs from its pub/sub layer (one event loop's layer)."""

    loop: asyncio.AbstractEventLoop
    reply_timeout: float
    on_disconnect: str | None
    on_reconnect: str | None
    _closed: bool

    def _targets(self, wire_name: bytes) -> tuple[Any, ...]: ...

    def _decode_once(self, data: bytes) -> Any: ...

    def _note_drops(self, count: int, channel: str) -> None: ...

    def _notify_all(self, message_type: str | None) -> None: ...


class SubscriberProtocol(RedisProtocol):
    """A subscriber socket: pushed messages are routed, other frames answer commands.

    Each SUBSCRIBE/UNSUBSCRIBE we send names exactly one channel, so Redis answers it with
    exactly one confirmation frame, which keeps the base class's in-order matching of
    replies to commands valid while ``message`` frames are interleaved. In RESP3 the
    confirmations are push frames too, and are matched the same way.
    """

    #: The kind of a pushed message frame (sharded_subscriber.py's protocol: ``smessage``).
    MESSAGE = _MESSAGE

    def __init__(self, loop: asyncio.AbstractEventLoop, reply_timeout: float, shard: "Shard") -> None:
        super().__init__(loop, reply_timeout)
        self.shard = shard
        self.targets = shard.layer._targets
        self._health: asyncio.TimerHandle | None = None
        #: The SUBSCRIBE of each name the shard wanted when this socket was attached, until
        #: all are answered; ``ready`` gathers their replies (None: there were none).
        self.replayed: dict[str, asyncio.Future] = {}
        self.ready: asyncio.Future | None = None
        #: The SUBSCRIBE of each shared name (a group) sent on this socket, which every
        #: later subscriber of that name waits for instead of sending another.
        self.shared: dict[str, asyncio.Future] = {}

    def attach(self, transport: asyncio.Transport) -> None:
        super().attach(transport)
        self._health = self.loop.call_later(HEALTH_CHECK_INTERVAL, self._health_check)
        # Subscribe everything the shard wants before the socket is handed to anyone:
        # nothing (a new channel's SUBSCRIBE, the reconnect pause) can come between the
        # connection and the re-subscription, and a message published after these
        # commands reach Redis is heard.
        names = list(self.shard.wanted)
        if names:
            subscribe = self.shard.SUBSCRIBE
            futures = self.execute_pipeline([(subscribe, name) for name in names])
            self.replayed = dict(zip(names, futures))
            self.ready = asyncio.gather(*futures, return_exceptions=True)
            self.ready.add_done_callback(self._replayed)

    def _replayed(self, ready: asyncio.Future) -> None:
        self.replayed = {}

    def _health_check(self) -> None:
        self._health = None
        if self.closed is not None:
            return
        if not self._pending and time.monotonic() - self._last_reply >= HEALTH_CHECK_INTERVAL:
            # The base class's reply watchdog aborts the socket if the PONG never comes,
            # which then triggers the re-subscribe.
            self.execute(("PING",)).add_done_callback(_consume_result)
        self._health = self.loop.call_later(HEALTH_CHECK_INTERVAL, self._health_check)

    def data_received(self, data: bytes) -> None:
        # The hot loop of a burst: hiredis parses, we route. Routing state only changes in
        # other tasks, so the targets of the last channel name seen stay valid for the
        # whole call, and drops are accounted once at the end (~2x faster than routing
        # every frame through the layer).
        reader = self._reader
        reader.feed(data)
        self._last_reply = time.monotonic()
        message = self.MESSAGE
        last_name = None
        targets: tuple[Any, ...] = ()
        decode_once = self.shard.layer._decode_once
        dropped = 0
        try:
            while True:
                reply = reader.gets()
                if reply is False:
                    return
                # A pushed message is a plain list in RESP2 and a PushNotification (a
                # list subclass) in RESP3.
                kind = type(reply)
                if (kind is list or kind is PUSH_TYPE) and len(reply) == 3 and reply[0] == message:
                    name = reply[1]
                    if name != last_name:
                        targets = self.targets(name)
                        last_name = name
                    payload = reply[2]
                    if len(targets) > 1:
                        payload = decode_once(payload)
                    for local in targets:
                        # LocalChannel.put's hand-over (local_channel.py), inlined for
                        # the common case of a burst, one receiver waiting on an empty
                        # buffer: the method call was a measurable part of a pub/sub
                        # group delivery (callgrind, bench/fanout_cost.py).
                        waiters = local.waiters
                        if waiters and local.handed_to is None and not local.buffer:
                            waiter = waiters[0]
                            if not waiter.done():
                                waiters.pop(0)
                                local.handed_to = waiter
                                local.handed_item = payload
                                waiter.set_result(None)
                                continue
                        if local.put(payload):
                            dropped += 1
                    continue
                if not self._answer(reply):
                    return
        except hiredis.ProtocolError as exc:
            self.abort(RedisConnectionError(f"Protocol error from Redis: {exc}"))
        finally:
            if dropped:
                self.shard.layer._note_drops(dropped, last_name.decode("utf-8", "replace") if last_name else "?")

    def _answer(self, reply: Any) -> bool:
        """A frame that is no pushed message: the reply to the oldest command. False when
        nothing asked for it (the connection is then aborted)."""
        pending = self._pending
        if not pending:
            self.abort(RedisConnectionError(f"Unexpected frame on a subscriber connection: {reply!r:.80}"))
            return False
        future = pending.popleft()[0]
        if not future.done():
            if isinstance(reply, RedisError):  # redis-py's class for it (see reply_error)
                future.set_exception(reply)
            else:
                future.set_result(reply)
        return True

    def _shutdown(self, error: BaseException) -> None:
        first = self.closed is None
        super()._shutdown(error)
        if self._health is not None:
            self._health.cancel()
            self._health = None
        if first:
            self.shard._subscriber_lost(self)


class RedisHandle:
    """What ``layer._shards[i]._redis`` is.

    channels_redis keeps a redis-py client there and its test suite closes it
    (``_close_redis(layer._shards[0]._redis)``) to simulate a lost connection. Closing
    this handle does exactly that to our sockets: both are aborted, the layer reconnects
    and re-subscribes by itself.
    """

    def __init__(self, shard: "Shard") -> None:
        self._shard = shard

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        self._shard.drop(RedisConnectionError("Connection closed through _redis.aclose()"))

    close = aclose


class Shard:
    """One Redis host: a multiplexed connection for PUBLISH and one subscriber socket."""

    # The commands, and the subscriber's protocol: a cluster node's (sharded_subscriber.py)
    # speaks sharded pub/sub instead.
    PUBLISH = "PUBLISH"
    SUBSCRIBE = "SUBSCRIBE"
    UNSUBSCRIBE = "UNSUBSCRIBE"
    protocol_class: type[SubscriberProtocol] = SubscriberProtocol

    def __init__(self, layer: SubscriberOwner, host: dict[str, Any], index: int) -> None:
        self.layer = layer
        self.host = host
        self.index = index
        self.name = describe_host(host)
        self.pool = make_pool(host)
        self._redis = RedisHandle(self)
        #: Names that should be subscribed: replayed on every reconnect.
        self.wanted: set[str] = set()
        self._supervisor: asyncio.Task | None = None
        self._announced_up = True
        #: Notified by every connection of this shard that reaches the host.
        self.reachable = Reachable(layer.loop)
        self._new_connections()

    def _new_connections(self) -> None:
        loop = self.layer.loop
        timeout = self.layer.reply_timeout
        notify = self.reachable.notify
        self.closing = False
        self.publisher = RedisConnection(
            self.pool, loop, timeout, name=f"publish@{self.name}", on_connect=notify
        )
        self.subscriber = RedisConnection(
            self.pool,
            loop,
            timeout,
            name=f"subscribe@{self.name}",
            protocol_factory=functools.partial(self.protocol_class, shard=self),
            on_connect=notify,
        )

    def publish(self, channel: str, data: bytes) -> Awaitable[int]:
        receivers: Awaitable[int] = self.publisher.execute(self.PUBLISH, channel, data)
        return receivers

    async def subscribe(self, name: str, shared: bool = False) -> None:
        """SUBSCRIBE ``name`` (unless this socket already did); returns once Redis confirmed.

        ``shared``: many callers subscribe this name (a group's members joining), so the
        first SUBSCRIBE on the socket is kept and the others wait for it.
        """
        self.wanted.add(name)
        protocol = cast("SubscriberProtocol | None", self.subscriber.protocol)
        if protocol is None or protocol.closed is not None:
            protocol = cast(SubscriberProtocol, await self.subscriber.connect())
        # It may have been freed while we connected; never subscribe a name nobody wants.
        if name in self.wanted:
            sent = protocol.replayed.get(name)  # subscribed as the socket was attached
            if sent is None and shared:
                sent = protocol.shared.get(name)
                if sent is None:
                    sent = protocol.shared[name] = protocol.execute((self.SUBSCRIBE, name))
                    sent.add_done_callback(functools.partial(_forget_failed, protocol.shared, name))
            if sent is not None:
                await asyncio.shield(sent)
            else:
                await protocol.execute((self.SUBSCRIBE, name))

    def unsubscribe_nowait(self, name: str) -> asyncio.Future | None:
        """Queue an UNSUBSCRIBE without waiting for it (safe inside cancellation)."""
        self.wanted.discard(name)
        protocol = cast("SubscriberProtocol | None", self.subscriber.protocol)
        if protocol is None or protocol.closed is not None:
            return None  # the next connection simply will not subscribe it
        # Subscribing it again later must send a SUBSCRIBE after this UNSUBSCRIBE.
        protocol.replayed.pop(name, None)
        protocol.shared.pop(name, None)
        future = protocol.execute((self.UNSUBSCRIBE, name))
        future.add_done_callback(_consume_result)
        return future

    async def unsubscribe(self, name: str) -> None:
        future = self.unsubscribe_nowait(name)
        if future is not None:
            try:
                await asyncio.shield(future)
            except RedisError:
                pass  # the connection went away: that unsubscribes too

    # -- connection loss and recovery -------------------------------------------------------
    def _subscriber_lost(self, protocol: SubscriberProtocol) -> None:
        if self.closing or self.layer._closed:
            return
        if not self.wanted:
            return  # nothing was subscribed here: reconnect lazily on next use
        logger.warning("Pub/sub connection to %s lost (%s); re-subscribing", self.name, protocol.closed)
        if self._announced_up:
            self._announced_up = False
            self.layer._notify_all(self.layer.on_disconnect)
        if self._supervisor is None or self._supervisor.done():
            self._supervisor = self.layer.loop.create_task(self._resubscribe())

    async def _resubscribe(self) -> None:
        started = time.monotonic()
        try:
            failures = await self._reconnect()
        finally:
            self.reachable.resign(self)
        if not self.closing:
            logger.warning(
                "Pub/sub connection to %s restored after %.1f s (%d failed attempts, %d subscriptions)",
                self.name, time.monotonic() - started, failures, len(self.wanted),
            )
            self._announced_up = True
            self.layer._notify_all(self.layer.on_reconnect)

    async def _reconnect(self) -> int:
        """Connect and re-subscribe, retrying; how many attempts failed."""
        backoff = Backoff()
        while not self.closing:
            error: BaseException | None
            try:
                protocol = cast(SubscriberProtocol, await self.subscriber.connect())
                # The new socket re-subscribed as it was attached (SubscriberProtocol.attach).
                replies = await asyncio.shield(protocol.ready) if protocol.ready is not None else []
                error = protocol.closed
                if error is None:
                    self._log_refused(replies)
                    break
            except (RedisError, OSError) as exc:
                error = exc
            if backoff.failed():
                logger.warning(
                    "Re-subscribing on %s failed (%s); retrying (%d attempts in %.1f s so far)",
                    self.name, error, backoff.failures, backoff.down_for,
                )
            # Ends early when any connection of this layer reaches the host again.
            await self.reachable.pause(self, backoff.next_delay())
        return backoff.failures

    def _log_refused(self, replies: list) -> None:
        # An ACL that denies a channel: asking again cannot help, so say it once.
        refused = [reply for reply in replies if isinstance(reply, BaseException)]
        if refused:
            logger.error(
                "Redis refused %d re-subscription(s) on %s: %s", len(refused), self.name, refused[0]
            )

    def drop(self, error: BaseException) -> None:
        """Abort both sockets as a network failure would (they reconnect by themselves)."""
        self.publisher.drop(error)
        self.subscriber.drop(error)

    # -- shutdown ---------------------------------------------------------------------------
    async def _close_connections(self) -> None:
        self.closing = True
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None and not supervisor.done():
            supervisor.cancel()
            try:
                await supervisor
            except asyncio.CancelledError:
                pass
        await self.publisher.close()
        await self.subscriber.close()
        self.wanted = set()
        self._announced_up = True

    async def reset(self) -> None:
        """Close the sockets and start over with fresh, lazily opened ones (flush)."""
        await self._close_connections()
        self._new_connections()

    async def close(self) -> None:
        await self._close_connections()
        await _close_pool(self.pool)


def _forget_failed(shared: dict[str, asyncio.Future], name: str, future: asyncio.Future) -> None:
    # A refused SUBSCRIBE (an ACL) is not kept: the next subscriber asks again.
    if future.cancelled() or future.exception() is not None:
        if shared.get(name) is future:
            del shared[name]


def _consume_result(future: asyncio.Future) -> None:
    # Fire-and-forget commands: a lost connection is not an error worth a log line.
    if not future.cancelled():
        future.exception()
