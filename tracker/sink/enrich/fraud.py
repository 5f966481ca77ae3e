"""Fraud rules: each a small pure function; their counters live in Redis.

| rule | flags when |
| --- | --- |
| ip_flood | more than `ip_clicks_per_minute` clicks from one IP in a calendar minute |
| duplicate_click | the same visitor clicked the same link less than `duplicate_click_seconds` ago |
| fast_conversion | a conversion came less than `min_click_to_conversion_seconds` after its click |
| ip_many_visitors | the IP had more than `visitors_per_ip_per_hour` visitor ids this hour |
| datacenter_asn | the IP belongs to a hosting / cloud network (an ASN in `datacenter_asns`) |

Thresholds come from config, with per-campaign overrides. `FraudRules.count_clicks`
updates the counters in one Redis script call per chunk of a batch; the checks then read
the results event by event.

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
after the sink last wrote to it.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from tracker import redis_keys as K
from tracker.config import FraudThresholds as Thresholds
from tracker.ids import ZERO_UUID
from tracker.reasons import FraudFlag
from tracker.redis_connection import as_text
from tracker.sink.enrich.fraud_counts import (
    COUNT_CLICKS,
    WINDOW_TTL,
    Chunk,
    ClickCounts,
    ip_shard,
    visitor_shard,
)
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


# -- counting in Redis: fraud_counts.py; the rules applied to a batch ----------------------


class FraudRules:
    # clicks per script call: a few ms of Redis, so edges' writes interleave (at most 4,000:
    # the script unpacks up to 2 values per click into one command; Lua takes 8,000)
    chunk = 2_000

    def __init__(
        self,
        redis: SyncRedis,
        default: Thresholds,
        per_campaign: dict[str, Thresholds],
        datacenter_asns: frozenset[int],
        cluster: bool = False,
    ) -> None:
        self.redis = redis
        self.cluster = cluster
        self.default = default
        self.per_campaign = per_campaign
        self.datacenter_asns = datacenter_asns
        self.sharded = cluster  # one Redis: one hash per window (see K.FRAUD_SHARDS)
        # duplicate buckets: the longest window configured (at least a second), so the
        # click's bucket and the one before hold every time within any window before it
        longest = max(t.duplicate_click_seconds for t in (default, *per_campaign.values()))
        self.bucket_seconds = max(1, math.ceil(longest))
        self._script: Any = None

    def thresholds(self, campaign_id: str) -> Thresholds:
        return self.per_campaign.get(campaign_id, self.default)

    def check_clicks(self, events: list[Row]) -> list[Row]:
        """The click rules over a batch: count it in Redis, then judge each click by its
        own counts (handed over by position: no state kept between the two)."""
        for event, counts in zip(events, self.count_clicks(events), strict=True):
            self.judge_click(event, counts)
        return events

    def count_clicks(self, events: list[Row]) -> list[ClickCounts]:
        """Per-IP minute counters, per-IP hourly visitor sets, per-visitor-and-link click
        times, one script call per `chunk` clicks; the counts of each click, in order.
        Counts follow stream order, so a click's verdict does not depend on how events
        were cut into batches or chunks. (A script holds Redis for its whole run: one
        call for a sink read of 100,000 clicks held it for ~0.8 s, and every edge's
        writes waited.)"""
        counts: list[ClickCounts] = []
        for start in range(0, len(events), self.chunk):
            counts += self._count(events[start : start + self.chunk])
        return counts

    def _aggregate(self, events: list[Row]) -> Chunk:
        """The chunk's clicks grouped for Redis (a loop over every click: kept lean, with
        what repeats across clicks - seconds, shards, keys, windows - worked out once)."""
        chunk = Chunk(self.bucket_seconds)
        bucket_ms = self.bucket_seconds * 1000
        groups, minutes, duplicates = chunk.groups, chunk.minutes, chunk.duplicates
        clicks = chunk.clicks
        second_of: dict[str, int] = {}  # "YYYY-MM-DD HH:MM:SS" -> Unix second (parsed once)
        keys: dict[tuple[int, int], tuple[str, tuple[str, str]]] = {}  # (minute, shard) -> keys
        shards: dict[str, int] = {}
        sharded = self.sharded
        window_of: dict[str, int] = {}  # campaign -> duplicate window (ms)
        for event in events:
            text = event["event_time"]
            if len(text) == 23 and text[10] == " " and text[19] == ".":
                second = second_of.get(text[:19])
                if second is None:
                    second = second_of[text[:19]] = parse_ms(text) // 1000
                ms = second * 1000 + int(text[20:])
            else:
                ms = parse_ms(text)
            minute = ms // 60_000
            # counted by the keyed hash of the full address when the edge anonymised it
            ip = event.get("ip_key") or event["ip"]
            shard = 0
            if sharded:
                shard = shards.get(ip, -1)
                if shard < 0:
                    shard = shards[ip] = ip_shard(ip)
            window_keys = keys.get((minute, shard))
            if window_keys is None:
                hour = minute // 60
                window_keys = keys[(minute, shard)] = (
                    K.fraud_ip_minute_key(minute, shard),
                    (
                        K.fraud_ip_visitors_key(hour, shard),
                        K.fraud_ip_visitor_counts_key(hour, shard),
                    ),
                )
            minute_key, group = window_keys
            counts = minutes.get(minute_key)
            if counts is None:
                counts = minutes[minute_key] = {}
            counts[ip] = counts.get(ip, 0) + 1
            visitor = event["visitor_id"]
            if visitor == ZERO_UUID:  # no visitor: counted in its minute only
                clicks.append((minute_key, ip, None, "", None))
                continue
            pair = f"{ip} {visitor}"
            ips = groups.get(group)
            if ips is None:
                ips = groups[group] = {}
            pairs = ips.get(ip)
            if pairs is None:
                pairs = ips[ip] = {}
            pairs[pair] = None
            campaign = event["campaign_id"]
            window = window_of.get(campaign)
            if window is None:
                seconds = self.thresholds(campaign).duplicate_click_seconds
                window = window_of[campaign] = round(seconds * 1000)
            duplicate = None
            if window > 0:
                bucket = ms // bucket_ms
                field = K.fraud_duplicate_field(visitor, event["link_slug"])
                at = (bucket, visitor_shard(visitor) if sharded else 0)
                fields = duplicates.get(at)
                if fields is None:
                    fields = duplicates[at] = {}
                if fields.get(field, 0) < ms:
                    fields[field] = ms
                duplicate = (bucket, field, ms, window)
            clicks.append((minute_key, ip, group, pair, duplicate))
        return chunk

    def _count(self, events: list[Row]) -> list[ClickCounts]:
        chunk = self._aggregate(events)
        if self.cluster:  # keys in many slots: the same counts, command by command
            return self._count_with_pipeline(chunk)
        if self._script is None:
            self._script = self.redis.register_script(COUNT_CLICKS)
        results = iter(self._script(keys=chunk.keys(), args=chunk.args()))
        visitors_before: dict[tuple[tuple[str, str], str], int] = {}
        known: dict[tuple[str, str], set[str]] = {}
        for group, ips in chunk.groups.items():
            for ip in ips:
                visitors_before[(group, ip)] = next(results)
            known[group] = {pair for pairs in ips.values() for pair in pairs if next(results)}
        minute_totals = {
            (key, ip): next(results) for key, counts in chunk.minutes.items() for ip in counts
        }
        latest_before = {
            (bucket, field): next(results)
            for (bucket, _), fields in chunk.duplicates.items()
            for field in fields
        }
        return chunk.counts(visitors_before, known, minute_totals, latest_before)

    def _count_with_pipeline(self, chunk: Chunk) -> list[ClickCounts]:
        """COUNT_CLICKS as two pipelines (a Redis Cluster splits each by node), with the
        same results and the same data: first each IP's count (or pair), which pairs the
        set knows, the minute counts and the duplicate hashes' times; then the new pairs
        and counts and the later times written. (Unlike the script, two sinks counting the
        same IP, or the same visitor and link, at once may each write what it counted: one
        of the two may be lost.)"""
        pipe = self.redis.pipeline()
        for (pairs_key, counts_key), ips in chunk.groups.items():
            pipe.hmget(counts_key, list(ips))
            pipe.smismember(pairs_key, [pair for pairs in ips.values() for pair in pairs])
        for key, counts in chunk.minutes.items():
            for ip, n in counts.items():
                pipe.hincrby(key, ip, n)
        for (bucket, shard), fields in chunk.duplicates.items():
            for key in chunk.duplicate_keys(bucket, shard):
                pipe.hmget(key, list(fields))
        for group in chunk.groups:
            for key in group:
                pipe.expire(key, WINDOW_TTL)
        for key in chunk.minutes:
            pipe.expire(key, WINDOW_TTL)
        first = iter(pipe.execute())
        second = self.redis.pipeline()
        visitors_before: dict[tuple[tuple[str, str], str], int] = {}
        known: dict[tuple[str, str], set[str]] = {}
        for group, ips in chunk.groups.items():
            values, flags = next(first), iter(next(first))
            known[group] = set()
            members: list[str] = []
            raised: list[str | int] = []  # IP, its count (or its one pair), ...
            for (ip, pairs), value in zip(ips.items(), values, strict=True):
                text = as_text(value) if value is not None else ""
                single = "" if text.isdigit() else text  # one visitor so far: its pair
                before = 1 if single else int(text or 0)
                visitors_before[(group, ip)] = before
                new: list[str] = []
                for pair, in_set in zip(pairs, flags, strict=False):
                    seen = in_set if before > 1 else pair == single
                    if seen:
                        known[group].add(pair)
                    else:
                        new.append(pair)
                if not new:
                    continue
                total = before + len(new)
                raised += [ip, new[0] if total == 1 else total]
                if total > 1:
                    members += new + ([single] if single else [])
            if members:
                second.sadd(group[0], *members)
            if raised:
                second.hset(group[1], items=raised)
        minute_totals = {
            (key, ip): next(first) for key, counts in chunk.minutes.items() for ip in counts
        }
        latest_before: dict[tuple[int, str], int] = {}
        for (bucket, shard), fields in chunk.duplicates.items():
            before, own = next(first), next(first)
            later: list[str | int] = []  # field, time, ...
            for (field, ms), earlier, latest in zip(fields.items(), before, own, strict=True):
                earlier, latest = int(earlier or 0), int(latest or 0)
                latest_before[(bucket, field)] = max(earlier, latest)
                if ms > latest:
                    later += [field, ms]
            if later:
                key = chunk.duplicate_keys(bucket, shard)[1]
                second.hset(key, items=later)
                second.expire(key, chunk.duplicate_ttl)
        second.execute()
        return chunk.counts(visitors_before, known, minute_totals, latest_before)

    def judge_click(self, event: Row, counts: ClickCounts) -> Row:
        t = self.thresholds(event["campaign_id"])
        if ip_flood(counts.clicks_this_minute, t):
            flag(event, FraudFlag.IP_FLOOD)
        if duplicate_click(counts.seen_recently):
            flag(event, FraudFlag.DUPLICATE_CLICK)
        if ip_many_visitors(counts.visitors_this_hour, t):
            flag(event, FraudFlag.IP_MANY_VISITORS)
        if datacenter_asn(event.get("asn", 0), self.datacenter_asns):
            flag(event, FraudFlag.DATACENTER_ASN)
        return event

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
