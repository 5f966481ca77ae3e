# cython: language_level=3, boundscheck=False, wraparound=False
"""The compiled `count` and `replay` of the fraud counters in the sink's memory:
fraud_memory.py's `py_count`, `py_replay` and `MemoryCounter._count`, on the counter's own
dicts, with the event time read as C integers and no Python call per click. The same
counts, undo entries and journaled clicks as the reference (tests/sink/test_enrichment.py
and tests/sink/test_fraud_memory.py run both). It imports nothing of fraud_memory.py,
which loads it."""

from tracker.ids import ZERO_UUID
from tracker.sink.enrich.fraud_counts import ClickCounts
from tracker.timefmt import parse_ms


cdef inline long long _digits(str text, Py_ssize_t start, Py_ssize_t end) except -1:
    """The decimal number text[start:end], or -1 when a character is not a digit."""
    cdef long long n = 0
    cdef Py_UCS4 c
    cdef Py_ssize_t i
    for i in range(start, end):
        c = text[i]
        if c < 48 or c > 57:  # not '0'..'9'
            return -1
        n = n * 10 + (<long long>c - 48)
    return n


cdef inline dict _counts_in(dict kept, long long key):
    """The counts of one window (a minute, an hour, a duplicate bucket), made when first
    needed (fraud_memory.py's `_counts_in`)."""
    cdef dict counts = kept.get(key)
    if counts is None:
        counts = {}
        kept[key] = counts
    return counts


cdef struct Counts:  # a click's counts, as ClickCounts holds them
    long long clicks
    bint seen
    long long visitors


cdef Counts _add(
    dict minutes, dict hours, dict duplicates, long long bucket_ms, long long ms, str ip,
    str visitor, str slug, long long window, list undo, object absent, object added,
    object zero,
) except *:
    """One click counted (`MemoryCounter._count`); its undo entries go to `undo` (None:
    a replay, which keeps none)."""
    cdef Counts counts
    cdef long long minute = ms // 60_000
    cdef long long before, own, last, bucket
    cdef dict clicks, seen_ips, latest, earlier
    cdef str field
    clicks = _counts_in(minutes, minute)
    got = clicks.get(ip)
    before = 0 if got is None else got
    if undo is not None:
        undo.append((clicks, ip, before or absent))
    clicks[ip] = before + 1
    counts.clicks = before + 1
    counts.seen = False
    counts.visitors = 0
    if visitor == zero:  # no visitor: counted in its minute only
        return counts
    seen_ips = _counts_in(hours, minute // 60)
    known = seen_ips.get(ip)
    if known is None:
        if undo is not None:
            undo.append((seen_ips, ip, absent))
        seen_ips[ip] = visitor
        counts.visitors = 1
    elif type(known) is str:
        if known == visitor:
            counts.visitors = 1
        else:
            if undo is not None:
                undo.append((seen_ips, ip, known))
            seen_ips[ip] = {known, visitor}
            counts.visitors = 2
    else:
        if visitor not in known:
            if undo is not None:
                undo.append((known, visitor, added))
            known.add(visitor)
        counts.visitors = len(known)
    if slug:
        field = f"{visitor} {slug}"  # redis_keys.fraud_duplicate_field
        bucket = ms // bucket_ms
        latest = _counts_in(duplicates, bucket)
        got = latest.get(field)
        own = 0 if got is None else got
        earlier = duplicates.get(bucket - 1)
        last = own
        if earlier is not None:
            got = earlier.get(field)
            if got is not None and got > last:
                last = got
        counts.seen = last > 0 and last > ms - window
        if ms > own:
            if undo is not None:
                undo.append((latest, field, own or absent))
            latest[field] = ms
    return counts


def count(counter, list events):
    cdef dict minutes = counter.minutes
    cdef dict hours = counter.hours
    cdef dict duplicates = counter.duplicates
    cdef dict windows = counter._windows
    cdef list undo = counter._undo
    cdef list counted = counter._counted
    cdef list out = []
    cdef dict second_of = {}
    cdef long long bucket_ms = counter.bucket_ms
    cdef long long newest = counter.newest_ms
    cdef long long ms, second, frac, window
    cdef Counts counts
    cdef str text, ip, visitor, slug, campaign
    window_seconds = counter.window_seconds
    zero = ZERO_UUID
    absent, added = counter.ABSENT, counter.ADDED  # its undo entries' markers
    for event in events:
        text = event["event_time"]
        ms = -1
        if len(text) == 23 and text[10] == u" " and text[19] == u".":
            frac = _digits(text, 20, 23)
            if frac >= 0:
                key = text[:19]
                got = second_of.get(key)
                if got is None:
                    got = parse_ms(text) // 1000
                    second_of[key] = got
                second = got
                ms = second * 1000 + frac
        if ms < 0:
            ms = parse_ms(text)
        ip = event.get("ip_key") or event["ip"]
        visitor = event["visitor_id"]
        campaign = event["campaign_id"]
        got = windows.get(campaign)
        if got is None:
            got = round(window_seconds(campaign) * 1000)
            windows[campaign] = got
        window = got
        slug = event["link_slug"] if window > 0 else ""
        counted.append((ms, ip, visitor, slug))
        if ms > newest:
            newest = ms
        counts = _add(
            minutes, hours, duplicates, bucket_ms, ms, ip, visitor, slug, window, undo,
            absent, added, zero,
        )
        out.append(ClickCounts(counts.clicks, counts.seen, counts.visitors))
    counter.newest_ms = newest
    return out


def replay(counter, list clicks):
    """Journaled clicks (event ms, IP, visitor, slug) counted again at start: the counts of
    `count`, without verdicts or undo entries (fraud_memory.py's `py_replay`)."""
    cdef dict minutes = counter.minutes
    cdef dict hours = counter.hours
    cdef dict duplicates = counter.duplicates
    cdef long long bucket_ms = counter.bucket_ms
    cdef long long newest = counter.newest_ms
    cdef long long ms
    zero = ZERO_UUID
    for item in clicks:
        ms = item[0]
        if ms > newest:
            newest = ms
        # a journaled slug means the rule was on: any window > 0 counts it the same
        _add(minutes, hours, duplicates, bucket_ms, ms, item[1], item[2], item[3], 1, None,
             None, None, zero)
    counter.newest_ms = newest
