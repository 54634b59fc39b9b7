"""The receive pump: one task per (Redis key, shard) that drains the key into local buffers.

It blocks with BZPOPMIN and, in the same write, asks for a batch with ZPOPMIN: Redis
runs the second command as soon as the first unblocks, so one round trip brings up to
``batch`` messages. Consumers never run a pop themselves; cancelling a ``receive()``
only removes its waiter, so a popped message can never be lost to a cancellation.
The pump is stopped with CLIENT UNBLOCK rather than cancelled, so even a stop never
abandons a pop whose reply is on the wire.

A connection that dies in the Redis event-loop iteration that ran a pop takes the
popped messages with it (Redis writes replies at the end of the iteration). So only a
blocking pop, a single message, ever leaves Redis unprotected: a process key is read
first and removed once delivered (_read_then_remove), a work queue pops into an
in-flight backup that is put back after a lost reply (_pop_into_backup).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, Callable

from redis.exceptions import AuthenticationError, NoScriptError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .cluster_config import ClusterModeRequiredError
from .connection import RedisConnection
from .reconnect import RETRY_START, Backoff, Reachable
from .scripts import Script, work_pop_script, work_restore_script

logger = logging.getLogger(__name__)

#: Seconds before retrying a receive Redis refused (an ACL, a wrong type): that does not
#: fix itself soon, and each refusal is logged.
REFUSED_PAUSE = 1.0
#: Longest pause between two tries while Redis answers a transient error (READONLY during
#: a failover, LOADING): each try may reconnect, so these pauses grow as they used to.
TRANSIENT_MAX = 1.0
#: Error replies that pass once the server is ready (a demoted master after a failover,
#: a restarted server loading its data): retried at the reconnect pace.
_TRANSIENT_REPLIES = ("READONLY", "LOADING", "MASTERDOWN")
#: On a cluster, besides: a slot being migrated (an ASK the pump could not follow: it
#: waits for the MOVED that ends the migration), no quorum for the slot yet, a pop
#: unblocked by a failover, a two-key script on an importing node (TRYAGAIN).
_CLUSTER_TRANSIENT = ("ASK", "TRYAGAIN", "CLUSTERDOWN", "UNBLOCKED")


class KeyPump:
    """Pops batches from one sorted set on one shard while someone wants them."""

    def __init__(
        self,
        connection: RedisConnection,
        key: str,
        wanted: Callable[[], int],
        on_batch: Callable[[list], None],
        block: float,
        batch: int,
        description: str = "",
        control: RedisConnection | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        reachable: Reachable | None = None,
        may_linger: Callable[[], bool] | None = None,
        inflight: str | None = None,
        inflight_ttl: int = 60,
        node: int = 0,
        relocate: Callable[[KeyPump, BaseException], bool] | None = None,
    ) -> None:
        self.connection = connection
        # On a Redis Cluster: the node read from, and who moves the pump when the key's
        # slot answers MOVED (LoopConnections.relocate).
        self.node = node
        self.relocate = relocate
        # Ends a reconnect pause as soon as any connection of the layer reaches the shard.
        self.reachable = reachable
        # A second connection to the same server, to send CLIENT UNBLOCK on.
        self.control = control
        self.key = key
        self.wanted = wanted  # how many receivers wait on this key right now
        self.on_batch = on_batch
        self.block = block
        self.batch = batch
        self.description = description or key
        self.task: asyncio.Task | None = None
        self.stopping = False
        self.client_id: int | None = None
        self._client_id_of = -1  # connection.connects when client_id was read
        self.errors = 0
        # A process key (batch > 0) has one reader, this process: its messages are read
        # first and removed once delivered (see _read_then_remove). Members delivered
        # whose removal Redis has not confirmed yet, in delivery order.
        self.read_first = batch > 0
        self.removing: dict[bytes, None] = {}
        # A work queue (batch <= 0) with an in-flight key: what its pop script took waits
        # there until delivered (then ``removing`` holds it until its ZREM is confirmed).
        # ``restore``: a pop's reply was lost, so the key may hold messages nobody got.
        self.inflight = inflight
        self.inflight_ttl = inflight_ttl
        self.restore = False
        self.unloaded: set[Script] = set()  # scripts to send by EVAL (NOSCRIPT came back)
        self.found_empty = False
        self.drained = False  # the last read brought less than a full batch
        # Whether one blocking pop may wait with no receiver waiting (see _serve).
        self.may_linger = may_linger
        # Told of an error that waiting will not cure (a wrong host option, a wrong
        # password), so the receivers raise it instead of waiting forever.
        self.on_error = on_error

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    def ensure_running(self) -> None:
        if not self.running and not self.stopping:
            self.task = asyncio.ensure_future(self._run())

    async def _pop(self, count: int) -> list:
        protocol = await self.connection.connect()
        if self._client_id_of != self.connection.connects:
            self._client_id_of = self.connection.connects
            try:
                self.client_id = int(await protocol.execute(("CLIENT", "ID")))
            except ResponseError:  # an ACL without CLIENT: stop() waits out the block
                self.client_id = None
        if self.read_first:
            return await self._read_then_remove(protocol, count)
        if self.inflight is not None:
            return await self._pop_into_backup(protocol, count)
        if count > 1:
            blocked, more = protocol.execute_pipeline(
                (("BZPOPMIN", self.key, self.block), ("ZPOPMIN", self.key, count - 1)), self.block
            )
        else:
            blocked, more = protocol.execute(("BZPOPMIN", self.key, self.block), self.block), None
        if more is not None:
            # When the blocking pop fails (connection lost, reply timeout) nobody awaits
            # ``more``; mark its error retrieved so asyncio does not log it at collection.
            more.add_done_callback(_retrieve)
        try:
            # Shielded: cancelling the pump (asyncio.run and async_to_sync cancel every
            # task before closing their loop) must not drop replies that carry popped
            # messages.
            first = await asyncio.shield(blocked)
            rest = await asyncio.shield(more) if more is not None else None
        except asyncio.CancelledError:
            await self._settle_after_cancel(blocked, more)
            raise
        return self._flatten(first, rest)

    async def _read_then_remove(self, protocol: Any, count: int) -> list:
        """One batch from a key only this process reads, safe against a lost reply.

        One write: ZREM of what the last batch delivered, ZRANGE of the next ``count``
        (nothing leaves Redis yet) and, once a read found the key empty, BZPOPMIN (waits
        for the next message and takes it). A connection that dies before the replies
        arrive loses at most the BZPOPMIN's message: the rest are read again, and what was
        delivered but not yet confirmed removed is skipped and removed again, so nothing
        arrives twice. ``count`` 0: only the blocking pop (see _serve).
        """
        key = self.key
        removal = list(self.removing)
        commands: list = [("ZREM", key, *removal)] if removal else []
        if count:
            commands.append(("ZRANGE", key, 0, count - 1, "WITHSCORES"))
        # Block only once a read found the key empty: BZPOPMIN then takes only what
        # arrives after that read, never a backlog (a backlog is read, not popped).
        wait = self.found_empty or not count
        if wait:
            commands.append(("BZPOPMIN", key, self.block))
        futures = protocol.execute_pipeline(commands, self.block if wait else 0.0, len(commands) - 1)
        if removal:
            futures[0].add_done_callback(functools.partial(self._removed, removal))
        blocked = futures[-1] if wait else None
        read = (futures[-2] if wait else futures[-1]) if count else blocked
        if blocked is not None and read is not blocked:
            # When the read fails (connection lost) nobody awaits the blocking pop;
            # mark its error retrieved so asyncio does not log it at collection.
            blocked.add_done_callback(_retrieve)
        try:
            # Shielded, as in _pop: replies that carry popped messages are never dropped.
            await asyncio.shield(read)  # type: ignore[arg-type]
            if blocked is not None:
                await asyncio.shield(blocked)
        except asyncio.CancelledError:
            if count:
                await self._settle_after_cancel(read, blocked, self._read_batch)  # type: ignore[arg-type]
            else:
                await self._settle_after_cancel(blocked, None, self._pop_only)  # type: ignore[arg-type]
            raise
        if removal and futures[0].done() and not futures[0].cancelled():
            refused = futures[0].exception()
            if isinstance(refused, ResponseError):
                # A refused removal (READONLY from a demoted master, MISCONF) would have
                # the next read find the same members again and again: handle it as the
                # refusal it is. What the read brought is read again after it.
                raise refused
        if not count:
            return self._deliverable(None, blocked.result())  # type: ignore[union-attr]
        ranged = _pairs_flat(read.result())  # type: ignore[union-attr]
        self.found_empty = not ranged
        self.drained = len(ranged) < 2 * count
        return self._deliverable(ranged, blocked.result() if blocked is not None else None)

    def _script(self, script: Script, keys: tuple, args: tuple) -> tuple:
        return script.command(keys, args, by_source=script in self.unloaded)

    async def _pop_into_backup(self, protocol: Any, count: int) -> list:
        """Up to ``count`` messages from a shared work queue, safe against a lost reply.

        One write: the restore (after a lost reply) or the ZREM of what the last batch
        delivered from the in-flight key, then the pop script, which moves messages from
        the queue into the in-flight key. Once a pop found the queue empty, BZPOPMIN comes
        first and waits for the next message; its one message is the only one a dropped
        connection can lose. ``count`` 0: only the restore or removal.
        """
        key, inflight = self.key, self.inflight
        removal = list(self.removing)
        commands: list = []
        if self.restore:
            commands.append(self._script(work_restore_script, (key, inflight), (self.inflight_ttl, *removal)))
        elif removal:
            commands.append(("ZREM", inflight, *removal))
        settled = len(commands)
        wait = self.found_empty and count > 0
        if wait:
            commands.append(("BZPOPMIN", key, self.block))
        popping = count - 1 if wait else count
        if popping > 0:
            commands.append(self._script(work_pop_script, (key, inflight), (popping, self.inflight_ttl)))
        elif wait:
            commands.append(("ZCARD", key))  # whether the blocking pop left a backlog
        if not commands:
            return []
        futures = protocol.execute_pipeline(commands, self.block if wait else 0.0, settled)
        for future in futures[:-1]:
            # Read in _took; if the connection drops, nobody else looks at their errors.
            future.add_done_callback(_retrieve)
        if removal and not self.restore:
            futures[0].add_done_callback(functools.partial(self._removed, removal))
        took = functools.partial(self._took, futures, settled, wait, popping, removal)
        last = futures[-1]
        try:
            # Shielded, as in _pop: replies that carry popped messages are never dropped.
            await asyncio.shield(last)
        except asyncio.CancelledError:
            await self._settle_after_cancel(last, None, lambda *_: took())
            if not last.done() or last.cancelled() or last.exception() is not None:
                self.restore = self.restore or popping > 0
            raise
        except Exception:  # noqa: BLE001 - each reply is looked at in _took
            pass
        return took()

    def _took(self, futures: list, settled: int, wait: bool, popping: int, removal: list) -> list:
        """The delivered messages from the replies of _pop_into_backup's write.

        Replies arrive in order, so every future is done once the last one is.
        """
        lost: BaseException | None = None
        if self.restore and settled:
            future = futures[0]
            exc = future.exception()
            if exc is None:
                self.restore = False
                removing = self.removing
                for member in removal:
                    removing.pop(member, None)
            elif isinstance(exc, NoScriptError):
                self.unloaded.add(work_restore_script)
            else:
                lost = exc
        flat: list = []
        index = settled
        if wait:
            future = futures[index]
            index += 1
            exc = future.exception()
            if exc is not None:
                lost = lost or exc
            elif future.result():
                blocked = future.result()
                flat.append(blocked[1])
                flat.append(blocked[2])
        if popping > 0:
            future = futures[index]
            exc = future.exception()
            if exc is None:
                self.unloaded.discard(work_pop_script)
                popped = future.result()
                removing = self.removing
                for i in range(0, len(popped), 2):
                    removing[popped[i]] = None
                flat.extend(popped)
                self.found_empty = len(popped) < 2 * popping
            else:
                # The script may have run and its reply been lost: put back what the
                # in-flight key holds that was never delivered.
                self.restore = True
                if isinstance(exc, NoScriptError):
                    self.unloaded.add(work_pop_script)
                else:
                    lost = lost or exc
        elif wait:
            future = futures[index]
            if future.exception() is None and flat:
                self.found_empty = not future.result()
        if lost is not None and not flat:
            raise lost
        return flat

    def _pop_only(self, blocked: list | None, _: Any) -> list:
        return self._deliverable(None, blocked)

    def _read_batch(self, ranged: list | None, blocked: list | None) -> list:
        """_deliverable of raw replies (as _settle_after_cancel hands them over)."""
        return self._deliverable(_pairs_flat(ranged) if ranged else None, blocked)

    def _deliverable(self, ranged: list | None, blocked: list | None) -> list:
        """What to deliver of a read (``ranged``, flat pairs) and a blocking pop's reply."""
        removing = self.removing
        popped = blocked[1] if blocked else None
        flat: list = []
        if ranged:
            for i in range(0, len(ranged), 2):
                member = ranged[i]
                if member == popped:
                    # BZPOPMIN took the first of the range: out of Redis already.
                    popped = None
                    if removing.pop(member, 0) is None:
                        continue  # delivered before; its ZREM was lost with a connection
                elif member in removing:
                    continue  # the same, still in Redis: the next write removes it
                else:
                    removing[member] = None
                flat.append(member)
                flat.append(ranged[i + 1])
        if popped is not None:  # the range was empty: BZPOPMIN waited for this one
            if removing.pop(popped, 0) is None:
                return flat
            flat.append(popped)
            flat.append(blocked[2])  # type: ignore[index]
        return flat

    def _removed(self, members: list, future: asyncio.Future) -> None:
        if future.cancelled() or future.exception() is not None:
            return  # still in ``removing``: the next write removes them again
        removing = self.removing
        for member in members:
            removing.pop(member, None)

    def _send_removal(self) -> None:
        """Remove what was delivered now, without waiting: the pump is going idle."""
        protocol = self.connection.protocol
        if not self.removing or protocol is None or protocol.closed is not None:
            return
        removal = list(self.removing)
        future = protocol.execute(("ZREM", self.inflight or self.key, *removal))
        future.add_done_callback(functools.partial(self._removed, removal))

    async def _settle_after_cancel(
        self,
        blocked: asyncio.Future,
        more: asyncio.Future | None,
        flatten: Callable[[Any, Any], list] | None = None,
    ) -> None:
        pending = [f for f in (blocked, more) if f is not None]
        try:
            if not all(f.done() for f in pending):
                await self._unblock()
            await asyncio.wait(pending, timeout=self.block + 1)
        except BaseException:  # noqa: BLE001 - a second cancellation: give up quietly
            pass
        if all(f.done() and not f.cancelled() and f.exception() is None for f in pending):
            flat = (flatten or self._flatten)(blocked.result(), more.result() if more is not None else None)
            if flat:
                self.on_batch(flat)
        else:
            # Anything still in flight may be a pop: close the socket now so the
            # server unblocks us instead of handing us a message nobody reads.
            self.connection.drop()

    @staticmethod
    def _flatten(first: list | None, rest: list | None) -> list:
        flat: list = []
        if first:
            flat.append(first[1])
            flat.append(first[2])
        if rest:
            flat.extend(_pairs_flat(rest))
        return flat

    async def _run(self) -> None:
        self.found_empty = self.drained = False  # a backlog may have built up meanwhile
        try:
            await self._serve()
            if self.restore:
                # Stopping right after a lost reply: one try to put its messages back
                # now rather than leave them in the in-flight key until it expires.
                try:
                    await self._pop(0)
                except Exception:  # noqa: BLE001 - they stay until the key expires
                    logger.warning("Could not put back the messages of a lost pop from %s", self.description)
        finally:
            self._send_removal()
            if self.reachable is not None:
                self.reachable.resign(self)

    async def _serve(self) -> None:
        backoff = Backoff()
        transient = 0.0
        while not self.stopping:
            wanted = self.wanted()
            if wanted > 0:
                # batch <= 0: a shared work queue, take one per waiting receiver.
                count = self.batch if self.batch > 0 else wanted
            elif self.read_first and self.drained and self.may_linger is not None and self.may_linger():
                # Nobody waits right now, but a consumer that took its message usually
                # comes back for the next: a blocking pop of a single message keeps the
                # key covered meanwhile. Only while every message delivered so far was
                # taken, so that no buffer grows while its consumer is busy.
                count = 0
            elif self.restore:
                # Nobody waits now, but a lost pop's messages may sit in the in-flight
                # key: put them back in the queue for everyone.
                count = 0
            else:
                return
            try:
                flat = await self._pop(count)
            except AuthenticationError as exc:
                self._fail(exc)
                return
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                if self.relocate is not None and self.relocate(self, exc):
                    continue  # the key's slot has another owner now (a failover)
                self.errors += 1
                if backoff.failed():
                    logger.warning(
                        "Receive from %s failed (%s); retrying (%d attempts in %.1f s so far)",
                        self.description, exc, backoff.failures, backoff.down_for,
                    )
                await self._pause(backoff.next_delay())
                continue
            except ResponseError as exc:
                message = str(exc)
                if isinstance(exc, ClusterModeRequiredError):
                    self._fail(exc)  # a plain host entry names a cluster node
                    return
                if self.relocate is not None and self.relocate(self, exc):
                    continue  # MOVED: the pump reads the key's new owner now
                if message.startswith(_TRANSIENT_REPLIES) or (
                    self.relocate is not None and message.startswith(_CLUSTER_TRANSIENT)
                ):
                    # A demoted master reconnects through discovery; a loading one is
                    # asked again.
                    if message.startswith("READONLY"):
                        self.connection.drop()
                    self.errors += 1
                    if backoff.failed():
                        logger.warning("Receive from %s not served yet (%s); retrying", self.description, exc)
                    # A plain sleep, not _pause: every reconnect of the shard's other
                    # listeners (each also told READONLY) would end the pause at once and
                    # turn a failover into a reconnect storm.
                    transient = min(transient * 2, TRANSIENT_MAX) if transient else RETRY_START
                    await asyncio.sleep(transient)
                    continue
                self.errors += 1
                logger.error("Redis refused a receive on %s: %s", self.description, exc)
                await asyncio.sleep(REFUSED_PAUSE)
                continue
            except Exception as exc:  # noqa: BLE001 - a host option redis-py refused
                self._fail(exc)
                return
            if self.errors:
                logger.warning(
                    "Receive from %s works again after %.1f s (%d failed attempts)",
                    self.description, backoff.down_for, backoff.failures,
                )
                self.errors = 0
                backoff.reset()
                transient = 0.0
                if self.reachable is not None:
                    # Errors that keep the connection open (LOADING, MASTERDOWN) end with
                    # no new connect to wake the shard's other listeners: wake them here.
                    self.reachable.notify()
            if flat:
                try:
                    self.on_batch(flat)
                except Exception:  # pragma: no cover - a bug, but never kill the pump
                    logger.exception("Delivering a batch from %s failed", self.description)
                    await asyncio.sleep(REFUSED_PAUSE)
                # Let the receivers this batch woke run before ``wanted()`` is read again:
                # until they do, they still count as waiting, and popping another batch
                # for them would push a slow consumer's buffer past its bound, dropping
                # the oldest messages it had not read yet.
                await asyncio.sleep(0)

    def move_to(
        self, node: int, connection: RedisConnection, control: RedisConnection, reachable: Reachable, description: str
    ) -> None:
        """Read the key from another node (its slot moved there); between two pops only.

        What the pump holds stays valid: the members it delivered and has to remove, and
        the in-flight key of a work queue, moved with the key (they share its slot).
        """
        old = self.connection
        if self.reachable is not None:
            self.reachable.resign(self)
        self.node, self.connection, self.control, self.reachable = node, connection, control, reachable
        self.description = description
        self._client_id_of = -1
        self.client_id = None
        self.found_empty = self.drained = False
        _close_later(old)

    def _fail(self, exc: BaseException) -> None:
        logger.error("Cannot receive from %s: %s: %s", self.description, type(exc).__name__, exc)
        if self.on_error is not None:
            self.on_error(exc)

    async def _pause(self, delay: float) -> None:
        if self.reachable is not None:
            await self.reachable.pause(self, delay)
        else:
            await asyncio.sleep(delay)

    async def _unblock(self) -> None:
        if self.control is not None and self.client_id is not None:
            try:
                await asyncio.wait_for(
                    self.control.execute("CLIENT", "UNBLOCK", self.client_id), self.block + 1
                )
            except Exception:  # noqa: BLE001 - best effort; callers still bound their wait
                pass

    async def stop(self) -> None:
        """Finish the pop in flight (unblocking it if we can), then return."""
        self.stopping = True
        task = self.task
        if task is None or task.done():
            return
        await self._unblock()
        try:
            await asyncio.wait_for(asyncio.shield(task), self.block + 2)
        except (asyncio.TimeoutError, Exception):  # noqa: BLE001
            task.cancel()


def _pairs_flat(reply: list) -> list:
    """``[member, score, ...]`` from a ZRANGE WITHSCORES or counted ZPOPMIN reply.

    RESP2 sends the pairs flat with scores as text; RESP3 nests each pair and sends the
    score as a double, which the batch's score parsing takes as well.
    """
    if reply and type(reply[0]) is list:
        return [item for pair in reply for item in pair]
    return reply


def _close_later(connection: RedisConnection) -> None:
    task = asyncio.ensure_future(connection.close())
    task.add_done_callback(_retrieve)


def _retrieve(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()
