# Compiled decoder for the msgpack subset channel-layer messages use (included by
# _speedups.pyx).
#
# Contract: _mp_decode(data, size) returns EXACTLY what msgpack.unpackb(data, raw=False)
# returns with msgpack 1.x defaults (use_list=True, strict_map_key=True, no hooks), or
# _MP_CANT when it cannot be sure. Callers then run msgpack.unpackb on the same bytes, so
# every result and every exception still comes from msgpack itself. "Can't" covers all of:
# ext types (including timestamps), the never-used 0xc1 byte, truncated data, trailing
# bytes, nesting deeper than _MP_MAX_DEPTH, map keys that are not str (msgpack accepts bytes
# keys too and rejects others; either way it decides), invalid UTF-8 and any exception at
# all while decoding (e.g. MemoryError): the fallback re-decodes and raises as msgpack does.
#
# msgpack's own size limits (max_str_len = len(data), max_map_len = len(data) // 2, ...)
# can only reject containers and strings that would not fit in the data anyway, so a
# complete, in-bounds decode never disagrees with them.

from cpython.bytes cimport PyBytes_FromStringAndSize as _mp_bytes
from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.ref cimport Py_INCREF
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport int8_t, int16_t, int32_t, int64_t, uint16_t, uint64_t

cdef extern from "Python.h":
    bint PyUnicode_CheckExact(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)
    void *PyUnicode_DATA(object o)

from libc.string cimport memcmp

cdef enum:
    # Channel messages nest a few levels at most; deeper data goes to msgpack.
    _MP_MAX_DEPTH = 32


class _MsgpackCant(Exception):
    """Raised inside the decoder to abandon it; never escapes this module."""


# Returned by _mp_decode when the caller must ask msgpack.unpackb instead.
cdef object _MP_CANT = object()


cdef struct _MPReader:
    const unsigned char *buf
    Py_ssize_t pos
    Py_ssize_t end


cdef inline const unsigned char *_mp_take(_MPReader *r, Py_ssize_t n) except NULL:
    # The next n bytes (n >= 0), or _MsgpackCant when the data ends first.
    cdef const unsigned char *at
    if n > r.end - r.pos:
        raise _MsgpackCant
    at = r.buf + r.pos
    r.pos += n
    return at


# Big-endian loads, spelled out byte by byte: no alignment or host-order assumptions.
cdef inline uint16_t _mp_u16(const unsigned char *p) noexcept nogil:
    return <uint16_t>((<uint16_t>p[0] << 8) | <uint16_t>p[1])


cdef inline uint32_t _mp_u32(const unsigned char *p) noexcept nogil:
    return ((<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8)
            | <uint32_t>p[3])


cdef inline uint64_t _mp_u64(const unsigned char *p) noexcept nogil:
    return (<uint64_t>_mp_u32(p) << 32) | <uint64_t>_mp_u32(p + 4)


cdef inline object _mp_str(_MPReader *r, Py_ssize_t n):
    # Strict UTF-8; a UnicodeDecodeError propagates up to _mp_decode, which falls back.
    cdef const unsigned char *at = _mp_take(r, n)
    return PyUnicode_DecodeUTF8(<const char *>at, n, NULL)


# Map keys repeat from message to message ("type", "text", "__asgi_channel__"). Short ASCII
# keys are kept in a small direct-mapped cache and handed out again: no allocation, and the
# str keeps its cached hash for the dict insert. Sharing equal immutable str objects is
# invisible to callers (msgpack itself interns map keys). A slot holds only a str whose
# 1-byte data equals the raw bytes it was decoded from, so a hit is checked by memcmp.
cdef enum:
    _MP_KEY_SLOTS = 256      # a power of two
    _MP_KEY_MAX = 31         # fixstr keys only

cdef list _mp_keys = [None] * _MP_KEY_SLOTS


cdef object _mp_key(_MPReader *r, Py_ssize_t n):
    cdef const unsigned char *at = _mp_take(r, n)
    cdef uint32_t h = 2166136261u
    cdef Py_ssize_t i
    cdef object cached, key
    for i in range(n):
        h = (h ^ at[i]) * 16777619u
    i = <Py_ssize_t>(h & (_MP_KEY_SLOTS - 1))
    cached = _mp_keys[i]
    if (cached is not None and PyUnicode_GET_LENGTH(cached) == n
            and memcmp(PyUnicode_DATA(cached), at, n) == 0):
        return cached
    key = PyUnicode_DecodeUTF8(<const char *>at, n, NULL)
    # As many characters as bytes: all ASCII, so its 1-byte data is exactly `at`.
    if PyUnicode_GET_LENGTH(key) == n:
        _mp_keys[i] = key
    return key


cdef inline object _mp_bin(_MPReader *r, Py_ssize_t n):
    cdef const unsigned char *at = _mp_take(r, n)
    return _mp_bytes(<const char *>at, n)


cdef object _mp_array(_MPReader *r, Py_ssize_t n, int depth):
    cdef Py_ssize_t i
    cdef object item
    # Every element takes at least one byte: reject impossible lengths before allocating.
    if depth >= _MP_MAX_DEPTH or n > r.end - r.pos:
        raise _MsgpackCant
    cdef list out = PyList_New(n)
    for i in range(n):
        item = _mp_value(r, depth + 1)
        # PyList_SET_ITEM steals a reference. Slots not yet filled are NULL, which list
        # deallocation tolerates if we bail out half-way.
        Py_INCREF(item)
        PyList_SET_ITEM(out, i, item)
    return out


