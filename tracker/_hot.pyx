# cython: language_level=3, boundscheck=False, wraparound=False
"""`group` of tracker/hot.py in C: a batch's clicks added to a `HotWrites`, exactly as
`HotWrites.add` adds them one by one (an edge does it for every click it flushes: 1.7 µs
a click in Python on this machine).

tracker/hot.py is the reference and the fallback; it uses this one when it is built and
TRACKER_NO_EXTENSIONS is not set. A click id that is not a canonical UUID string goes
through hot.py's own `raw_id`, so it is read, or refused, the same way.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.stdint cimport int64_t
from libc.string cimport memcmp

cdef object _hot = None  # tracker.hot, imported on first use (it imports this module)
cdef int64_t HOUR_MS = 3_600_000
cdef char ZERO[16]


cdef inline int _nibble(char c):
    if c'0' <= c <= c'9':
        return c - c'0'
    if c'a' <= c <= c'f':
        return c - c'a' + 10
    if c'A' <= c <= c'F':
        return c - c'A' + 10
    return -1


cdef bytes _raw_id(str value):
    """The 16 bytes of a canonical UUID string, else hot.raw_id's answer (or error)."""
    cdef Py_ssize_t n
    cdef const char *s
    cdef char out[16]
    cdef int i = 0, j = 0, hi, lo
    if len(value) == 36 and value.isascii():
        s = PyUnicode_AsUTF8AndSize(value, &n)
        if s[8] == c'-' and s[13] == c'-' and s[18] == c'-' and s[23] == c'-':
            while i < 36:
                if s[i] == c'-':
                    i += 1
                    continue
                hi, lo = _nibble(s[i]), _nibble(s[i + 1])
                if hi < 0 or lo < 0:
                    break
                out[j] = <char>(hi * 16 + lo)
                j += 1
                i += 2
            if j == 16:
                return PyBytes_FromStringAndSize(out, 16)
    return _hot.raw_id(value)


def group(writes, clicks):
    """Add (click id, encoded record) pairs to `writes` (a hot.HotWrites)."""
    global _hot
    if _hot is None:
        from tracker import hot as module

        _hot = module
    cdef int64_t shards = _hot.HOT_SHARDS
    cdef dict click_slots = writes._click_slots
    cdef dict path_slots = writes._path_slots
    cdef dict click_hashes = writes.clicks
    cdef dict path_hashes = writes.paths
    cdef dict expiry = writes.expiry
    cdef int64_t hot_hours = writes.hot_hours
    cdef int64_t oldest = writes.oldest_ms
    cdef int64_t ms, hour, slot
    cdef const unsigned char *c
    cdef const unsigned char *r
    cdef bytes cid, record, visitor
    cdef list fields
    cdef dict visitors
    cdef object held
    cdef int k
    try:
        for click_id, record in clicks:
            cid = _raw_id(click_id)
            if PyBytes_GET_SIZE(cid) != 16 or PyBytes_GET_SIZE(record) < 16:
                # not a click id's 16 bytes, not an encoded record: the reference's way
                writes.oldest_ms = oldest
                try:
                    writes.add(click_id, record)
                finally:
                    oldest = writes.oldest_ms
                continue
            c = <const unsigned char *>PyBytes_AS_STRING(cid)
            ms = 0
            for k in range(6):  # a UUIDv7's first 48 bits: its time
                ms = (ms << 8) | c[k]
            if ms < oldest:
                oldest = ms
            hour = ms // HOUR_MS
            slot = hour * shards + c[15] % shards
            fields = click_slots.get(slot)
            if fields is None:
                key = _hot.K.hot_clicks_key(hour, slot - hour * shards)
                fields = []
                click_slots[slot] = fields
                click_hashes[key] = fields
                expiry[key] = _hot.expire_at(hour, hot_hours)
            fields.append(cid)
            fields.append(record)
            r = <const unsigned char *>PyBytes_AS_STRING(record)
            if memcmp(r, ZERO, 16) == 0 or memcmp(r, c, 16) == 0:
                continue  # no-track, or the visitor's first click: no path
            visitor = PyBytes_FromStringAndSize(<const char *>r, 16)
            slot = hour * shards + r[15] % shards
            visitors = path_slots.get(slot)
            if visitors is None:
                key = _hot.K.hot_paths_key(hour, slot - hour * shards)
                visitors = {}
                path_slots[slot] = visitors
                path_hashes[key] = visitors
                expiry[key] = _hot.expire_at(hour, hot_hours)
            held = visitors.get(visitor)
            visitors[visitor] = cid if held is None else held + cid
    finally:
        writes.oldest_ms = oldest
