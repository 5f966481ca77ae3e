"""How far the sink is behind: one rule for `/readyz` (edge, async client) and the
`tracker_stream_lag_events` gauge (sink, sync client), so the two always agree.

The lag is the sink group's `lag` in XINFO GROUPS, summed over the events stream shards.
Redis reports no lag when it cannot tell (entries deleted past the group's position); the
group's pending count stands in then. A shard without a stream or group adds nothing, and
with no sink group anywhere the lag is None (nothing has been set up yet).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from redis.exceptions import ResponseError

from tracker import redis_keys as K
from tracker.types import AsyncRedis, SyncRedis


def shard_lag(groups: Iterable[Mapping[Any, Any]]) -> int | None:
    """The sink group's lag in one shard's XINFO GROUPS reply (None: no sink group)."""
    for group in groups:
        if group["name"] in (K.SINK_GROUP, K.SINK_GROUP.encode()):
            lag = group.get("lag")
            return int(lag if lag is not None else group.get("pending", 0))
    return None


def total(lags: Iterable[int | None]) -> int | None:
    known = [lag for lag in lags if lag is not None]
    return sum(known) if known else None


def _missing(exc: ResponseError) -> bool:
    return "no such key" in str(exc).lower()  # a shard nothing was written to yet


def streams(shards: int) -> list[str]:
    return [K.events_stream(shard) for shard in range(shards)]


def stream_lag(redis: SyncRedis, names: list[str]) -> int | None:
    lags = []
    for name in names:
        try:
            lags.append(shard_lag(redis.xinfo_groups(name)))
        except ResponseError as exc:
            if not _missing(exc):
                raise
    return total(lags)


async def stream_lag_async(redis: AsyncRedis, names: list[str]) -> int | None:
    lags = []
    for name in names:
        try:
            lags.append(shard_lag(await redis.xinfo_groups(name)))
        except ResponseError as exc:
            if not _missing(exc):
                raise
    return total(lags)
