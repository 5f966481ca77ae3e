"""Privacy operations on one visitor: export everything stored about them, or erase it.

`export` gathers the visitor's rows from ClickHouse (clicks, impressions, orphan visits,
conversions and those conversions' attribution credits) and their Redis records (the
click records and the visitor's path), as one JSON-ready dict.

`erase` first marks the visitor erased in Redis (`mark_erased`): events of theirs still on
the way (in the events stream, or in an edge's spool while Redis was away) are dropped by
the sink when they arrive (tracker/sink/erasures.py). Then it removes the visitor's
clicks, impressions and orphan visits from ClickHouse,
blanks the identifying fields of their conversions (visitor id, address, user agent, geo;
the conversion and its money stay, as the advertiser's and affiliate's records), and
deletes their Redis records (click records, path, short-lived fraud and rate counters),
blanking the visitor in their conversions' Redis records too. ClickHouse applies the
changes as mutations that finish before `erase` returns (`mutations_sync`). Rollups keep
their counts (aggregates, no identity). The caller records the audit entry.

Both run where ClickHouse is: in the sink (its query endpoint, for the admin API and for
`tracker privacy` while the service runs) or in the CLI directly.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson

from tracker import hot
from tracker import redis_keys as K
from tracker.ids import ZERO_UUID, is_uuid, uuid7_time_ms
from tracker.types import SyncRedis

if TYPE_CHECKING:  # the edge checks requests here, and needs no ClickHouse client for it
    from tracker.clickhouse import ClickHouse

ERASED_TABLES = ("clicks", "impressions", "orphan_visits")
# How long an erasure mark is kept: longer than any event can be on its way (an edge
# spools while Redis is away, and sends its spool when Redis is back).
ERASED_KEEP_MS = 7 * 86_400_000
# conversion columns that say who the visitor was, and what they become
CONVERSION_IDENTITY = {
    "visitor_id": f"toUUID('{ZERO_UUID}')",
    "ip": "toIPv6('::')",
    "user_agent": "''",
    "country": "''",
    "region": "''",
    "city": "''",
    "asn": "0",
    "as_org": "''",
}


# the same, as a row's JSON values (the sink blanks conversions still on the way)
CONVERSION_BLANKS: dict[str, object] = {
    "visitor_id": ZERO_UUID,
    "ip": "::",
    "user_agent": "",
    "country": "",
    "region": "",
    "city": "",
    "asn": 0,
    "as_org": "",
}


class PrivacyError(ValueError):
    """The request cannot be carried out (the message says why)."""


def checked(visitor_id: Any) -> str:
    visitor = visitor_id.strip().lower() if isinstance(visitor_id, str) else ""
    if not is_uuid(visitor) or visitor == ZERO_UUID:
        raise PrivacyError("visitor_id must be a visitor id (a UUID)")
    return visitor


def _rows(ch: ClickHouse, sql: str) -> list[dict]:
    columns, rows = ch.query(sql, readonly=False)
    return orjson.loads(
        orjson.dumps([dict(zip(columns, r, strict=True)) for r in rows], default=str)
    )


def hot_path(redis: SyncRedis, visitor: str, hot_hours: int) -> list[tuple[str, list[str]]]:
    """The visitor's path hashes in the hot window (tracker/hot.py) and the click ids in
    each, oldest hour first."""
    window = hot.HotWindow(hot_hours)
    now = int(time.time() * 1000)
    keys = [hot.path_hash(h, visitor) for h in window.hours_between(0, now, now)]
    pipe = redis.pipeline(transaction=False)
    for key in keys:
        pipe.hget(key, hot.raw_id(visitor))
    return [(k, hot.split_path(v)) for k, v in zip(keys, pipe.execute(), strict=True) if v]


def hot_clicks(redis: SyncRedis, visitor: str, hot_hours: int) -> list[dict[str, Any]]:
    """The records of the visitor's clicks in the hot window, oldest first: their path's
    and the click that made the visitor, which is in no path (tracker/hot.py)."""
    ids = hot.clicks_of(visitor, [c for _, ids in hot_path(redis, visitor, hot_hours) for c in ids])
    pipe = redis.pipeline(transaction=False)
    for click_id in ids:
        pipe.hget(hot.click_hash(click_id), hot.raw_id(click_id))
    records = [hot.decode(c, raw) for c, raw in zip(ids, pipe.execute(), strict=True) if raw]
    return [record for record in records if hot.of_visitor(record, visitor)]


def export(ch: ClickHouse, redis: Any, visitor_id: Any, hot_hours: int = 48) -> dict[str, Any]:
    visitor = checked(visitor_id)
    db = ch.database
    where = f"visitor_id = toUUID('{visitor}')"
    data: dict[str, Any] = {"visitor_id": visitor, "clickhouse": {}, "redis": {}}
    for table in (*ERASED_TABLES, "conversions"):
        data["clickhouse"][table] = _rows(
            ch, f"SELECT * FROM {db}.{table} WHERE {where} ORDER BY event_time"
        )
    conversion_ids = sorted({row["conversion_id"] for row in data["clickhouse"]["conversions"]})
    data["clickhouse"]["attribution_credits"] = (
        _rows(
            ch,
            f"SELECT * FROM {db}.attribution_credits WHERE conversion_id IN "
            f"({', '.join(repr(c) for c in conversion_ids)}) ORDER BY conversion_id, model",
        )
        if conversion_ids
        else []
    )
    clicks = hot_clicks(redis, visitor, hot_hours)
    data["redis"]["path"] = [[c["click_id"], uuid7_time_ms(c["click_id"])] for c in clicks]
    data["redis"]["clicks"] = clicks
    return data


def mark_erased(redis: SyncRedis, visitor: str, at_ms: int) -> None:
    """Mark the visitor erased at `at_ms` (before their stored rows are erased, so that
    the sink drops what is still on the way); marks older than `ERASED_KEEP_MS` go."""
    stale = [v for v, at in erased_marks(redis).items() if at < at_ms - ERASED_KEEP_MS]
    pipe = redis.pipeline(transaction=False)
    pipe.hset(K.ERASED_VISITORS, visitor, at_ms)
    if stale:
        pipe.hdel(K.ERASED_VISITORS, *stale)
    pipe.execute()


def erased_marks(redis: SyncRedis) -> dict[str, int]:
    """Erased visitors -> when (ms)."""
    return {_text(v): int(at) for v, at in redis.hgetall(K.ERASED_VISITORS).items()}


def erase(
    ch: ClickHouse, redis: Any, visitor_id: Any, cluster: str = "", hot_hours: int = 48
) -> dict[str, int]:
    """Erase the visitor; what was found, by kind (for the audit entry)."""
    visitor = checked(visitor_id)
    mark_erased(redis, visitor, int(time.time() * 1000))
    db = ch.database
    where = f"visitor_id = toUUID('{visitor}')"
    counts: dict[str, int] = {}
    for table in (*ERASED_TABLES, "conversions"):
        counts[table] = int(
            ch.query(f"SELECT count() FROM {db}.{table} WHERE {where}", False)[1][0][0]
        )
    transactions = ch.query(
        f"SELECT DISTINCT advertiser_id, txid FROM {db}.conversions WHERE {where}", False
    )[1]
    erase_rows(ch, where, cluster, {table for table, n in counts.items() if n})
    counts["redis_keys"] = erase_redis(redis, visitor, transactions, hot_hours)
    return counts


def erase_rows(ch: ClickHouse, where: str, cluster: str, tables: set[str]) -> None:
    """Delete the rows `where` selects from `tables` among ERASED_TABLES, and blank the
    identity of those among conversions (mutations finished before this returns)."""
    db = ch.database
    for table in ERASED_TABLES:
        if table in tables:
            ch.command(f"ALTER TABLE {_target(db, table, cluster)} DELETE WHERE {where}{SYNC}")
    if "conversions" in tables:
        columns = {
            name
            for (name,) in ch.query(
                f"SELECT name FROM system.columns WHERE database = '{db}' "
                "AND table = 'conversions'",
                False,
            )[1]
        }
        sets = ", ".join(f"{c} = {v}" for c, v in CONVERSION_IDENTITY.items() if c in columns)
        ch.command(
            f"ALTER TABLE {_target(db, 'conversions', cluster)} UPDATE {sets} WHERE {where}{SYNC}"
        )


SYNC = " SETTINGS mutations_sync = 2"  # done (on every replica) before the call returns


def _target(db: str, table: str, cluster: str) -> str:
    return f"{db}.{table}_local ON CLUSTER {cluster}" if cluster else f"{db}.{table}"


def _erase_duplicate_times(redis: SyncRedis, visitor: str) -> int:
    """A visitor's duplicate-click times (the sink's fields of a few bucket hashes)."""
    deleted = 0
    match = K.fraud_duplicate_field(visitor, "*")
    for key in redis.scan_iter(match=K.FRAUD_DUPLICATES_PATTERN, count=1000):
        fields = [field for field, _ in redis.hscan_iter(key, match=match, count=1000)]
        if fields:
            deleted += int(redis.hdel(key, *fields))
    return deleted


def erase_redis(
    redis: SyncRedis, visitor: str, transactions: Sequence[Sequence[Any]], hot_hours: int
) -> int:
    """The visitor's Redis records: click records, exclusion marks and path in the hot
    window, duplicate-click times, pixel rate counters, and the visitor in the records
    of `transactions` ((advertiser, txid) pairs); how many were deleted or blanked."""
    deleted = 0
    for click in hot_clicks(redis, visitor, hot_hours):
        # its record and exclusion mark (fields of per-hour hashes)
        click_id, field = click["click_id"], hot.raw_id(click["click_id"])
        deleted += redis.hdel(hot.click_hash(click_id), field)
        redis.srem(hot.excluded_set(click_id), field)
    for path_key, _ in hot_path(redis, visitor, hot_hours):
        deleted += redis.hdel(path_key, hot.raw_id(visitor))
    deleted += _erase_duplicate_times(redis, visitor)
    pattern = f"{K.PREFIX}:pxrate:v:{{{visitor}}}:*"
    keys = [_text(k) for k in redis.scan_iter(match=pattern, count=1000)]
    deleted += sum(redis.delete(key) for key in keys)
    for advertiser, txid in transactions:
        key = K.conversion_key(advertiser, txid)
        raw = redis.hget(key, "record")
        if not raw:
            continue
        record = orjson.loads(raw)
        record["visitor_id"] = ZERO_UUID
        if record.get("click"):
            record["click"]["visitor_id"] = ZERO_UUID
        redis.hset(key, "record", orjson.dumps(record))
        deleted += 1
    return deleted


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
