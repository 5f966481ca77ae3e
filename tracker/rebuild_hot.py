"""`tracker rebuild-hot`: refill Redis's hot window from ClickHouse.

After Redis lost its memory (a restart without persistence, a new node), conversions
still find their clicks, from ClickHouse (tracker/sink/history.py; the edge defers them to
the sink), but every one costs a ClickHouse read. This copies the window's clicks back:
records, visitor paths and exclusion marks, a few minutes of clicks per query, then
lowers the `since` mark to the window's start, from which Redis vouches for every click
again. Edges keep writing meanwhile; both writes are idempotent (a record is overwritten
with the same value, a path entry is appended once), so running it twice, or while the
sink inserts, is harmless. It runs in the sink (its SQL endpoint) when one is running.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tracker import hot
from tracker import redis_keys as K
from tracker.clickhouse import ClickHouse
from tracker.sink.history import FIELDS, RECORD_COLUMNS
from tracker.types import SyncRedis

SLICE_MS = 5 * 60_000  # clicks read per query: bounded memory, whatever the volume
# Lower the mark only: a mark already older (Redis held more) stays.
LOWER_SINCE = """
local current = redis.call('GET', KEYS[1])
if not current or tonumber(current) > tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1])
end
return redis.call('GET', KEYS[1])
"""


def rebuild(
    ch: ClickHouse,
    redis: SyncRedis,
    hot_hours: int,
    clock: Callable[[], float] = time.time,
) -> dict[str, Any]:
    """Copy the hot window's clicks from ClickHouse into Redis; what was copied."""
    now = int(clock() * 1000)
    start = hot.HotWindow(hot_hours).oldest_hour(now) * hot.HOUR_MS
    copied = flagged = 0
    for lo in range(start, now + 1, SLICE_MS):
        hi = min(lo + SLICE_MS, now + 1)
        rows = ch.lookup(
            f"SELECT {RECORD_COLUMNS} FROM {ch.database}.clicks "
            f"WHERE event_time >= fromUnixTimestamp64Milli({lo}) "
            f"AND event_time < fromUnixTimestamp64Milli({hi})"
        )
        if not rows:
            continue
        writes = hot.HotWrites(hot_hours)
        marks: dict[str, list[bytes]] = {}
        for row in rows:
            record = dict(zip(FIELDS, row[:-1], strict=True))
            click_id = record["click_id"]
            writes.add(click_id, hot.encode(record))
            if row[-1]:
                marks.setdefault(hot.excluded_set(click_id), []).append(hot.raw_id(click_id))
        hot.store(redis, writes, since=False)
        if marks:
            pipe = redis.pipeline(transaction=False)
            for key, members in marks.items():
                pipe.sadd(key, *members)
                pipe.expireat(key, writes.expiry[key.removesuffix(":x")])
            pipe.execute()
        copied += len(rows)
        flagged += sum(len(m) for m in marks.values())
    since = redis.eval(LOWER_SINCE, 1, K.HOT_SINCE, start)
    return {
        "clicks": copied,
        "flagged": flagged,
        "hot_hours": hot_hours,
        "since_ms": int(since),
    }
