"""End-to-end workloads for the side-by-side benchmark of channel layers.

Every workload is a class with ``setup`` / ``phase`` / ``teardown`` coroutines and runs the
same code against each layer, one layer at a time, through the public channel layer API
only.  Flow control, ChannelFull handling and timing are identical for every layer:

* messages in flight (sent, not yet delivered) are bounded by a window, so a slow receiver
  never builds an unbounded backlog and runs can be sized by time;
* ChannelFull is counted and retried after 1 ms (capacities are set high enough that it
  should not happen; the count is reported);
* a rate is deliveries per second inside the measured window, after a warm-up phase that
  opens connections, loads scripts and settles subscriptions.

Sender and receivers of every workload here share one process (``Workload.same_process``).
These workloads are meant to measure Redis traffic, so our layers run them with
``local_delivery`` off (``Workload.local_delivery``): with it on, a message to the layer's
own channel would never reach Redis (issue 16). bench/local_delivery.py measures that case.

``bench/run.py`` drives these by time; ``bench/test_e2e.py`` by message count.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import os
import statistics
import time
from typing import Any, Awaitable, Callable

from channels.exceptions import ChannelFull

perf_counter = time.perf_counter

#: High enough that no layer hits ChannelFull under the windows used here.
BENCH_CAPACITY = 100_000
#: Padding that makes a message about 100 bytes once packed.
TEXT = "x" * 56
GROUP = "bench-group"
WORKER_CHANNEL = "bench.work"
ENCRYPTION_KEYS = ["bench-secret-key-not-for-production-use"]  # >= 32 bytes


# --------------------------------------------------------------------------------------
# layers
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """One layer under test: how to build it on a list of ``redis://`` URLs."""

    name: str  # short key used in tables and JSON
    label: str  # human name
    module: str
    cls: str
    kind: str  # "core" or "pubsub"
    anchor: bool  # channels_redis (needs socket_timeout None with redis-py 8)

    def load(self) -> type:
        return getattr(importlib.import_module(self.module), self.cls)

    @property
    def ours(self) -> bool:
        """One of this package's layers (the peers take none of its own options)."""
        return self.module.startswith("channels_redis_fast.")

    def make(self, urls: list[str], **options: Any) -> Any:
        if self.anchor:
            # channels_redis 4.3 with redis-py 8 needs socket_timeout None: the new 5 s
            # default breaks its 5 s BZPOPMIN (channels_redis issue 422).
            hosts: list[Any] = [{"address": url, "socket_timeout": None} for url in urls]
        else:
            hosts = list(urls)
        if self.kind == "pubsub":
            options.pop("capacity", None)  # pub/sub layers have no capacity
        return self.load()(hosts=hosts, **options)


OURS_CORE = LayerSpec("ours-core", "channels_redis_fast core", "channels_redis_fast.core",
                      "RedisChannelLayer", "core", False)
OURS_PUBSUB = LayerSpec("ours-pubsub", "channels_redis_fast pubsub", "channels_redis_fast.pubsub",
                        "RedisPubSubChannelLayer", "pubsub", False)
CR_PUBSUB = LayerSpec("cr-pubsub", "channels_redis pubsub", "channels_redis.pubsub",
                      "RedisPubSubChannelLayer", "pubsub", True)
CR_CORE = LayerSpec("cr-core", "channels_redis core", "channels_redis.core",
                    "RedisChannelLayer", "core", True)
ALL_LAYERS = [OURS_CORE, OURS_PUBSUB, CR_PUBSUB, CR_CORE]
ANCHOR = CR_CORE.name


def available_layers() -> tuple[list[LayerSpec], dict[str, str]]:
    """The layers importable here, and why the others are skipped."""
    found, skipped = [], {}
    for spec in ALL_LAYERS:
        try:
            spec.load()
        except Exception as exc:  # noqa: BLE001 - any import problem means "skip"
            skipped[spec.name] = f"{type(exc).__name__}: {exc}"
        else:
            found.append(spec)
    return found, skipped


