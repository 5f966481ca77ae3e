"""Fraud rules: each a small pure function; their counters live in Redis.

| rule | flags when |
| --- | --- |
| ip_flood | more than `ip_clicks_per_minute` clicks from one IP in a calendar minute |
| duplicate_click | the same visitor clicked the same link less than `duplicate_click_seconds` ago |
| fast_conversion | a conversion came less than `min_click_to_conversion_seconds` after its click |
| ip_many_visitors | the IP had more than `visitors_per_ip_per_hour` visitor ids this hour |
| datacenter_asn | the IP belongs to a hosting / cloud network (an ASN in `datacenter_asns`) |

Thresholds come from config, with per-campaign overrides. `FraudRules.prepare_clicks`
updates the counters in one Redis script call per chunk of a batch; the checks then read
the results event by event.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Any

from tracker import redis_keys as K
from tracker.config import FraudThresholds as Thresholds
from tracker.ids import ZERO_UUID
from tracker.reasons import FraudFlag
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


# -- state in Redis -------------------------------------------------------------------------

# KEYS: per click: the hour's "IP visitor" set and IP -> visitors hash (one slot), its
#       visitor-and-link marker; then per IP and minute: that minute's IP -> clicks hash;
#       then every window key once (for its expiry).
# ARGV: clicks, minute groups, per click: IP, "IP visitor", the duplicate window in
#       seconds (0: rule off, -1: no visitor); per group: IP, increment.
# Returns per click: distinct visitors of the IP so far, 1 if seen within the window;
# then each group's total.
COUNT_CLICKS = """
local n, m = tonumber(ARGV[1]), tonumber(ARGV[2])
local out, a = {}, 3
for i = 1, n do
  local known, counts, recent = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local ip, pair, window = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2])
  a = a + 3
  if window < 0 then
    out[#out + 1] = 0
    out[#out + 1] = 0
  else
    if redis.call('SADD', known, pair) == 1 then
      out[#out + 1] = redis.call('HINCRBY', counts, ip, 1)
    else
      out[#out + 1] = tonumber(redis.call('HGET', counts, ip) or 0)
    end
    if window > 0 and not redis.call('SET', recent, '1', 'NX', 'EX', window) then
      out[#out + 1] = 1
    else
      out[#out + 1] = 0
    end
  end
end
for j = 1, m do
  out[#out + 1] = redis.call('HINCRBY', KEYS[3 * n + j], ARGV[a], ARGV[a + 1])
  a = a + 2
end
for k = 3 * n + m + 1, #KEYS do
  redis.call('EXPIRE', KEYS[k], ARGV[a])
end
return out
"""
WINDOW_TTL = 7200  # seconds a window's counters are kept (the longest window is an hour)


def ip_shard(ip: str) -> int:
    """Stable across processes: every sink counts an IP in the same shard."""
    return zlib.crc32(ip.encode()) % K.FRAUD_SHARDS


@dataclass(frozen=True, slots=True)
class ClickCounts:
    """What Redis counted for one click, as the click rules read it."""

    clicks_this_minute: int  # this click's ordinal among its IP's clicks this minute
    seen_recently: bool  # the visitor clicked the same link within the duplicate window
    visitors_this_hour: int  # visitor ids seen from its IP this hour


class FraudRules:
    chunk = 2_000  # clicks per script call: a few ms of Redis, so edges' writes interleave

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
        """Per-IP minute counters, per-visitor-and-link markers, per-IP hourly visitor
        sets, one script call per `chunk` clicks; the counts of each click, in order.
        Counts follow stream order, so a click's verdict does not depend on how events
        were cut into batches or chunks. (A script holds Redis for its whole run: one
        call for a sink read of 100,000 clicks held it for ~0.8 s, and every edge's
        writes waited.)"""
        counts: list[ClickCounts] = []
        for start in range(0, len(events), self.chunk):
            counts += self._count(events[start : start + self.chunk])
        return counts

    def _count(self, events: list[Row]) -> list[ClickCounts]:
        keys: list[str] = []
        args: list = []
        by_minute: dict[tuple[str, str], list[int]] = defaultdict(list)  # (key, IP) -> i
        windows: dict[str, None] = {}  # every window key once, for its expiry
        for i, event in enumerate(events):
            ms = parse_ms(event["event_time"])
            # counted by the keyed hash of the full address when the edge anonymised it
            ip, visitor = event.get("ip_key") or event["ip"], event["visitor_id"]
            shard, hour = ip_shard(ip), ms // 3_600_000
            minute_key = K.fraud_ip_minute_key(ms // 60_000, shard)
            by_minute[(minute_key, ip)].append(i)
            pairs_key = K.fraud_ip_visitors_key(hour, shard)
            counts_key = K.fraud_ip_visitor_counts_key(hour, shard)
            windows.update(dict.fromkeys((minute_key, pairs_key, counts_key)))
            keys += [pairs_key, counts_key, K.fraud_recent_click_key(visitor, event["link_slug"])]
            window = self.thresholds(event["campaign_id"]).duplicate_click_seconds
            args += [ip, f"{ip} {visitor}", -1 if visitor == ZERO_UUID else window]
        n, m = len(events), len(by_minute)
        for (key, ip), group in by_minute.items():
            keys.append(key)
            args += [ip, len(group)]
        keys += windows
        if self.cluster:  # keys in many slots: the same counts, command by command
            results = self._count_with_pipeline(keys, args, n, m)
        else:
            if self._script is None:
                self._script = self.redis.register_script(COUNT_CLICKS)
            results = self._script(keys=keys, args=[n, m, *args, WINDOW_TTL])
        in_minute = [0] * n
        position = 2 * n
        for group in by_minute.values():
            total = results[position]
            position += 1
            for ordinal, i in enumerate(group, start=total - len(group) + 1):
                in_minute[i] = ordinal
        return [
            ClickCounts(in_minute[i], bool(results[2 * i + 1]), int(results[2 * i]))
            for i in range(n)
        ]

    def _count_with_pipeline(self, keys: list[str], args: list, n: int, m: int) -> list[int]:
        """COUNT_CLICKS as two pipelines (a Redis Cluster splits each by node), with the
        same results: first the pairs, markers and minute counts; then, in click order,
        each IP's visitor count, raised for a new pair and read for a known one."""
        pipe = self.redis.pipeline()
        for i in range(n):
            pair, window = args[3 * i + 1], args[3 * i + 2]
            if window >= 0:
                pipe.sadd(keys[3 * i], pair)
            if window > 0:
                pipe.set(keys[3 * i + 2], 1, nx=True, ex=window)
        for j in range(m):
            pipe.hincrby(keys[3 * n + j], args[3 * n + 2 * j], args[3 * n + 2 * j + 1])
        for key in keys[3 * n + m :]:
            pipe.expire(key, WINDOW_TTL)
        first = iter(pipe.execute())
        counts = self.redis.pipeline()
        seen: list[int] = []
        for i in range(n):
            ip, window = args[3 * i], args[3 * i + 2]
            if window < 0:
                seen.append(0)
                continue
            if next(first):  # a new pair
                counts.hincrby(keys[3 * i + 1], ip, 1)
            else:
                counts.hget(keys[3 * i + 1], ip)
            seen.append(0 if window == 0 or next(first) else 1)
        totals = [next(first) for _ in range(m)]
        visitors = iter(counts.execute()) if len(counts) else iter(())
        results: list[int] = []
        for i in range(n):
            results += [0 if args[3 * i + 2] < 0 else int(next(visitors) or 0), seen[i]]
        return results + totals

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
