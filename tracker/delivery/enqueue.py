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

from tracker.delivery import queue
from tracker.delivery.jobs import jobs_for, payouts_of, triggers_of
from tracker.delivery.targets import TargetCache, matching
from tracker.ids import ZERO_UUID
from tracker.sink.history import ClickHistory


class Enqueuer:
    def __init__(self, redis: Any, history: ClickHistory | None = None, refresh: float = 1.0):
        self.redis = redis
        # the clicks' own sub ids (an affiliate's click id): the hot window, then ClickHouse
        self.history = history or ClickHistory(redis, None, 0)
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
        clicks: dict[str, dict] = {
            click_id: dict(found.record) for click_id, found in self.history.find(click_ids).items()
        }
        payouts = payouts_of(orjson.loads(line) for line in commission_lines)
        jobs = jobs_for(heard, targets, clicks=clicks, payouts=payouts, ms=int(time.time() * 1000))
        added = queue.enqueue(self.redis, jobs)
        self.enqueued += added
        return added
