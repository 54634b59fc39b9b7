"""Generated-input parity: compiled vs pure twin, and each vs channels_redis 4.3 / channels.

The compiled-vs-pure tests skip in a pure-Python build; the comparisons against the
reference libraries always run for whichever implementations are available.
"""

from __future__ import annotations

import importlib
import re

import hiredis
import msgpack
import pytest
from channels.layers import BaseChannelLayer
from channels_redis.core import BoundedQueue
from channels_redis.serializers import registry
from channels_redis.utils import _consistent_hash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from channels_redis_fast.speedups import NO_EXTENSIONS


SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

py = importlib.import_module("channels_redis_fast._speedups_py")
IMPLS = [py]
if not NO_EXTENSIONS:
    IMPLS.append(importlib.import_module("channels_redis_fast._speedups"))

needs_compiled = pytest.mark.skipif(NO_EXTENSIONS, reason="pure-Python build")


@pytest.fixture
def cc():
    return importlib.import_module("channels_redis_fast._speedups")


def _defined_in(module) -> set[str]:
    """The public classes and functions ``module`` defines itself (not what it imports)."""
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and getattr(value, "__module__", None) == module.__name__
    }


def test_pure_twin_lists_every_hot_path_it_defines():
    # Its __all__ is the one list of hot paths (speedups.py exports what it names).
    assert sorted(py.__all__) == sorted(_defined_in(py))


@needs_compiled
def test_compiled_module_defines_the_pure_twins_hot_paths(cc):
    assert cc.__all__ == sorted(py.__all__)
    assert _defined_in(cc) == set(py.__all__)
    for name in py.__all__:
        assert isinstance(getattr(cc, name), type) == isinstance(getattr(py, name), type), name


def _outcome(func, *args):
    """(True, result) or (False, exception type name) for comparing error behaviour."""
    try:
        return True, func(*args)
    except Exception as exc:  # noqa: BLE001 - the type is what is compared
        return False, type(exc).__name__


# --- consistent_hash ------------------------------------------------------------------------

hash_values = st.one_of(st.text(), st.binary(), st.text(alphabet="abc.!-_", max_size=99))
ring_sizes = st.one_of(st.integers(1, 16), st.integers(1, 100_000))


@SETTINGS
@given(value=hash_values, ring_size=ring_sizes)
def test_consistent_hash_matches_channels_redis(impl, value, ring_size):
    assert impl.consistent_hash(value, ring_size) == _consistent_hash(value, ring_size)


@needs_compiled
@SETTINGS
@given(
    value=st.one_of(hash_values, st.none(), st.integers(), st.text(alphabet="\ud800x")),
    ring_size=st.integers(-3, 50),
)
def test_consistent_hash_compiled_vs_pure(cc, value, ring_size):
    # Lone surrogates cannot be UTF-8 encoded: both must raise the same error type.
    assert _outcome(cc.consistent_hash, value, ring_size) == _outcome(
        py.consistent_hash, value, ring_size
    )


# --- serialization --------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=40),
    st.binary(max_size=40),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(max_size=8), inner, max_size=4),
    ),
    max_leaves=12,
)
messages = st.dictionaries(st.text(max_size=16), values, max_size=6)
prefix_lengths = st.sampled_from([12, 8, 1, 0, -1])


@SETTINGS
@given(message=messages, prefix_length=prefix_lengths)
def test_framing_interoperates_with_channels_redis(impl, message, prefix_length):
    theirs = registry.get_serializer("msgpack", random_prefix_length=prefix_length)
    skip = max(prefix_length, 0)
    ours_bytes = impl.pack_message(message, prefix_length)
    their_bytes = theirs.serialize(message)
    assert len(ours_bytes) == len(their_bytes)
    assert ours_bytes[skip:] == their_bytes[skip:]
    assert impl.unpack_message(their_bytes, prefix_length) == theirs.deserialize(ours_bytes)
    assert impl.unpack_message(ours_bytes, prefix_length) == msgpack.unpackb(their_bytes[skip:])


