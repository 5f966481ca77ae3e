"""The enrichment steps, in order: the one place to add one.

    bots -> device -> geo -> fraud rules -> exclusion marks -> IP anonymisation

Geo runs before the fraud rules (the datacenter rule needs the ASN); anonymisation runs
last, so rules see the real address and storage never does.
"""

from __future__ import annotations

import time
from typing import Any

from tracker import hot
from tracker.config import Settings
from tracker.redis_connection import is_cluster
from tracker.sink.enrich.bots import bot_reason
from tracker.sink.enrich.device import parse_device
from tracker.sink.enrich.fraud import FraudRules, thresholds_from
from tracker.sink.enrich.pipeline import Pipeline, Step
from tracker.sink.enrich.privacy import anonymize_ip
from tracker.types import Row, SyncRedis

GEO_RELOAD_SECONDS = 10.0


def mark_bot(event: Row) -> Row:
    reason = bot_reason(event.get("user_agent", ""), event.get("method", "GET"))
    event["is_bot"] = int(bool(reason))
    event["bot_reason"] = reason
    return event


def from_browser(event: Row) -> bool:
    """A postback comes from the advertiser's server: its address and user agent say
    nothing about the visitor, so geo and device are left empty on it."""
    return event.get("source") != "postback"


def add_device(event: Row) -> Row:
    if not from_browser(event):
        return event
    device = parse_device(event.get("user_agent", ""))
    event["device_type"] = device.device_type
    event["os"] = device.os
    event["browser"] = device.browser
    return event


class GeoStep:
    def __init__(self, reader: Any) -> None:
        self.reader = reader
        self._checked = time.monotonic()

    def prepare(self, events: list[Row]) -> None:
        if time.monotonic() - self._checked > GEO_RELOAD_SECONDS:  # a new database file?
            self._checked = time.monotonic()
            self.reader.maybe_reload()

    def run(self, event: Row) -> Row:
        if not from_browser(event):
            return event
        info = self.reader.lookup(event.get("ip", ""))
        event["country"] = info.country
        event["region"] = info.region
        event["city"] = info.city
        event["asn"] = info.asn
        event["as_org"] = info.as_org
        return event


class ExclusionMarks:
    """Bot- and fraud-flagged clicks are marked in Redis, so online attribution (which
    reads paths from Redis) leaves them out, also for conversions in the same batch."""

    def __init__(self, redis: SyncRedis, hot_hours: int) -> None:
        self.redis = redis
        self.hot_hours = hot_hours

    def prepare(self, events: list[Row]) -> None:
        """One SADD and one EXPIREAT per hour's set (tracker/hot.py), not per click."""
        marks: dict[str, list[bytes]] = {}
        expiry: dict[str, int] = {}
        # a set is named by the id's time (its first 13 characters) and its last two: the
        # batch's clicks share a few, so each is worked out once
        sets: dict[tuple[str, str], str] = {}
        for event in events:
            if event.get("is_bot") or event.get("fraud_flags"):
                click_id = event["click_id"]
                at = (click_id[:13], click_id[-2:])
                key = sets.get(at)
                if key is None:
                    key = sets[at] = hot.excluded_set(click_id)
                    if key not in marks:  # several times and shards share one set
                        marks[key] = []
                        expiry[key] = hot.expire_at(hot.hour_of(click_id), self.hot_hours)
                marks[key].append(hot.raw_id(click_id))
        if not marks:
            return
        pipe = self.redis.pipeline(transaction=False)
        for key, members in marks.items():
            pipe.sadd(key, *members)
            pipe.expireat(key, expiry[key])
        pipe.execute()

    @staticmethod
    def run(event: Row) -> Row:
        return event


def anonymize(event: Row) -> Row:
    event["ip"] = anonymize_ip(event.get("ip", "::"))
    return event


def build(settings: Settings, redis: SyncRedis, geo_reader: Any | None) -> Pipeline:
    f = settings.fraud
    default = f.thresholds()
    rules = FraudRules(
        redis,
        default,
        thresholds_from(default, f.campaigns),
        frozenset(f.datacenter_asns),
        cluster=is_cluster(settings.redis.url),
    )
    marks = ExclusionMarks(redis, settings.tracking.hot_hours)
    steps = [
        Step("bots", mark_bot, ("clicks",)),
        Step("device", add_device, ("clicks", "conversions")),
    ]
    if geo_reader is not None:
        geo = GeoStep(geo_reader)
        steps.append(Step("geo", geo.run, ("clicks", "conversions"), geo.prepare))
    steps += [
        Step("fraud_clicks", None, ("clicks",), batch=rules.check_clicks),
        Step("fraud_conversions", rules.check_conversion, ("conversions",)),
        Step("exclusion_marks", marks.run, ("clicks",), marks.prepare),
    ]
    if settings.privacy.anonymize_ip:
        steps.append(
            Step(
                "anonymize_ip", anonymize, ("clicks", "conversions", "impressions", "orphan_visits")
            )
        )
    return Pipeline(steps)
