"""Microbenchmarks of the hot paths: compiled vs pure twin vs what channels_redis does.

    pytest bench/test_micro.py --benchmark-only --benchmark-group-by=group \
        --benchmark-columns=min,mean,ops

Each group holds the three rows of one hot path. Data is shaped like production traffic:
~150-byte chat messages addressed to 74-character process-specific channel names, batches
of 100 popped messages, and a channel_capacity with a handful of patterns.
"""

from __future__ import annotations

import collections
import functools
import importlib
import itertools
import re

import pytest
from channels.layers import BaseChannelLayer
from channels_redis.core import BoundedQueue
from channels_redis.serializers import registry
from channels_redis.utils import _consistent_hash

from channels_redis_fast.speedups import env_flag

NO_EXTENSIONS = env_flag("CHANNELS_REDIS_FAST_NO_EXTENSIONS")
py = importlib.import_module("channels_redis_fast._speedups_py")
cc = None if NO_EXTENSIONS else importlib.import_module("channels_redis_fast._speedups")

IMPLS = [
    pytest.param(cc, id="compiled", marks=pytest.mark.skipif(cc is None, reason="pure build")),
    pytest.param(py, id="pure"),
]

PREFIX_LENGTH = 12
CLIENT_PREFIX = "3f1e0c9a8b7d4e6fa1b2c3d4e5f60718"
# "specific." + 32 hex + "!" + 32 hex = 74 characters, like RedisChannelLayer.new_channel().
CHANNELS = [f"specific.{CLIENT_PREFIX}!{i:032x}" for i in range(1, 5)]
assert all(len(c) == 74 for c in CHANNELS)
MESSAGE = {
    "type": "chat.message",
    "room": "lobby",
    "user": "alice_1987",
    "text": "Hello everyone! Is the deploy still scheduled for 5pm today or was it moved?",
    "ts": 1763789000.1234567,
}
CAPACITIES = {
    "http.request": 200,
    "http.response!*": 10,
    re.compile(r"^websocket.send!.+"): 20,
    "chat.*": 50,
}

serializer = registry.get_serializer("msgpack", random_prefix_length=PREFIX_LENGTH)
assert 140 <= len(serializer.serialize(MESSAGE)) <= 160


# --- consistent_hash ------------------------------------------------------------------------


@pytest.mark.benchmark(group="consistent_hash")
@pytest.mark.parametrize("impl", IMPLS)
def test_hash(benchmark, impl):
    func = impl.consistent_hash
    benchmark(func, CHANNELS[0], 3)


@pytest.mark.benchmark(group="consistent_hash")
def test_hash_channels_redis(benchmark):
    benchmark(_consistent_hash, CHANNELS[0], 3)


# --- serialization --------------------------------------------------------------------------


@pytest.mark.benchmark(group="serialize")
@pytest.mark.parametrize("impl", IMPLS)
def test_serialize(benchmark, impl):
    benchmark(impl.pack_message, MESSAGE, PREFIX_LENGTH)


@pytest.mark.benchmark(group="serialize")
def test_serialize_channels_redis(benchmark):
    benchmark(serializer.serialize, MESSAGE)


@pytest.mark.benchmark(group="deserialize")
@pytest.mark.parametrize("impl", IMPLS)
def test_deserialize(benchmark, impl):
    data = serializer.serialize(MESSAGE)
    benchmark(impl.unpack_message, data, PREFIX_LENGTH)


@pytest.mark.benchmark(group="deserialize")
def test_deserialize_channels_redis(benchmark):
    benchmark(serializer.deserialize, serializer.serialize(MESSAGE))


# --- capacity matching ----------------------------------------------------------------------
# One round looks up 1,000 names. "hits": 20 names over and over (warm cache). "misses":
# every lookup walks the patterns (cache disabled). "mixed": half the lookups are 20 hot
# names, half are fresh names from a 20,000-name stream, with a 1,024-entry cache that
# keeps filling and being cleared, so hot names also miss now and then.

HOT = [f"websocket.send!{i:032x}" for i in range(10)] + [f"chat.room{i}" for i in range(5)] + [
    "http.request",
    "http.response!abc",
    "http.disconnect",
    "websocket.receive",
    CHANNELS[0],
]
COLD = [
    [f"websocket.send!{i:032x}", f"http.response!{i:032x}", f"specific.{i:032x}!x"][i % 3]
    for i in range(20_000)
]


def _mixed_rounds():
    cold = itertools.cycle(COLD)
    return itertools.cycle(
        [[name for hot in HOT * 25 for name in (hot, next(cold))] for _ in range(20)]
    )


def _lookup_all(get, names):
    for name in names:
        get(name)


def _channels_get_capacity():
    layer = BaseChannelLayer(capacity=100)
    layer.channel_capacity = layer.compile_capacities(CAPACITIES)
    return layer.get_capacity


@pytest.mark.benchmark(group="capacity-hits")
@pytest.mark.parametrize("impl", IMPLS)
def test_capacity_hits(benchmark, impl):
    get = impl.CapacityMatcher(CAPACITIES, 100).get
    benchmark(_lookup_all, get, HOT * 50)


@pytest.mark.benchmark(group="capacity-hits")
def test_capacity_hits_channels(benchmark):
    benchmark(_lookup_all, _channels_get_capacity(), HOT * 50)


@pytest.mark.benchmark(group="capacity-misses")
@pytest.mark.parametrize("impl", IMPLS)
def test_capacity_misses(benchmark, impl):
    get = impl.CapacityMatcher(CAPACITIES, 100, cache_size=0).get
    benchmark(_lookup_all, get, COLD[:1000])