@needs_compiled
@SETTINGS
@given(message=messages, prefix_length=prefix_lengths)
def test_framing_compiled_vs_pure(cc, message, prefix_length):
    skip = max(prefix_length, 0)
    compiled = cc.pack_message(message, prefix_length)
    pure = py.pack_message(message, prefix_length)
    assert compiled[skip:] == pure[skip:]
    assert cc.unpack_message(pure, prefix_length) == py.unpack_message(compiled, prefix_length)


@needs_compiled
@SETTINGS
@given(data=st.binary(max_size=40), prefix_length=st.integers(-2, 20))
def test_unpack_garbage_compiled_vs_pure(cc, data, prefix_length):
    assert _outcome(cc.unpack_message, data, prefix_length) == _outcome(
        py.unpack_message, data, prefix_length
    )


# --- capacity matching ----------------------------------------------------------------------

glob_text = st.text(alphabet="ab.!*?[]-\\\n", max_size=8)
channel_names = st.text(alphabet="ab.!*?[]-\\\nc", max_size=10)
REGEXES = [
    re.compile(r"^a.b"),
    re.compile(r"b!"),
    re.compile(r"^websocket.send!.+"),
    re.compile(r"(?s).*\]"),
]
patterns = st.one_of(
    glob_text,
    st.sampled_from(["[!a-c]*", "[]]", "a?b", "*", "a*", "a!*", "[a-]x", "[", "b[!]]*"]),
    st.sampled_from(REGEXES),
)
capacity_maps = st.lists(st.tuples(patterns, st.integers(1, 500)), max_size=5).map(dict)


def _channels_capacity(channel_capacity, default):
    layer = BaseChannelLayer(capacity=default)
    layer.channel_capacity = layer.compile_capacities(channel_capacity)
    return layer.get_capacity


@SETTINGS
@given(
    channel_capacity=capacity_maps,
    names=st.lists(channel_names, max_size=12),
    cache_size=st.sampled_from([4096, 2, 0]),
)
def test_capacity_matches_channels(impl, channel_capacity, names, cache_size):
    reference = _channels_capacity(channel_capacity, 100)
    matcher = impl.CapacityMatcher(channel_capacity, 100, cache_size)
    # Every name twice: the second answer may come from the cache.
    for name in names + names:
        assert matcher.get(name) == reference(name), (channel_capacity, name)


@needs_compiled
@SETTINGS
@given(channel_capacity=capacity_maps, names=st.lists(channel_names, max_size=12))
def test_capacity_compiled_vs_pure(cc, channel_capacity, names):
    pairs = list(channel_capacity.items())
    compiled = cc.CapacityMatcher(pairs, 7, 3)
    pure = py.CapacityMatcher(pairs, 7, 3)
    for name in names + names[::-1]:
        assert compiled.get(name) == pure.get(name)


# --- ChannelBuffer --------------------------------------------------------------------------

buffer_ops = st.lists(st.one_of(st.integers(0, 10**6), st.none()), max_size=300)


@SETTINGS
@given(maxsize=st.integers(-1, 12), ops=buffer_ops)
def test_channel_buffer_matches_bounded_queue(impl, maxsize, ops):
    # An int means put_nowait(int), None means get_nowait().
    ours = impl.ChannelBuffer(maxsize)
    theirs = BoundedQueue(maxsize)
    for op in ops:
        if op is None:
            assert _outcome(ours.get_nowait) == _outcome(theirs.get_nowait)
        else:
            ours.put_nowait(op)
            theirs.put_nowait(op)
        assert (ours.qsize(), ours.empty(), ours.full()) == (
            theirs.qsize(),
            theirs.empty(),
            theirs.full(),
        )
        assert len(ours) == ours.qsize()


