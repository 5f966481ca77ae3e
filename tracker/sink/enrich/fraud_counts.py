"""The fraud rules' counters in Redis: one script call per chunk of clicks (a Redis
Cluster: the same counts through two pipelines), and how each click's counts are rebuilt
from what Redis answers (`ClickCounter`). The rules themselves, and the duplicate
rule's meaning, are in fraud.py."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any, NamedTuple

import msgpack

from tracker import extensions
from tracker import redis_keys as K
from tracker.ids import ZERO_UUID
from tracker.redis_connection import as_text
from tracker.timefmt import parse_ms
from tracker.types import Row, SyncRedis

# One call per chunk of clicks, aggregated before it is sent: each distinct "IP visitor" pair,
# IP and "visitor link" of the chunk once, and each hash or set read and written with one
# variadic command, so Redis runs a few commands per window shard rather than several per
# click. The clicks' own counts are then rebuilt in stream order (`rebuild`).
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


# Where a chunk's counts sit in the script's answer. Each distinct IP (per hour shard),
# "IP visitor" pair, IP per minute and "visitor link" per duplicate bucket of a chunk has
# one cell, a small list shared by the chunk's clicks it concerns; `place` writes into
# each cell its position in the answer, so the clicks' counts are rebuilt (`rebuild`) by
# position in one list, not looked up by key in several dicts.
IpCell = list[int]  # [position: the IP's visitors before the chunk]
PairCell = list[int]  # [position: 1 if the pair was known before the chunk]
MinuteCell = list[int]  # [the IP's clicks in the chunk that minute, position: its total after]
DupCell = list[int]  # [latest time (ms) in the chunk, position, the previous bucket's position]
# A click: its minute cell, its IP and pair cells (None: no visitor), its duplicate cell
# (None: the rule is off), its event time (ms) and its campaign's duplicate window (ms).
Click = tuple[MinuteCell, IpCell | None, PairCell | None, DupCell | None, int, int]
COUNTED = 2  # a pair's state once a click of the chunk has counted it (0/1: known before)


class Chunk:
    """One chunk of clicks, aggregated for Redis: what to send, and where each click's
    counts sit in what Redis answers."""

    def __init__(self, bucket_seconds: int) -> None:
        self.bucket_seconds = bucket_seconds
        # (pairs key, counts key) -> IP -> its cell and its distinct pairs' cells, first
        # seen first
        self.groups: dict[tuple[str, str], dict[str, tuple[IpCell, dict[str, PairCell]]]] = {}
        self.minutes: dict[str, dict[str, MinuteCell]] = {}  # minute key -> IP -> cell
        # (bucket, visitor shard) -> "visitor link" -> cell
        self.duplicates: dict[tuple[int, int], dict[str, DupCell]] = {}
        self.clicks: list[Click] = []
        self.size = 0  # values in the answer, once placed

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
        return [pack_args(self, WINDOW_TTL, self.duplicate_ttl)]


def py_place(chunk: Chunk) -> None:
    """Write into each cell its position in the answer, in the order COUNT_CLICKS
    answers: per group each IP, then each pair; each minute's IPs; each duplicate
    field. A duplicate cell also gets the position of its field in the bucket before
    (or `size`: a slot that stays 0). The reference for the compiled `place`."""
    at = 0
    for ips in chunk.groups.values():
        for ip_cell, _ in ips.values():
            ip_cell[0] = at
            at += 1
        for _, pairs in ips.values():
            for pair_cell in pairs.values():
                pair_cell[0] = at
                at += 1
    for cells in chunk.minutes.values():
        for minute_cell in cells.values():
            minute_cell[1] = at
            at += 1
    for cells in chunk.duplicates.values():
        for dup_cell in cells.values():
            dup_cell[1] = at
            at += 1
    chunk.size = at
    for (bucket, shard), cells in chunk.duplicates.items():
        before = chunk.duplicates.get((bucket - 1, shard), {})
        for field, dup_cell in cells.items():
            earlier = before.get(field)
            dup_cell[2] = earlier[1] if earlier is not None else at


def py_arg_lists(chunk: Chunk) -> list:
    """The chunk's groups, minutes and duplicates as COUNT_CLICKS reads them (the rest of
    its ARGV: `Chunk.args`). The reference for the compiled `arg_lists`."""
    groups = []
    for ips in chunk.groups.values():
        pairs: list[str] = []
        owners: list[int] = []
        for n, (_, ip_pairs) in enumerate(ips.values(), 1):
            pairs += ip_pairs
            owners += [n] * len(ip_pairs)
        groups.append([list(ips), pairs, owners])
    minutes = [
        [list(cells), [cell[0] for cell in cells.values()]] for cells in chunk.minutes.values()
    ]
    duplicates = [
        [list(cells), [cell[0] for cell in cells.values()]] for cells in chunk.duplicates.values()
    ]
    return [groups, minutes, duplicates]


def py_pack_args(chunk: Chunk, ttl: int, duplicate_ttl: int) -> bytes:
    """The script's ARGV[1]: the expiries and `arg_lists`, as MessagePack. The reference
    for the compiled `pack_args`, which writes the same bytes as it walks the chunk."""
    return msgpack.packb([ttl, duplicate_ttl, *arg_lists(chunk)])


def py_aggregate(
    chunk: Chunk, events: list[Row], window_ms: Callable[[str], int], sharded: bool
) -> None:
    """Group a chunk's clicks for Redis (a loop over every click: kept lean, with what
    repeats across clicks - seconds, shards, keys, windows - worked out once); the
    reference for the compiled `aggregate` (_fraud_counts.pyx)."""
    bucket_ms = chunk.bucket_seconds * 1000
    groups, minutes, duplicates = chunk.groups, chunk.minutes, chunk.duplicates
    clicks = chunk.clicks
    second_of: dict[str, int] = {}  # "YYYY-MM-DD HH:MM:SS" -> Unix second (parsed once)
    keys: dict[tuple[int, int], tuple[str, tuple[str, str]]] = {}  # (minute, shard) -> keys
    shards: dict[str, int] = {}
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
        cells = minutes.get(minute_key)
        if cells is None:
            cells = minutes[minute_key] = {}
        minute_cell = cells.get(ip)
        if minute_cell is None:
            minute_cell = cells[ip] = [0, 0]
        minute_cell[0] += 1
        visitor = event["visitor_id"]
        if visitor == ZERO_UUID:  # no visitor: counted in its minute only
            clicks.append((minute_cell, None, None, None, ms, 0))
            continue
        pair = f"{ip} {visitor}"
        ips = groups.get(group)
        if ips is None:
            ips = groups[group] = {}
        entry = ips.get(ip)
        if entry is None:
            entry = ips[ip] = ([0], {})
        ip_cell, pairs = entry
        pair_cell = pairs.get(pair)
        if pair_cell is None:
            pair_cell = pairs[pair] = [0]
        campaign = event["campaign_id"]
        window = window_of.get(campaign)
        if window is None:
            window = window_of[campaign] = window_ms(campaign)
        dup_cell = None
        if window > 0:
            field = K.fraud_duplicate_field(visitor, event["link_slug"])
            at = (ms // bucket_ms, visitor_shard(visitor) if sharded else 0)
            fields = duplicates.get(at)
            if fields is None:
                fields = duplicates[at] = {}
            dup_cell = fields.get(field)
            if dup_cell is None:
                dup_cell = fields[field] = [ms, 0, 0]
            elif dup_cell[0] < ms:
                dup_cell[0] = ms
        clicks.append((minute_cell, ip_cell, pair_cell, dup_cell, ms, window))


def py_rebuild(chunk: Chunk, answer: list[int]) -> list[ClickCounts]:
    """Each click's counts from Redis's answer (positions: `place`), as if Redis had
    counted the clicks one by one in order: a pair new to Redis raises its IP's visitors
    where it first occurs; a click is "seen" when Redis (the latest time in its bucket or
    the one before, 0 for none) or an earlier click of the chunk in its bucket or the one
    before has a time within its window before it (or after it). The reference for the
    compiled `rebuild` (_fraud_counts.pyx)."""
    # counts as they stand click by click: a minute's total starts before the chunk's
    # clicks, an IP's visitors at Redis's count, a pair at 0/1 (known) then COUNTED
    state = list(answer)
    for cells in chunk.minutes.values():
        for clicks, at in cells.values():
            state[at] -= clicks
    latest = [0] * (chunk.size + 1)  # the latest time of each duplicate field in the chunk
    out = []
    for minute_cell, ip_cell, pair_cell, dup_cell, ms, window in chunk.clicks:
        m = minute_cell[1]
        state[m] += 1
        if ip_cell is None or pair_cell is None:
            out.append(ClickCounts(state[m], False, 0))
            continue
        v, p = ip_cell[0], pair_cell[0]
        if state[p] != COUNTED:
            if state[p] == 0:
                state[v] += 1
            state[p] = COUNTED
        seen = False
        if dup_cell is not None:
            d = dup_cell[1]
            own = latest[d]
            last = max(answer[d], own, latest[dup_cell[2]])
            seen = last > 0 and last > ms - window
            if ms > own:
                latest[d] = ms
        out.append(ClickCounts(state[m], seen, state[v]))
    return out


aggregate: Callable[[Chunk, list[Row], Callable[[str], int], bool], None] = py_aggregate
place: Callable[[Chunk], None] = py_place
arg_lists: Callable[[Chunk], list] = py_arg_lists
pack_args: Callable[[Chunk, int, int], bytes] = py_pack_args
rebuild: Callable[[Chunk, list[int]], list[ClickCounts]] = py_rebuild
_compiled = extensions.load("tracker.sink.enrich._fraud_counts")
if _compiled is not None:
    aggregate, place, rebuild = _compiled.aggregate, _compiled.place, _compiled.rebuild
    arg_lists, pack_args = _compiled.arg_lists, _compiled.pack_args


class ClickCounter:
    """Counts a batch's clicks in Redis for the click rules (fraud.py): per-IP minute
    counts, per-IP hourly visitors, per-visitor-and-link latest click times; each click's
    counts, in order."""

    # clicks per script call: a few ms of Redis, so edges' writes interleave (at most 4,000:
    # the script unpacks up to 2 values per click into one command; Lua takes 8,000)
    chunk = 2_000

    def __init__(
        self,
        redis: SyncRedis,
        bucket_seconds: int,
        window_seconds: Callable[[str], float],
        cluster: bool = False,
    ) -> None:
        self.redis = redis
        self.bucket_seconds = bucket_seconds  # of the duplicate rule's hashes
        self.window_seconds = window_seconds  # a campaign's duplicate window
        self.cluster = cluster  # and keys sharded (one Redis: one hash per window, K.FRAUD_SHARDS)
        self._script: Any = None

    def count(self, events: list[Row]) -> list[ClickCounts]:
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

    def _count(self, events: list[Row]) -> list[ClickCounts]:
        chunk = Chunk(self.bucket_seconds)
        aggregate(chunk, events, self._window_ms, self.cluster)
        place(chunk)
        if self.cluster:  # keys in many slots: the same counts, command by command
            return rebuild(chunk, self._answer_with_pipeline(chunk))
        if self._script is None:
            self._script = self.redis.register_script(COUNT_CLICKS)
        answer = self._script(keys=chunk.keys(), args=chunk.args())
        if len(answer) != chunk.size:  # a script of another version ran
            raise RuntimeError(f"fraud counters answered {len(answer)} values, not {chunk.size}")
        return rebuild(chunk, answer)

    def _window_ms(self, campaign: str) -> int:
        return round(self.window_seconds(campaign) * 1000)

    def _answer_with_pipeline(self, chunk: Chunk) -> list[int]:
        """COUNT_CLICKS as two pipelines (a Redis Cluster splits each by node), with the
        same answer and the same data: first each IP's count (or pair), which pairs the
        set knows, the minute counts and the duplicate hashes' times; then the new pairs
        and counts and the later times written. (Unlike the script, two sinks counting the
        same IP, or the same visitor and link, at once may each write what it counted: one
        of the two may be lost.)"""
        pipe = self.redis.pipeline()
        for (pairs_key, counts_key), ips in chunk.groups.items():
            pipe.hmget(counts_key, list(ips))
            pipe.smismember(pairs_key, [pair for _, pairs in ips.values() for pair in pairs])
        for key, cells in chunk.minutes.items():
            for ip, (n, _) in cells.items():
                pipe.hincrby(key, ip, n)
        for (bucket, shard), cells in chunk.duplicates.items():
            for key in chunk.duplicate_keys(bucket, shard):
                pipe.hmget(key, list(cells))
        for group in chunk.groups:
            for key in group:
                pipe.expire(key, WINDOW_TTL)
        for key in chunk.minutes:
            pipe.expire(key, WINDOW_TTL)
        first = iter(pipe.execute())
        second = self.redis.pipeline()
        answer: list[int] = []  # in COUNT_CLICKS's order
        for group, ips in chunk.groups.items():
            values, flags = next(first), iter(next(first))
            known: list[int] = []
            members: list[str] = []
            raised: list[str | int] = []  # IP, its count (or its one pair), ...
            for (ip, (_, pairs)), value in zip(ips.items(), values, strict=True):
                text = as_text(value) if value is not None else ""
                single = "" if text.isdigit() else text  # one visitor so far: its pair
                before = 1 if single else int(text or 0)
                answer.append(before)
                new: list[str] = []
                for pair, in_set in zip(pairs, flags, strict=False):
                    seen = in_set if before > 1 else pair == single
                    known.append(1 if seen else 0)
                    if not seen:
                        new.append(pair)
                if not new:
                    continue
                total = before + len(new)
                raised += [ip, new[0] if total == 1 else total]
                if total > 1:
                    members += new + ([single] if single else [])
            answer += known
            if members:
                second.sadd(group[0], *members)
            if raised:
                second.hset(group[1], items=raised)
        answer += [next(first) for cells in chunk.minutes.values() for _ in cells]
        for (bucket, shard), cells in chunk.duplicates.items():
            before, own = next(first), next(first)
            later: list[str | int] = []  # field, time, ...
            for (field, (ms, _, _)), earlier, latest in zip(
                cells.items(), before, own, strict=True
            ):
                earlier, latest = int(earlier or 0), int(latest or 0)
                answer.append(max(earlier, latest))
                if ms > latest:
                    later += [field, ms]
            if later:
                key = chunk.duplicate_keys(bucket, shard)[1]
                second.hset(key, items=later)
                second.expire(key, chunk.duplicate_ttl)
        second.execute()
        return answer
