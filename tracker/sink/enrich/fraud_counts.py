"""The fraud rules' counters in Redis: one script call per chunk of clicks (a Redis
Cluster: the same counts through two pipelines, in `FraudRules`), and how each click's
counts are rebuilt from what Redis answers. The rules themselves, and the duplicate
rule's meaning, are in fraud.py."""

from __future__ import annotations

import zlib
from typing import NamedTuple

import msgpack

from tracker import redis_keys as K

# One call per chunk of clicks, aggregated before it is sent: each distinct "IP visitor" pair,
# IP and "visitor link" of the chunk once, and each hash or set read and written with one
# variadic command, so Redis runs a few commands per window shard rather than several per
# click. The clicks' own counts are then rebuilt in stream order in Python (`Chunk.counts`).
# The arguments travel as one MessagePack value: Redis then parses one argument rather than
# several per click, and the script hands the unpacked lists straight to the commands.
#
# An IP seen with one visitor in the hour (most of them) holds that "IP visitor" pair in its
# field of the counts hash instead of a count, and nothing in the set: one field per IP
# rather than a field and a member. Its second visitor turns the field into a count and
# puts both pairs in the set.
#
# KEYS: per (hour, shard) group: the "IP visitor" set, the IP -> visitors hash; then each
#       (minute, shard) IP -> clicks hash; then per duplicate group (bucket, visitor shard):
#       the previous bucket's hash and its own.
# ARGV[1]: [expiry of the window keys, expiry of the duplicate hashes, groups, minutes,
#       duplicates]; a group: [its IPs, its pairs, each pair's IP (index)]; a minute hash:
#       [its IPs, each IP's clicks]; a duplicate group: ["visitor link" fields, each one's
#       latest event time (ms) in the chunk].
# Returns per group: each IP's visitors before the chunk, then 1 per pair already known;
# per minute hash: each IP's clicks after the chunk; per duplicate field: the latest event
# time counted before the chunk in its bucket or the one before (0: none). Every duplicate
# hash is read before any is written, so all reads see the state before the chunk.
COUNT_CLICKS = """
local arg = cmsgpack.unpack(ARGV[1])
local ttl, duplicate_ttl, groups, minutes, duplicates = arg[1], arg[2], arg[3], arg[4], arg[5]
local out, n_out = {}, 0
-- numbers go to commands formatted as integers: Redis would format a Lua number as "%.17g"
local fmt = string.format
for g = 1, #groups do
  local pairs_key, counts_key = KEYS[2 * g - 1], KEYS[2 * g]
  local ips, all, owner = groups[g][1], groups[g][2], groups[g][3]
  local counts = redis.call('HMGET', counts_key, unpack(ips))
  local before, single = {}, {}
  for i = 1, #ips do
    local value = counts[i]
    before[i] = 0
    if value then
      before[i] = tonumber(value)
      if not before[i] then  -- one visitor so far: the field holds its pair
        before[i], single[i] = 1, value
      end
    end
    n_out = n_out + 1
    out[n_out] = before[i]
  end
  local asked = {}  -- pairs of IPs with two visitors or more: the set knows them
  for p = 1, #all do
    if before[owner[p]] > 1 then
      asked[#asked + 1] = all[p]
    end
  end
  local found = {}
  if #asked > 0 then
    found = redis.call('SMISMEMBER', pairs_key, unpack(asked))
  end
  local totals, first, added, f = {}, {}, {}, 0
  for i = 1, #ips do
    totals[i] = before[i]
  end
  for p = 1, #all do
    local i, known = owner[p], 0
    if before[i] > 1 then
      f = f + 1
      known = found[f]
    elseif single[i] == all[p] then
      known = 1
    end
    n_out = n_out + 1
    out[n_out] = known
    if known == 0 then
      totals[i] = totals[i] + 1
      first[i] = first[i] or all[p]
      added[#added + 1] = p
    end
  end
  local members, fields = {}, {}
  for i = 1, #ips do
    if totals[i] == 1 and before[i] == 0 then
      fields[#fields + 1] = ips[i]
      fields[#fields + 1] = first[i]
    elseif totals[i] ~= before[i] then
      fields[#fields + 1] = ips[i]
      fields[#fields + 1] = fmt('%d', totals[i])
      if single[i] then
        members[#members + 1] = single[i]
      end
    end
  end
  for _, p in ipairs(added) do
    if totals[owner[p]] > 1 then
      members[#members + 1] = all[p]
    end
  end
  if #members > 0 then
    redis.call('SADD', pairs_key, unpack(members))
  end
  if #fields > 0 then
    redis.call('HSET', counts_key, unpack(fields))
  end
end
local G = #groups
for m = 1, #minutes do
  local key, ips, clicks, fields = KEYS[2 * G + m], minutes[m][1], minutes[m][2], {}
  local counts = redis.call('HMGET', key, unpack(ips))
  for i = 1, #ips do
    local total = (tonumber(counts[i]) or 0) + clicks[i]
    n_out = n_out + 1
    out[n_out] = total
    fields[2 * i - 1] = ips[i]
    fields[2 * i] = fmt('%d', total)
  end
  redis.call('HSET', key, unpack(fields))
end
for k = 1, 2 * G + #minutes do
  redis.call('EXPIRE', KEYS[k], ttl)
end
local k, writes = 2 * G + #minutes, {}
for d = 1, #duplicates do
  local fields, times = duplicates[d][1], duplicates[d][2]
  local before = redis.call('HMGET', KEYS[k + 1], unpack(fields))
  local own = redis.call('HMGET', KEYS[k + 2], unpack(fields))
  local raised = {}
  for i = 1, #fields do
    local earlier, latest = tonumber(before[i]) or 0, tonumber(own[i]) or 0
    n_out = n_out + 1
    out[n_out] = math.max(earlier, latest)
    if times[i] > latest then
      raised[#raised + 1] = fields[i]
      raised[#raised + 1] = fmt('%d', times[i])
    end
  end
  if #raised > 0 then
    writes[#writes + 1] = {KEYS[k + 2], raised}
  end
  k = k + 2
end
for _, write in ipairs(writes) do
  redis.call('HSET', write[1], unpack(write[2]))
  redis.call('EXPIRE', write[1], duplicate_ttl)
end
return out
"""
WINDOW_TTL = 7200  # seconds a window's counters are kept (the longest window is an hour)
# A duplicate hash outlives the sink's last write to it by its bucket (clicks of the next
# bucket still read it) and this much (the sink's lag may vary meanwhile).
DUPLICATE_SLACK_S = 60
_HEX = "0123456789abcdefABCDEF"
_VISITOR_SHARD = {c: int(c, 16) % K.FRAUD_SHARDS for c in _HEX}


