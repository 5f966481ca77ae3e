"""Conversions whose click only ClickHouse knows: the edge accepted them with
`"attribution": "deferred"` (its click was older than Redis's hot window), and the sink
finds the click here before the row is enriched, credited and stored.

The rules are the edge's (tracker/edge/postback.py `find_click`), applied to the click as
`ClickHistory` reads it: a named click must exist within the lookback and belong to the
conversion's advertiser (and, for a pixel, to its visitor); a pixel without a click id
takes the visitor's last click in the lookback. Every report of the transaction (status
changes too) is resolved the same way, so they agree.

A deferred conversion finds its campaign only here, so here it is counted towards that
campaign's conversion cap (the edge counts the others as it accepts them): once per
transaction, at its first report, however often its batch is handled.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from tracker import redis_keys as K
from tracker.ids import ZERO_UUID, uuid7_time_ms
from tracker.reasons import UnattributedReason
from tracker.sink.history import ClickHistory, PastClick
from tracker.timefmt import format_ms, parse_ms, utc_day
from tracker.types import SyncRedis

# KEYS per conversion: its "counted" mark, its campaign's counters (that day's, all
# time); ARGV: the marks' and daily counters' TTL. A marked conversion is not counted again.
COUNT_FOR_CAPS = """
for i = 1, #KEYS, 3 do
  if redis.call('SET', KEYS[i], '1', 'NX', 'EX', ARGV[1]) then
    redis.call('INCR', KEYS[i + 1])
    redis.call('EXPIRE', KEYS[i + 1], ARGV[1])
    redis.call('INCR', KEYS[i + 2])
  end
end
return 1
"""


def resolve(history: ClickHistory, rows: Sequence[dict[str, Any]], lookback_ms: int) -> int:
    """Fill in the click of each deferred row, in place; returns how many were deferred."""
    deferred = [row for row in rows if row.pop("deferred", 0)]
    if not deferred:
        return 0
    named = history.find(row["click_id"] for row in deferred if row["click_id"] != ZERO_UUID)
    wanted = {
        id(row): (row["visitor_id"], at - lookback_ms, at)
        for row in deferred
        if row["click_id"] == ZERO_UUID
        for at in (parse_ms(row["event_time"]),)
    }
    paths = history.paths(list(wanted.values())) if wanted else {}
    for row in deferred:
        at = parse_ms(row["event_time"])
        if row["click_id"] != ZERO_UUID:
            click = named.get(row["click_id"])
            if click is None or at - uuid7_time_ms(row["click_id"]) > lookback_ms:
                unattributed(row, UnattributedReason.UNKNOWN_OR_EXPIRED_CLICK)
            elif (
                click.record["advertiser_id"]
                and click.record["advertiser_id"] != row["advertiser_id"]
            ):
                unattributed(row, UnattributedReason.CLICK_OF_OTHER_ADVERTISER)
            elif (
                row["source"] == "pixel"
                and row["visitor_id"] != ZERO_UUID
                and click.record["visitor_id"] != row["visitor_id"]
            ):
                unattributed(row, UnattributedReason.CLICK_OF_OTHER_VISITOR)
            else:
                attributed(row, click)
            continue
        clicks = [c for c in paths.get(wanted[id(row)], []) if c.record["ts"] <= at]
        if clicks:
            attributed(row, clicks[-1])  # ordered by time, then id: the last click
        else:
            unattributed(row, UnattributedReason.NO_CLICK_IN_LOOKBACK)
    return len(deferred)


def attributed(row: dict[str, Any], click: PastClick) -> None:
    record = click.record
    row.update(
        click_id=record["click_id"],
        visitor_id=record["visitor_id"] or row["visitor_id"],
        click_time=format_ms(record["ts"]),
        link_slug=record["link_slug"],
        campaign_id=record["campaign_id"],
        affiliate_id=record["affiliate_id"],
        attributed=1,
        unattributed_reason="",
    )


def unattributed(row: dict[str, Any], why: UnattributedReason) -> None:
    row.update(
        click_id=ZERO_UUID,
        click_time=format_ms(0),
        link_slug="",
        campaign_id="",
        affiliate_id="",
        attributed=0,
        unattributed_reason=str(why),
    )


def count_for_caps(redis: SyncRedis, rows: Sequence[dict[str, Any]]) -> int:
    """Count resolved deferred conversions towards their campaigns' conversion caps, as
    the edge counts the others: a new transaction (no previous status) attributed to a
    campaign, on the UTC day it was reported, once. Returns how many were candidates."""
    keys: list[str] = []
    for row in rows:
        campaign = row.get("campaign_id")
        if row.get("attributed") and campaign and not row.get("previous_status"):
            keys += [
                K.conversion_cap_counted_key(row["conversion_id"]),
                K.conversion_cap_daily_key(campaign, utc_day(parse_ms(row["event_time"]))),
                K.conversion_cap_total_key(campaign),
            ]
    if keys:
        redis.eval(COUNT_FOR_CAPS, len(keys), *keys, K.CAP_DAY_TTL)
    return len(keys) // 3


def resolve_payload(
    history: ClickHistory, parts: list[bytes], lookback_ms: int, redis: SyncRedis | None = None
) -> list[bytes]:
    """The conversions of a sink batch (JSONEachRow parts) with deferred ones resolved
    (and, given `redis`, counted towards their campaigns' caps); the parts unchanged (not
    re-encoded) when none was deferred."""
    if not any(b'"deferred"' in part for part in parts):
        return parts
    rows = [orjson.loads(line) for part in parts for line in part.split(b"\n") if line]
    deferred = [row for row in rows if row.get("deferred")]
    resolve(history, rows, lookback_ms)
    if redis is not None:
        count_for_caps(redis, deferred)
    return [b"\n".join(orjson.dumps(row) for row in rows)]
