"""The hot window: click records, visitor paths and exclusion marks that Redis keeps.

Redis holds only the last `tracking.hot_hours` hours (default 48) of clicks; the rest of
the lookback is read from ClickHouse (tracker/sink/history.py). Everything is addressed
by the click's own time, which its UUIDv7 id carries, in per-hour hashes:

- click records: `trk:clicks:{h<hour>:<shard>/8}`, field = the click id's 16 bytes, value =
  the visitor id's 16 bytes followed by a JSON array of the record's text fields (link,
  campaign, affiliate, advertiser, sub1..sub5; trailing empty ones left out). The click
  id and time are not stored: the field is the id, and the id carries the time.
- visitor paths: `trk:paths:{p<hour>:<shard>/8}` (shard by visitor), field = the visitor
  id's 16 bytes, value = the click ids of that visitor in that hour, 16 bytes each, in
  arrival order. A visitor's first click is in no path: a visitor who arrives by a click
  gets that click's id as their visitor id (the edge mints one id for both), so readers
  look that click up by the visitor's own id (`clicks_of`). Many clicks are a new
  visitor's first, and they cost Redis no path append.
- exclusion marks (bot- or fraud-flagged clicks, set by the sink): a set beside each
  click hash, `trk:clicks:{h<hour>:<shard>/8}:x`, in the same slot.

Each hash expires once, at the end of its hour plus the window plus `EXPIRY_SLACK_S` (set
with EXPIREAT by an edge's first flush into it, then every few minutes: `ExpiriesSent`;
never per click), so nothing is trimmed click by click and a visitor path needs no
sorted set. Shards spread an hour over `HOT_SHARDS` (8) hash slots per kind, and the
hours over all slots, so a Redis Cluster spreads the window over its nodes.

What Redis holds is exact from `hot_start`: the later of the oldest hour not yet expired
and the `since` mark (the time from which this Redis has every click: set by the first
write into an empty Redis, and lowered by `tracker rebuild-hot`). A Redis restarted with
empty memory has no mark, so readers take everything from ClickHouse until the edges'
first write (then from that time) or a rebuild (then from the window's start).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from tracker import extensions
from tracker import redis_keys as K
from tracker.ids import ZERO_UUID, uuid7_time_ms
from tracker.types import ClickRecord, SyncRedis

HOUR_MS = 3_600_000
HOT_SHARDS = K.HOT_SHARDS
# Hashes outlive their hour by this much, so a reader whose clock runs a little ahead of
# Redis's never counts on an hour Redis has already dropped.
EXPIRY_SLACK_S = 600
NEVER = 1 << 62  # `hot_start` when Redis holds nothing for certain
TEXT_FIELDS = (
    "link_slug",
    "campaign_id",
    "affiliate_id",
    "advertiser_id",
    "sub1",
    "sub2",
    "sub3",
    "sub4",
    "sub5",
)
ZERO_BYTES = bytes(16)


def raw_id(value: str) -> bytes:
    """A canonical UUID string as its 16 bytes."""
    return bytes.fromhex(value.replace("-", ""))


def id_text(raw: bytes) -> str:
    return str(uuid.UUID(bytes=bytes(raw)))


def hour_of(click_id: str) -> int:
    return uuid7_time_ms(click_id) // HOUR_MS


def shard(raw: bytes) -> int:
    """The shard of a click or visitor by its 16-byte id: its last byte (random bits)."""
    return raw[15] % HOT_SHARDS


def slot(raw: bytes) -> int:
    """A click's hour and shard as one number, hour * HOT_SHARDS + shard, from its id's 16
    bytes (a UUIDv7's first 48 bits are its time): cheaper than naming its hash."""
    return int.from_bytes(raw[:6]) // HOUR_MS * HOT_SHARDS + shard(raw)


def click_shard(click_id: str) -> int:
    return id_shard(click_id)


def visitor_shard(visitor_id: str) -> int:
    return id_shard(visitor_id)


def id_shard(value: str) -> int:
    """`shard` of a canonical UUID string, from its last two hex digits (its last byte)."""
    return int(value[34:], 16) % HOT_SHARDS


def click_hash(click_id: str) -> str:
    return K.hot_clicks_key(hour_of(click_id), click_shard(click_id))


def excluded_set(click_id: str) -> str:
    return K.hot_excluded_key(hour_of(click_id), click_shard(click_id))


def path_hash(hour: int, visitor_id: str) -> str:
    return K.hot_paths_key(hour, visitor_shard(visitor_id))


def expire_at(hour: int, hot_hours: int) -> int:
    """When the hashes of `hour` expire (Unix seconds)."""
    return (hour + 1 + hot_hours) * 3600 + EXPIRY_SLACK_S


class ExpiriesSent:
    """The hashes (or the sink's exclusion sets) whose expiry this process set lately,
    left out of its next batches' EXPIREATs. Every batch touches most of an hour's 16
    hashes, so at moderate rates that was an EXPIREAT every few clicks. Each is sent again
    after `resend` seconds, so a hash Redis lost and made again (a flush, a restart without
    persistence) is not left without an expiry for longer than that."""

    def __init__(self, resend: float = 300.0) -> None:
        self.resend = resend
        self._at: dict[str, float] = {}  # key -> when its expiry was last set (monotonic)

    def recent(self, keys: Iterable[str], now: float) -> set[str]:
        """Those of `keys` whose expiry was set less than `resend` seconds ago."""
        at = self._at
        return {key for key in keys if now - at.get(key, -self.resend) < self.resend}

    def sent(self, keys: Iterable[str], now: float) -> None:
        """Their expiries are set (after Redis took the batch)."""
        at = self._at
        for key in keys:
            at[key] = now
        if len(at) > 4 * 2 * HOT_SHARDS:  # a few hours' hashes: forget the stale ones
            self._at = {key: t for key, t in at.items() if now - t < self.resend}


# -- records ----------------------------------------------------------------------------


def encode(record: ClickRecord | dict[str, Any]) -> bytes:
    fields: list[Any] = [record.get(name) or "" for name in TEXT_FIELDS]
    while fields and not fields[-1]:
        fields.pop()
    # The click's time is its id's, unless the id had to be later than the clock (ids
    # never go back in time within a process, e.g. after the clock was set back): then
    # the difference leads the array.
    ts = record.get("ts")
    if ts is not None and record.get("click_id"):
        behind = uuid7_time_ms(record["click_id"]) - int(ts)
        if behind:
            fields.insert(0, behind)
    visitor = record.get("visitor_id") or ZERO_UUID
    return raw_id(visitor) + orjson.dumps(fields)


def decode(click_id: str, raw: bytes | str) -> dict[str, Any]:
    """The record as the rest of the service knows it (the JSON one it replaces)."""
    raw = raw if isinstance(raw, bytes) else raw.encode("latin-1")
    fields = orjson.loads(raw[16:])
    behind = fields.pop(0) if fields and isinstance(fields[0], int) else 0
    fields += [""] * (len(TEXT_FIELDS) - len(fields))
    record: dict[str, Any] = dict(zip(TEXT_FIELDS, fields, strict=True))
    record["click_id"] = click_id
    record["visitor_id"] = id_text(raw[:16])
    record["ts"] = uuid7_time_ms(click_id) - behind
    return record


def split_path(value: bytes | None) -> list[str]:
    """The click ids in a path hash's value (16 bytes each)."""
    if not value:
        return []
    return [id_text(value[i : i + 16]) for i in range(0, len(value) - 15, 16)]


# -- what Redis holds -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HotWindow:
    hours: int

    def oldest_hour(self, now_ms: int) -> int:
        """The oldest hour whose hashes have not expired."""
        return now_ms // HOUR_MS - self.hours

    def start(self, now_ms: int, since: bytes | str | int | None) -> int:
        """From when (ms) Redis holds every click: see the module's note."""
        if since is None:
            return NEVER
        return max(self.oldest_hour(now_ms) * HOUR_MS, int(since))

    def hours_between(self, from_ms: int, to_ms: int, now_ms: int) -> range:
        """The hours that may hold clicks of [from_ms, to_ms] and that Redis may still
        hold (one hour more at the end: a click's id may be a little later than its time,
        see `encode`)."""
        first = max(from_ms // HOUR_MS, self.oldest_hour(now_ms))
        return range(first, to_ms // HOUR_MS + 2)


# -- writing (Lua shared by the edge's batch script, the Cluster path and rebuild-hot) ---

# Appends a batch's click ids to each visitor's field unless already there (a replayed
# batch appends nothing; readers drop repeats anyway): one HMGET of the batch's visitors
# in the hash and one HSET of the fields new or longer, per 1,000 visitors (Lua's unpack
# has a stack limit), rather than a command per visitor (HSETNX, then HGET and HSET for a
# returning one: 3.5-4.4 µs of Redis per click). A batch names each visitor once per hash.
# Used inside a script where `key`, and ARGV from `a`: count, then visitor/click pairs.
APPEND_PATHS = """
local function append_paths(key, a)
  local n = tonumber(ARGV[a])
  local i, last = a + 1, a + 2 * n
  while i <= last do
    local j = math.min(i + 1999, last)
    local visitors = {}
    for k = i, j, 2 do
      visitors[#visitors + 1] = ARGV[k]
    end
    local current = redis.call('HMGET', key, unpack(visitors))
    local out = {}
    for k = 1, #visitors do
      local v, c, cur = visitors[k], ARGV[i + 2 * k - 1], current[k]
      if not cur then
        out[#out + 1] = v
        out[#out + 1] = c
      elseif not string.find(cur, c, 1, true) then
        out[#out + 1] = v
        out[#out + 1] = cur .. c
      end
    end
    if #out > 0 then
      redis.call('HSET', key, unpack(out))
    end
    i = j + 1
  end
  return last + 1
end
"""
# HSET of many pairs in one call, in chunks (Lua's unpack has a stack limit).
SET_FIELDS = """
local function set_fields(key, a)
  local n = tonumber(ARGV[a])
  local i, last = a + 1, a + 2 * n
  while i <= last do
    local j = math.min(i + 999, last)
    redis.call('HSET', key, unpack(ARGV, i, j))
    i = j + 1
  end
  return last + 1
end
"""
# One key: the path hash, ARGV: expireat, count, visitor/click pairs (Cluster, rebuild).
APPEND_PATHS_ONE = (
    APPEND_PATHS
    + """
append_paths(KEYS[1], 2)
redis.call('EXPIREAT', KEYS[1], ARGV[1])
return 1
"""
)


@dataclass(slots=True)
class HotWrites:
    """A batch of click records and path entries grouped by hash: one HSET and one
    EXPIREAT per click hash, one append per visitor and one EXPIREAT per path hash."""

    hot_hours: int
    clicks: dict[str, list[bytes]] = field(default_factory=dict)  # hash -> field, value ...
    paths: dict[str, dict[bytes, bytes]] = field(default_factory=dict)  # hash -> visitor -> ids
    expiry: dict[str, int] = field(default_factory=dict)  # hash -> expireat
    oldest_ms: int = NEVER
    # the same lists and dicts by hour * HOT_SHARDS + shard: an edge adds every click of
    # every batch here, and naming its hashes once per batch instead of per click halved
    # the cost (3.6 -> 1.8 µs per click)
    _click_slots: dict[int, list[bytes]] = field(default_factory=dict)
    _path_slots: dict[int, dict[bytes, bytes]] = field(default_factory=dict)

    @classmethod
    def of(cls, hot_hours: int, clicks: Iterable[tuple[str, bytes]]) -> HotWrites:
        """From (click id, encoded record) pairs."""
        writes = cls(hot_hours)
        group(writes, clicks)
        return writes

    def add(self, click_id: str, record: bytes) -> None:
        """A click and its record as `encode` made it (its visitor's raw id first)."""
        cid = raw_id(click_id)
        ms = int.from_bytes(cid[:6])  # a UUIDv7's first 48 bits: its time (`uuid7_time_ms`)
        if ms < self.oldest_ms:
            self.oldest_ms = ms
        hour = ms // HOUR_MS
        slot = hour * HOT_SHARDS + shard(cid)
        fields = self._click_slots.get(slot)
        if fields is None:
            key = K.hot_clicks_key(hour, slot - hour * HOT_SHARDS)
            fields = self._click_slots[slot] = self.clicks[key] = []
            self.expiry[key] = expire_at(hour, self.hot_hours)
        fields += (cid, record)
        visitor = record[:16]  # an encoded record starts with its visitor's raw id
        if visitor in (ZERO_BYTES, cid):  # no-track, or the visitor's first click
            return
        slot = hour * HOT_SHARDS + shard(visitor)
        visitors = self._path_slots.get(slot)
        if visitors is None:
            key = K.hot_paths_key(hour, slot - hour * HOT_SHARDS)
            visitors = self._path_slots[slot] = self.paths[key] = {}
            self.expiry[key] = expire_at(hour, self.hot_hours)
        visitors[visitor] = visitors.get(visitor, b"") + cid

    def path_pairs(self, key: str) -> list[bytes]:
        """visitor, click ids, visitor, click ids ... of one path hash."""
        return [part for pair in self.paths[key].items() for part in pair]

    def script_args(self, expiring: Container[str] = ()) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV for `WRITE_HOT` (after the caller's own keys and args); the
        hashes in `expiring` have their expiry set already (0: no EXPIREAT)."""
        keys: list[str] = []
        args: list[Any] = [len(self.clicks)]
        for key, fields in self.clicks.items():
            keys.append(key)
            args += [0 if key in expiring else self.expiry[key], len(fields) // 2, *fields]
        for key, visitors in self.paths.items():
            keys.append(key)
            at = 0 if key in expiring else self.expiry[key]
            args += [at, len(visitors), *self.path_pairs(key)]
        return keys, args


def py_group(writes: HotWrites, clicks: Iterable[tuple[str, bytes]]) -> None:
    """Add (click id, encoded record) pairs to `writes`: the reference for the compiled
    `group` (tracker/_hot.pyx), used when that is not built or not wanted."""
    for click_id, record in clicks:
        writes.add(click_id, record)


group: Callable[[HotWrites, Iterable[tuple[str, bytes]]], None] = py_group
_hot = extensions.load("tracker._hot")
if _hot is not None:
    group = _hot.group


# The hot part of a batch. Called with `k0` (index of the first hot key in KEYS) and `a`
# (index of the hot part in ARGV): number of click hashes, then per hash: expireat (0:
# none), count, field/value pairs; then per path hash: expireat, count, visitor/click pairs.
WRITE_HOT = (
    APPEND_PATHS
    + SET_FIELDS
    + """
local function write_hot(k0, a)
  local nclicks = tonumber(ARGV[a])
  a = a + 1
  for k = k0, #KEYS do
    local at = ARGV[a]
    if k < k0 + nclicks then
      a = set_fields(KEYS[k], a + 1)
    else
      a = append_paths(KEYS[k], a + 1)
    end
    if at ~= '0' then
      redis.call('EXPIREAT', KEYS[k], at)
    end
  end
end
"""
)


def paths_from(values: Sequence[bytes | None]) -> list[str]:
    """Click ids of a visitor's path hashes read hour by hour (oldest first)."""
    return [c for value in values for c in split_path(value)]


def clicks_of(visitor_id: str, path: list[str]) -> list[str]:
    """The ids that may be the visitor's clicks in the hot window: the visitor's own id
    (the click that made the visitor, if one did: it is in no path), then the ids of the
    visitor's path (`paths_from`). A reader keeps the records whose visitor is this one
    (`of_visitor`): a visitor id that is no click of theirs finds nothing, or a click of
    someone else's."""
    return path if visitor_id in path else [visitor_id, *path]


def of_visitor(record: dict[str, Any], visitor_id: str) -> bool:
    """Whether a decoded record is a click of this visitor's."""
    return record["visitor_id"] == visitor_id


def store(redis: SyncRedis, writes: HotWrites, since: bool = True) -> None:
    """Write records and paths (`tracker rebuild-hot` and tests). `since`: mark Redis as
    holding clicks from the oldest one written (NX)."""
    pipe = redis.pipeline(transaction=False)
    stage(pipe, writes, since)
    pipe.execute()


def stage(pipe: Any, writes: HotWrites, since: bool = True) -> None:
    """Queue the writes on a pipeline, sync or async, single Redis or Cluster: one-key
    commands only, so each goes to its key's node."""
    if since and writes.clicks:
        pipe.set(K.HOT_SINCE, writes.oldest_ms, nx=True)
    for key, fields in writes.clicks.items():
        pipe.hset(key, mapping=dict(zip(fields[::2], fields[1::2], strict=True)))
        pipe.expireat(key, writes.expiry[key])
    for key, visitors in writes.paths.items():
        pairs = writes.path_pairs(key)
        # EVAL as a raw command: redis-py's Cluster pipeline refuses `eval()` but routes
        # this by its one key like any other command
        pipe.execute_command(
            "EVAL", APPEND_PATHS_ONE, 1, key, writes.expiry[key], len(visitors), *pairs
        )


def put(redis: SyncRedis, records: Iterable[dict[str, Any]], hot_hours: int = 48) -> None:
    """Store click records (as the edge builds them) in the hot window."""
    store(
        redis,
        HotWrites.of(
            hot_hours,
            ((r["click_id"], encode(r)) for r in records),
        ),
    )


def get(redis: SyncRedis, click_id: str) -> dict[str, Any] | None:
    """A click's record from the hot window, or None."""
    raw = redis.hget(click_hash(click_id), raw_id(click_id))
    return None if raw is None else decode(click_id, raw)
