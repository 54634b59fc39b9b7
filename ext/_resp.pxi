# Included by _speedups.pyx: the RESP2 encoder, kept in its own file for size.

# ---------------------------------------------------------------------------
# RESP2 command encoding
# ---------------------------------------------------------------------------
# Two passes over the arguments: the first resolves each one to a (pointer, length)
# without copying (UTF-8 cached in the str, bytes data, buffer views) and sums the
# output size; the second writes everything into a single bytes object of that size.

cdef enum PieceKind:
    PIECE_ARRAY = 0    # "*<size>\r\n"
    PIECE_BULK = 1     # "$<size>\r\n<data>\r\n"; data NULL means the text is in num

cdef struct Piece:
    PieceKind kind
    Py_ssize_t size
    const char *data
    char num[32]       # a formatted int or float; repr(float) needs at most 24 chars

cdef enum:
    _STACK_PIECES = 16


cdef struct Pieces:
    Piece *items
    Py_ssize_t n
    Py_ssize_t cap
    Py_buffer *views   # buffers to release once the output is written
    Py_ssize_t n_views
    Py_ssize_t cap_views
    Py_ssize_t total   # exact output size
    Piece stack[_STACK_PIECES]


cdef inline Py_ssize_t _dec_len(unsigned long long v) noexcept nogil:
    cdef Py_ssize_t n = 1
    while v >= 10:
        v //= 10
        n += 1
    return n


cdef inline char *_write_dec(char *p, unsigned long long v) noexcept nogil:
    cdef Py_ssize_t n = _dec_len(v)
    cdef char *q = p + n
    while True:
        q -= 1
        q[0] = <char>(48 + v % 10)
        v //= 10
        if v == 0:
            break
    return p + n


cdef Piece *_new_piece(Pieces *ps) except NULL:
    cdef Piece *grown
    if ps.n == ps.cap:
        if ps.items == ps.stack:
            grown = <Piece *>PyMem_Malloc(ps.cap * 2 * sizeof(Piece))
            if grown != NULL:
                memcpy(grown, ps.stack, ps.n * sizeof(Piece))
        else:
            grown = <Piece *>PyMem_Realloc(ps.items, ps.cap * 2 * sizeof(Piece))
        if grown == NULL:
            raise MemoryError()
        ps.items = grown
        ps.cap *= 2
    ps.n += 1
    return &ps.items[ps.n - 1]


cdef Py_buffer *_new_view(Pieces *ps) except NULL:
    cdef Py_buffer *grown
    cdef Py_ssize_t cap
    if ps.n_views == ps.cap_views:
        cap = ps.cap_views * 2 if ps.cap_views else 4
        grown = <Py_buffer *>PyMem_Realloc(ps.views, cap * sizeof(Py_buffer))
        if grown == NULL:
            raise MemoryError()
        ps.views = grown
        ps.cap_views = cap
    return &ps.views[ps.n_views]


cdef int _add_bulk_text(Pieces *ps, Piece *piece, const char *text,
                        Py_ssize_t size) except -1:
    memcpy(piece.num, text, size)
    piece.data = NULL
    piece.size = size
    ps.total += 1 + _dec_len(size) + 2 + size + 2
    return 0