@needs_compiled
@SETTINGS
@given(maxsize=st.integers(-1, 12), ops=st.lists(st.integers(-1, 10**6), max_size=300))
def test_channel_buffer_twins_agree_with_put_front(maxsize, ops):
    # n >= 0: put_nowait(n) if even, put_front(n) if odd; -1: get_nowait().
    twins = [impl.ChannelBuffer(maxsize) for impl in IMPLS]
    for op in ops:
        if op < 0:
            assert len({_outcome(buf.get_nowait) for buf in twins}) == 1
        else:
            for buf in twins:
                (buf.put_front if op % 2 else buf.put_nowait)(op)
        assert len({(buf.qsize(), buf.full(), buf.dropped) for buf in twins}) == 1


# --- demux_batch ----------------------------------------------------------------------------

PROCESS = "specific.abc123!"
local_names = st.text(alphabet="xyz", min_size=1, max_size=2).map(lambda s: PROCESS + s)
targets = st.one_of(local_names, st.lists(local_names, min_size=1, max_size=4))
bodies = st.dictionaries(
    st.text(alphabet="abtype", max_size=5).filter(lambda k: k != "__asgi_channel__"),
    scalars,
    max_size=3,
)
good_messages = st.builds(lambda body, target: {**body, "__asgi_channel__": target}, bodies, targets)
small_ints = st.integers(-(2**63), 2**63 - 1)
bad_payloads = st.one_of(
    bodies,  # no target
    st.builds(lambda body, t: {**body, "__asgi_channel__": t}, bodies,
              st.one_of(st.just([]), small_ints, st.binary(), st.lists(small_ints, min_size=1),
                        st.none(), st.lists(st.one_of(local_names, small_ints), min_size=2))),
    st.lists(small_ints, max_size=3),
    small_ints,
    st.text(max_size=4),
)  # fmt: skip
scores = st.floats(0, 2000, allow_nan=False)
score_shapes = st.sampled_from([float, lambda s: repr(s).encode(), lambda s: b"%.7f" % s])


def _decode(member):
    return msgpack.unpackb(member[12:])


@st.composite
def batches(draw, allow_bad=True):
    items = draw(st.lists(
        st.one_of(good_messages, bad_payloads) if allow_bad else good_messages, max_size=30
    ))  # fmt: skip
    flat = []
    for i, payload in enumerate(items):
        member = i.to_bytes(12, "big") + msgpack.packb(payload)
        if allow_bad and draw(st.integers(0, 15)) == 0:
            member = member[: draw(st.integers(0, len(member) - 1))]  # undecodable
        score = draw(scores)
        flat += [member, draw(score_shapes)(score)]
    if allow_bad and flat and draw(st.booleans()):
        flat[-1] = b"not a score"
    return flat


def _drain(buffers):
    out = {}
    for name, buf in buffers.items():
        out[name] = [buf.get_nowait() for _ in range(buf.qsize())]
    return out


def _describe(malformed):
    return [(member, type(exc).__name__, str(exc)) for member, exc in malformed]


@needs_compiled
@SETTINGS
@given(flat=batches(), maxsize=st.integers(0, 5), cutoff=st.floats(0, 2000))
def test_demux_compiled_vs_pure(cc, flat, maxsize, cutoff):
    results = []
    for mod in (cc, py):
        buffers = {}
        touched, malformed, expired = mod.demux_batch(list(flat), _decode, buffers, maxsize, cutoff)
        drops = {name: buf.dropped for name, buf in buffers.items()}
        results.append((touched, _describe(malformed), expired, drops, _drain(buffers)))
    assert results[0] == results[1]


@SETTINGS
@given(flat=batches(), maxsize=st.integers(0, 5), cutoff=st.floats(0, 2000),
       prefix=st.sampled_from([12, 0, -1, 11, 13]))  # fmt: skip