@pytest.mark.benchmark(group="capacity-misses")
def test_capacity_misses_channels(benchmark):
    benchmark(_lookup_all, _channels_get_capacity(), COLD[:1000])


@pytest.mark.benchmark(group="capacity-mixed")
@pytest.mark.parametrize("impl", IMPLS)
def test_capacity_mixed(benchmark, impl):
    get = impl.CapacityMatcher(CAPACITIES, 100, cache_size=1024).get
    rounds = _mixed_rounds()
    benchmark(lambda: _lookup_all(get, next(rounds)))


@pytest.mark.benchmark(group="capacity-mixed")
def test_capacity_mixed_channels(benchmark):
    get = _channels_get_capacity()
    rounds = _mixed_rounds()
    benchmark(lambda: _lookup_all(get, next(rounds)))


# --- demultiplexing a popped batch ----------------------------------------------------------


def _batch():
    flat = []
    for i in range(100):
        message = dict(MESSAGE, n=i)
        # Mostly direct sends, every tenth a group bundle addressed to two local channels.
        if i % 10 == 9:
            message["__asgi_channel__"] = [CHANNELS[i % 4], CHANNELS[(i + 1) % 4]]
        else:
            message["__asgi_channel__"] = CHANNELS[i % 4]
        flat += [serializer.serialize(message), b"%.7f" % (1763789000.0 + i / 1000)]
    return flat


BATCH = _batch()
CUTOFF = 1763788940.0


@pytest.mark.benchmark(group="demux-100")
@pytest.mark.parametrize("impl", IMPLS)
def test_demux(benchmark, impl):
    decode = functools.partial(impl.unpack_message, prefix_length=PREFIX_LENGTH)
    demux = impl.demux_batch

    def run():
        buffers = {}
        touched, malformed, expired = demux(BATCH, decode, buffers, 100, CUTOFF)
        assert len(touched) == 4 and not malformed and not expired
        return buffers

    benchmark(run)


@pytest.mark.benchmark(group="demux-100")
def test_demux_channels_redis(benchmark):
    # What channels_redis's receive() does per popped message, minus the Redis round trip.
    deserialize = serializer.deserialize

    def run():
        buffers = collections.defaultdict(functools.partial(BoundedQueue, 100))
        for member in BATCH[::2]:
            message = deserialize(member)
            channel = message["__asgi_channel__"]
            del message["__asgi_channel__"]
            if isinstance(channel, list):
                for chan in channel:
                    buffers[chan].put_nowait(message)
            else:
                buffers[channel].put_nowait(message)
        return buffers

    benchmark(run)


# The layer's path for plain msgpack: an int decode (the prefix length) lets the compiled
# demux decode each member in C, without calling back into Python.
@pytest.mark.benchmark(group="demux-100-int-decode")
@pytest.mark.parametrize("impl", IMPLS)
def test_demux_int_decode(benchmark, impl):
    demux = impl.demux_batch

    def run():
        buffers = {}
        touched, malformed, expired = demux(BATCH, PREFIX_LENGTH, buffers, 100, CUTOFF)
        assert len(touched) == 4 and not malformed and not expired
        return buffers

    benchmark(run)


@pytest.mark.benchmark(group="demux-100-int-decode")
def test_demux_int_decode_channels_redis(benchmark):
    # Same baseline as the demux-100 group, repeated so each group reads on its own.
    test_demux_channels_redis(benchmark)


# --- RESP encoding (baseline: redis-py's command packer) ------------------------------------

ZADD = ("ZADD", b"asgispecific." + CLIENT_PREFIX.encode() + b"!", 1763789000.1234567,
        serializer.serialize(MESSAGE))  # fmt: skip


@pytest.mark.benchmark(group="resp-encode")
@pytest.mark.parametrize("impl", IMPLS)
def test_encode_command(benchmark, impl):
    benchmark(impl.encode_command, ZADD)


@pytest.mark.benchmark(group="resp-encode")
def test_encode_command_redis_py(benchmark):
    from redis.connection import Connection

    pack = Connection().pack_command
    benchmark(pack, *ZADD)


@pytest.mark.benchmark(group="resp-encode-pipeline-100")
@pytest.mark.parametrize("impl", IMPLS)
def test_encode_commands(benchmark, impl):
    benchmark(impl.encode_commands, [ZADD] * 100)


# Routing cost alone: the decoder hands out copies of pre-decoded messages, so the rows
# differ only in what the demultiplexer itself does (score check, validation, buffers).
_PREDECODED = {m: serializer.deserialize(m) for m in BATCH[::2]}


def _copy_decoded(member):
    return dict(_PREDECODED[member])


@pytest.mark.benchmark(group="demux-100-routing-only")
@pytest.mark.parametrize("impl", IMPLS)
def test_demux_routing(benchmark, impl):
    demux = impl.demux_batch
    benchmark(lambda: demux(BATCH, _copy_decoded, {}, 100, CUTOFF))


@pytest.mark.benchmark(group="demux-100-routing-only")
def test_demux_routing_channels_redis(benchmark):
    def run():
        buffers = collections.defaultdict(functools.partial(BoundedQueue, 100))
        for member in BATCH[::2]:
            message = _copy_decoded(member)
            channel = message["__asgi_channel__"]
            del message["__asgi_channel__"]
            for chan in channel if isinstance(channel, list) else [channel]:
                buffers[chan].put_nowait(message)
        return buffers

    benchmark(run)
