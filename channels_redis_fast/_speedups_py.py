"""Pure-Python twin of the compiled hot paths (``ext/_speedups.pyx``).

This module is the typed source of truth: the compiled module defines the same names with
the same behaviour, and ``tests/test_speedups_parity.py`` holds the two to that. Keep the
algorithms identical here and there (same fast paths, same error types and messages), so a
deployment that falls back to pure Python behaves exactly like one that did not.
"""

from __future__ import annotations

import fnmatch
import functools
import operator
import os
import re
import sys
import threading
from asyncio import QueueEmpty
from binascii import crc32, crc_hqx
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Union

import msgpack

from .exceptions import RESERVED_KEY

__all__ = [
    "CapacityMatcher",
    "ChannelBuffer",
    "consistent_hash",
    "demux_batch",
    "encode_command",
    "encode_commands",
    "key_slot",
    "key_slots",
    "pack_message",
    "random_prefix",
    "unpack_message",
]

RespArg = Union[bytes, bytearray, memoryview, str, int, float]

# ---------------------------------------------------------------------------
# Shard selection
# ---------------------------------------------------------------------------


def consistent_hash(value: str | bytes, ring_size: int) -> int:
    """Map ``value`` onto one of ``ring_size`` shards, exactly as channels_redis does.

    The CRC32 of the UTF-8 bytes is folded to 12 bits (0..4095) and scaled down to the
    ring with the same float division channels_redis uses, so both pick the same shard for
    every name and ring size; the arithmetic must not be "simplified" to integer maths.
    """
    if isinstance(value, str):
        data = value.encode("utf-8")
    elif isinstance(value, bytes):
        data = value
    else:
        raise TypeError(f"consistent_hash() value must be str or bytes, not {type(value).__name__}")
    ring_size = operator.index(ring_size)
    if ring_size < 1:
        raise ValueError(f"consistent_hash() ring_size must be >= 1, got {ring_size!r}")
    if ring_size == 1:
        return 0
    bigval = crc32(data) & 0xFFF
    return int(bigval / (4096 / float(ring_size)))


def key_slot(key: str | bytes) -> int:
    """The Redis Cluster hash slot (0..16383) of ``key``, as ``CLUSTER KEYSLOT`` gives it.

    CRC16 (XMODEM, what binascii.crc_hqx computes) of the key's bytes, str keys taken as
    UTF-8 like redis-py sends them, modulo 16384. When the key holds a ``{`` followed
    later by a ``}`` with at least one byte between them, only the bytes between the first
    ``{`` and the first ``}`` after it are hashed (the hash tag).
    """
    if isinstance(key, str):
        key = key.encode("utf-8")
    elif not isinstance(key, bytes):
        raise TypeError(f"key_slot() key must be str or bytes, not {type(key).__name__}")
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    return crc_hqx(key, 0) & 0x3FFF


def key_slots(keys: Iterable[str | bytes]) -> list[int]:
    """``[key_slot(key) for key in keys]``, in one call (group_send maps many keys)."""
    return [key_slot(key) for key in keys]


# ---------------------------------------------------------------------------
# Message framing: random prefix + msgpack
# ---------------------------------------------------------------------------

# Prefixes keep equal messages distinct inside a Redis sorted set (equal members merge,
# which would silently lose a message). They come from the OS CSPRNG rather than the
# seedable ``random`` module: an application calling random.seed() in every worker would
# otherwise make workers emit identical prefixes. One urandom syscall per chunk keeps the
# cost per message to a slice.
_POOL_CHUNK = 4096
_pool = b""
_pool_pos = 0
_pool_lock = threading.Lock()


def _reset_pool() -> None:
    # A forked child must not replay the parent's unused random bytes.
    global _pool, _pool_pos, _pool_lock
    _pool = b""
    _pool_pos = 0
    _pool_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_pool)


def random_prefix(n: int) -> bytes:
    """Return ``n`` cryptographically random bytes (``b""`` when ``n <= 0``)."""
    global _pool, _pool_pos
    if n <= 0:
        return b""
    if n > _POOL_CHUNK:
        return os.urandom(n)
    with _pool_lock:
        pos = _pool_pos
        end = pos + n
        if end > len(_pool):
            _pool = os.urandom(_POOL_CHUNK)
            pos = 0
            end = n
        _pool_pos = end
        return _pool[pos:end]


# Packer() defaults are msgpack.packb()'s defaults (use_bin_type=True), so the payload is
# byte-identical to channels_redis's. Reusing one packer avoids allocating its internal
# buffer per message; Packer.pack() resets itself after success and after an error.
_pack = msgpack.Packer().pack
_unpackb = msgpack.unpackb


def pack_message(message: Any, prefix_length: int) -> bytes:
    """Serialize ``message`` as channels_redis does: random prefix + msgpack."""
    payload: bytes = _pack(message)
    if prefix_length <= 0:
        return payload
    return random_prefix(prefix_length) + payload


def unpack_message(data: bytes, prefix_length: int) -> Any:
    """Inverse of :func:`pack_message`; a ``prefix_length <= 0`` skips nothing."""
    if prefix_length > 0:
        data = data[prefix_length:]
    return _unpackb(data)