cdef int _add_arg(Pieces *ps, object arg, list keep) except -1:
    cdef Piece *piece = _new_piece(ps)
    cdef Py_ssize_t size
    cdef long long ival
    cdef unsigned long long mag
    cdef int overflow = 0
    cdef char *text
    cdef Py_buffer *view
    cdef bytes converted
    piece.kind = PIECE_BULK
    if PyBytes_Check(arg):
        piece.data = PyBytes_AS_STRING(arg)
        piece.size = PyBytes_GET_SIZE(arg)
    elif PyUnicode_Check(arg):
        piece.data = PyUnicode_AsUTF8AndSize(arg, &size)
        piece.size = size
    elif PyBool_Check(arg):
        # An int subclass, but True/False as 1/0 on the wire would hide a bug.
        raise TypeError(
            f"Redis command arguments must be bytes, str, int or float, not {type(arg).__name__}")
    elif PyLong_Check(arg):
        ival = PyLong_AsLongLongAndOverflow(arg, &overflow)
        if overflow:
            converted = int.__repr__(arg).encode("ascii")
            keep.append(converted)
            piece.data = PyBytes_AS_STRING(converted)
            piece.size = PyBytes_GET_SIZE(converted)
        else:
            text = piece.num
            if ival < 0:
                text[0] = b"-"
                text += 1
                # Negate in unsigned arithmetic: -LLONG_MIN does not fit a long long.
                mag = 0ULL - <unsigned long long>ival
            else:
                mag = <unsigned long long>ival
            text = _write_dec(text, mag)
            piece.data = NULL
            piece.size = text - piece.num
            ps.total += 1 + _dec_len(piece.size) + 2 + piece.size + 2
            return 0
    elif PyFloat_Check(arg):
        text = PyOS_double_to_string(PyFloat_AS_DOUBLE(arg), b"r", 0, Py_DTSF_ADD_DOT_0, NULL)
        try:
            _add_bulk_text(ps, piece, text, len(text))
        finally:
            PyMem_Free(text)
        return 0
    elif PyByteArray_Check(arg) or PyMemoryView_Check(arg):
        view = _new_view(ps)
        try:
            PyObject_GetBuffer(arg, view, PyBUF_SIMPLE)
        except BufferError:
            # Non-contiguous memoryview: needs a copy anyway.
            converted = memoryview(arg).tobytes()
            keep.append(converted)
            piece.data = PyBytes_AS_STRING(converted)
            piece.size = PyBytes_GET_SIZE(converted)
        else:
            ps.n_views += 1
            piece.data = <const char *>view.buf
            piece.size = view.len
    else:
        raise TypeError(
            f"Redis command arguments must be bytes, str, int or float, not {type(arg).__name__}")
    ps.total += 1 + _dec_len(piece.size) + 2 + piece.size + 2
    return 0


cdef int _add_command(Pieces *ps, object args, list keep) except -1:
    # A tuple snapshot keeps every argument (and so every borrowed pointer) alive even if
    # a garbage-collector callback mutated the caller's list between the two passes.
    cdef tuple items = args if PyTuple_CheckExact(args) else tuple(args)
    keep.append(items)
    cdef Piece *header = _new_piece(ps)
    header.kind = PIECE_ARRAY
    header.size = len(items)
    ps.total += 1 + _dec_len(header.size) + 2
    for arg in items:
        _add_arg(ps, arg, keep)
    return 0


cdef bytes _render(Pieces *ps):
    cdef bytes out = PyBytes_FromStringAndSize(NULL, ps.total)
    cdef char *p = PyBytes_AS_STRING(out)
    cdef Piece *piece
    cdef Py_ssize_t i
    for i in range(ps.n):
        piece = &ps.items[i]
        if piece.kind == PIECE_ARRAY:
            p[0] = b"*"
            p = _write_dec(p + 1, piece.size)
        else:
            p[0] = b"$"
            p = _write_dec(p + 1, piece.size)
            p[0] = b"\r"
            p[1] = b"\n"
            p += 2
            memcpy(p, piece.data if piece.data != NULL else piece.num, piece.size)
            p += piece.size
        p[0] = b"\r"
        p[1] = b"\n"
        p += 2
    return out


cdef inline void _init_pieces(Pieces *ps) noexcept:
    ps.items = ps.stack
    ps.n = 0
    ps.cap = _STACK_PIECES
    ps.views = NULL
    ps.n_views = 0
    ps.cap_views = 0
    ps.total = 0


cdef inline void _free_pieces(Pieces *ps) noexcept:
    cdef Py_ssize_t i
    for i in range(ps.n_views):
        PyBuffer_Release(&ps.views[i])
    PyMem_Free(ps.views)
    if ps.items != ps.stack:
        PyMem_Free(ps.items)


def encode_command(args):
    """encode_command(args: Sequence[bytes | str | int | float]) -> bytes"""
    cdef Pieces ps
    cdef list keep = []
    _init_pieces(&ps)
    try:
        _add_command(&ps, args, keep)
        return _render(&ps)
    finally:
        _free_pieces(&ps)


def encode_commands(commands):
    """encode_commands(commands: Iterable[Sequence[...]]) -> bytes"""
    cdef Pieces ps
    cdef list keep = []
    _init_pieces(&ps)
    try:
        for args in commands:
            _add_command(&ps, args, keep)
        return _render(&ps)
    finally:
        _free_pieces(&ps)
