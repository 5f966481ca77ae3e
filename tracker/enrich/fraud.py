"""Fraud rules: each a small pure function; their counters live in Redis.

| rule | flags when |
| --- | --- |
| ip_flood | more than `ip_clicks_per_minute` clicks from one IP in a calendar minute |
| duplicate_click | the same visitor clicked the same link less than `duplicate_click_seconds` ago |
| fast_conversion | a conversion came less than `min_click_to_conversion_seconds` after its click |
| ip_many_visitors | the IP had more than `visitors_per_ip_per_hour` visitor ids this hour |
| datacenter_asn | the IP belongs to a hosting / cloud network (an ASN in `datacenter_asns`) |

Thresholds come from config, with per-campaign overrides. `FraudRules.prepare_clicks`
updates the counters for a whole batch in one Redis pipeline; the checks then read the
results event by event.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Any

from .. import constants as K
from ..ids import ZERO_UUID
from ..timefmt import parse_ms
from .pipeline import Event, flag


@dataclass(frozen=True, slots=True)
class Thresholds:
    ip_clicks_per_minute: int = 100
    duplicate_click_seconds: int = 60
    min_click_to_conversion_seconds: float = 5.0
    visitors_per_ip_per_hour: int = 5


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


# -- state in Redis -------------------------------------------------------------------------


class FraudRules:
    def __init__(self, redis: Any, default: Thresholds, per_campaign: dict[str, Thresholds],
                 datacenter_asns: frozenset[int]) -> None:
        self.redis = redis
        self.default = default
        self.per_campaign = per_campaign
        self.datacenter_asns = datacenter_asns
        self._clicks_in_minute: dict[int, int] = {}  # id(event) -> its ordinal in the minute
        self._seen: dict[int, bool] = {}
        self._visitors: dict[int, int] = {}

    def thresholds(self, campaign_id: str) -> Thresholds:
        return self.per_campaign.get(campaign_id, self.default)

    def prepare_clicks(self, events: list[Event]) -> None:
        """One pipeline for the batch: per-IP minute counters, per-visitor-and-link
        markers, per-IP hourly visitor sets. Counts follow stream order, so a click's
        verdict does not depend on how events were cut into batches."""
        by_minute: dict[str, list[Event]] = defaultdict(list)
        hour_keys: set[str] = set()
        pipe = self.redis.pipeline(transaction=False)
        marked: list[Event] = []
        counted: list[Event] = []
        for event in events:
            ms = parse_ms(event["event_time"])
            ip = event["ip"]
            by_minute[K.fraud_ip_minute_key(ip, ms // 60_000)].append(event)
            if event["visitor_id"] == ZERO_UUID:
                continue
            hour_key = K.fraud_ip_hour_key(ip, ms // 3_600_000)
            pipe.sadd(hour_key, event["visitor_id"])
            pipe.scard(hour_key)  # distinct visitors of this IP so far, this one included
            hour_keys.add(hour_key)
            counted.append(event)
            window = self.thresholds(event["campaign_id"]).duplicate_click_seconds
            if window > 0:  # 0 turns the rule off
                pipe.set(K.fraud_recent_click_key(event["visitor_id"], event["link_slug"]),
                         1, nx=True, ex=window)
                marked.append(event)
        for key, group in by_minute.items():
            pipe.incrby(key, len(group))
        for key in [*by_minute, *hour_keys]:
            pipe.expire(key, 7200)
        results = pipe.execute()
        self._visitors, self._seen, self._clicks_in_minute = {}, {}, {}
        position = 0
        marked_ids = {id(e) for e in marked}
        for event in counted:
            self._visitors[id(event)] = results[position + 1]
            position += 2
            if id(event) in marked_ids:
                self._seen[id(event)] = not results[position]
                position += 1
        for group in by_minute.values():
            total = results[position]
            position += 1
            for ordinal, event in enumerate(group, start=total - len(group) + 1):
                self._clicks_in_minute[id(event)] = ordinal

    def check_click(self, event: Event) -> Event:
        t = self.thresholds(event["campaign_id"])
        key = id(event)
        if ip_flood(self._clicks_in_minute.get(key, 0), t):
            flag(event, "ip_flood")
        if duplicate_click(self._seen.get(key, False)):
            flag(event, "duplicate_click")
        if ip_many_visitors(self._visitors.get(key, 0), t):
            flag(event, "ip_many_visitors")
        if datacenter_asn(event.get("asn", 0), self.datacenter_asns):
            flag(event, "datacenter_asn")
        return event

    def check_conversion(self, event: Event) -> Event:
        if event.get("previous_status"):
            return event  # a status change: judged at the first report
        click_ms = parse_ms(event["click_time"]) if event.get("click_id") != ZERO_UUID else 0
        if fast_conversion(click_ms, parse_ms(event["event_time"]),
                           self.thresholds(event["campaign_id"])):
            flag(event, "fast_conversion")
        return event


def thresholds_from(default: Thresholds, overrides: dict[str, dict]) -> dict[str, Thresholds]:
    """Per-campaign thresholds: the defaults with each campaign's overrides applied."""
    return {campaign: replace(default, **values) for campaign, values in overrides.items()}