# ---------------------------------------------------------------------------
# Capacity matching
# ---------------------------------------------------------------------------

_EXACT = 0
_PREFIX = 1
_MATCHER = 2
_GLOB_SPECIALS = frozenset("*?[")


def _compile_rule(pattern: Any, capacity: Any) -> tuple[int, Any, Any]:
    # Objects with .match (compiled regexes) win over the glob reading, as in channels.
    if hasattr(pattern, "match"):
        return (_MATCHER, pattern.match, capacity)
    if isinstance(pattern, str):
        if not _GLOB_SPECIALS.intersection(pattern):
            return (_EXACT, pattern, capacity)
        head = pattern[:-1]
        if pattern[-1] == "*" and not _GLOB_SPECIALS.intersection(head):
            return (_PREFIX, head, capacity)
    return (_MATCHER, re.compile(fnmatch.translate(pattern)).match, capacity)


class CapacityMatcher:
    """Per-channel capacity lookup with channels' ``get_capacity`` semantics.

    ``channel_capacity`` maps patterns to capacities (a mapping or an iterable of pairs,
    in priority order). A str pattern is an fnmatch glob that must match the whole name; any
    object with a ``.match`` method (a compiled regex) is called as ``pattern.match(name)``.
    The first match wins, else ``default``. Answers are cached per name; the cache is
    dropped wholesale when it reaches ``cache_size`` (``<= 0`` disables it), which bounds
    memory under channel churn without per-hit bookkeeping.
    """

    __slots__ = ("_rules", "_default", "_cache", "_cache_size")

    def __init__(
        self,
        channel_capacity: Mapping[Any, int] | Iterable[tuple[Any, int]] | None,
        default: int,
        cache_size: int = 4096,
    ) -> None:
        if channel_capacity is None:
            pairs: Iterable[tuple[Any, int]] = ()
        elif hasattr(channel_capacity, "items"):
            pairs = channel_capacity.items()
        else:
            pairs = channel_capacity
        self._rules: list[tuple[int, Any, Any]] = [_compile_rule(p, c) for p, c in pairs]
        self._default = default
        self._cache: dict[str, int] = {}
        self._cache_size = cache_size

    def get(self, name: str) -> int:
        """Return the capacity for channel ``name``."""
        cache = self._cache
        found = cache.get(name)
        if found is not None:
            return found
        if not isinstance(name, str):
            raise TypeError(f"channel name must be str, not {type(name).__name__}")
        result = self._default
        for kind, key, capacity in self._rules:
            if kind == _EXACT:
                if name == key:
                    result = capacity
                    break
            elif kind == _PREFIX:
                if name.startswith(key):
                    result = capacity
                    break
            elif key(name):
                result = capacity
                break
        if self._cache_size > 0 and result is not None:
            if len(cache) >= self._cache_size:
                cache.clear()
            cache[name] = result
        return result


# ---------------------------------------------------------------------------
# Receive buffers and demultiplexing
# ---------------------------------------------------------------------------


class ChannelBuffer:
    """Bounded FIFO that drops its OLDEST item when full (``maxsize <= 0``: unbounded).

    Mirrors channels_redis's BoundedQueue (a consumer that stops reading loses old
    messages instead of growing memory forever) without asyncio.Queue's waiter machinery:
    waking receivers is the caller's job, so this stays plain data.
    """

    __slots__ = ("_items", "_maxsize", "dropped")

    def __init__(self, maxsize: int) -> None:
        self._maxsize = maxsize
        self._items: deque[Any] = deque(maxlen=maxsize) if maxsize > 0 else deque()
        #: How many items were discarded to make room.
        self.dropped = 0

    @property
    def maxsize(self) -> int:
        return self._maxsize

    def put_nowait(self, item: Any) -> None:
        items = self._items
        if len(items) == items.maxlen:
            self.dropped += 1
        # A full deque with maxlen discards its leftmost (oldest) item on append.
        items.append(item)

    def get_nowait(self) -> Any:
        try:
            return self._items.popleft()
        except IndexError:
            raise QueueEmpty from None

    def put_front(self, item: Any) -> None:
        """Return an item to the head: a receiver was handed it, then cancelled.

        When full, that item is the oldest there is, so it is the one dropped.
        """
        items = self._items
        if len(items) == items.maxlen:
            self.dropped += 1
            return
        items.appendleft(item)

    def qsize(self) -> int:
        return len(self._items)

    def empty(self) -> bool:
        return not self._items

    def full(self) -> bool:
        return self._maxsize > 0 and len(self._items) >= self._maxsize

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return (
            f"<ChannelBuffer qsize={len(self._items)} maxsize={self._maxsize} "
            f"dropped={self.dropped}>"
        )


