"""The receive pump: one task per (Redis key, shard) that drains the key into local buffers.

It blocks with BZPOPMIN and, in the same write, asks for a batch with ZPOPMIN: Redis
runs the second command as soon as the first unblocks, so one round trip brings up to
``batch`` messages. Consumers never run a pop themselves; cancelling a ``receive()``
only removes its waiter, so a popped message can never be lost to a cancellation.
The pump is stopped with CLIENT UNBLOCK rather than cancelled, so even a stop never
abandons a pop whose reply is on the wire.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .connection import RedisConnection
from .reconnect import Backoff, Reachable

logger = logging.getLogger(__name__)

#: Seconds before retrying a receive Redis refused (an ACL, a wrong type): that does not
#: fix itself soon, and each refusal is logged.
REFUSED_PAUSE = 1.0
#: Error replies that pass once the server is ready (a demoted master after a failover,
#: a restarted server loading its data): retried at the reconnect pace.
_TRANSIENT_REPLIES = ("READONLY", "LOADING", "MASTERDOWN")


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
        reachable: Reachable | None = None,
    ) -> None:
        self.connection = connection
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

    async def _settle_after_cancel(self, blocked: asyncio.Future, more: asyncio.Future | None) -> None:
        pending = [f for f in (blocked, more) if f is not None]
        try:
            if not blocked.done():
                await self._unblock()
            await asyncio.wait(pending, timeout=self.block + 1)
        except BaseException:  # noqa: BLE001 - a second cancellation: give up quietly
            pass
        if all(f.done() and not f.cancelled() and f.exception() is None for f in pending):
            flat = self._flatten(blocked.result(), more.result() if more is not None else None)
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
            flat.extend(rest)
        return flat

    async def _run(self) -> None:
        try:
            await self._serve()
        finally:
            if self.reachable is not None:
                self.reachable.resign(self)

    async def _serve(self) -> None:
        backoff = Backoff()
        while not self.stopping:
            wanted = self.wanted()
            if wanted <= 0:
                return
            try:
                # batch <= 0: a shared work queue, take one per waiting receiver.
                flat = await self._pop(self.batch if self.batch > 0 else wanted)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                self.errors += 1
                if backoff.failed():
                    logger.warning(
                        "Receive from %s failed (%s); retrying (%d failures so far)",
                        self.description, exc, backoff.failures,
                    )
                await self._pause(backoff.next_delay())
                continue
            except ResponseError as exc:
                message = str(exc)
                if message.startswith(_TRANSIENT_REPLIES):
                    # A demoted master reconnects through discovery; a loading one is
                    # asked again.
                    if message.startswith("READONLY"):
                        self.connection.drop()
                    self.errors += 1
                    if backoff.failed():
                        logger.warning("Receive from %s not served yet (%s); retrying", self.description, exc)
                    await self._pause(backoff.next_delay())
                    continue
                self.errors += 1
                logger.error("Redis refused a receive on %s: %s", self.description, exc)
                await asyncio.sleep(REFUSED_PAUSE)
                continue
            if self.errors:
                logger.info("Receive from %s works again", self.description)
                self.errors = 0
                backoff.reset()
            if flat:
                try:
                    self.on_batch(flat)
                except Exception:  # pragma: no cover - a bug, but never kill the pump
                    logger.exception("Delivering a batch from %s failed", self.description)
                    await asyncio.sleep(REFUSED_PAUSE)

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


def _retrieve(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()
