"""Click caps counted across every edge process, without a Redis call per click.

Each edge counts the clicks it sends to a capped link's destination in memory and, every
`interval` (the writer's flush interval), adds them to shared Redis counters (one per UTC
day, one in total) and reads back the totals, which include the other edges' clicks. A
click is admitted while the last totals read plus this edge's own clicks since are under
the cap. So the edges together may overshoot a cap by at most what each of them admits
in one interval. An admitted click is never left uncounted: a sync that failed is sent
again, so one that failed after Redis applied it counts twice (the cap errs early).

A campaign's conversion cap is counted where conversions are accepted (the script in
postback.py adds each new transaction of a campaign to its counters, once); every edge
reads those counters back every `tracking.link_refresh_seconds` (ConversionCounts), so a
click only looks at this process's memory.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from typing import Any

from tracker import redis_keys as K
from tracker.background import Beat
from tracker.clock import Clock, clock_ms, system_clock
from tracker.hashcache import HashCache
from tracker.routing.rules import Caps
from tracker.timefmt import utc_day

log = logging.getLogger(__name__)


class CapCounters:
    def __init__(self, redis: Any, interval: float = 0.005) -> None:
        self.redis = redis
        self.interval = interval
        self.pending: Counter[tuple[str, int]] = Counter()  # (slug, day) -> clicks not sent
        self.seen: dict[str, tuple[int, int, int]] = {}  # slug -> (day, daily, total) read
        self._beat = Beat()

    def counts(self, slug: str, day: int) -> tuple[int, int]:
        """(today's clicks, all clicks) of a capped link as this edge knows them."""
        seen_day, daily, total = self.seen.get(slug, (day, 0, 0))
        mine = self.pending.get((slug, day), 0)
        return (daily if seen_day == day else 0) + mine, total + mine

    def add(self, slug: str, day: int) -> None:
        self.pending[(slug, day)] += 1

    async def sync(self) -> None:
        sent, self.pending = self.pending, Counter()
        wanted = {(slug, day) for slug, day in sent} | {
            (slug, day) for slug, (day, _, _) in self.seen.items()
        }
        if not wanted:
            return
        order = sorted(wanted)
        pipe = self.redis.pipeline(transaction=False)
        for slug, day in order:
            n = sent.get((slug, day), 0)
            daily, total = K.cap_daily_key(slug, day), K.cap_total_key(slug)
            pipe.incrby(daily, n)
            pipe.expire(daily, K.CAP_DAY_TTL)
            pipe.incrby(total, n)
        try:
            replies = await pipe.execute()
        except Exception:
            self.pending.update(sent)  # not counted yet: next time
            raise
        for i, (slug, day) in enumerate(order):
            current = self.seen.get(slug)
            if current is not None and current[0] > day:
                continue  # a straggler of yesterday: today's figures stand
            self.seen[slug] = (day, int(replies[3 * i]), int(replies[3 * i + 2]))

    async def start(self) -> None:
        self._beat.start(self._loop())

    async def stop(self) -> None:
        await self._beat.stop()
        with contextlib.suppress(Exception):
            await self.sync()  # what this edge admitted is counted before it goes

    async def _loop(self) -> None:
        # idle (no capped link clicked yet): a slower beat
        while await self._beat.wait(self.interval if self.pending or self.seen else 0.05):
            try:
                await self.sync()
            except Exception as exc:  # Redis away: caps hold at the last totals read
                log.debug("cap counters not synced: %r", exc)
                await self._beat.wait(0.5)


class ConversionCounts:
    """Accepted conversions of the campaigns with a conversion cap, as last read from Redis
    (every `interval`): what a click of such a campaign is judged by. A cap set or raised
    is seen at the next read after the campaign caps reload; a click on a new UTC day
    before the first read of that day counts the day from zero, as Redis would."""

    def __init__(
        self,
        redis: Any,
        campaign_caps: HashCache[Caps],
        interval: float,
        clock: Clock = system_clock,
    ) -> None:
        self.redis = redis
        self.campaign_caps = campaign_caps
        self.interval = interval
        self.clock = clock
        self.seen: dict[str, tuple[int, int, int]] = {}  # campaign -> (day, daily, total)
        self._beat = Beat()

    def counts(self, campaign_id: str, day: int) -> tuple[int, int]:
        """(conversions on that UTC day, all conversions) of a campaign as last read."""
        seen_day, daily, total = self.seen.get(campaign_id, (day, 0, 0))
        return (daily if seen_day == day else 0), total

    async def refresh(self) -> None:
        capped = sorted(
            campaign_id
            for campaign_id, caps in self.campaign_caps.items.items()
            if caps.counts_conversions
        )
        if not capped:
            self.seen = {}
            return
        day = utc_day(clock_ms(self.clock))
        keys = []
        for campaign_id in capped:
            keys += [K.conversion_cap_daily_key(campaign_id, day)]
            keys += [K.conversion_cap_total_key(campaign_id)]
        values = await self.redis.mget(keys)  # one slot ({s0}): one call, also on a Cluster
        self.seen = {
            campaign_id: (day, int(values[2 * i] or 0), int(values[2 * i + 1] or 0))
            for i, campaign_id in enumerate(capped)
        }

    async def start(self) -> None:
        with contextlib.suppress(Exception):  # Redis away at start: the loop tries again
            await self.refresh()
        self._beat.start(self._loop())

    async def stop(self) -> None:
        await self._beat.stop()

    async def _loop(self) -> None:
        while await self._beat.wait(self.interval):
            try:
                await self.refresh()
            except Exception as exc:  # Redis away: the last counts read stand
                log.debug("conversion counts not read: %r", exc)
