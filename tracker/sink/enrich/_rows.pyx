# cython: language_level=3, boundscheck=False, wraparound=False
"""`scan` and `splice` of tracker/sink/enrich/rows.py in C: a click row's fields the
steps use read off its JSON bytes, and what the steps changed written back into them.

rows.py's `py_scan` and `py_splice` are the reference (they follow the same steps, a
field at a time); rows.py uses these when they are built and TRACKER_NO_EXTENSIONS is
not set. What C adds: the quotes found with memchr, a key compared with the wanted
ones as bytes (no object made for a key that is not wanted), a plain string's value
decoded straight from the row's bytes.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.dict cimport PyDict_Next, PyDict_SetItem
from cpython.list cimport PyList_CheckExact
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_XDECREF
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport uint64_t
from libc.string cimport memchr, memcmp, memcpy

import orjson


cdef extern from "Python.h":
    dict _PyDict_NewPresized(Py_ssize_t minused)

cdef extern from *:
    """
    #define TRACKER_ROWS_ONES 0x0101010101010101ULL
    #define TRACKER_ROWS_HIGHS 0x8080808080808080ULL
    """
    const uint64_t ONES "TRACKER_ROWS_ONES"
    const uint64_t HIGHS "TRACKER_ROWS_HIGHS"
    int ctz "__builtin_ctzll"(uint64_t) noexcept nogil

cdef object _loads = orjson.loads
cdef object _dumps = orjson.dumps
cdef object _JSONDecodeError = orjson.JSONDecodeError

DEF MAX_FIELDS = 64
DEF MAX_KEY = 32  # longest field name
DEF PER_LENGTH = 8  # fields of one name length


cdef class Fields:
    """The fields to read: their names, and their keys as bytes, grouped by length."""

    cdef readonly tuple names
    cdef list _keys  # bytes, kept alive for _key_at
    cdef const char *_key_at[MAX_FIELDS]
    cdef int _of_length[MAX_KEY + 1][PER_LENGTH]  # field indices, -1 after the last
    cdef Py_ssize_t count

    def __init__(self, names):
        self.names = tuple(names)
        if len(self.names) > MAX_FIELDS:
            raise ValueError(f"at most {MAX_FIELDS} fields")
        self._keys = [name.encode() for name in self.names]
        self.count = len(self._keys)
        cdef Py_ssize_t i, n, k
        for n in range(MAX_KEY + 1):
            for k in range(PER_LENGTH):
                self._of_length[n][k] = -1
        for i in range(self.count):
            n = PyBytes_GET_SIZE(self._keys[i])
            if n > MAX_KEY:
                raise ValueError(f"field names of at most {MAX_KEY} bytes")
            k = 0
            while self._of_length[n][k] >= 0:
                k += 1
                if k == PER_LENGTH:
                    raise ValueError(f"at most {PER_LENGTH} field names of one length")
            self._of_length[n][k] = i
            self._key_at[i] = PyBytes_AS_STRING(self._keys[i])

    cdef inline int find(self, const char *key, Py_ssize_t n) noexcept:
        cdef int k, i
        if n > MAX_KEY or n == 0:
            return -1
        for k in range(PER_LENGTH):
            i = self._of_length[n][k]
            if i < 0:
                return -1
            if (
                self._key_at[i][0] == key[0]
                and self._key_at[i][n - 1] == key[n - 1]
                and memcmp(self._key_at[i], key, n) == 0
            ):
                return i
        return -1


cdef class Spans:
    """Where each field read lies in its row, and its value as read (held, so that a
    step's replacement is told by identity)."""

    cdef Fields fields
    cdef uint64_t present  # bit i: field i was read
    cdef Py_ssize_t start[MAX_FIELDS]
    cdef Py_ssize_t end[MAX_FIELDS]
    cdef PyObject *value[MAX_FIELDS]

    def __dealloc__(self):
        cdef uint64_t left = self.present
        while left:
            Py_XDECREF(self.value[ctz(left)])
            left &= left - 1

    def __len__(self):
        cdef int i, n = 0
        for i in range(MAX_FIELDS):
            n += self.present >> i & 1
        return n

    def as_dict(self):
        """name -> (start, end, value): the reference's spans."""
        cdef int i
        return {
            self.fields.names[i]: (self.start[i], self.end[i], <object>self.value[i])
            for i in range(MAX_FIELDS)
            if self.present >> i & 1
        }


cdef inline Py_ssize_t _string_end(const char *s, Py_ssize_t i, Py_ssize_t n) noexcept:
    """s[i] is an opening quote: the index just after its closing quote, or -1."""
    cdef const char *q
    cdef Py_ssize_t j = i + 1, k
    while True:
        q = <const char *>memchr(s + j, c'"', n - j)
        if q == NULL:
            return -1
        j = q - s
        k = j - 1
        while s[k] == c'\\':  # an odd run of backslashes escapes the quote
            k -= 1
        if (j - 1 - k) % 2 == 0:
            return j + 1
        j += 1


cdef inline bint _plain(const char *s, Py_ssize_t start, Py_ssize_t end) noexcept:
    """No escape and no control character between the quotes (8 bytes at a time: a
    byte below 0x20, or a backslash, sets its high bit in `found`)."""
    cdef Py_ssize_t i = start + 1, last = end - 1
    cdef uint64_t w, x, found
    while i + 8 <= last:
        memcpy(&w, s + i, 8)
        x = w ^ (ONES * 0x5C)
        found = ((w - ONES * 0x20) & ~w) | ((x - ONES) & ~x)
        if found & HIGHS:
            return False
        i += 8
    while i < last:
        if <unsigned char>s[i] < 0x20 or s[i] == c'\\':
            return False
        i += 1
    return True


cdef inline bint _escaped_key(const char *s, Py_ssize_t start, Py_ssize_t end) noexcept:
    cdef Py_ssize_t i
    for i in range(start, end):
        if s[i] == c'\\':
            return True
    return False


def scan(bytes line, Fields fields):
    """(event, spans) as rows.py's `py_scan` (spans as a `Spans`), or None."""
    cdef const char *s = PyBytes_AS_STRING(line)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(line)
    cdef Py_ssize_t i, j, start, end
    cdef int at
    cdef char c
    cdef dict event = _PyDict_NewPresized(fields.count)  # no resize as the steps add fields
    cdef Spans spans = Spans.__new__(Spans)
    spans.fields = fields
    spans.present = 0
    if n < 2 or s[0] != c'{' or s[n - 1] != c'}':
        return None
    if n == 2:
        return event, spans
    i = 1
    while True:
        if s[i] != c'"':
            return None
        j = _string_end(s, i, n)
        if j < 0 or j >= n or s[j] != c':':
            return None
        if _escaped_key(s, i + 1, j - 1):  # an escaped key: orjson's to read
            return None
        start = j + 1
        c = s[start]
        if c == c'"':
            end = _string_end(s, start, n)
            if end < 0:
                return None
        elif c == c'[':
            end = start + 1
            while end < n and s[end] != c']':
                if s[end] == c'"':
                    end = _string_end(s, end, n)
                    if end < 0:
                        return None
                elif s[end] == c'[' or s[end] == c'{':
                    return None
                else:
                    end += 1
            if end >= n:
                return None
            end += 1
        elif c == c'{':
            return None
        else:
            end = start
            while end < n and s[end] != c',' and s[end] != c'}':
                if s[end] == c'"' or s[end] == c'[' or s[end] == c'{':
                    return None
                end += 1
            if end == start:
                return None
        if end >= n:
            return None
        at = fields.find(s + i + 1, j - i - 2)
        if at >= 0:
            if spans.present >> at & 1:  # a field twice
                return None
            if c == c'"' and _plain(s, start, end):
                try:
                    value = PyUnicode_DecodeUTF8(s + start + 1, end - start - 2, NULL)
                except UnicodeDecodeError:
                    return None
            else:
                try:
                    value = _loads(line[start:end])
                except _JSONDecodeError:
                    return None
            PyDict_SetItem(event, fields.names[at], value)
            Py_INCREF(value)
            spans.value[at] = <PyObject *>value
            spans.start[at] = start
            spans.end[at] = end
            spans.present |= (<uint64_t>1) << at
        if s[end] == c'}':
            return (event, spans) if end == n - 1 else None
        if s[end] != c',':
            return None
        i = end + 1
        if i >= n:
            return None


def splice(bytes line, dict event, Spans spans):
    """The row with the event's changes, as rows.py's `py_splice`."""
    cdef list out = []
    cdef dict extra = None
    cdef Py_ssize_t at = 0, pos = 0
    cdef PyObject *key
    cdef PyObject *value
    cdef int i, found
    cdef uint64_t kept = 0
    cdef tuple names = spans.fields.names
    cdef Py_ssize_t count = len(names)
    while PyDict_Next(event, &pos, &key, &value):
        found = -1
        for i in range(count):  # a field read keeps its name's object as the key
            if spans.present >> i & 1 and <PyObject *>names[i] is key:
                found = i
                break
        if found < 0:
            if extra is None:
                extra = {}
            extra[<object>key] = <object>value
            continue
        kept |= (<uint64_t>1) << found
        if spans.start[found] < at:  # removed and set again: out of the row's order
            raise ValueError("a step removed a field of a click row")
        if value == spans.value[found] and not PyList_CheckExact(<object>value):
            continue  # as read (a list may have been changed in place: written again)
        out.append(line[at : spans.start[found]])
        out.append(_dumps(<object>value))
        at = spans.end[found]
    if kept != spans.present:
        raise ValueError("a step removed a field of a click row")
    if not out and extra is None:
        return line
    out.append(line[at : len(line) - 1])
    if extra is not None:
        if len(line) > 2:  # after the row's last field
            out.append(b",")
        out.append(_dumps(extra)[1:])
    else:
        out.append(b"}")
    return b"".join(out)


def split_lines(list parts):
    """The non-empty lines of each part, in order, as rows.py's `py_split_lines`."""
    cdef list lines = []
    cdef bytes part
    cdef const char *s
    cdef const char *q
    cdef Py_ssize_t n, i, j
    for part in parts:
        s = PyBytes_AS_STRING(part)
        n = PyBytes_GET_SIZE(part)
        i = 0
        while i < n:
            q = <const char *>memchr(s + i, c'\n', n - i)
            j = n if q == NULL else q - s
            if j > i:
                lines.append(part if i == 0 and j == n else PyBytes_FromStringAndSize(s + i, j - i))
            i = j + 1
    return lines