cdef object _mp_map(_MPReader *r, Py_ssize_t n, int depth):
    cdef Py_ssize_t i
    cdef unsigned char b
    cdef object key
    # Every key and every value take at least one byte each.
    if depth >= _MP_MAX_DEPTH or n > (r.end - r.pos) // 2:
        raise _MsgpackCant
    cdef dict out = {}
    for i in range(n):
        b = _mp_take(r, 1)[0]
        if 0xa0 <= b <= 0xbf:               # fixstr key: the common case, cached
            key = _mp_key(r, b & 0x1f)
        else:
            r.pos -= 1
            key = _mp_value(r, depth + 1)
        # strict_map_key: msgpack allows str and bytes keys and raises for the rest; only
        # str is handled here, everything else is msgpack's call.
        if not PyUnicode_CheckExact(key):
            raise _MsgpackCant
        # Duplicate keys: the last value wins, as with msgpack's PyDict_SetItem.
        out[key] = _mp_value(r, depth + 1)
    return out


cdef object _mp_value(_MPReader *r, int depth):
    cdef unsigned char b = _mp_take(r, 1)[0]
    cdef const unsigned char *p
    cdef uint32_t u32
    cdef uint64_t u64
    cdef float f32
    cdef double f64
    if b <= 0x7f:                           # positive fixint
        return <long>b
    if b >= 0xe0:                           # negative fixint
        return <long>(<int8_t>b)
    if b >= 0xa0 and b <= 0xbf:             # fixstr
        return _mp_str(r, b & 0x1f)
    if b <= 0x8f:                           # fixmap (0x80..0x8f)
        return _mp_map(r, b & 0x0f, depth)
    if b <= 0x9f:                           # fixarray (0x90..0x9f)
        return _mp_array(r, b & 0x0f, depth)
    if b == 0xc0:
        return None
    if b == 0xc2:
        return False
    if b == 0xc3:
        return True
    if b == 0xc4:                           # bin 8/16/32
        return _mp_bin(r, _mp_take(r, 1)[0])
    if b == 0xc5:
        return _mp_bin(r, _mp_u16(_mp_take(r, 2)))
    if b == 0xc6:
        return _mp_bin(r, <Py_ssize_t>_mp_u32(_mp_take(r, 4)))
    if b == 0xca:                           # float 32: widened exactly as msgpack does
        u32 = _mp_u32(_mp_take(r, 4))
        memcpy(&f32, &u32, 4)
        return <double>f32
    if b == 0xcb:                           # float 64
        u64 = _mp_u64(_mp_take(r, 8))
        memcpy(&f64, &u64, 8)
        return f64
    if b == 0xcc:                           # uint 8/16/32/64
        return <long>_mp_take(r, 1)[0]
    if b == 0xcd:
        return <long>_mp_u16(_mp_take(r, 2))
    if b == 0xce:
        return <unsigned long long>_mp_u32(_mp_take(r, 4))
    if b == 0xcf:
        return <unsigned long long>_mp_u64(_mp_take(r, 8))
    if b == 0xd0:                           # int 8/16/32/64
        return <long>(<int8_t>_mp_take(r, 1)[0])
    if b == 0xd1:
        return <long>(<int16_t>_mp_u16(_mp_take(r, 2)))
    if b == 0xd2:
        return <long long>(<int32_t>_mp_u32(_mp_take(r, 4)))
    if b == 0xd3:
        return <long long>(<int64_t>_mp_u64(_mp_take(r, 8)))
    if b == 0xd9:                           # str 8/16/32
        return _mp_str(r, _mp_take(r, 1)[0])
    if b == 0xda:
        return _mp_str(r, _mp_u16(_mp_take(r, 2)))
    if b == 0xdb:
        return _mp_str(r, <Py_ssize_t>_mp_u32(_mp_take(r, 4)))
    if b == 0xdc:                           # array 16/32
        return _mp_array(r, _mp_u16(_mp_take(r, 2)), depth)
    if b == 0xdd:
        return _mp_array(r, <Py_ssize_t>_mp_u32(_mp_take(r, 4)), depth)
    if b == 0xde:                           # map 16/32
        return _mp_map(r, _mp_u16(_mp_take(r, 2)), depth)
    if b == 0xdf:
        return _mp_map(r, <Py_ssize_t>_mp_u32(_mp_take(r, 4)), depth)
    # 0xc1 (never used), 0xc7-0xc9 (ext), 0xd4-0xd8 (fixext, timestamps): msgpack decides.
    raise _MsgpackCant


cdef object _mp_decode(const char *data, Py_ssize_t size):
    """The msgpack.unpackb(data[:size], raw=False) value, or _MP_CANT."""
    cdef _MPReader r
    cdef object value
    r.buf = <const unsigned char *>data
    r.pos = 0
    r.end = size
    try:
        value = _mp_value(&r, 0)
    except Exception:
        return _MP_CANT
    if r.pos != r.end:                      # trailing bytes: msgpack raises ExtraData
        return _MP_CANT
    return value
