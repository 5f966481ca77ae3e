"""Fraud rules: each a small pure function; their counters live in the sink's memory
(fraud_memory.py, the default) or in Redis (fraud_counts.py, for several sinks).

| rule | flags when |
| --- | --- |
| ip_flood | more than `ip_clicks_per_minute` clicks from one IP in a calendar minute |
| duplicate_click | the same visitor clicked the same link less than `duplicate_click_seconds` ago |
| fast_conversion | a conversion came less than `min_click_to_conversion_seconds` after its click |
| ip_many_visitors | the IP had more than `visitors_per_ip_per_hour` visitor ids this hour |
| datacenter_asn | the IP belongs to a hosting / cloud network (an ASN in `datacenter_asns`) |

Thresholds come from config, with per-campaign overrides. The counter (`MemoryCounter` or
`ClickCounter`, one Redis script call per chunk) counts a batch's clicks in stream order;
the checks then read the results event by event.

Duplicate clicks are judged by the clicks' own event times, not by when the sink reads
them: a click at `t` on a campaign with window `w` is a duplicate when a click of the
same visitor on the same link counted before it (in stream order, on a campaign with the
rule on) has an event time `m > t - w` and lies in `t`'s bucket or the one before
(buckets of the longest window configured, `bucket_seconds`, so every `m` within `w`
before `t` is found). Every such click counts, a duplicate too: a visitor clicking every
50 s on a 60 s window is flagged from the second click on. A click arriving after a
later one (edges' clocks differ a little, a spooled click comes late) is a duplicate
when that later one lies in its bucket or the one before. A sink that lags, or catches
up after an outage, so gives the verdicts it would have given on time. Redis keeps, per
bucket and visitor shard, one hash: "visitor link" -> the latest event time (ms) counted
in that bucket (all the rule needs); it expires `bucket_seconds + fraud_counts.DUPLICATE_SLACK_S`
after the sink last wrote to it; the sink's memory keeps the same, a bucket until the next ends.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

from tracker.config import FraudThresholds as Thresholds
from tracker.ids import ZERO_UUID
from tracker.reasons import FraudFlag
from tracker.sink.enrich.fraud_counts import ClickCounter
from tracker.sink.enrich.fraud_memory import MemoryCounter
from tracker.sink.enrich.pipeline import flag
from tracker.timefmt import parse_ms
from tracker.types import Row, SyncRedis

# -- the rules, pure ------------------------------------------------------------------------


def ip_flood(clicks_this_minute: int, t: Thresholds) -> bool:
    return clicks_this_minute > t.ip_clicks_per_minute


def duplicate_click(seen_recently: bool) -> bool:
    return seen_recently


def fast_conversion(click_ms: int, conversion_ms: int, t: Thresholds) -> bool:
    return click_ms > 0 and conversion_ms - click_ms < t.min_click_to_conversion_seconds * 1000


def ip_many_visitors(visitors_this_hour: int, t: Thresholds) -> bool:
    return visitors_this_hour > t.visitors_per_ip_per_hour


def datacenter_asn(asn: int, datacenter_asns: frozenset[int]) -> bool:
    return asn in datacenter_asns


# -- the rules applied to a batch (counted in memory or in Redis) ---------------------------


class FraudRules:
    """The click and conversion rules with each campaign's thresholds; a batch's clicks are
    counted by `counter`, then judged one by one. `memory`: counted in this process
    (fraud_memory.py), journaled in `journal_dir` when given; else in Redis (fraud_counts.py)."""

    def __init__(
        self,
        redis: SyncRedis,
        default: Thresholds,
        per_campaign: dict[str, Thresholds],
        datacenter_asns: frozenset[int],
        cluster: bool = False,
        memory: bool = False,
        journal_dir: Path | None = None,
    ) -> None:
        self.default = default
        self.per_campaign = per_campaign
        self.datacenter_asns = datacenter_asns
        # duplicate buckets: the longest window configured (at least a second), so the
        # click's bucket and the one before hold every time within any window before it
        longest = max(t.duplicate_click_seconds for t in (default, *per_campaign.values()))
        bucket_seconds = max(1, math.ceil(longest))
        window = self.duplicate_window
        self.counter: MemoryCounter | ClickCounter
        if memory:
            self.counter = MemoryCounter(bucket_seconds, window, journal_dir)
        else:
            self.counter = ClickCounter(redis, bucket_seconds, window, cluster)

    def thresholds(self, campaign_id: str) -> Thresholds:
        return self.per_campaign.get(campaign_id, self.default)

    def duplicate_window(self, campaign_id: str) -> float:
        """The campaign's duplicate-click window (seconds; 0: the rule is off)."""
        return self.thresholds(campaign_id).duplicate_click_seconds

    def check_clicks(self, events: list[Row]) -> list[Row]:
        """The click rules over a batch: count it, then judge each click by its
        own counts (handed over by position: no state kept between the two)."""
        counts = self.counter.count(events)
        thresholds, asns = self.thresholds, self.datacenter_asns
        for event, (minute, seen, visitors) in zip(events, counts, strict=True):
            t = thresholds(event["campaign_id"])
            if ip_flood(minute, t):
                flag(event, FraudFlag.IP_FLOOD)
            if duplicate_click(seen):
                flag(event, FraudFlag.DUPLICATE_CLICK)
            if ip_many_visitors(visitors, t):
                flag(event, FraudFlag.IP_MANY_VISITORS)
            if datacenter_asn(event.get("asn", 0), asns):
                flag(event, FraudFlag.DATACENTER_ASN)
        return events

    def check_conversion(self, event: Row) -> Row:
        if event.get("previous_status"):
            return event  # a status change: judged at the first report
        click_ms = parse_ms(event["click_time"]) if event.get("click_id") != ZERO_UUID else 0
        if fast_conversion(
            click_ms, parse_ms(event["event_time"]), self.thresholds(event["campaign_id"])
        ):
            flag(event, FraudFlag.FAST_CONVERSION)
        return event


def thresholds_from(default: Thresholds, overrides: dict[str, dict]) -> dict[str, Thresholds]:
    """Per-campaign thresholds: the defaults with each campaign's overrides applied."""
    return {campaign: replace(default, **values) for campaign, values in overrides.items()}
