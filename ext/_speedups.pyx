# cython: language_level=3
"""Compiled hot paths of channels_redis_fast (twin of ``channels_redis_fast._speedups_py``).

Data in, data out: nothing here touches the event loop. Every public name behaves exactly
like the pure twin, which documents the contracts; comments here explain the C-level choices.
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport (
    PyBytes_AS_STRING,
    PyBytes_Check,
    PyBytes_CheckExact,
    PyBytes_FromStringAndSize,
    PyBytes_GET_SIZE,
)
from cpython.float cimport PyFloat_AS_DOUBLE, PyFloat_Check, PyFloat_CheckExact
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.object cimport PyObject
from libc.math cimport INFINITY, fabs
from libc.stdint cimport uint32_t
from libc.string cimport memcpy

import fnmatch
import os
import re
from asyncio import QueueEmpty

import msgpack

from channels_redis_fast.exceptions import RESERVED_KEY

cdef extern from "Python.h":
    const char *PyUnicode_AsUTF8AndSize(object s, Py_ssize_t *size) except NULL
    char *PyOS_double_to_string(double val, char format_code, int precision, int flags,
                                int *ptype) except NULL
    long long PyLong_AsLongLongAndOverflow(object o, int *overflow) except? -1
    bint PyByteArray_Check(object o)
    char *PyByteArray_AS_STRING(object o)
    bint PyMemoryView_Check(object o)
    bint PyBool_Check(object o)
    bint PyLong_Check(object o)
    bint PyUnicode_Check(object o)
    bint PyDict_Check(object o)
    bint PyList_CheckExact(object o)
    bint PyTuple_CheckExact(object o)
    int Py_DTSF_ADD_DOT_0

cdef extern from "crf_crc32.h":
    void crf_crc32_init()
    uint32_t crf_crc32(const unsigned char *p, size_t n) nogil

crf_crc32_init()

# ---------------------------------------------------------------------------
# Shard selection
# ---------------------------------------------------------------------------


def consistent_hash(value, Py_ssize_t ring_size):
    """consistent_hash(value: str | bytes, ring_size: int) -> int"""
    cdef const char *data
    cdef Py_ssize_t size
    cdef double divisor
    if PyUnicode_Check(value):
        # Zero-copy: CPython caches the UTF-8 form inside the str object.
        data = PyUnicode_AsUTF8AndSize(value, &size)
    elif PyBytes_Check(value):
        data = PyBytes_AS_STRING(value)
        size = PyBytes_GET_SIZE(value)
    else:
        raise TypeError(
            f"consistent_hash() value must be str or bytes, not {type(value).__name__}")
    if ring_size < 1:
        raise ValueError(f"consistent_hash() ring_size must be >= 1, got {ring_size!r}")
    if ring_size == 1:
        return 0
    # Same double arithmetic as channels_redis (bigval / (4096 / float(ring_size))); an
    # integer shortcut would round differently for ring sizes that do not divide 4096.
    divisor = 4096.0 / <double>ring_size
    return <Py_ssize_t>(<double>(crf_crc32(<const unsigned char *>data, <size_t>size) & 0xFFF)
                        / divisor)


# CRC16-XMODEM (polynomial 0x1021, initial 0), the checksum Redis Cluster hashes keys
# with; a 256-entry table built once at import, one lookup per byte.
cdef unsigned short _crc16_table[256]


cdef void _crc16_init():
    cdef unsigned int i, k, c
    for i in range(256):
        c = i << 8
        for k in range(8):
            c = ((c << 1) ^ 0x1021) if (c & 0x8000) else (c << 1)
        _crc16_table[i] = <unsigned short>(c & 0xFFFF)


_crc16_init()


cdef inline Py_ssize_t _key_slot(object key) except -1:
    cdef const unsigned char *data
    cdef Py_ssize_t size, start, end, i
    cdef unsigned int crc = 0
    if PyUnicode_Check(key):
        data = <const unsigned char *>PyUnicode_AsUTF8AndSize(key, &size)
    elif PyBytes_Check(key):
        data = <const unsigned char *>PyBytes_AS_STRING(key)
        size = PyBytes_GET_SIZE(key)
    else:
        raise TypeError(f"key_slot() key must be str or bytes, not {type(key).__name__}")
    start = 0
    while start < size and data[start] != 123:  # "{"
        start += 1
    if start < size:
        end = start + 1
        while end < size and data[end] != 125:  # "}"
            end += 1
        if end < size and end > start + 1:
            data += start + 1
            size = end - start - 1
    for i in range(size):
        crc = ((crc << 8) & 0xFFFF) ^ _crc16_table[((crc >> 8) ^ data[i]) & 0xFF]
    return crc & 0x3FFF


def key_slot(key):
    """key_slot(key: str | bytes) -> int"""
    return _key_slot(key)


def key_slots(keys):
    """key_slots(keys: Iterable[str | bytes]) -> list[int]"""
    return [_key_slot(key) for key in keys]


# ---------------------------------------------------------------------------
# Message framing: random prefix + msgpack
# ---------------------------------------------------------------------------

# Prefix bytes come from an os.urandom pool (see the pure twin for why not `random`).
# The copies below run with no Python code in between, so the GIL makes them atomic;
# this module is never built free-threaded (setup.py leaves it GIL-only).
cdef enum:
    _POOL_CHUNK = 4096

cdef bytearray _pool = bytearray(_POOL_CHUNK)
cdef Py_ssize_t _pool_pos = _POOL_CHUNK
cdef object _urandom = os.urandom


def _reset_pool():
    # A forked child must not replay the parent's unused random bytes.
    global _pool_pos
    _pool_pos = _POOL_CHUNK


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_pool)


cdef int _fill_random(char *dest, Py_ssize_t n) except -1:
    global _pool_pos
    cdef bytes fresh
    if n > _POOL_CHUNK:
        fresh = _urandom(n)
        memcpy(dest, PyBytes_AS_STRING(fresh), n)
        return 0
    if _pool_pos + n <= _POOL_CHUNK:
        memcpy(dest, PyByteArray_AS_STRING(_pool) + _pool_pos, n)
        _pool_pos += n
        return 0
    # Another thread may run during the call (it is Python code); if it refilled the pool
    # meanwhile, its pool is used and these bytes are simply discarded.
    fresh = _urandom(_POOL_CHUNK)
    if _pool_pos + n > _POOL_CHUNK:
        memcpy(PyByteArray_AS_STRING(_pool), PyBytes_AS_STRING(fresh), _POOL_CHUNK)
        _pool_pos = 0
    memcpy(dest, PyByteArray_AS_STRING(_pool) + _pool_pos, n)
    _pool_pos += n
    return 0


def random_prefix(Py_ssize_t n):
    """random_prefix(n: int) -> bytes"""
    if n <= 0:
        return b""
    cdef bytes out = PyBytes_FromStringAndSize(NULL, n)
    _fill_random(PyBytes_AS_STRING(out), n)
    return out


# One module-level Packer with msgpack.packb()'s defaults; it resets itself after each
# call, also when packing fails.
cdef object _pack = msgpack.Packer().pack
cdef object _unpackb = msgpack.unpackb


def pack_message(message, Py_ssize_t prefix_length):
    """pack_message(message: Any, prefix_length: int) -> bytes"""
    cdef bytes payload = _pack(message)
    if prefix_length <= 0:
        return payload
    cdef Py_ssize_t size = PyBytes_GET_SIZE(payload)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, prefix_length + size)
    cdef char *buf = PyBytes_AS_STRING(out)
    _fill_random(buf, prefix_length)
    memcpy(buf + prefix_length, PyBytes_AS_STRING(payload), size)
    return out


def unpack_message(data, Py_ssize_t prefix_length):
    """unpack_message(data: bytes, prefix_length: int) -> Any"""
    return _unpack_message(data, prefix_length)


cdef object _unpack_message(object data, Py_ssize_t prefix_length):
    cdef Py_ssize_t size
    if prefix_length > 0:
        if PyBytes_CheckExact(data):
            size = PyBytes_GET_SIZE(data)
            if prefix_length >= size:
                data = b""
            else:
                data = PyBytes_FromStringAndSize(
                    PyBytes_AS_STRING(data) + prefix_length, size - prefix_length)
        else:
            data = data[prefix_length:]
    return _unpackb(data)


# ---------------------------------------------------------------------------
# Capacity matching
# ---------------------------------------------------------------------------

cdef enum RuleKind:
    RULE_EXACT = 0
    RULE_PREFIX = 1
    RULE_MATCHER = 2

cdef frozenset _GLOB_SPECIALS = frozenset("*?[")


@cython.final
@cython.freelist(8)
cdef class _Rule:
    cdef RuleKind kind
    cdef str key         # RULE_EXACT / RULE_PREFIX
    cdef object match    # RULE_MATCHER: a bound .match
    cdef object capacity


cdef _Rule _compile_rule(object pattern, object capacity):
    cdef _Rule rule = _Rule.__new__(_Rule)
    cdef str head
    rule.capacity = capacity
    rule.kind = RULE_MATCHER
    # Same classification as the pure twin: .match objects first, as channels does.
    if hasattr(pattern, "match"):
        rule.match = pattern.match
        return rule
    if PyUnicode_Check(pattern):
        if _GLOB_SPECIALS.isdisjoint(pattern):
            rule.kind = RULE_EXACT
            rule.key = pattern
            return rule
        head = pattern[:-1]
        if pattern[-1] == "*" and _GLOB_SPECIALS.isdisjoint(head):
            rule.kind = RULE_PREFIX
            rule.key = head
            return rule
    rule.match = re.compile(fnmatch.translate(pattern)).match
    return rule


@cython.final
cdef class CapacityMatcher:
    """CapacityMatcher(channel_capacity, default: int, cache_size: int = 4096)

    See ``channels_redis_fast._speedups_py.CapacityMatcher``.
    """

    cdef tuple _rules
    cdef object _default
    cdef dict _cache
    cdef Py_ssize_t _cache_size

    def __init__(self, channel_capacity, default, Py_ssize_t cache_size=4096):
        if channel_capacity is None:
            pairs = ()
        elif hasattr(channel_capacity, "items"):
            pairs = channel_capacity.items()
        else:
            pairs = channel_capacity
        self._rules = tuple([_compile_rule(p, c) for p, c in pairs])
        self._default = default
        self._cache = {}
        self._cache_size = cache_size

    def get(self, name):
        """get(name: str) -> int"""
        cdef object found = self._cache.get(name)
        if found is not None:
            return found
        if not PyUnicode_Check(name):
            raise TypeError(f"channel name must be str, not {type(name).__name__}")
        found = self._lookup(<str>name)
        if self._cache_size > 0 and found is not None:
            if len(self._cache) >= self._cache_size:
                self._cache.clear()
            self._cache[name] = found
        return found

    cdef object _lookup(self, str name):
        cdef _Rule rule
        for rule in self._rules:
            if rule.kind == RULE_EXACT:
                if name == rule.key:
                    return rule.capacity
            elif rule.kind == RULE_PREFIX:
                if name.startswith(rule.key):
                    return rule.capacity
            elif rule.match(name):
                return rule.capacity
        return self._default


# ---------------------------------------------------------------------------
# Receive buffers and demultiplexing
# ---------------------------------------------------------------------------

cdef enum:
    # Ring slots allocated up front; bounded buffers grow by doubling up to maxsize, so
    # a buffer that only ever holds a message or two stays small.
    _RING_MIN = 8
    # Unbounded buffers drained empty give back memory beyond this many slots.
    _RING_SHRINK = 1024


@cython.final
cdef class ChannelBuffer:
    """ChannelBuffer(maxsize: int)

    Bounded FIFO that drops its OLDEST item when full (``maxsize <= 0``: unbounded).
    A ring over a Python list: unlike a C array of references it needs no GC support
    code of its own, and unlike calling into a deque it stays in C on both ends.
    """

    cdef list _ring
    cdef Py_ssize_t _head    # slot of the oldest item
    cdef Py_ssize_t _count
    cdef readonly Py_ssize_t maxsize
    cdef public Py_ssize_t dropped

    def __cinit__(self, Py_ssize_t maxsize=0):
        self.maxsize = maxsize
        # When full the ring must hold exactly maxsize slots (push overwrites in place).
        self._ring = [None] * (maxsize if 0 < maxsize < _RING_MIN else _RING_MIN)
        self._head = 0
        self._count = 0
        self.dropped = 0

    def __init__(self, Py_ssize_t maxsize):
        pass

    # Indices below are kept in [0, len(self._ring)) by construction, so the per-access
    # bounds and negative-index checks would only re-verify that invariant.
    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef int push(self, object item) except -1:
        cdef Py_ssize_t cap = len(self._ring)
        cdef Py_ssize_t slot
        if self.maxsize > 0 and self._count >= self.maxsize:
            # Full: the ring has exactly maxsize slots; overwrite the oldest.
            self._ring[self._head] = item
            self._head += 1
            if self._head == cap:
                self._head = 0
            self.dropped += 1
            return 0
        if self._count == cap:
            self._grow()
            cap = len(self._ring)
        slot = self._head + self._count
        if slot >= cap:
            slot -= cap
        self._ring[slot] = item
        self._count += 1
        return 0

    cdef int _grow(self) except -1:
        cdef Py_ssize_t cap = len(self._ring)
        cdef Py_ssize_t new_cap = cap * 2
        if self.maxsize > 0 and new_cap > self.maxsize:
            new_cap = self.maxsize
        # Unroll the ring so the oldest item lands in slot 0.
        ring = self._ring[self._head:] + self._ring[:self._head]
        ring.extend([None] * (new_cap - cap))
        self._ring = ring
        self._head = 0
        return 0

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef object pop(self):
        if self._count == 0:
            raise QueueEmpty
        cdef object item = self._ring[self._head]
        self._ring[self._head] = None
        self._head += 1
        if self._head == len(self._ring):
            self._head = 0
        self._count -= 1
        if self._count == 0:
            self._head = 0
            if len(self._ring) > _RING_SHRINK:
                self._ring = [None] * _RING_MIN
        return item

    def put_nowait(self, item):
        """put_nowait(item) -> None"""
        self.push(item)

    def get_nowait(self):
        """get_nowait() -> Any; raises asyncio.QueueEmpty when empty."""
        return self.pop()

    @cython.boundscheck(False)
    @cython.wraparound(False)
    def put_front(self, item):
        """put_front(item) -> None; see the pure twin."""
        if self.maxsize > 0 and self._count >= self.maxsize:
            self.dropped += 1
            return
        if self._count == len(self._ring):
            self._grow()
        self._head -= 1
        if self._head < 0:
            self._head = len(self._ring) - 1
        self._ring[self._head] = item
        self._count += 1

    def qsize(self):
        return self._count

    def empty(self):
        return self._count == 0

    def full(self):
        return self.maxsize > 0 and self._count >= self.maxsize

    def __len__(self):
        return self._count

    def __repr__(self):
        return (f"<ChannelBuffer qsize={self._count} maxsize={self.maxsize} "
                f"dropped={self.dropped}>")


cdef inline ChannelBuffer _new_buffer(Py_ssize_t maxsize):
    return ChannelBuffer.__new__(ChannelBuffer, maxsize)


cdef str _CHANNEL_KEY = RESERVED_KEY
cdef object _MISSING = object()


cdef object _targets_error(object msg):
    # Must produce the same errors as the pure twin's _targets_error.
    if not PyDict_Check(msg):
        return ValueError(f"message must decode to a dict, not {type(msg).__name__}")
    target = (<dict>msg).get(_CHANNEL_KEY, _MISSING)
    if target is _MISSING:
        return ValueError(f"message has no {_CHANNEL_KEY!r} key")
    if PyUnicode_Check(target):
        return None
    if isinstance(target, list):
        if not target:
            return ValueError(f"{_CHANNEL_KEY!r} is an empty list")
        for channel in <list>target:
            if not PyUnicode_Check(channel):
                return ValueError(
                    f"{_CHANNEL_KEY!r} list items must be str, not {type(channel).__name__}")
        return None
    return ValueError(
        f"{_CHANNEL_KEY!r} must be a str or a list of str, not {type(target).__name__}")


cdef double[23] _POW10 = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
                          1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22]


cdef inline int _text_expired(const char *s, Py_ssize_t n, double cutoff) noexcept nogil:
    # Decides `float(s) < cutoff` for plain decimals like b"1763789000.1234567" without a
    # correctly rounded parse: Redis prints scores with 17 significant digits, which sends
    # strtod down its slow big-number path (~250 ns each). The estimate below is within
    # 1e-15 relative of the true value, so outside a 1e-9 relative band around the cutoff
    # its answer is certain. Returns 1 expired, 0 not, -1 undecided (caller uses float()).
    cdef Py_ssize_t i = 0
    cdef unsigned long long mant = 0
    cdef int digits = 0, frac = 0
    cdef bint neg = False, dot = False
    cdef char c
    cdef double v, margin
    if cutoff != cutoff or cutoff == INFINITY or cutoff == -INFINITY:
        return -1
    if n > 0 and s[0] == c'-':
        neg = True
        i = 1
    while i < n:
        c = s[i]
        if c'0' <= c <= c'9':
            if digits == 19:
                return -1
            mant = mant * 10 + <unsigned long long>(c - c'0')
            digits += 1
            frac += dot
        elif c == c'.' and not dot:
            dot = True
        else:
            return -1
        i += 1
    if digits == 0 or frac > 22:
        return -1
    v = <double>mant / _POW10[frac]
    if neg:
        v = -v
    margin = 1e-9 * (fabs(v) + fabs(cutoff))
    if v < cutoff - margin:
        return 1
    if v > cutoff + margin:
        return 0
    return -1


cdef inline int _score_expired(object score, double cutoff) except -2:
    # 1 expired, 0 deliver; -1 when float(score) itself must decide (and may raise).
    if PyFloat_CheckExact(score):
        return PyFloat_AS_DOUBLE(score) < cutoff
    if PyBytes_CheckExact(score):
        return _text_expired(PyBytes_AS_STRING(score), PyBytes_GET_SIZE(score), cutoff)
    return -1


cdef int _deliver(dict buffers, object channel, object item, Py_ssize_t maxsize,
                  list touched, set seen) except -1:
    buf = buffers.get(channel)
    if buf is None:
        buf = _new_buffer(maxsize)
        buffers[channel] = buf
    if type(buf) is ChannelBuffer:
        (<ChannelBuffer>buf).push(item)
    else:
        buf.put_nowait(item)
    if channel not in seen:
        seen.add(channel)
        touched.append(channel)
    return 0


def demux_batch(flat, decode, object buffers not None, Py_ssize_t maxsize, double cutoff):
    """demux_batch(flat, decode, buffers, maxsize, cutoff) -> (touched, malformed, expired)

    See ``channels_redis_fast._speedups_py.demux_batch``.
    """
    # Any dict subclass is welcome (the layer's receive_buffer makes buffers on first
    # access, as channels_redis's defaultdict does); lookups here bypass __missing__.
    if not isinstance(buffers, dict):
        raise TypeError(f"buffers must be a dict, not {type(buffers).__name__}")
    cdef dict by_channel = <dict>buffers
    cdef list pairs = flat if PyList_CheckExact(flat) else list(flat)
    cdef Py_ssize_t count = len(pairs)
    cdef Py_ssize_t i, j
    cdef int verdict
    cdef list touched = []
    cdef set seen = set()
    cdef list malformed = []
    cdef Py_ssize_t expired = 0
    cdef object member, msg, target, error
    # An int decode is a prefix length: unpack_message(member, decode), called in C.
    cdef bint inline_msgpack = PyLong_Check(decode)
    cdef Py_ssize_t prefix_length = 0
    if count % 2:
        raise ValueError("flat must hold member/score pairs (even length)")
    if inline_msgpack:
        prefix_length = decode
    for i in range(0, count, 2):
        member = pairs[i]
        verdict = _score_expired(pairs[i + 1], cutoff)
        if verdict < 0:
            try:
                verdict = float(pairs[i + 1]) < cutoff
            except Exception as exc:
                malformed.append((member, exc))
                continue
        if verdict:
            expired += 1
            continue
        try:
            if inline_msgpack:
                msg = _unpack_message(member, prefix_length)
            else:
                msg = decode(member)
        except Exception as exc:
            malformed.append((member, exc))
            continue
        error = _targets_error(msg)
        if error is not None:
            malformed.append((member, error))
            continue
        target = (<dict>msg).pop(_CHANNEL_KEY)
        if PyUnicode_Check(target):
            _deliver(by_channel, target, msg, maxsize, touched, seen)
        else:
            # Validated above as a non-empty list of str. Every channel gets the same
            # dict: the layer copies it as each receiver takes it (see the pure twin).
            for j in range(len(<list>target)):
                _deliver(by_channel, (<list>target)[j], msg, maxsize, touched, seen)
    return touched, malformed, expired


include "_resp.pxi"


# The public names are the classes and functions defined here, not a second hand-written
# list: test_speedups_parity.py holds them equal to the pure twin's __all__.
__all__ = sorted(
    name for name, value in globals().items()
    if not name.startswith("_") and getattr(value, "__module__", None) == __name__
)
