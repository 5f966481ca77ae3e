# cython: language_level=3, boundscheck=False, wraparound=False
"""The compiled `count` of the fraud counters in the sink's memory: fraud_memory.py's
`py_count` and `MemoryCounter._count` in one loop, on the counter's own dicts, with the
event time read as C integers and no Python call per click. The same counts, undo entries
and journaled clicks as the reference (tests/sink/test_enrichment.py and
tests/sink/test_fraud_memory.py run both). It imports nothing of fraud_memory.py, which
loads it."""

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
    cdef long long ms, second, frac, minute, hour, bucket, window, before, own, last
    cdef Py_ssize_t visitors
    cdef dict clicks, seen_ips, latest, earlier
    cdef bint seen
    cdef str text, ip, visitor, slug, field, campaign
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
        minute = ms // 60_000
        clicks = minutes.get(minute)
        if clicks is None:
            clicks = {}
            minutes[minute] = clicks
        got = clicks.get(ip)
        before = 0 if got is None else got
        undo.append((clicks, ip, before or absent))
        clicks[ip] = before + 1
        if visitor == zero:  # no visitor: counted in its minute only
            out.append(ClickCounts(before + 1, False, 0))
            continue
        hour = minute // 60
        seen_ips = hours.get(hour)
        if seen_ips is None:
            seen_ips = {}
            hours[hour] = seen_ips
        known = seen_ips.get(ip)
        if known is None:
            undo.append((seen_ips, ip, absent))
            seen_ips[ip] = visitor
            visitors = 1
        elif type(known) is str:
            if known == visitor:
                visitors = 1
            else:
                undo.append((seen_ips, ip, known))
                seen_ips[ip] = {known, visitor}
                visitors = 2
        else:
            if visitor not in known:
                undo.append((known, visitor, added))
                known.add(visitor)
            visitors = len(known)
        seen = False
        if slug:
            field = f"{visitor} {slug}"  # redis_keys.fraud_duplicate_field
            bucket = ms // bucket_ms
            latest = duplicates.get(bucket)
            if latest is None:
                latest = {}
                duplicates[bucket] = latest
            got = latest.get(field)
            own = 0 if got is None else got
            earlier = duplicates.get(bucket - 1)
            last = own
            if earlier is not None:
                got = earlier.get(field)
                if got is not None and got > last:
                    last = got
            seen = last > 0 and last > ms - window
            if ms > own:
                undo.append((latest, field, own or absent))
                latest[field] = ms
        out.append(ClickCounts(before + 1, seen, visitors))
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
    cdef long long ms, minute, hour, bucket
    cdef dict clicks_of, seen_ips, latest
    cdef str ip, visitor, slug, field
    zero = ZERO_UUID
    for item in clicks:
        ms = item[0]
        ip = item[1]
        visitor = item[2]
        slug = item[3]
        if ms > newest:
            newest = ms
        minute = ms // 60_000
        clicks_of = minutes.get(minute)
        if clicks_of is None:
            clicks_of = {}
            minutes[minute] = clicks_of
        got = clicks_of.get(ip)
        clicks_of[ip] = 1 if got is None else got + 1
        if visitor == zero:
            continue
        hour = minute // 60
        seen_ips = hours.get(hour)
        if seen_ips is None:
            seen_ips = {}
            hours[hour] = seen_ips
        known = seen_ips.get(ip)
        if known is None:
            seen_ips[ip] = visitor
        elif type(known) is str:
            if known != visitor:
                seen_ips[ip] = {known, visitor}
        else:
            known.add(visitor)
        if slug:
            field = f"{visitor} {slug}"  # redis_keys.fraud_duplicate_field
            bucket = ms // bucket_ms
            latest = duplicates.get(bucket)
            if latest is None:
                latest = {}
                duplicates[bucket] = latest
            got = latest.get(field)
            if got is None or ms > got:
                latest[field] = ms
    counter.newest_ms = newest
