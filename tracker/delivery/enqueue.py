"""The sink's side: the deliveries of a stored batch's conversion events onto the queue.

Called after the batch is in ClickHouse (and its commissions in the ledger) and before
the batch is acknowledged, so a crash in between replays the batch and enqueues again;
the queue's per-delivery marker makes that a no-op. Only Redis work happens here (never
a call to a receiver), so receivers cannot slow the sink.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import orjson

from tracker import redis_keys as K
from tracker.delivery import queue
from tracker.delivery.jobs import jobs_for, payouts_of, triggers_of
from tracker.delivery.targets import TargetCache, matching
from tracker.ids import ZERO_UUID


class Enqueuer:
    def __init__(self, redis: Any, refresh: float = 1.0) -> None:
        self.redis = redis
        self.cache = TargetCache(redis, refresh)
        self.enqueued = 0

    def __call__(self, conversion_parts: Iterable[bytes], commission_lines: list[bytes]) -> int:
        targets = self.cache.get(time.monotonic())
        if not targets:
            return 0
        rows = [
            orjson.loads(line) for part in conversion_parts for line in part.split(b"\n") if line
        ]
        heard = [
            row
            for row in rows
            if any(matching(targets, trigger, row) for trigger in triggers_of(row))
        ]
        if not heard:
            return 0
        click_ids = sorted(
            {r["click_id"] for r in heard if r.get("click_id", ZERO_UUID) != ZERO_UUID}
        )
        clicks: dict[str, dict] = {}
        if click_ids:
            pipe = self.redis.pipeline(transaction=False)
            for click_id in click_ids:
                pipe.get(K.click_key(click_id))
            for click_id, raw in zip(click_ids, pipe.execute(), strict=True):
                if raw:
                    clicks[click_id] = orjson.loads(raw)
        payouts = payouts_of(orjson.loads(line) for line in commission_lines)
        jobs = jobs_for(heard, targets, clicks=clicks, payouts=payouts, ms=int(time.time() * 1000))
        added = queue.enqueue(self.redis, jobs)
        self.enqueued += added
        return added
