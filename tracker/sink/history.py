"""A visitor's clicks and clicks by id, from the hot window in Redis and from ClickHouse.

Redis holds the last `tracking.hot_hours` of clicks (tracker/hot.py); ClickHouse holds
them all. A read takes from Redis whatever it still holds and from ClickHouse the part of
the range Redis cannot vouch for (before `HotWindow.start`, plus `OVERLAP_MS`), and merges
the two by click id, so the answer is the same whichever store a click came from. A
click flagged as bot or fraud is marked excluded by either store (the Redis mark and the
ClickHouse columns are set by the same enrichment step).

ClickHouse lookups are point lookups: the click's time (from its UUIDv7 id) or the
conversion's lookback bounds the partitions read, and bloom-filter skip indexes on
`click_id` and `visitor_id` (migration 0016) skip the granules without them. With a
ClickHouse cluster the queries go through the Distributed table to every shard.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from tracker import hot
from tracker import redis_keys as K
from tracker.clickhouse import ClickHouse
from tracker.ids import ZERO_UUID, is_uuid, uuid7_time_ms
from tracker.types import SyncRedis

# ClickHouse is also asked for this much of the range after Redis's start: clicks a
# restarted Redis lost just before its first new write (an edge's buffer) are found there.
OVERLAP_MS = 60_000
RECORD_COLUMNS = (
    "toString(click_id), toString(visitor_id), toUnixTimestamp64Milli(event_time), "
    "link_slug, campaign_id, affiliate_id, advertiser_id, sub1, sub2, sub3, sub4, sub5, "
    "is_bot OR notEmpty(fraud_flags)"
)
# A click's time may be a little before its id's (tracker/hot.py `encode`): look this far.
ID_AHEAD_MS = 3_600_000
FIELDS = ("click_id", "visitor_id", "ts", *hot.TEXT_FIELDS)


@dataclass(frozen=True, slots=True)
class PastClick:
    record: dict[str, Any]  # a click record (tracker/hot.py `decode`)
    excluded: bool  # bot- or fraud-flagged: never in a path

    @property
    def key(self) -> tuple[int, str]:  # path order: time, then id as text
        return (self.record["ts"], self.record["click_id"])


class ClickHistory:
    def __init__(
        self,
        redis: SyncRedis,
        ch: ClickHouse | None,
        hot_hours: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.ch = ch
        self.window = hot.HotWindow(hot_hours)
        self.clock = clock
        self.clickhouse_reads = 0  # queries sent (tests and metrics read it)

    def _now(self) -> int:
        return int(self.clock() * 1000)

    def redis_start(self, now: int) -> int:
        return self.window.start(now, self.redis.get(K.HOT_SINCE))

    # -- clicks by id -------------------------------------------------------------------

    def find(self, click_ids: Iterable[str]) -> dict[str, PastClick]:
        """The clicks of these ids that either store knows."""
        ids = sorted({c for c in click_ids if is_uuid(c) and c != ZERO_UUID})
        if not ids:
            return {}
        now = self._now()
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(K.HOT_SINCE)
        for click_id in ids:
            field = hot.raw_id(click_id)
            pipe.hget(hot.click_hash(click_id), field)
            pipe.sismember(hot.excluded_set(click_id), field)  # type: ignore[arg-type]
        since, *results = pipe.execute()
        found = {
            click_id: PastClick(hot.decode(click_id, raw), bool(excluded))
            for click_id, raw, excluded in zip(ids, results[::2], results[1::2], strict=True)
            if raw is not None
        }
        start = self.window.start(now, since) + OVERLAP_MS
        missing = [c for c in ids if c not in found and uuid7_time_ms(c) < start]
        if missing and self.ch is not None:
            times = [uuid7_time_ms(c) for c in missing]
            found.update(
                self._query(
                    f"click_id IN ({_uuids(missing)})",
                    min(times) - ID_AHEAD_MS,
                    max(times),
                )
            )
        return found

    # -- visitors' paths ----------------------------------------------------------------

    def paths(
        self, wanted: Sequence[tuple[str, int, int]]
    ) -> dict[tuple[str, int, int], list[PastClick]]:
        """For each (visitor, from ms, to ms): the visitor's clicks in [from, to], flagged
        ones included (marked), ordered by time then id."""
        wanted = [w for w in dict.fromkeys(wanted) if is_uuid(w[0]) and w[0] != ZERO_UUID]
        if not wanted:
            return {}
        now = self._now()
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(K.HOT_SINCE)
        spans = []
        for visitor, lo, hi in wanted:
            hours = self.window.hours_between(lo, hi, now)
            spans.append(len(hours))
            raw_visitor = hot.raw_id(visitor)
            for hour in hours:
                pipe.hget(hot.path_hash(hour, visitor), raw_visitor)
        since, *values = pipe.execute()
        ids_of: list[list[str]] = []
        at = 0
        for (visitor, _, _), span in zip(wanted, spans, strict=True):
            ids_of.append(hot.clicks_of(visitor, hot.paths_from(values[at : at + span])))
            at += span
        every = sorted({c for ids in ids_of for c in ids})
        records = self._hot_records(every)
        found: dict[tuple[str, int, int], dict[str, PastClick]] = {}
        for key, ids in zip(wanted, ids_of, strict=True):
            visitor, lo, hi = key
            found[key] = {
                c: records[c]
                for c in ids
                if c in records
                and hot.of_visitor(records[c].record, visitor)
                and lo <= records[c].record["ts"] <= hi
            }
        start = self.window.start(now, since) + OVERLAP_MS
        older = [key for key in wanted if key[1] < start]
        if older and self.ch is not None:
            lo = min(key[1] for key in older)
            hi = min(max(key[2] for key in older), start)
            rows = self._query(
                f"visitor_id IN ({_uuids(sorted({key[0] for key in older}))})", lo, hi
            )
            for key in older:
                visitor, lo, hi = key
                for click_id, click in rows.items():
                    record = click.record
                    if record["visitor_id"] == visitor and lo <= record["ts"] <= hi:
                        known = found[key].get(click_id)
                        excluded = click.excluded or (known is not None and known.excluded)
                        found[key][click_id] = PastClick(record, excluded)
        return {key: sorted(clicks.values(), key=lambda c: c.key) for key, clicks in found.items()}

    def _hot_records(self, ids: list[str]) -> dict[str, PastClick]:
        if not ids:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for click_id in ids:
            field = hot.raw_id(click_id)
            pipe.hget(hot.click_hash(click_id), field)
            pipe.sismember(hot.excluded_set(click_id), field)  # type: ignore[arg-type]
        results = pipe.execute()
        return {
            click_id: PastClick(hot.decode(click_id, raw), bool(excluded))
            for click_id, raw, excluded in zip(ids, results[::2], results[1::2], strict=True)
            if raw is not None
        }

    # -- ClickHouse ---------------------------------------------------------------------

    def _query(self, where: str, lo_ms: int, hi_ms: int) -> dict[str, PastClick]:
        """Clicks matching `where` with event_time in [lo_ms, hi_ms] (the time bound
        prunes partitions; the skip indexes prune granules)."""
        assert self.ch is not None
        self.clickhouse_reads += 1
        sql = (
            f"SELECT {RECORD_COLUMNS} FROM {self.ch.database}.clicks "
            f"WHERE {where} AND event_time >= fromUnixTimestamp64Milli({int(lo_ms)}) "
            f"AND event_time <= fromUnixTimestamp64Milli({int(hi_ms)})"
        )
        rows = self.ch.lookup(sql)
        found: dict[str, PastClick] = {}
        for row in rows:
            record = dict(zip(FIELDS, row[:-1], strict=True))
            record["ts"] = int(record["ts"])
            click_id = record["click_id"]
            excluded = bool(row[-1]) or (click_id in found and found[click_id].excluded)
            found[click_id] = PastClick(record, excluded)
        return found


def _uuids(ids: Iterable[str]) -> str:
    """Checked UUID strings as SQL literals (only canonical UUIDs get here)."""
    return ", ".join(f"toUUID('{c}')" for c in ids if is_uuid(c))
