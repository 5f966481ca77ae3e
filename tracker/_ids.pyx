# cython: language_level=3, boundscheck=False, wraparound=False
"""`uuid7` of tracker/ids.py in C: the same ids from the same state, about 15 times
faster (an edge makes one or two per click: 1.7 µs each in Python on this machine).

tracker/ids.py is the reference and the fallback; it uses this one when it is built and
TRACKER_NO_EXTENSIONS is not set. The state (last millisecond, counter, random pool and
position) lives here then; `state` and `reset` read and set it, as ids.py's do.
"""

import os

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeASCII
from libc.stdint cimport int64_t, uint64_t
from posix.time cimport CLOCK_REALTIME, clock_gettime, timespec

# 64-bit masks as C constants: Cython keeps an integer literal over 32 bits as a Python
# int, and each `&` with one was Python arithmetic (most of an id's cost)
cdef extern from *:
    """
    #define TRACKER_IDS_LOW62 0x3FFFFFFFFFFFFFFFULL
    #define TRACKER_IDS_LOW48 0xFFFFFFFFFFFFULL
    #define TRACKER_IDS_VARIANT 0x8000000000000000ULL
    """
    const uint64_t LOW62 "TRACKER_IDS_LOW62"
    const uint64_t LOW48 "TRACKER_IDS_LOW48"
    const uint64_t VARIANT "TRACKER_IDS_VARIANT"

cdef Py_ssize_t POOL_BYTES = 4096
cdef int64_t MAX_MS = (<int64_t>1) << 48
cdef const char *HEX = b"0123456789abcdef"

cdef int64_t _last_ms = 0
cdef int _seq = 0
cdef bytes _pool = b""
cdef Py_ssize_t _pool_at = 0


cdef inline uint64_t _random64() except? 0:
    """The next 8 bytes of the pool, big-endian (a fresh pool from the kernel when it
    holds fewer than 8 more)."""
    global _pool, _pool_at
    if _pool_at + 8 > PyBytes_GET_SIZE(_pool):
        _pool, _pool_at = os.urandom(POOL_BYTES), 0
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(_pool) + _pool_at
    _pool_at += 8
    cdef uint64_t value = 0
    cdef int i
    for i in range(8):
        value = (value << 8) | p[i]
    return value


cdef inline void _hex(char *out, uint64_t value, int digits) noexcept:
    cdef int i
    for i in range(digits - 1, -1, -1):
        out[i] = HEX[value & 0xF]
        value >>= 4


def uuid7(now_ms=None):
    """A UUIDv7 string; ids made in one process are strictly increasing (ids.uuid7)."""
    global _last_ms, _seq
    cdef timespec ts
    cdef int64_t ms
    if now_ms is None:
        clock_gettime(CLOCK_REALTIME, &ts)
        ms = <int64_t>ts.tv_sec * 1000 + ts.tv_nsec // 1000000
    else:
        ms = now_ms
    if ms < 0 or ms >= MAX_MS:
        raise ValueError("a UUIDv7 holds a Unix millisecond of 48 bits")
    if ms <= _last_ms:
        _seq += 1
        if _seq > 0xFFF:  # counter exhausted: borrow the next millisecond
            _last_ms += 1
            _seq = 0
        ms = _last_ms
    else:
        _last_ms = ms
        _seq = <int>(_random64() & 0x3F)  # random start, room to count
    cdef uint64_t rand_b = (_random64() & LOW62) | VARIANT  # variant 0b10
    cdef char out[36]
    _hex(out, <uint64_t>ms >> 16, 8)
    out[8] = b"-"
    _hex(out + 9, <uint64_t>ms & 0xFFFF, 4)
    out[13] = b"-"
    _hex(out + 14, (<uint64_t>0x7 << 12) | <uint64_t>_seq, 4)
    out[18] = b"-"
    _hex(out + 19, rand_b >> 48, 4)
    out[23] = b"-"
    _hex(out + 24, rand_b & LOW48, 12)
    return PyUnicode_DecodeASCII(out, 36, NULL)


def state():
    """(last millisecond, counter, pool, position in the pool)."""
    return _last_ms, _seq, _pool, _pool_at


def reset(last_ms, seq, pool, pool_at):
    global _last_ms, _seq, _pool, _pool_at
    _last_ms, _seq, _pool, _pool_at = last_ms, seq, bytes(pool), pool_at


def forget_pool():
    """A forked child must not hand out its parent's random bits again."""
    global _pool_at
    _pool_at = PyBytes_GET_SIZE(_pool)


os.register_at_fork(after_in_child=forget_pool)