def test_demux_int_decode_equals_callable_decode(impl, flat, maxsize, cutoff, prefix):
    # The core layer passes its prefix length as ``decode``: unpack_message called
    # directly, which must route, refuse and count exactly as the same decode as a callable.
    skip = max(prefix, 0)
    results = []
    for decode in (prefix, lambda member: msgpack.unpackb(member[skip:])):
        buffers = {}
        touched, malformed, expired = impl.demux_batch(list(flat), decode, buffers, maxsize, cutoff)
        drops = {name: buf.dropped for name, buf in buffers.items()}
        results.append((touched, _describe(malformed), expired, drops, _drain(buffers)))
    assert results[0] == results[1]


def test_demux_int_decode_edges(impl):
    member = b"P" * 12 + msgpack.packb({"__asgi_channel__": PROCESS + "a", "v": 1})
    assert impl.demux_batch([member, 5.0], 12, {}, 0, 0.0)[0] == [PROCESS + "a"]
    with pytest.raises(OverflowError):
        impl.demux_batch([member, 5.0], 2**70, {}, 0, 0.0)
    with pytest.raises(ValueError):
        impl.demux_batch([member], 12, {}, 0, 0.0)


def _channels_redis_route(flat, capacity):
    """What channels_redis's receive() does with each popped message (no expiry check)."""
    serializer = registry.get_serializer("msgpack", random_prefix_length=12)
    buffers = {}
    for member in flat[::2]:
        message = serializer.deserialize(member)
        channel = message.pop("__asgi_channel__")
        for chan in channel if isinstance(channel, list) else [channel]:
            buffers.setdefault(chan, BoundedQueue(capacity)).put_nowait(message)
    return buffers


@SETTINGS
@given(flat=batches(allow_bad=False), capacity=st.integers(1, 5))
def test_demux_routes_like_channels_redis(impl, flat, capacity):
    buffers = {}
    touched, malformed, expired = impl.demux_batch(
        flat, _decode, buffers, capacity, float("-inf")
    )
    assert malformed == [] and expired == 0
    reference = _channels_redis_route(flat, capacity)
    assert set(touched) == set(reference) and len(touched) == len(set(touched))
    assert _drain(buffers) == _drain(reference)


@SETTINGS
@given(flat=batches(), cutoff=st.floats(0, 2000))
def test_demux_never_raises_and_accounts_for_every_member(impl, flat, cutoff):
    buffers = {}
    touched, malformed, expired = impl.demux_batch(flat, _decode, buffers, 0, cutoff)
    delivered_members = len(flat) // 2 - len(malformed) - expired
    assert delivered_members >= 0
    assert sum(buf.qsize() for buf in buffers.values()) >= delivered_members
    assert list(buffers) == touched


# --- RESP encoding --------------------------------------------------------------------------

resp_args = st.one_of(
    st.binary(max_size=30),
    st.text(max_size=20),
    st.integers(),
    st.floats(),
    st.binary(max_size=10).map(bytearray),
    st.binary(max_size=10).map(memoryview),
)
commands = st.lists(resp_args, max_size=8)


def _expected_arg(arg):
    if isinstance(arg, float):
        return repr(arg).encode()
    if isinstance(arg, int):
        return str(arg).encode()
    if isinstance(arg, str):
        return arg.encode()
    return bytes(arg)


@SETTINGS
@given(batch=st.lists(commands, min_size=1, max_size=4))
def test_resp_round_trips_through_hiredis(impl, batch):
    reader = hiredis.Reader()
    reader.feed(impl.encode_commands(batch))
    for args in batch:
        assert reader.gets() == [_expected_arg(a) for a in args]
    assert reader.gets() is False
    assert b"".join(impl.encode_command(args) for args in batch) == impl.encode_commands(batch)


@needs_compiled
@SETTINGS
@given(
    batch=st.lists(
        st.lists(st.one_of(resp_args, st.booleans(), st.none(), st.just(object())), max_size=6),
        max_size=4,
    )
)
def test_resp_compiled_vs_pure(cc, batch):
    assert _outcome(cc.encode_commands, batch) == _outcome(py.encode_commands, batch)
    for args in batch:
        assert _outcome(cc.encode_command, args) == _outcome(py.encode_command, args)
