"""The enrichment steps, in order: the one place to add one.

    bots -> device -> geo -> fraud rules -> exclusion marks -> IP anonymisation

Geo runs before the fraud rules (the datacenter rule needs the ASN); anonymisation runs
last, so rules see the real address and storage never does.
"""

from __future__ import annotations

import time
from typing import Any

from tracker import hot
from tracker import redis_keys as K
from tracker.config import Settings
from tracker.redis_connection import is_cluster
from tracker.sink.enrich.bots import bot_reason
from tracker.sink.enrich.device import parse_device
from tracker.sink.enrich.fraud import FraudRules, thresholds_from
from tracker.sink.enrich.fraud_memory import MemoryCounter
from tracker.sink.enrich.pipeline import BatchState, Pipeline, Step
from tracker.sink.enrich.privacy import anonymize_ip
from tracker.types import Row, SyncRedis

GEO_RELOAD_SECONDS = 10.0
FRAUD_JOURNAL_DIR = "fraud-counts"  # in the data folder: the in-memory counters' journal
# Every field a click step reads or writes: the sink reads just these off a click row and
# writes back what the steps changed (rows.py). A click step that uses another field adds
# it here (tests/sink/test_rows.py runs the steps both ways and compares).
CLICK_FIELDS = (
    "event_time",
    "click_id",
    "visitor_id",
    "campaign_id",
    "link_slug",
    "ip",
    "ip_key",
    "user_agent",
    "method",
    "source",
    "is_bot",
    "bot_reason",
    "device_type",
    "os",
    "browser",
    "country",
    "region",
    "city",
    "asn",
    "as_org",
    "fraud_flags",
)


def mark_bot(event: Row) -> Row:
    reason = bot_reason(event.get("user_agent", ""), event.get("method", "GET"))
    event["is_bot"] = 1 if reason else 0
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
        self._expiries = hot.ExpiriesSent()  # as the edge's writer: EXPIREAT now and then

    def prepare(self, events: list[Row]) -> None:
        """One SADD per set the batch marks (tracker/hot.py), not per click; each set's
        EXPIREAT now and then (`hot.ExpiriesSent`), not per batch."""
        # sets by their hot.slot, from the id's bytes: naming each flagged click's set
        # from its text took 1.4 µs
        marks: dict[int, list[bytes]] = {}
        for event in events:
            if event.get("is_bot") or event.get("fraud_flags"):
                raw = hot.raw_id(event["click_id"])
                slot = hot.slot(raw)
                members = marks.get(slot)
                if members is None:
                    members = marks[slot] = []
                members.append(raw)
        if not marks:
            return
        keys = {slot: K.hot_excluded_key(*divmod(slot, hot.HOT_SHARDS)) for slot in marks}
        now = time.monotonic()
        recent = self._expiries.recent(keys.values(), now)
        pipe = self.redis.pipeline(transaction=False)
        for slot, members in marks.items():
            key = keys[slot]
            pipe.sadd(key, *members)
            if key not in recent:
                pipe.expireat(key, hot.expire_at(slot // hot.HOT_SHARDS, self.hot_hours))
        pipe.execute()
        self._expiries.sent(set(keys.values()) - recent, now)

    @staticmethod
    def run(event: Row) -> Row:
        return event


def anonymize(event: Row) -> Row:
    event["ip"] = anonymize_ip(event.get("ip", "::"))
    return event


def build(settings: Settings, redis: SyncRedis, geo_reader: Any | None) -> Pipeline:
    f = settings.fraud
    default = f.thresholds()
    memory = f.counters == "memory"
    rules = FraudRules(
        redis,
        default,
        thresholds_from(default, f.campaigns),
        frozenset(f.datacenter_asns),
        cluster=is_cluster(settings.redis.url),
        memory=memory,
        journal_dir=settings.data_path / FRAUD_JOURNAL_DIR if memory else None,
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
    states: list[BatchState] = []
    if isinstance(rules.counter, MemoryCounter):
        states.append(rules.counter)
    return Pipeline(steps, fields={"clicks": CLICK_FIELDS}, states=states)
