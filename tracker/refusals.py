"""Refused postbacks per advertiser, day and reason, for advertiser reconciliation.

The edge counts each refusal in memory (on the postback path, no I/O) and adds the counts
to Redis once a second: one hash per UTC day, field `<advertiser>|<reason>`, kept
`KEEP_DAYS`. The advertiser is the one the postback named when it is a known advertiser,
else `(unknown)` (bad input must not create Redis fields at will); reasons are the closed
PostbackRefusal set.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta

from tracker.reasons import PostbackRefusal
from tracker.redis_keys import PREFIX
from tracker.types import AsyncRedis

UNKNOWN = "(unknown)"
KEEP_DAYS = 400


def day_key(day: str) -> str:
    return f"{PREFIX}:refusals:{{refusals}}:{day}"


def day_of(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).date().isoformat()


def note(
    counts: Counter[tuple[str, str, str]],
    advertiser: str,
    known: bool,
    reason: PostbackRefusal,
    ms: int,
) -> None:
    counts[(advertiser if known and advertiser else UNKNOWN, day_of(ms), str(reason))] += 1


async def flush(redis: AsyncRedis, counts: Counter[tuple[str, str, str]]) -> None:
    """Add the counts to Redis; on failure they stay in `counts` for the next flush."""
    if not counts:
        return
    taken = Counter(counts)
    counts.clear()
    pipe = redis.pipeline(transaction=False)
    days = set()
    for (advertiser, day, reason), n in taken.items():
        pipe.hincrby(day_key(day), f"{advertiser}|{reason}", n)
        days.add(day)
    for day in days:
        pipe.expire(day_key(day), KEEP_DAYS * 86400)
    try:
        await pipe.execute()
    except Exception:
        counts.update(taken)
        raise


def days(start: datetime, end: datetime) -> list[str]:
    """The UTC days touching [start, end)."""
    first: date = start.astimezone(UTC).date()
    last: date = (end - timedelta(microseconds=1)).astimezone(UTC).date()
    return [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]


def totals(day_hashes: list[Mapping], advertiser: str) -> dict[str, int]:
    """reason -> refusals of one advertiser, over the days' hashes (HGETALL answers)."""
    out: Counter[str] = Counter()
    for found in day_hashes:
        for raw_field, raw_count in found.items():
            field = raw_field.decode() if isinstance(raw_field, bytes) else raw_field
            who, _, reason = field.rpartition("|")
            if who == advertiser:
                out[reason] += int(raw_count)
    return dict(sorted(out.items()))