def make_message(n: int) -> dict:
    return {"type": "bench.message", "text": TEXT, "n": n, "t": perf_counter()}


# --------------------------------------------------------------------------------------
# flow control and accounting
# --------------------------------------------------------------------------------------


class Flow:
    """Counts sends and deliveries, bounds deliveries in flight, records latencies."""

    def __init__(self, window: int, fanout: int = 1) -> None:
        if window < fanout:
            raise ValueError("the window must hold at least one message's deliveries")
        self.window = window
        self.fanout = fanout
        # Room is handed back in chunks on big windows (fewer wake-ups), one by one on
        # small ones (a closed loop, for latency).
        self.resume_at = window - (window // 8 if window >= 256 else 0)
        self.sent = 0
        self.delivered = 0
        self.outstanding = 0
        self.channel_full = 0
        self.budget: int | None = None
        self.stopping = False
        self.recording = False
        self.latencies: list[float] = []
        self._room: asyncio.Future | None = None
        self._idle: asyncio.Future | None = None

    def reset(self) -> None:
        self.sent = self.delivered = self.outstanding = self.channel_full = 0
        self.latencies = []

    async def acquire(self) -> bool:
        """Wait for room for one more message; False once the phase is stopping."""
        while self.outstanding + self.fanout > self.window:
            if self.stopping:
                return False
            if self._room is None:
                self._room = asyncio.get_running_loop().create_future()
            await self._room
        if self.stopping:
            return False
        self.outstanding += self.fanout
        return True

    def deliver(self, message: dict) -> None:
        self.delivered += 1
        self.outstanding -= 1
        if self.recording:
            sent_at = message.get("t")
            if sent_at is not None:
                self.latencies.append(perf_counter() - sent_at)
        room = self._room
        if room is not None and self.outstanding + self.fanout <= self.resume_at:
            self._room = None
            if not room.done():
                room.set_result(None)
        if self.outstanding <= 0 and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    def stop(self) -> None:
        self.stopping = True
        room, self._room = self._room, None
        if room is not None and not room.done():
            room.set_result(None)

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until every delivery owed has happened; False on timeout (messages lost)."""
        if self.outstanding <= 0:
            return True
        self._idle = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(asyncio.shield(self._idle), timeout)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            self._idle = None


async def _sender(flow: Flow, send_one: Callable[[int], Awaitable[None]]) -> None:
    while not flow.stopping:
        if flow.budget is not None:
            if flow.budget <= 0:
                return
            flow.budget -= 1
        if not await flow.acquire():
            return
        n = flow.sent
        flow.sent += 1
        while True:
            try:
                await send_one(n)
                break
            except ChannelFull:
                flow.channel_full += 1
                await asyncio.sleep(0.001)


def percentiles(samples: list[float]) -> dict:
    if not samples:
        return {}
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {
        "count": len(ordered),
        "p50_ms": pick(0.50) * 1e3,
        "p90_ms": pick(0.90) * 1e3,
        "p99_ms": pick(0.99) * 1e3,
        "max_ms": ordered[-1] * 1e3,
        "mean_ms": statistics.fmean(ordered) * 1e3,
    }


class NullProbe:
    """Stands in for CommandStats when nobody counts Redis commands."""

    def start(self) -> None:
        pass

    def stop(self) -> dict:
        return {}


class CommandStats:
    """Redis commands run between start() and stop(), from INFO commandstats.

    Commands that Lua scripts call count too (Redis does not tell them apart), so an
    EVALSHA that does ZADD+EXPIRE shows as three entries; the breakdown is kept.
    """

    IGNORED = ("config", "info")

    def __init__(self, clients: list) -> None:
        self.clients = clients

    def start(self) -> None:
        for client in self.clients:
            client.config_resetstat()

    def stop(self) -> dict:
        totals: dict[str, int] = {}
        for client in self.clients:
            for name, stats in client.info("commandstats").items():
                command = name.removeprefix("cmdstat_")
                if command.split("|")[0] in self.IGNORED:
                    continue
                totals[command] = totals.get(command, 0) + int(stats["calls"])
        return dict(sorted(totals.items(), key=lambda item: -item[1]))


# --------------------------------------------------------------------------------------
# workloads
# --------------------------------------------------------------------------------------


async def _consume(receive: Callable[[str], Awaitable[dict]], channel: str, flow: Flow) -> None:
    deliver = flow.deliver
    while True:
        deliver(await receive(channel))


class Workload:
    """A layer, its receivers, and how one message is sent."""

    name = "?"
    description = ""
    senders = 16
    window = 1024
    fanout = 1
    pubsub_ok = True  # does the workload make sense for a pub/sub layer?
    shards = 1
    options: dict = {}
    #: Sender and receivers in one process (every workload here): said in each report.
    same_process = True
    #: Our layers' in-process delivery; off so that these rows measure the Redis path.
    local_delivery = False

    def __init__(self, spec: LayerSpec, urls: list[str]) -> None:
        if len(urls) < self.shards:
            raise ValueError(f"{self.name} needs {self.shards} Redis servers")
        self.spec = spec
        self.urls = urls[: self.shards]
        self.flow = Flow(self.window, self.fanout)
        self.layers: list = []
        self.tasks: list[asyncio.Task] = []

    def make_layer(self) -> Any:
        options = dict(self.options)
        if self.spec.ours:  # the peers have no such option (and no such path)
            options["local_delivery"] = self.local_delivery
        layer = self.spec.make(self.urls, capacity=BENCH_CAPACITY, **options)
        self.layers.append(layer)
        return layer

    def consume(self, layer: Any, channel: str) -> None:
        self.tasks.append(asyncio.ensure_future(_consume(layer.receive, channel, self.flow)))

    async def setup(self) -> None:
        raise NotImplementedError

    async def send_one(self, n: int) -> None:
        raise NotImplementedError

    def check_receivers(self) -> None:
        for task in self.tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise RuntimeError(f"a receiver failed: {task.exception()!r}") from task.exception()

    async def phase(
        self,
        *,
        duration: float | None = None,
        count: int | None = None,
        drain_timeout: float = 10.0,
        probe: Any = None,
    ) -> dict:
        """Run senders for ``duration`` seconds or ``count`` messages; measure deliveries."""
        flow = self.flow
        probe = probe or NullProbe()
        flow.reset()
        flow.stopping = False
        flow.budget = count
        senders = [asyncio.ensure_future(_sender(flow, self.send_one)) for _ in range(self.senders)]
        try:
            start, delivered_at_start = perf_counter(), flow.delivered
            cpu_start = time.process_time()
            probe.start()
            flow.recording = True
            if count is None:
                done, _ = await asyncio.wait(senders, timeout=duration, return_when=asyncio.FIRST_EXCEPTION)
                for task in done:
                    task.result()  # a sender failed: raise it here
                flow.recording = False
                end, delivered = perf_counter(), flow.delivered
                cpu_end = time.process_time()
                flow.stop()
                await asyncio.wait(senders, timeout=drain_timeout)
                drained = await flow.wait_idle(drain_timeout)
                # Commands are counted over the whole phase, drain included, against
                # every delivery of the phase: sends and receives both fully accounted.
                commands = probe.stop()
            else:
                await asyncio.gather(*senders)
                drained = await flow.wait_idle(drain_timeout)
                flow.recording = False
                end, delivered = perf_counter(), flow.delivered
                cpu_end = time.process_time()
                commands = probe.stop()
        finally:
            flow.stop()
            for task in senders:
                task.cancel()
        self.check_receivers()
        seconds = end - start
        measured = delivered - delivered_at_start
        return {
            "rate": measured / seconds if seconds > 0 else 0.0,
            # Share of one core this (client) process used: near 1.0 means the layer's
            # own Python is the bound; well below, it waits on Redis or the network.
            "client_cpu": (cpu_end - cpu_start) / seconds if seconds > 0 else None,
            "deliveries": measured,
            "seconds": seconds,
            "messages_sent": flow.sent,
            "lost": max(0, flow.outstanding) if not drained else 0,
            "channel_full": flow.channel_full,
            "latency": percentiles(flow.latencies),
            "commands": commands,
            "commands_per_delivery": (
                sum(commands.values()) / flow.delivered if commands and flow.delivered else None
            ),
        }

    async def teardown(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for layer in self.layers:
            try:
                await asyncio.wait_for(layer.flush(), 15)
            except Exception:  # noqa: BLE001 - best effort; the Redis is flushed anyway
                pass
            if self.spec.kind == "nats":
                # channels-nats holds a connection per event loop until closed.
                await asyncio.wait_for(layer.close(), 15)


class Roundtrip(Workload):
    name = "roundtrip"
    description = "one coroutine: send to a process channel, receive it, repeat"
    senders = 1
    window = 1

    async def setup(self) -> None:
        layer = self.make_layer()
        self.channel = await layer.new_channel()
        self._send, self._receive = layer.send, layer.receive

    async def send_one(self, n: int) -> None:
        await self._send(self.channel, make_message(n))
        self.flow.deliver(await self._receive(self.channel))


class Stream(Workload):
    name = "stream"
    description = "16 concurrent senders, one consumer on one process channel, ~100 B messages"

    async def setup(self) -> None:
        layer = self.make_layer()
        self.channel = await layer.new_channel()
        self._send = layer.send
        self.consume(layer, self.channel)

    async def send_one(self, n: int) -> None:
        await self._send(self.channel, make_message(n))


class StreamEncrypted(Stream):
    name = "stream_encrypted"
    description = "the stream workload with symmetric_encryption_keys (Fernet)"
    options = {"symmetric_encryption_keys": ENCRYPTION_KEYS}


class StreamSharded(Stream):
    name = "stream_sharded"
    description = "the stream workload on a layer sharded over 4 Redis servers"
    shards = 4


class Latency(Stream):
    name = "latency"
    description = "stream load as a closed loop (16 senders, 16 messages in flight): send-to-receive p50/p99"
    window = 16


class ManyConsumers(Workload):
    name = "many_consumers"
    description = "500 process channels, one receiving coroutine each, 16 senders spreading over them"
    channels = 500

    async def setup(self) -> None:
        layer = self.make_layer()
        self.names = [await layer.new_channel() for _ in range(self.channels)]
        self._send = layer.send
        for name in self.names:
            self.consume(layer, name)

    async def send_one(self, n: int) -> None:
        await self._send(self.names[n % self.channels], make_message(n))


class GroupFanout(Workload):
    name = "group_fanout"
    description = "group of 500 members in one process, repeated group_send; rate = deliveries/s"
    members = 500
    processes = 1
    senders = 1
    fanout = 500
    window = 500 * 8

    async def setup(self) -> None:
        per_layer = self.members // self.processes
        for _ in range(self.processes):
            layer = self.make_layer()
            for _ in range(per_layer):
                name = await layer.new_channel()
                await layer.group_add(GROUP, name)
                self.consume(layer, name)
        self._group_send = self.layers[0].group_send

    async def send_one(self, n: int) -> None:
        await self._group_send(GROUP, make_message(n))


class GroupSharded(GroupFanout):
    name = "group_sharded"
    description = ("group of 500 members spread over 4 layer instances (4 'processes', 125 each) "
                   "on 4 Redis servers; rate = deliveries/s")
    shards = 4
    processes = 4


class WorkerQueue(Workload):
    name = "worker_queue"
    description = "a normal channel, 16 senders, 4 receivers (pub/sub: one process, so no broadcast)"
    receivers = 4

    async def setup(self) -> None:
        layer = self.make_layer()
        self._send = layer.send
        for _ in range(self.receivers):
            self.consume(layer, WORKER_CHANNEL)

    async def send_one(self, n: int) -> None:
        await self._send(WORKER_CHANNEL, make_message(n))


WORKLOADS: dict[str, type[Workload]] = {
    cls.name: cls
    for cls in (Roundtrip, Stream, ManyConsumers, GroupFanout, WorkerQueue,
                StreamEncrypted, StreamSharded, GroupSharded, Latency)
}

# Every report states where sender and receivers run, and that these rows take Redis.
for _workload in WORKLOADS.values():
    if _workload.same_process and "same process" not in _workload.description:
        _workload.description += (
            " [sender and receivers in one process; local_delivery off, so through Redis]"
            if not _workload.local_delivery else " [sender and receivers in one process]"
        )


async def run_timed(
    workload: Workload,
    *,
    duration: float,
    warmup: float,
    probe: Any = None,
    drain_timeout: float = 10.0,
) -> dict:
    """setup, a warm-up phase, the measured phase, teardown."""
    t0 = perf_counter()
    try:
        await workload.setup()
        setup_s = perf_counter() - t0
        warm = await workload.phase(duration=warmup, drain_timeout=drain_timeout)
        result = await workload.phase(duration=duration, drain_timeout=drain_timeout, probe=probe)
    finally:
        await workload.teardown()
    result["setup_s"] = setup_s
    result["warmup_lost"] = warm["lost"]
    return result


async def run_counted(workload: Workload, count: int, drain_timeout: float = 30.0) -> dict:
    """One measured phase of ``count`` messages on an already set up workload."""
    result = await workload.phase(count=count, drain_timeout=drain_timeout)
    if result["lost"]:
        raise AssertionError(f"{workload.spec.name}/{workload.name}: {result['lost']} deliveries lost")
    return result


# --------------------------------------------------------------------------------------
# memory: channel churn
# --------------------------------------------------------------------------------------


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def churn(
    spec: LayerSpec,
    url: str,
    channels: int,
    sample_every: int,
    concurrency: int = 32,
    on_sample: Callable[[int, float, float], None] | None = None,
) -> dict:
    """RSS while ``channels`` channels are each created, sent one message, received, abandoned.

    ``concurrency`` consumers churn at once (as many short-lived websocket consumers
    would), so the slow anchor finishes in reasonable time. Samples every ``sample_every``
    and hands each sample to ``on_sample(done, rss_mb, seconds)`` (progress for a long churn).
    """
    # Default capacity (this is about memory, not throughput), and a prefix of its own:
    # the layers churn side by side on one Redis and must not flush each other's keys.
    # Sender and receiver share this process: local delivery off, so churn goes through Redis.
    extra = {"local_delivery": False} if spec.ours else {}
    layer = spec.make([url], prefix=f"churn-{spec.name}", **extra)
    samples = [(0, rss_bytes())]
    state = {"started": 0, "done": 0}
    t0 = perf_counter()

    async def worker() -> None:
        while state["started"] < channels:
            state["started"] += 1
            name = await layer.new_channel()
            await layer.send(name, make_message(state["started"]))
            await asyncio.wait_for(layer.receive(name), 30)
            state["done"] += 1
            if state["done"] % sample_every == 0:
                samples.append((state["done"], rss_bytes()))
                if on_sample is not None:
                    on_sample(state["done"], samples[-1][1] / 2**20, perf_counter() - t0)

    # One channel first, so connections and scripts are in place for the baseline.
    name = await layer.new_channel()
    await layer.send(name, make_message(0))
    await layer.receive(name)
    samples[0] = (0, rss_bytes())
    await asyncio.gather(*[worker() for _ in range(concurrency)])
    seconds = perf_counter() - t0
    await layer.close_pools()
    mb = [(n, rss / 2**20) for n, rss in samples]
    half = [rss for n, rss in mb if n >= channels // 2]
    return {
        "layer": spec.name,
        "channels": channels,
        "seconds": seconds,
        "samples_mb": mb,
        "start_mb": mb[0][1],
        "end_mb": mb[-1][1],
        "growth_mb": mb[-1][1] - mb[0][1],
        # Levels off: what the second half of the churn added.
        "growth_second_half_mb": (half[-1] - half[0]) if len(half) > 1 else None,
    }