def _targets_error(msg: Any) -> ValueError | None:
    # Validate before mutating anything, so a rejected payload is reported as decoded.
    if not isinstance(msg, dict):
        return ValueError(f"message must decode to a dict, not {type(msg).__name__}")
    if RESERVED_KEY not in msg:
        return ValueError(f"message has no {RESERVED_KEY!r} key")
    target = msg[RESERVED_KEY]
    if isinstance(target, str):
        return None
    if isinstance(target, list):
        if not target:
            return ValueError(f"{RESERVED_KEY!r} is an empty list")
        for channel in target:
            if not isinstance(channel, str):
                return ValueError(
                    f"{RESERVED_KEY!r} list items must be str, not {type(channel).__name__}"
                )
        return None
    return ValueError(f"{RESERVED_KEY!r} must be a str or a list of str, not {type(target).__name__}")


def demux_batch(
    flat: Sequence[Any],
    decode: Callable[[bytes], Any] | int,
    buffers: dict[str, ChannelBuffer],
    maxsize: int,
    cutoff: float,
) -> tuple[list[str], list[tuple[bytes, BaseException]], int]:
    """Route one popped batch of a process-specific sorted set into per-channel buffers.

    ``flat`` is ``[member0, score0, member1, score1, ...]``. Members scored below
    ``cutoff`` are counted as expired and skipped. Each remaining member is decoded and
    delivered to the channel(s) named by its ``__asgi_channel__`` key, which is removed;
    a list target gives every channel that same decoded dict (the layer copies each
    message as a receiver takes it, so one consumer mutating its message cannot affect
    another, and a group delivery allocates nothing per member up front). An int
    ``decode`` is a prefix length and means ``unpack_message(member, decode)`` (plain
    msgpack, no encryption), which the compiled twin runs without a Python call. Missing
    buffers are created with ``maxsize``. A payload that fails to decode or route is
    returned in ``malformed`` with the exception instead of being raised, so one bad
    message cannot lose the rest of the batch.

    Returns ``(touched, malformed, expired)``; ``touched`` names each channel that got a
    message, once, in first-delivery order.
    """
    count = len(flat)
    if count % 2:
        raise ValueError("flat must hold member/score pairs (even length)")
    if isinstance(decode, int):
        # Same range as the compiled twin's Py_ssize_t.
        if not -sys.maxsize - 1 <= decode <= sys.maxsize:
            raise OverflowError("Python int too large to convert to C ssize_t")
        decode = functools.partial(unpack_message, prefix_length=decode)
    touched: list[str] = []
    seen: set[str] = set()
    malformed: list[tuple[bytes, BaseException]] = []
    expired = 0
    for i in range(0, count, 2):
        member = flat[i]
        try:
            score = float(flat[i + 1])
        except Exception as exc:
            malformed.append((member, exc))
            continue
        if score < cutoff:
            expired += 1
            continue
        try:
            msg = decode(member)
        except Exception as exc:
            malformed.append((member, exc))
            continue
        error = _targets_error(msg)
        if error is not None:
            malformed.append((member, error))
            continue
        target = msg.pop(RESERVED_KEY)
        if isinstance(target, str):
            target = (target,)
        for channel in target:
            buf = buffers.get(channel)
            if buf is None:
                buf = buffers[channel] = ChannelBuffer(maxsize)
            buf.put_nowait(msg)
            if channel not in seen:
                seen.add(channel)
                touched.append(channel)
    return touched, malformed, expired


# ---------------------------------------------------------------------------
# RESP2 command encoding
# ---------------------------------------------------------------------------


def _resp_bytes(arg: Any) -> bytes:
    # Exact types first: they are nearly all of the traffic.
    kind = type(arg)
    # mypy sees Any below; the exact type was checked (a cast would cost a call per argument).
    if kind is bytes:
        return arg  # type: ignore[no-any-return]
    if kind is str:
        return arg.encode("utf-8")  # type: ignore[no-any-return]
    if kind is int:
        return b"%d" % arg
    if kind is float:
        return repr(arg).encode("ascii")
    if isinstance(arg, bytes):
        return bytes(arg)
    if isinstance(arg, str):
        return str.encode(arg, "utf-8")
    if isinstance(arg, (bytearray, memoryview)):
        return memoryview(arg).tobytes()
    # bool is an int subclass, but True/False as 1/0 on the wire would hide a bug.
    if isinstance(arg, int) and not isinstance(arg, bool):
        return int.__repr__(arg).encode("ascii")
    if isinstance(arg, float):
        return float.__repr__(arg).encode("ascii")
    raise TypeError(
        f"Redis command arguments must be bytes, str, int or float, not {type(arg).__name__}"
    )


def encode_command(args: Sequence[RespArg]) -> bytes:
    """Encode one command as a RESP2 array of bulk strings."""
    if type(args) is not tuple and type(args) is not list:
        args = tuple(args)
    out = [b"*%d\r\n" % len(args)]
    append = out.append
    for arg in args:
        data = _resp_bytes(arg)
        append(b"$%d\r\n" % len(data))
        append(data)
        append(b"\r\n")
    return b"".join(out)


def encode_commands(commands: Iterable[Sequence[RespArg]]) -> bytes:
    """Encode several commands into one buffer, ready for a single write (pipelining)."""
    return b"".join([encode_command(args) for args in commands])
