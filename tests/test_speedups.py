"""Behaviour of the hot paths, checked for both the compiled module and the pure twin.

Expectations are computed by hand (or from channels_redis's published vectors), not by
calling the other implementation: cross-implementation checks live in
test_speedups_parity.py.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import re
from pathlib import Path

import msgpack
import pytest

import channels_redis_fast
from channels_redis_fast import speedups

NO_EXTENSIONS = speedups.env_flag("CHANNELS_REDIS_FAST_NO_EXTENSIONS")
REPO_ROOT = Path(__file__).resolve().parent.parent


# --- the build under test ----------------------------------------------------------------


@pytest.mark.skipif(NO_EXTENSIONS, reason="pure-Python build")
def test_compiled_module_is_active():
    # Fails loudly when a compiled run silently fell back to the pure twin.
    assert speedups.IMPLEMENTATION == "compiled"
    from channels_redis_fast import _speedups

    assert _speedups.__file__.endswith((".so", ".pyd"))
    assert speedups.demux_batch is _speedups.demux_batch


@pytest.mark.skipif(not NO_EXTENSIONS, reason="compiled build")
def test_pure_twin_is_active_without_extensions():
    assert speedups.IMPLEMENTATION == "pure"


def test_package_is_imported_from_the_installed_copy():
    # The venv may live inside the checkout (make test uses <repo>/.venv), so compare
    # with the source package itself rather than with the repo root.
    package_dir = Path(channels_redis_fast.__file__).resolve().parent
    assert package_dir != (REPO_ROOT / "channels_redis_fast").resolve()
    assert "site-packages" in package_dir.parts


def test_selector_exports_every_hot_path(impl):
    for name in impl.__all__:
        assert callable(getattr(impl, name)), name
        assert name in speedups.__all__, name
    active = importlib.import_module("channels_redis_fast." + ("_speedups_py" if NO_EXTENSIONS else "_speedups"))
    assert all(getattr(speedups, name) is getattr(active, name) for name in active.__all__)


@pytest.mark.parametrize(
    "value, expected",
    [(None, False), ("", False), ("0", False), ("false", False), (" No ", False), ("FALSE", False),
     ("1", True), ("yes", True), ("true", True), ("on", True)],
)  # fmt: skip
def test_env_flag_rule(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv("CHANNELS_REDIS_FAST_SOME_FLAG", raising=False)
    else:
        monkeypatch.setenv("CHANNELS_REDIS_FAST_SOME_FLAG", value)
    assert speedups.env_flag("CHANNELS_REDIS_FAST_SOME_FLAG") is expected


# --- consistent_hash ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, ring_size, expected",
    [
        ("key_one", 1, 0),
        ("key_two", 1, 0),
        ("key_one", 2, 1),
        ("key_two", 2, 0),
        ("key_one", 10, 6),
        ("key_two", 10, 4),
        (b"key_one", 10, 6),
        ("key_one", 4096, 2849),
        ("key_two", 4096, 1974),
        # crc32("") == 0, so every ring maps it to shard 0.
        ("", 7, 0),
    ],
)
def test_consistent_hash_vectors(impl, value, ring_size, expected):
    assert impl.consistent_hash(value, ring_size) == expected


def test_consistent_hash_encodes_str_as_utf8(impl):
    assert impl.consistent_hash("é!ü", 3) == impl.consistent_hash("é!ü".encode(), 3)


def test_consistent_hash_keeps_the_float_arithmetic(impl):
    # crc32("key_one") & 0xFFF == 2849. With ring 3 the divisor is 1365.333..., so
    # 2849 / 1365.333 = 2.0866 -> 2; an integer formula (2849 * 3 // 4096) agrees here,
    # but ring 7 shows the float path: 2849 / (4096 / 7.0) = 4.869 -> 4.
    assert impl.consistent_hash("key_one", 3) == 2
    assert impl.consistent_hash("key_one", 7) == 4
    assert impl.consistent_hash("key_one", 5000) == int(2849 / (4096 / 5000.0))


@pytest.mark.parametrize("value", [None, 12, 1.5, bytearray(b"x"), ["a"]])
def test_consistent_hash_rejects_other_types(impl, value):
    with pytest.raises(TypeError, match=type(value).__name__):
        impl.consistent_hash(value, 4)


@pytest.mark.parametrize("ring_size", [0, -1])
def test_consistent_hash_rejects_empty_rings(impl, ring_size):
    with pytest.raises(ValueError, match="ring_size"):
        impl.consistent_hash("a", ring_size)


# --- framing -------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, -1, -12])
def test_random_prefix_non_positive_is_empty(impl, n):
    assert impl.random_prefix(n) == b""


@pytest.mark.parametrize("n", [1, 12, 4095, 4096, 4097, 10000])
def test_random_prefix_lengths(impl, n):
    assert len(impl.random_prefix(n)) == n


def test_random_prefix_is_not_the_seedable_random_module(impl):
    import random

    random.seed(1234)
    first = impl.random_prefix(12)
    random.seed(1234)
    second = impl.random_prefix(12)
    assert first != second
    # 2,000 prefixes crossing several pool refills: all distinct.
    assert len({impl.random_prefix(12) for _ in range(2000)}) == 2000


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_random_prefix_differs_after_fork(impl):
    impl.random_prefix(1)  # make sure the parent holds a partly used pool
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.write(write_fd, impl.random_prefix(16))
        finally:
            os._exit(0)
    os.close(write_fd)
    child = os.read(read_fd, 64)
    os.close(read_fd)
    os.waitpid(pid, 0)
    assert len(child) == 16
    assert child != impl.random_prefix(16)


MESSAGE = {"type": "chat.message", "text": "hello", "n": 3, "raw": b"\x00\x01", "t": (1, 2)}
# 0x85: fixmap of 5; a4 "type"; ac "chat.message"; a4 "text"; a5 "hello"; a1 "n"; 03;
# a3 "raw"; c4 02 (bin 8) 00 01; a1 "t"; 92 (fixarray of 2) 01 02.
MESSAGE_BYTES = (
    b"\x85\xa4type\xacchat.message\xa4text\xa5hello\xa1n\x03\xa3raw\xc4\x02\x00\x01"
    b"\xa1t\x92\x01\x02"
)


@pytest.mark.parametrize("prefix_length", [12, 8, 1])
def test_pack_message_layout(impl, prefix_length):
    data = impl.pack_message(MESSAGE, prefix_length)
    assert len(data) == prefix_length + len(MESSAGE_BYTES)
    assert data[prefix_length:] == MESSAGE_BYTES


@pytest.mark.parametrize("prefix_length", [0, -1])
def test_pack_message_without_prefix(impl, prefix_length):
    assert impl.pack_message(MESSAGE, prefix_length) == MESSAGE_BYTES


def test_pack_message_prefixes_differ(impl):
    assert impl.pack_message({"a": 1}, 12) != impl.pack_message({"a": 1}, 12)


@pytest.mark.parametrize("prefix_length", [12, 0, -1])
def test_unpack_message_round_trip(impl, prefix_length):
    decoded = impl.unpack_message(impl.pack_message(MESSAGE, prefix_length), prefix_length)
    assert decoded == {**MESSAGE, "t": [1, 2]}


def test_unpack_message_skips_exactly_the_prefix(impl):
    assert impl.unpack_message(b"Q\x0c\xbb?Q\xbc\xe3|" + b"\x81\xa1a\x01", 8) == {"a": 1}
    # A non-positive prefix length skips nothing, as in channels_redis.
    assert impl.unpack_message(b"\x81\xa1a\x01", 0) == {"a": 1}
    assert impl.unpack_message(b"\x81\xa1a\x01", -3) == {"a": 1}


def test_unpack_message_accepts_other_buffers(impl):
    assert impl.unpack_message(bytearray(b"xx\x81\xa1a\x01"), 2) == {"a": 1}


def test_pack_message_propagates_msgpack_errors(impl):
    with pytest.raises(TypeError):
        impl.pack_message({"a": object()}, 12)
    # The shared packer must be clean after the failure.
    assert impl.pack_message({"a": 1}, 0) == b"\x81\xa1a\x01"


def test_unpack_message_keeps_strict_map_keys(impl):
    # The behaviour, not msgpack's wording (its C and pure-Python unpackers word it
    # differently): the frame is valid msgpack, and only the non-string key refuses it.
    data = impl.pack_message({1: "int key"}, 4)
    assert data[4:] == msgpack.packb({1: "int key"})
    with pytest.raises(ValueError):
        impl.unpack_message(data, 4)
    assert impl.unpack_message(impl.pack_message({"1": "str key"}, 4), 4) == {"1": "str key"}


def test_unpack_message_truncated(impl):
    with pytest.raises(ValueError):
        impl.unpack_message(b"\x01\x02\x03", 12)


# --- capacity matching ---------------------------------------------------------------------

CAPACITIES = {
    "http.request": 200,
    "http.response!*": 10,
    re.compile(r"^websocket.send!.+"): 20,
    "ws.[!a-c]?x": 7,
}


@pytest.mark.parametrize(
    "name, expected",
    [
        ("http.request", 200),
        ("http.requests", 100),  # a literal glob matches the whole name only
        ("xhttp.request", 100),
        ("http.response!", 10),
        ("http.response!abc\nnext", 10),  # * crosses newlines (DOTALL)
        ("HTTP.RESPONSE!a", 100),  # case-sensitive
        ("websocket.send!abc", 20),
        ("websocket.send!", 100),
        ("websocketXsend!abc", 20),  # an unescaped regex dot matches anything
        ("websocket.send!x-trailing", 20),  # re.match only anchors at the start
        ("ws.dzx", 7),
        ("ws.azx", 100),
        ("ws.dzxy", 100),
        ("other", 100),
    ],
)
def test_capacity_matcher_answers(impl, name, expected):
    matcher = impl.CapacityMatcher(CAPACITIES, 100)
    assert matcher.get(name) == expected
    assert matcher.get(name) == expected  # again, from the cache


def test_capacity_matcher_first_match_wins(impl):
    matcher = impl.CapacityMatcher([("a*", 1), ("ab*", 2), ("abc", 3)], 0)
    assert [matcher.get(n) for n in ("abc", "ab", "b")] == [1, 1, 0]
    matcher = impl.CapacityMatcher([("abc", 3), ("a*", 1)], 0)
    assert [matcher.get(n) for n in ("abc", "abd")] == [3, 1]


@pytest.mark.parametrize(
    "pattern, matching, not_matching",
    [
        ("*", ["", "anything\n"], []),
        ("a?b", ["axb", "a\nb"], ["ab", "axxb"]),
        ("[]]", ["]"], ["[]]", ""]),
        ("[!a-c]*", ["d", "dxyz", "]"], ["a", "c123", ""]),
        ("a[*]", ["a*"], ["ab"]),
        ("a\\*", ["a\\", "a\\xyz"], ["a*"]),  # no escaping in fnmatch: \ is literal
        ("pre.fix*", ["pre.fix", "pre.fix!x"], ["prexfix"]),
        ("x**", ["x", "xyz"], ["y"]),
    ],
)
def test_capacity_matcher_glob_semantics(impl, pattern, matching, not_matching):
    matcher = impl.CapacityMatcher({pattern: 1}, 0)
    for name in matching:
        assert matcher.get(name) == 1, name
    for name in not_matching:
        assert matcher.get(name) == 0, name


def test_capacity_matcher_empty_and_none(impl):
    assert impl.CapacityMatcher({}, 5).get("a") == 5
    assert impl.CapacityMatcher(None, 5).get("a") == 5


def test_capacity_matcher_cache_is_bounded(impl):
    calls = []

    class Counting:
        def match(self, name):
            calls.append(name)
            return name.startswith("x")

    matcher = impl.CapacityMatcher({Counting(): 1}, 0, cache_size=3)
    for name in ("xa", "xb", "c", "xa", "xb", "c"):
        matcher.get(name)
    assert calls == ["xa", "xb", "c"]
    matcher.get("d")  # the cache is full: cleared, then d is stored
    matcher.get("xa")
    assert calls == ["xa", "xb", "c", "d", "xa"]
    uncached = impl.CapacityMatcher({Counting(): 1}, 0, cache_size=0)
    calls.clear()
    uncached.get("x")
    uncached.get("x")
    assert calls == ["x", "x"]


def test_capacity_matcher_rejects_non_str(impl):
    with pytest.raises(TypeError):
        impl.CapacityMatcher({"a": 1}, 0).get(b"a")


# --- ChannelBuffer --------------------------------------------------------------------------


def test_channel_buffer_drops_oldest(impl):
    buf = impl.ChannelBuffer(100)
    for i in range(10000):
        buf.put_nowait(i)
    assert buf.full()
    assert buf.qsize() == len(buf) == 100
    assert buf.dropped == 9900
    assert [buf.get_nowait() for _ in range(100)] == list(range(9900, 10000))
    assert buf.empty() and not buf.full()
    with pytest.raises(asyncio.QueueEmpty):
        buf.get_nowait()


def test_channel_buffer_put_front_returns_an_item_to_the_head(impl):
    buf = impl.ChannelBuffer(4)
    for i in range(3):
        buf.put_nowait(i)
    taken = buf.get_nowait()
    buf.put_front(taken)
    assert [buf.get_nowait() for _ in range(3)] == [0, 1, 2]
    # Wrapping the ring's head backwards past slot 0, and growing a full ring.
    unbounded = impl.ChannelBuffer(0)
    for i in range(20):
        unbounded.put_front(i)
    assert [unbounded.get_nowait() for _ in range(20)] == list(range(19, -1, -1))


def test_channel_buffer_put_front_when_full_drops_the_returned_item(impl):
    # The returned item is older than everything buffered, so it is the one dropped.
    buf = impl.ChannelBuffer(2)
    buf.put_nowait("a")
    buf.put_nowait("b")
    buf.put_front("older")
    assert buf.dropped == 1
    assert [buf.get_nowait() for _ in range(2)] == ["a", "b"]


@pytest.mark.parametrize("maxsize", [0, -1])
def test_channel_buffer_unbounded(impl, maxsize):
    buf = impl.ChannelBuffer(maxsize)
    assert buf.maxsize == maxsize
    for i in range(5000):
        buf.put_nowait(i)
    assert not buf.full() and buf.dropped == 0 and len(buf) == 5000
    assert [buf.get_nowait() for _ in range(5000)] == list(range(5000))
    assert buf.empty()


def test_channel_buffer_interleaved_fifo(impl):
    buf = impl.ChannelBuffer(5)
    expected = []
    counter = 0
    for step in range(200):
        for _ in range(step % 4):
            buf.put_nowait(counter)
            expected.append(counter)
            counter += 1
        del expected[: max(0, len(expected) - 5)]
        for _ in range(step % 3):
            if expected:
                assert buf.get_nowait() == expected.pop(0)
        assert buf.qsize() == len(expected)
    assert buf.maxsize == 5


def test_channel_buffer_maxsize_one(impl):
    buf = impl.ChannelBuffer(1)
    buf.put_nowait("a")
    buf.put_nowait("b")
    assert buf.full() and buf.dropped == 1 and buf.get_nowait() == "b"


# --- demux_batch ----------------------------------------------------------------------------


def _member(payload, prefix=b"PPPPPPPPPPPP"):
    return prefix + msgpack.packb(payload)


def _decode(member):
    return msgpack.unpackb(member[12:])


def test_demux_routes_str_and_list_targets(impl):
    flat = [
        _member({"type": "one", "__asgi_channel__": "p!a"}),
        b"1763789000.1234567",
        _member({"type": "two", "__asgi_channel__": ["p!b", "p!a", "p!c"]}),
        1763789001.5,
    ]
    existing = impl.ChannelBuffer(10)
    buffers = {"p!a": existing}
    touched, malformed, expired = impl.demux_batch(flat, _decode, buffers, 3, 0.0)
    assert (touched, malformed, expired) == (["p!a", "p!b", "p!c"], [], 0)
    assert buffers["p!a"] is existing
    assert buffers["p!b"].maxsize == 3 and buffers["p!c"].maxsize == 3
    assert existing.get_nowait() == {"type": "one"}
    first = buffers["p!b"].get_nowait()
    second = existing.get_nowait()
    third = buffers["p!c"].get_nowait()
    assert first == second == third == {"type": "two"}
    # Every channel of a bundle gets the same dict: the layer copies on take.
    assert first is second is third


def test_demux_counts_expired_by_score(impl):
    flat = [
        _member({"__asgi_channel__": "p!a", "n": 1}), b"99.5",
        _member({"__asgi_channel__": "p!a", "n": 2}), b"100",
        _member({"__asgi_channel__": "p!a", "n": 3}), 99.999,
        _member({"__asgi_channel__": "p!a", "n": 4}), b"inf",
    ]  # fmt: skip
    buffers = {}
    touched, malformed, expired = impl.demux_batch(flat, _decode, buffers, 10, 100.0)
    assert (touched, malformed, expired) == (["p!a"], [], 2)
    assert [buffers["p!a"].get_nowait()["n"] for _ in range(2)] == [2, 4]


def test_demux_reports_malformed_and_goes_on(impl):
    bad = [
        b"short",  # msgpack cannot decode it
        _member([1, 2]),  # not a dict
        _member({"type": "x"}),  # no target
        _member({"__asgi_channel__": 5}),
        _member({"__asgi_channel__": []}),
        _member({"__asgi_channel__": ["p!a", 3]}),
        _member({"__asgi_channel__": b"p!a"}),
    ]
    good = _member({"__asgi_channel__": "p!a", "ok": True})
    flat = []
    for member in bad:
        flat += [member, b"5"]
    flat += [good, b"5", b"also bad score", b"not-a-number"]
    buffers = {}
    touched, malformed, expired = impl.demux_batch(flat, _decode, buffers, 10, 0.0)
    assert touched == ["p!a"] and expired == 0
    assert [m for m, _ in malformed] == bad + [b"also bad score"]
    assert all(isinstance(exc, ValueError) for _, exc in malformed)
    assert "dict" in str(malformed[1][1])
    assert "__asgi_channel__" in str(malformed[2][1])
    assert "empty" in str(malformed[4][1])
    assert buffers["p!a"].get_nowait() == {"ok": True}
    assert len(buffers) == 1


def test_demux_decoder_errors_are_captured(impl):
    class Boom(Exception):
        pass

    def decode(member):
        raise Boom(member)

    touched, malformed, expired = impl.demux_batch([b"m", b"1"], decode, {}, 10, 0.0)
    assert touched == [] and expired == 0
    assert malformed[0][0] == b"m" and isinstance(malformed[0][1], Boom)


def test_demux_overflows_drop_oldest(impl):
    flat = []
    for n in range(7):
        flat += [_member({"__asgi_channel__": "p!a", "n": n}), float(n)]
    buffers = {}
    impl.demux_batch(flat, _decode, buffers, 3, 0.0)
    buf = buffers["p!a"]
    assert buf.dropped == 4
    assert [buf.get_nowait()["n"] for _ in range(3)] == [4, 5, 6]


def test_demux_odd_length_is_an_error(impl):
    with pytest.raises(ValueError, match="even"):
        impl.demux_batch([b"x"], _decode, {}, 10, 0.0)


def test_demux_empty_batch(impl):
    assert impl.demux_batch([], _decode, {}, 10, 0.0) == ([], [], 0)


# --- RESP encoding --------------------------------------------------------------------------


def test_encode_command_types(impl):
    assert impl.encode_command([b"SET", "clé", 42, -7, 1.5, 1e100]) == (
        b"*6\r\n$3\r\nSET\r\n$4\r\ncl\xc3\xa9\r\n$2\r\n42\r\n$2\r\n-7\r\n"
        b"$3\r\n1.5\r\n$6\r\n1e+100\r\n"
    )


def test_encode_command_edge_values(impl):
    assert impl.encode_command([]) == b"*0\r\n"
    assert impl.encode_command([b""]) == b"*1\r\n$0\r\n\r\n"
    assert impl.encode_command((2**64, -(2**63), 0.0, float("inf"))) == (
        b"*4\r\n$20\r\n18446744073709551616\r\n$20\r\n-9223372036854775808\r\n"
        b"$3\r\n0.0\r\n$3\r\ninf\r\n"
    )
    assert impl.encode_command([1763789000.1234567]) == b"*1\r\n$18\r\n1763789000.1234567\r\n"


def test_encode_command_buffers(impl):
    view = memoryview(b"0123456789")
    assert impl.encode_command([bytearray(b"ab"), view[2:5], view[::2]]) == (
        b"*3\r\n$2\r\nab\r\n$3\r\n234\r\n$5\r\n02468\r\n"
    )


@pytest.mark.parametrize("bad", [True, False, None, object(), [b"x"], {"a": 1}])
def test_encode_command_rejects_other_types(impl, bad):
    with pytest.raises(TypeError, match=type(bad).__name__):
        impl.encode_command([b"SET", bad])


def test_encode_command_long_commands(impl):
    args = [b"ZADD", b"key"] + [str(i) for i in range(100)]
    expected = b"*102\r\n$4\r\nZADD\r\n$3\r\nkey\r\n" + b"".join(
        b"$%d\r\n%d\r\n" % (len(str(i)), i) for i in range(100)
    )
    assert impl.encode_command(args) == expected


def test_encode_commands_concatenates(impl):
    assert impl.encode_commands([["PING"], ("GET", b"k")]) == (
        b"*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
    )
    assert impl.encode_commands(iter([])) == b""
    assert impl.encode_commands((["ECHO", i] for i in range(40))) == b"".join(
        b"*2\r\n$4\r\nECHO\r\n$%d\r\n%d\r\n" % (len(str(i)), i) for i in range(40)
    )


@pytest.mark.parametrize(
    "score, is_expired",
    [
        (b"99.99999999999999", True),
        (b"100.00000000000001", False),  # rounds to 100.0: not below the cutoff
        (b"100.0000000000001", False),
        (b"100", False),
        (b"99.9999999999999900001", True),
        (b"-0", True),
        (b"1e2", False),
        (b" 99.5 ", True),  # float() tolerates whitespace and underscores
        (b"1_00", False),
        (b"-inf", True),
        (b"inf", False),
        (b"nan", False),
        (b"0000000000000000000000099.5", True),
    ],
)
def test_demux_score_edges(impl, score, is_expired):
    flat = [_member({"__asgi_channel__": "p!a"}), score]
    touched, malformed, expired = impl.demux_batch(flat, _decode, {}, 10, 100.0)
    assert malformed == []
    assert expired == int(is_expired)
