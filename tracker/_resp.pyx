# cython: language_level=3, boundscheck=False, wraparound=False
"""A Redis command in the Redis protocol, compiled: the arguments the service sends
(bytes, str, int) copied into one buffer. Any other command (a float, a bytearray, a
bool, a str that is not UTF-8...) is packed by hiredis, the reference
(`tracker.redis_connection.pack_command`), which also says what is wrong with it.

hiredis takes about 0.15-0.25 µs per argument, and an edge's batch call sends four per
click (record, paths): 0.5-1.0 µs per click against 0.06 here.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize
from cpython.bytes cimport PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_CheckExact
from libc.string cimport memcpy

import hiredis


cdef inline Py_ssize_t _digits(Py_ssize_t n) noexcept:
    cdef Py_ssize_t d = 1
    while n >= 10:
        n //= 10
        d += 1
    return d


cdef inline char* _put_length(char* p, char tag, Py_ssize_t n) noexcept:
    """`tag`, n in decimal, CRLF; the position after it."""
    cdef Py_ssize_t d = _digits(n)
    cdef Py_ssize_t i = d
    p[0] = tag
    while i > 0:
        p[i] = <char>(48 + n % 10)
        n //= 10
        i -= 1
    p[d + 1] = 13
    p[d + 2] = 10
    return p + d + 3


def pack_command(tuple args) -> bytes:
    """`*<n>` then `$<length>` and the bytes of each argument, as hiredis packs them."""
    cdef Py_ssize_t n = len(args)
    cdef Py_ssize_t i, size
    cdef Py_ssize_t total = 1 + _digits(n) + 2
    cdef list parts = [None] * n
    cdef object arg
    for i in range(n):
        arg = args[i]
        if PyBytes_CheckExact(arg):
            pass
        elif PyUnicode_CheckExact(arg):
            try:
                arg = (<str>arg).encode()
            except UnicodeEncodeError:
                return hiredis.pack_command(args)
        elif type(arg) is int:
            arg = str(arg).encode()
        else:
            return hiredis.pack_command(args)
        parts[i] = arg
        size = PyBytes_GET_SIZE(arg)
        total += 1 + _digits(size) + 2 + size + 2
    packed = PyBytes_FromStringAndSize(NULL, total)
    cdef char* p = PyBytes_AS_STRING(packed)
    p = _put_length(p, 42, n)  # '*'
    for i in range(n):
        arg = parts[i]
        size = PyBytes_GET_SIZE(arg)
        p = _put_length(p, 36, size)  # '$'
        memcpy(p, PyBytes_AS_STRING(arg), size)
        p += size
        p[0] = 13
        p[1] = 10
        p += 2
    return packed
