"""The compiled msgpack decoder (ext/_msgpack_decode.pxi) against msgpack.unpackb itself.

unpack_message and demux_batch with an int ``decode`` must give exactly what
``msgpack.unpackb(data, raw=False)`` gives: equal values of the same types (NaN and -0.0
included), and for bad input the same exception type. The compiled rows skip in a
pure-Python build; the pure twin is held to msgpack in both.
"""

from __future__ import annotations

import functools
import importlib
import math
import struct

import msgpack
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from channels_redis_fast.speedups import NO_EXTENSIONS


SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

py = importlib.import_module("channels_redis_fast._speedups_py")
IMPLS = [py]
if not NO_EXTENSIONS:
    IMPLS.append(importlib.import_module("channels_redis_fast._speedups"))


def same(a, b):
    """Equal and of the same types all the way down; NaN equals NaN, -0.0 differs from 0.0."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return a == b


def outcome(func, *args):
    try:
        return True, func(*args)
    except Exception as exc:  # noqa: BLE001 - the type is what is compared
        return False, type(exc)


def same_outcome(a, b):
    return a[0] == b[0] and (same(a[1], b[1]) if a[0] else a[1] is b[1])


def reference(data):
    return outcome(functools.partial(msgpack.unpackb, raw=False), data)


def check(data):
    """Every implementation, with and without a prefix, agrees with msgpack on ``data``."""
    expected = reference(data)
    for mod in IMPLS:
        for prefix, payload in ((0, data), (-4, data), (12, b"P" * 12 + data), (3, b"abc" + data)):
            got = outcome(mod.unpack_message, payload, prefix)
            assert same_outcome(got, expected), (mod.__name__, prefix, data, got, expected)
    return expected


# --- valid values ---------------------------------------------------------------------------

BOUNDARIES = sorted(
    {
        s * (2**k) + d
        for k in (0, 4, 5, 7, 8, 15, 16, 31, 32, 63)
        for s in (1, -1)
        for d in (-1, 0, 1)
        if -(2**63) <= s * (2**k) + d < 2**64
    }
    | {2**64 - 1, 2**64 - 2, -(2**63), -(2**63) + 1, 127, 128, -32, -33, 0}
)
ints = st.one_of(st.sampled_from(BOUNDARIES), st.integers(-(2**63), 2**64 - 1))
floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, math.inf, -math.inf, math.nan, 1e308, 5e-324, 3.4e38]),
)
texts = st.one_of(st.text(max_size=40), st.text(alphabet="aé€😀\x00", max_size=300))
leaves = st.one_of(st.none(), st.booleans(), ints, floats, texts, st.binary(max_size=300))
values = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6),
        st.dictionaries(texts, inner, max_size=6),
    ),
    max_leaves=40,
)


@SETTINGS
@given(value=values, single=st.booleans())
def test_generated_values_decode_like_msgpack(value, single):
    try:
        data = msgpack.packb(value, use_single_float=single)
    except OverflowError:  # a double beyond float32's range
        assume(False)
    ok, decoded = check(data)
    assert ok


@pytest.mark.parametrize("size", [0, 1, 15, 16, 31, 32, 255, 256, 65535, 65536, 70000])
def test_length_boundaries(size):
    # fixstr/str8/16/32, bin8/16/32, fixarray/array16/32, fixmap/map16/32.
    for value in (
        "x" * size,
        "é" * (size // 2),
        b"\xff" * size,
        list(range(size)),
        {f"k{i}": i for i in range(size)},
    ):
        assert check(msgpack.packb(value))[0]


def test_map_with_duplicate_keys_keeps_the_last_value():
    assert check(b"\x82\xa1a\x01\xa1a\x02") == (True, {"a": 2})


def test_deep_nesting_falls_back_to_msgpack():
    for depth in (1, 31, 32, 33, 100, 2000):
        check(b"\x91" * depth + b"\x01")
        check(b"\x81\xa1k" * depth + b"\xc0")


# --- malformed input ------------------------------------------------------------------------

MALFORMED = [
    b"",
    b"\xc1",
    b"\x81\x01\x02",  # int key
    b"\x81\xc4\x01k\x01",  # bytes key: msgpack accepts it
    b"\x81\xc0\x01",  # None key
    b"\x81\xcb" + struct.pack(">d", 1.5) + b"\x01",  # float key
    b"\x81\x91\x01\x02",  # list key (unhashable)
    b"\x81\x80\x02",  # dict key
    b"\xa2\xff\xfe",  # invalid UTF-8
    b"\xa3\xed\xa0\x80",  # UTF-8 encoded surrogate
    b"\x92\xa1a\xa1\x80",
    b"\x01\x02",  # trailing bytes
    b"\x91\x01\x02",
    b"\x92\x01",  # truncated
    b"\xdd\xff\xff\xff\xff",  # huge array header
    b"\xdf\xff\xff\xff\xff",
    b"\xdb\xff\xff\xff\xffabc",
    b"\xc6\x7f\xff\xff\xff",
    b"\xd4\x01\x02",  # fixext 1
    b"\xc7\x03\x05abc",  # ext 8
    msgpack.packb(msgpack.ExtType(5, b"data")),
    msgpack.packb(msgpack.Timestamp(1, 2)),
    msgpack.packb({"when": msgpack.Timestamp(2**40, 5)}, datetime=False),
    b"\xcb\x00",
    b"\xcf\xff",
]


@pytest.mark.parametrize("data", MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_inputs_behave_like_msgpack(data):
    check(data)
    check(data + b"\x00")


@SETTINGS
@given(data=st.binary(max_size=60))
def test_random_bytes_behave_like_msgpack(data):
    check(data)


@st.composite
def damaged(draw):
    data = bytearray(msgpack.packb(draw(values)))
    kind = draw(st.sampled_from(["truncate", "flip", "trailing", "insert"]))
    if kind == "truncate":
        del data[draw(st.integers(0, len(data) - 1)) :]
    elif kind == "flip":
        for _ in range(draw(st.integers(1, 3))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    elif kind == "trailing":
        data += draw(st.binary(min_size=1, max_size=8))
    else:
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.binary(min_size=1, max_size=4))
    return bytes(data)


@SETTINGS
@given(data=damaged())
def test_damaged_payloads_behave_like_msgpack(data):
    check(data)


@SETTINGS
@given(key=st.one_of(ints, st.binary(max_size=5), st.none(), st.booleans(), floats),
       value=values)  # fmt: skip
def test_non_str_map_keys_behave_like_msgpack(key, value):
    check(msgpack.packb({"ok": 1, key: value}, strict_types=False))


def test_other_buffers_and_types_still_go_through_msgpack(impl):
    data = msgpack.packb({"a": [1, "b"]})
    for payload in (bytearray(data), memoryview(data)):
        assert impl.unpack_message(payload, 0) == {"a": [1, "b"]}
    for bad in ("text", 5, None):
        assert outcome(impl.unpack_message, bad, 0)[1] is reference(bad)[1]


# --- demux_batch with an int decode ---------------------------------------------------------

PROCESS = "specific.abc123!"
names = st.text(alphabet="xyz", min_size=1, max_size=2).map(lambda s: PROCESS + s)
targets = st.one_of(names, st.lists(names, min_size=1, max_size=3))
small_values = st.recursive(
    leaves,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(texts, inner, max_size=3)),
    max_leaves=6,
)
bodies = st.dictionaries(
    st.text(max_size=8).filter(lambda k: k != "__asgi_channel__"), small_values, max_size=4
)
payloads = st.one_of(
    st.builds(lambda body, target: {**body, "__asgi_channel__": target}, bodies, targets),
    bodies,
    small_values,
)


@st.composite
def batches(draw):
    flat = []
    for i in range(draw(st.integers(0, 12))):
        member = i.to_bytes(12, "big") + msgpack.packb(draw(payloads))
        shape = draw(st.integers(0, 12))
        if shape == 0:
            member = member[: draw(st.integers(0, len(member) - 1))]
        elif shape == 1:
            member += b"\x00"
        elif shape == 2:
            member = member[:12] + b"\xa2\xff\xfe"
        flat += [member, draw(st.sampled_from([b"10.5", 1.0, 100.0, b"1e9", "x"]))]
    return flat


def _summary(mod, flat, decode, maxsize, cutoff):
    buffers = {}
    touched, malformed, expired = mod.demux_batch(list(flat), decode, buffers, maxsize, cutoff)
    drained = {n: [b.get_nowait() for _ in range(b.qsize())] for n, b in buffers.items()}
    return touched, [(m, type(e), str(e)) for m, e in malformed], expired, drained


@SETTINGS
@given(flat=batches(), maxsize=st.integers(0, 4), cutoff=st.sampled_from([0.0, 50.0]),
       prefix=st.sampled_from([12, 0, -1, 11, 13]))  # fmt: skip
def test_demux_int_decode_equals_callable_decode(flat, maxsize, cutoff, prefix):
    callable_decode = functools.partial(msgpack.unpackb, raw=False)
    skip = max(prefix, 0)
    expected = _summary(py, flat, lambda m: callable_decode(m[skip:]), maxsize, cutoff)
    for mod in IMPLS:
        for decode in (prefix, functools.partial(mod.unpack_message, prefix_length=prefix)):
            got = _summary(mod, flat, decode, maxsize, cutoff)
            assert got[:3] == expected[:3]
            assert list(got[3]) == list(expected[3])
            assert all(same(got[3][n], expected[3][n]) for n in got[3])


def test_demux_int_decode_edges(impl):
    member = b"P" * 12 + msgpack.packb({"__asgi_channel__": PROCESS + "a", "v": 1})
    assert impl.demux_batch([member, 5.0], 12, {}, 0, 0.0)[0] == [PROCESS + "a"]
    with pytest.raises(OverflowError):
        impl.demux_batch([member, 5.0], 2**70, {}, 0, 0.0)
    with pytest.raises(ValueError):
        impl.demux_batch([member], 12, {}, 0, 0.0)


def test_repeated_and_colliding_map_keys():
    # Short ASCII keys are cached by the compiled decoder; thousands of distinct keys force
    # slot collisions, and near-identical or non-ASCII keys must never be confused.
    keys = [f"k{i}" for i in range(3000)] + ["", "é", "ü" * 10, "a" * 30, "a" * 31, "a" * 32]
    keys += ["k1\x00", "K1", "k1 ", "\x7f"]
    for _ in range(2):
        for i, key in enumerate(keys):
            assert check(msgpack.packb({key: i, "type": key})) == (True, {key: i, "type": key})
    check(b"\x82\xa1a\x01\xa2\xff\xfe\x02")  # invalid UTF-8 in a key
    check(b"\x81\xa2\xc3\xa9\x01")
