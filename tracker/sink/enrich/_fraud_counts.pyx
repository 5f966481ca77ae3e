# cython: language_level=3, boundscheck=False, wraparound=False
"""`aggregate`, `place`, `arg_lists` and `rebuild` of tracker/sink/enrich/fraud_counts.py in
C: a chunk's clicks grouped for the fraud counters' script, each group's place in its
answer and its arguments, and each click's counts rebuilt from the answer (the sink does
all four for every chunk it enriches).

fraud_counts.py's `py_aggregate`, `py_place`, `py_arg_lists` and `py_rebuild` are the
reference and the fallback; it uses these when they are built and TRACKER_NO_EXTENSIONS
is not set. They follow the reference line by line; what they add is kept in C: the event
time read from its digits (the reference's per-second cache, keyed by the digits' value
instead of a new substring), the last click's minute and bucket remembered (a chunk's
clicks share a few), and the counts as they stand kept in C arrays instead of a copied
list. Anything that is not the edge's "YYYY-MM-DD HH:MM:SS.mmm" goes through the
reference's own steps, so it is read, or refused, the same way.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memcpy

cdef object _module = None  # fraud_counts, imported on first use (it imports this module)


cdef object _reference():
    global _module
    if _module is None:
        from tracker.sink.enrich import fraud_counts

        _module = fraud_counts
    return _module


cdef inline int64_t _digits(const char *s, int start, int n):
    """The value of n decimal digits, or -1 if one is not a digit."""
    cdef int64_t value = 0
    cdef int i
    for i in range(start, start + n):
        if s[i] < c'0' or s[i] > c'9':
            return -1
        value = value * 10 + (s[i] - c'0')
    return value


cdef inline int64_t _stamp(str text):
    """YYYYMMDDhhmmss as one number when the text has the edge's layout up to its
    milliseconds, else -1 (then the reference's steps read it). Only the first 20
    characters are looked at, so a text takes the same path whatever its milliseconds."""
    cdef Py_ssize_t n
    cdef const char *s
    cdef int64_t year, month, day, hour, minute, second
    if len(text) != 23:
        return -1
    if not text.isascii():  # in its milliseconds (the reference reads those) or before
        text = text[:20]
        if not text.isascii():
            return -1
    s = PyUnicode_AsUTF8AndSize(text, &n)
    if s[4] != c'-' or s[7] != c'-' or s[10] != c' ' or s[13] != c':' or s[16] != c':':
        return -1
    if s[19] != c'.':
        return -1
    year, month, day = _digits(s, 0, 4), _digits(s, 5, 2), _digits(s, 8, 2)
    hour, minute, second = _digits(s, 11, 2), _digits(s, 14, 2), _digits(s, 17, 2)
    if year < 0 or month < 0 or day < 0 or hour < 0 or minute < 0 or second < 0:
        return -1
    return ((((year * 100 + month) * 100 + day) * 100 + hour) * 100 + minute) * 100 + second


def aggregate(chunk, list events, window_ms, bint sharded):
    """Group a chunk's clicks for Redis, as fraud_counts.py's `py_aggregate`."""
    fc = _reference()
    K = fc.K
    parse_ms = fc.parse_ms
    zero = fc.ZERO_UUID
    duplicate_field = K.fraud_duplicate_field
    cdef int64_t bucket_ms = chunk.bucket_seconds * 1000
    cdef dict groups = chunk.groups, minutes = chunk.minutes, duplicates = chunk.duplicates
    cdef list clicks = chunk.clicks
    cdef dict second_of = {}  # the reference's cache: "YYYY-MM-DD HH:MM:SS" -> second
    cdef dict second_at = {}  # the same, keyed by the digits' value (`_stamp`)
    cdef dict keys = {}, shards = {}, window_of = {}
    cdef int64_t ms, minute, second, stamp, milli, bucket
    cdef int64_t last_stamp = -1, last_second = 0
    cdef int64_t last_minute = -1, last_bucket = -1
    cdef long shard, dup_shard, last_shard = -1, last_dup_shard = -1, window
    cdef str text, minute_key = None
    cdef dict cells = None, ips, fields = None
    cdef tuple group = None, window_keys, entry
    cdef list minute_cell, ip_cell, pair_cell, dup_cell
    cdef dict pairs
    cdef Py_ssize_t n
    cdef const char *s
    for event in events:
        text = event["event_time"]
        stamp = _stamp(text)
        if stamp >= 0:
            if stamp != last_stamp:
                value = second_at.get(stamp)
                if value is None:
                    value = second_at[stamp] = parse_ms(text) // 1000
                last_stamp, last_second = stamp, value
            milli = -1
            if text.isascii():
                s = PyUnicode_AsUTF8AndSize(text, &n)
                milli = _digits(s, 20, 3)
            ms = last_second * 1000 + (milli if milli >= 0 else int(text[20:]))
        elif len(text) == 23 and text[10] == " " and text[19] == ".":
            value = second_of.get(text[:19])
            if value is None:
                value = second_of[text[:19]] = parse_ms(text) // 1000
            ms = value * 1000 + int(text[20:])
        else:
            ms = parse_ms(text)
        minute = ms // 60_000
        # counted by the keyed hash of the full address when the edge anonymised it
        ip = event.get("ip_key") or event["ip"]
        shard = 0
        if sharded:
            shard = shards.get(ip, -1)
            if shard < 0:
                shard = shards[ip] = fc.ip_shard(ip)
        if minute != last_minute or shard != last_shard:
            window_keys = keys.get((minute, shard))
            if window_keys is None:
                hour = minute // 60
                window_keys = keys[(minute, shard)] = (
                    K.fraud_ip_minute_key(minute, shard),
                    (
                        K.fraud_ip_visitors_key(hour, shard),
                        K.fraud_ip_visitor_counts_key(hour, shard),
                    ),
                )
            minute_key, group = window_keys
            cells = minutes.get(minute_key)
            if cells is None:
                cells = minutes[minute_key] = {}
            last_minute, last_shard = minute, shard
        minute_cell = cells.get(ip)
        if minute_cell is None:
            minute_cell = cells[ip] = [0, 0]
        minute_cell[0] += 1
        visitor = event["visitor_id"]
        if visitor == zero:  # no visitor: counted in its minute only
            clicks.append((minute_cell, None, None, None, ms, 0))
            continue
        pair = f"{ip} {visitor}"
        ips = groups.get(group)
        if ips is None:
            ips = groups[group] = {}
        entry = ips.get(ip)
        if entry is None:
            entry = ips[ip] = ([0], {})
        ip_cell, pairs = entry
        pair_cell = pairs.get(pair)
        if pair_cell is None:
            pair_cell = pairs[pair] = [0]
        campaign = event["campaign_id"]
        value = window_of.get(campaign)
        if value is None:
            value = window_of[campaign] = window_ms(campaign)
        window = value
        dup_cell = None
        if window > 0:
            field = duplicate_field(visitor, event["link_slug"])
            bucket = ms // bucket_ms
            dup_shard = fc.visitor_shard(visitor) if sharded else 0
            if bucket != last_bucket or dup_shard != last_dup_shard:
                at = (bucket, dup_shard)
                fields = duplicates.get(at)
                if fields is None:
                    fields = duplicates[at] = {}
                last_bucket, last_dup_shard = bucket, dup_shard
            dup_cell = fields.get(field)
            if dup_cell is None:
                dup_cell = fields[field] = [ms, 0, 0]
            elif dup_cell[0] < ms:
                dup_cell[0] = ms
        clicks.append((minute_cell, ip_cell, pair_cell, dup_cell, ms, window))


def place(chunk):
    """Each cell's position in the answer, as fraud_counts.py's `py_place`."""
    cdef Py_ssize_t at = 0
    cdef dict ips, pairs, cells, before
    cdef dict duplicates = chunk.duplicates
    cdef list cell
    cdef tuple entry
    for ips in chunk.groups.values():
        for entry in ips.values():
            cell = entry[0]
            cell[0] = at
            at += 1
        for entry in ips.values():
            pairs = entry[1]
            for cell in pairs.values():
                cell[0] = at
                at += 1
    for cells in chunk.minutes.values():
        for cell in cells.values():
            cell[1] = at
            at += 1
    for cells in duplicates.values():
        for cell in cells.values():
            cell[1] = at
            at += 1
    chunk.size = at
    for (bucket, shard), cells in duplicates.items():
        before = duplicates.get((bucket - 1, shard), {})
        for field, cell in cells.items():
            earlier = before.get(field)
            cell[2] = (<list>earlier)[1] if earlier is not None else at


def arg_lists(chunk):
    """The groups, minutes and duplicates for the script, as fraud_counts.py's
    `py_arg_lists`."""
    cdef list groups = [], minutes = [], duplicates = []
    cdef list ip_list, pairs, owners, counts
    cdef dict ips, cells
    cdef tuple entry
    cdef Py_ssize_t n
    for ips in chunk.groups.values():
        ip_list, pairs, owners = [], [], []
        n = 0
        for ip, entry in ips.items():
            n += 1
            ip_list.append(ip)
            for pair in <dict>entry[1]:
                pairs.append(pair)
                owners.append(n)
        groups.append([ip_list, pairs, owners])
    for cells in chunk.minutes.values():
        counts = [(<list>cell)[0] for cell in cells.values()]
        minutes.append([list(cells), counts])
    for cells in chunk.duplicates.values():
        counts = [(<list>cell)[0] for cell in cells.values()]
        duplicates.append([list(cells), counts])
    return [groups, minutes, duplicates]


def rebuild(chunk, answer):
    """Each click's counts from Redis's answer, as fraud_counts.py's `py_rebuild`."""
    fc = _reference()
    ClickCounts = fc.ClickCounts
    cdef int64_t counted = fc.COUNTED
    cdef Py_ssize_t size = chunk.size, i
    if len(answer) < size:  # as the reference's list would fail
        raise IndexError("list index out of range")
    cdef int64_t *given = <int64_t *>PyMem_Malloc((size + 1) * sizeof(int64_t))
    cdef int64_t *state = <int64_t *>PyMem_Malloc((size + 1) * sizeof(int64_t))
    cdef int64_t *latest = <int64_t *>PyMem_Malloc((size + 1) * sizeof(int64_t))
    cdef list out = []
    cdef Py_ssize_t m, v, p, d
    cdef int64_t ms, window, own, last
    cdef bint seen
    if given is NULL or state is NULL or latest is NULL:
        PyMem_Free(given)
        PyMem_Free(state)
        PyMem_Free(latest)
        raise MemoryError()
    try:
        for i in range(size):
            given[i] = answer[i]
            state[i] = given[i]
            latest[i] = 0
        given[size] = state[size] = latest[size] = 0
        for cells in chunk.minutes.values():
            for clicks_at in cells.values():
                state[<Py_ssize_t>clicks_at[1]] -= <int64_t>clicks_at[0]
        for minute_cell, ip_cell, pair_cell, dup_cell, ms, window in chunk.clicks:
            m = minute_cell[1]
            state[m] += 1
            if ip_cell is None or pair_cell is None:
                out.append(tuple.__new__(ClickCounts, (state[m], False, 0)))
                continue
            v, p = ip_cell[0], pair_cell[0]
            if state[p] != counted:
                if state[p] == 0:
                    state[v] += 1
                state[p] = counted
            seen = False
            if dup_cell is not None:
                d = dup_cell[1]
                own = latest[d]
                last = given[d]
                if own > last:
                    last = own
                if latest[<Py_ssize_t>dup_cell[2]] > last:
                    last = latest[<Py_ssize_t>dup_cell[2]]
                seen = last > 0 and last > ms - window
                if ms > own:
                    latest[d] = ms
            out.append(tuple.__new__(ClickCounts, (state[m], seen, state[v])))
    finally:
        PyMem_Free(given)
        PyMem_Free(state)
        PyMem_Free(latest)
    return out


# -- the script's argument as MessagePack, written straight from the chunk -------------

cdef struct Buffer:
    char *data
    Py_ssize_t size
    Py_ssize_t capacity


cdef int _reserve(Buffer *buf, Py_ssize_t n) except -1:
    cdef Py_ssize_t capacity
    cdef char *grown
    if buf.size + n <= buf.capacity:
        return 0
    capacity = max(buf.capacity * 2, buf.size + n)
    grown = <char *>PyMem_Realloc(buf.data, capacity)
    if grown == NULL:
        raise MemoryError()
    buf.data, buf.capacity = grown, capacity
    return 0


cdef int _head(Buffer *buf, unsigned char code, uint64_t value, int width) except -1:
    """A type byte then `width` bytes of value, big-endian (MessagePack's order)."""
    cdef int i
    _reserve(buf, 1 + width)
    buf.data[buf.size] = <char>code
    for i in range(width):
        buf.data[buf.size + 1 + i] = <char>(value >> (8 * (width - 1 - i)) & 0xFF)
    buf.size += 1 + width
    return 0


cdef int _array(Buffer *buf, Py_ssize_t n) except -1:
    if n < 16:
        return _head(buf, 0x90 | n, 0, 0)
    if n < 0x10000:
        return _head(buf, 0xDC, n, 2)
    return _head(buf, 0xDD, n, 4)


cdef int _int(Buffer *buf, int64_t value) except -1:
    """The smallest form, as msgpack's packer picks it."""
    if value >= 0:
        if value < 0x80:
            return _head(buf, <unsigned char>value, 0, 0)
        if value <= 0xFF:
            return _head(buf, 0xCC, value, 1)
        if value <= 0xFFFF:
            return _head(buf, 0xCD, value, 2)
        if value <= 0xFFFFFFFF:
            return _head(buf, 0xCE, value, 4)
        return _head(buf, 0xCF, value, 8)
    if value >= -32:
        return _head(buf, <unsigned char>(value & 0xFF), 0, 0)
    if value >= -0x80:
        return _head(buf, 0xD0, <uint64_t>value & 0xFF, 1)
    if value >= -0x8000:
        return _head(buf, 0xD1, <uint64_t>value & 0xFFFF, 2)
    if value >= -0x80000000:
        return _head(buf, 0xD2, <uint64_t>value & 0xFFFFFFFF, 4)
    return _head(buf, 0xD3, <uint64_t>value, 8)


cdef int _str(Buffer *buf, str text) except -1:
    cdef Py_ssize_t n
    cdef const char *s = PyUnicode_AsUTF8AndSize(text, &n)
    if n < 32:
        _head(buf, 0xA0 | n, 0, 0)
    elif n < 0x100:
        _head(buf, 0xD9, n, 1)
    elif n < 0x10000:
        _head(buf, 0xDA, n, 2)
    else:
        _head(buf, 0xDB, n, 4)
    _reserve(buf, n)
    memcpy(buf.data + buf.size, s, n)
    buf.size += n
    return 0


cdef inline bint _packable(object value):
    """A str, or an int of int64 (what edges' clicks give); else msgpack packs the lists."""
    if type(value) is str:
        return True
    return type(value) is int and -0x8000000000000000 <= value <= 0x7FFFFFFFFFFFFFFF


def pack_args(chunk, int64_t ttl, int64_t duplicate_ttl):
    """`msgpack.packb([ttl, duplicate_ttl, *arg_lists(chunk)])`, the bytes written as
    the chunk is walked (no lists built and walked again); any value that is not a str or
    an int64 sends the chunk through `arg_lists` and msgpack instead."""
    cdef Buffer buf
    cdef dict groups = chunk.groups, minutes = chunk.minutes, duplicates = chunk.duplicates
    cdef dict ips, cells, pairs
    cdef Py_ssize_t n, owner
    buf.data, buf.size, buf.capacity = NULL, 0, 0
    try:
        _reserve(&buf, 4096)
        _array(&buf, 5)
        _int(&buf, ttl)
        _int(&buf, duplicate_ttl)
        _array(&buf, len(groups))
        for ips in groups.values():
            _array(&buf, 3)
            _array(&buf, len(ips))
            n = 0
            for ip in ips:
                if not _packable(ip):
                    return _packed_by_msgpack(chunk, ttl, duplicate_ttl)
                _str(&buf, ip) if type(ip) is str else _int(&buf, ip)
                n += len(<dict>(<tuple>ips[ip])[1])
            _array(&buf, n)
            for entry in ips.values():
                for pair in <dict>(<tuple>entry)[1]:
                    if type(pair) is not str:
                        return _packed_by_msgpack(chunk, ttl, duplicate_ttl)
                    _str(&buf, pair)
            _array(&buf, n)
            owner = 0
            for entry in ips.values():
                owner += 1
                for _ in range(len(<dict>(<tuple>entry)[1])):
                    _int(&buf, owner)
        for section in (minutes, duplicates):
            _array(&buf, len(<dict>section))
            for cells in (<dict>section).values():
                _array(&buf, 2)
                _array(&buf, len(cells))
                for key in cells:
                    if not _packable(key):
                        return _packed_by_msgpack(chunk, ttl, duplicate_ttl)
                    _str(&buf, key) if type(key) is str else _int(&buf, key)
                _array(&buf, len(cells))
                for cell in cells.values():
                    value = (<list>cell)[0]
                    if not _packable(value) or type(value) is str:
                        return _packed_by_msgpack(chunk, ttl, duplicate_ttl)
                    _int(&buf, value)
        return PyBytes_FromStringAndSize(buf.data, buf.size)
    finally:
        PyMem_Free(buf.data)


cdef object _packed_by_msgpack(chunk, ttl, duplicate_ttl):
    import msgpack

    return msgpack.packb([ttl, duplicate_ttl, *arg_lists(chunk)])