def ip_shard(ip: str) -> int:
    """Stable across processes: every sink counts an IP in the same shard."""
    return zlib.crc32(ip.encode()) % K.FRAUD_SHARDS


def visitor_shard(visitor: str) -> int:
    """The duplicate hash shard of a visitor id: its last hex digit (random bits)."""
    shard = _VISITOR_SHARD.get(visitor[-1:])
    return shard if shard is not None else zlib.crc32(visitor.encode()) % K.FRAUD_SHARDS


class ClickCounts(NamedTuple):
    """What Redis counted for one click, as the click rules read it (a tuple: one is made
    per click, and a frozen dataclass takes twice as long to build)."""

    clicks_this_minute: int  # this click's ordinal among its IP's clicks this minute
    seen_recently: bool  # the visitor clicked the same link within the duplicate window
    visitors_this_hour: int  # visitor ids seen from its IP this hour


# A click's duplicate check: its bucket, "visitor link", event time (ms), window (ms).
Duplicate = tuple[int, str, int, int]


class Chunk:
    """One chunk of clicks, aggregated for Redis: what to send, and how to turn what Redis
    answers back into each click's counts in stream order."""

    def __init__(self, bucket_seconds: int) -> None:
        self.bucket_seconds = bucket_seconds
        # (pairs key, counts key) -> IP -> its distinct pairs of the chunk, first seen first
        self.groups: dict[tuple[str, str], dict[str, dict[str, None]]] = {}
        self.minutes: dict[str, dict[str, int]] = {}  # minute key -> IP -> clicks
        # (bucket, visitor shard) -> "visitor link" -> its latest event time (ms) in the chunk
        self.duplicates: dict[tuple[int, int], dict[str, int]] = {}
        # per click: its minute key, IP, group (None: no visitor), pair, duplicate check
        self.clicks: list[tuple[str, str, tuple[str, str] | None, str, Duplicate | None]] = []

    def duplicate_keys(self, bucket: int, shard: int) -> tuple[str, str]:
        """The previous bucket's hash and this bucket's."""
        return (
            K.fraud_duplicates_key(self.bucket_seconds, bucket - 1, shard),
            K.fraud_duplicates_key(self.bucket_seconds, bucket, shard),
        )

    @property
    def duplicate_ttl(self) -> int:
        return self.bucket_seconds + DUPLICATE_SLACK_S

    def keys(self) -> list[str]:
        keys = [key for group in self.groups for key in group]
        keys += self.minutes
        for bucket, shard in self.duplicates:
            keys += self.duplicate_keys(bucket, shard)
        return keys

    def args(self) -> list:
        """ARGV: the chunk as one MessagePack value (see COUNT_CLICKS)."""
        groups = []
        for ips in self.groups.values():
            pairs: list[str] = []
            owners: list[int] = []
            for n, ip_pairs in enumerate(ips.values(), 1):
                pairs += ip_pairs
                owners += [n] * len(ip_pairs)
            groups.append([list(ips), pairs, owners])
        minutes = [[list(counts), list(counts.values())] for counts in self.minutes.values()]
        duplicates = [[list(fields), list(fields.values())] for fields in self.duplicates.values()]
        value = [WINDOW_TTL, self.duplicate_ttl, groups, minutes, duplicates]
        return [msgpack.packb(value)]

    def counts(
        self,
        visitors_before: dict[tuple[tuple[str, str], str], int],
        known: dict[tuple[str, str], set[str]],
        minute_totals: dict[tuple[str, str], int],
        latest_before: dict[tuple[int, str], int],
    ) -> list[ClickCounts]:
        """Each click's counts, as if Redis had counted the clicks one by one in order:
        a pair new to Redis raises its IP's visitors where it first occurs; a click is
        "seen" when Redis (`latest_before`: bucket, field -> the latest time in that bucket
        or the one before, 0 for none) or an earlier click of the chunk in its bucket or
        the one before has a time within its window before it (or after it)."""
        # the minute ordinals: the chunk's clicks are the last of each IP's minute total
        ordinal = {
            key: total - self.minutes[key[0]][key[1]] for key, total in minute_totals.items()
        }
        visitors = dict(visitors_before)
        counted: set[tuple[tuple[str, str], str]] = set()  # (group, pair) already seen
        latest: dict[tuple[int, str], int] = {}  # (bucket, field) -> latest time in the chunk
        out = []
        for minute_key, ip, group, pair, duplicate in self.clicks:
            at = (minute_key, ip)
            ordinal[at] += 1
            if group is None:
                out.append(ClickCounts(ordinal[at], False, 0))
                continue
            if (group, pair) not in counted:
                counted.add((group, pair))
                if pair not in known[group]:
                    visitors[(group, ip)] += 1
            seen = False
            if duplicate is not None:
                bucket, field, ms, window = duplicate
                own = latest.get((bucket, field), 0)
                last = max(latest_before[(bucket, field)], own, latest.get((bucket - 1, field), 0))
                seen = last > 0 and last > ms - window
                if ms > own:
                    latest[(bucket, field)] = ms
            out.append(ClickCounts(ordinal[at], seen, visitors[(group, ip)]))
        return out
