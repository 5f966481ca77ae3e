"""A new server-to-server postback in one Redis round trip (one server, not a Cluster).

One script checks the transaction (idempotency), reads the named click's record from the
hot window (tracker/hot.py) and the `since` mark, decides the attribution, stores the
transaction and appends the conversion row to the events stream. Python prepares
everything that does not depend on the click; the script fills in the click's columns.
What the script does not settle comes back for the reference path in postback.py: a
transaction that already exists (a duplicate answers at once; a status change goes
through `RECORD_CONVERSION`), a click not written yet (`retry` after a pause, as before)
and a click record whose time is not its id's (`slow`, rare: see `hot.encode`).

The script builds the cap counters' key names from the click's campaign, so it runs only
on a single Redis (a Cluster keeps the pipelined reference path: its keys are in several
slots). Byte for byte the JSON it writes may differ from orjson's (cjson writes `/` as
`\\/`); parsed, it is the same row and record (tests/edge/test_postback_script.py).
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from functools import lru_cache
from typing import Any, NamedTuple

import orjson
import redis.asyncio as aredis
from redis.exceptions import NoScriptError

from tracker import hot
from tracker import redis_keys as K
from tracker.edge import conversion_input
from tracker.edge.conversion_input import FIRST_STATUSES, ConversionInput
from tracker.edge.lean_redis import LeanRedis
from tracker.ids import ZERO_UUID, uuid7, uuid7_time_ms
from tracker.reasons import UnattributedReason as U
from tracker.records import RequestMeta
from tracker.timefmt import format_ms, utc_day

# KEYS: transaction, events stream, the click's hash, the hot window's `since` mark.
# ARGV: see `Prepared.args`. The parts that are the same for every postback (@NAME@) are
# written into the script once (`_with_constants`), not sent and parsed on every call.
_SCRIPT = """
local status = redis.call('HMGET', KEYS[1], 'status', 'record')
if status[1] then
  return {'exists', status[1], status[2]}
end
if ARGV[2] ~= '1' then
  return {'missing'}
end
local kind, rec_mid, row_mid, row_tail = 'u', @RECORD_UNKNOWN@, @ROW_UNKNOWN@, ARGV[18]
local campaign = ''
if ARGV[3] == '1' then
  local raw = redis.call('HGET', KEYS[3], ARGV[4])
  if raw then
    local f = cjson.decode(string.sub(raw, 17))
    if type(f[1]) == 'number' then
      return {'slow'}
    end
    local t = {}
    for i = 1, 9 do
      local v = f[i]
      if type(v) ~= 'string' then v = '' end
      t[i] = v
    end
    if t[4] ~= '' and t[4] ~= ARGV[8] then
      kind, rec_mid, row_mid = 'o', @RECORD_OTHER@, @ROW_OTHER@
    else
      -- the visitor id's 16 bytes as a UUID, in one call (a gsub calling a function per
      -- byte was a quarter of the script's time)
      local v = string.format(@UUID_FORMAT@, string.byte(raw, 1, 16))
      local j = {}
      for i = 1, 9 do j[i] = cjson.encode(t[i]) end
      kind, campaign = 'a', t[2]
      rec_mid = '"click":{"link_slug":' .. j[1] .. ',"campaign_id":' .. j[2] ..
        ',"affiliate_id":' .. j[3] .. ',"advertiser_id":' .. j[4] .. ',"sub1":' .. j[5] ..
        ',"sub2":' .. j[6] .. ',"sub3":' .. j[7] .. ',"sub4":' .. j[8] .. ',"sub5":' ..
        j[9] .. ',"click_id":"' .. ARGV[19] .. '","visitor_id":"' .. v .. '","ts":' ..
        ARGV[7] .. '},"unattributed_reason":"","visitor_id":"' .. v .. '",'
      row_mid = '"click_id":"' .. ARGV[19] .. '","visitor_id":"' .. v ..
        '","click_time":"' .. ARGV[20] .. '","link_slug":' .. j[1] .. ',"campaign_id":' ..
        j[2] .. ',"affiliate_id":' .. j[3] .. ',"attributed":1,"unattributed_reason":"",'
    end
  else
    if ARGV[5] == '1' then
      return {'retry'}
    end
    local since = redis.call('GET', KEYS[4])
    if (not since) or tonumber(ARGV[7]) < math.max(tonumber(ARGV[6]), tonumber(since)) then
      kind = 'd'
      rec_mid = @RECORD_DEFERRED@ .. ARGV[19] .. '",'
      row_mid = '"click_id":"' .. ARGV[19] .. '",' .. @ROW_DEFERRED@
      row_tail = string.sub(row_tail, 1, -2) .. ',"deferred":1}'
    end
  end
end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'record', ARGV[15] .. rec_mid .. ARGV[16])
redis.call('EXPIRE', KEYS[1], ARGV[9])
if campaign ~= '' then
  local daily = ARGV[11] .. campaign .. ARGV[12]
  redis.call('INCR', daily)
  redis.call('EXPIRE', daily, ARGV[10])
  redis.call('INCR', ARGV[13] .. campaign .. ARGV[14])
end
redis.call('XADD', KEYS[2], '*', @BATCH_ID_FIELD@, ARGV[21], 'conversions',
  ARGV[17] .. row_mid .. row_tail)
return {'ok', kind}
"""
# what the script's `ok` says of the conversion: its unattributed reason, or deferred
KINDS: dict[bytes, U | None] = {
    b"a": None,
    b"u": U.UNKNOWN_OR_EXPIRED_CLICK,
    b"o": U.CLICK_OF_OTHER_ADVERTISER,
    b"d": None,
}
DEFERRED = b"d"
_MARK = "\x00"  # where the campaign goes in a cap key's name


@lru_cache(maxsize=4)
def cap_key_parts(day: int) -> tuple[str, ...]:
    daily = K.conversion_cap_daily_key(_MARK, day).split(_MARK)
    total = K.conversion_cap_total_key(_MARK).split(_MARK)
    return (*daily, *total)


def _middle(fields: dict[str, Any]) -> bytes:
    """Object members as they sit inside a larger object (with their trailing comma)."""
    return orjson.dumps(fields)[1:-1] + b","


# The parts that are the same for every postback without a click, made once.
_NO_CLICK = {
    "click_id": ZERO_UUID,
    "visitor_id": ZERO_UUID,
    "click_time": format_ms(0),
    "link_slug": "",
    "campaign_id": "",
    "affiliate_id": "",
    "attributed": 0,
}
_ROW_UNKNOWN = _middle({**_NO_CLICK, "unattributed_reason": U.UNKNOWN_OR_EXPIRED_CLICK})
_ROW_OTHER = _middle({**_NO_CLICK, "unattributed_reason": U.CLICK_OF_OTHER_ADVERTISER})
_UNATTRIBUTED = {"click": None, "unattributed_reason": "", "visitor_id": ""}
_RECORD_UNKNOWN = _middle({**_UNATTRIBUTED, "unattributed_reason": U.UNKNOWN_OR_EXPIRED_CLICK})
_RECORD_OTHER = _middle({**_UNATTRIBUTED, "unattributed_reason": U.CLICK_OF_OTHER_ADVERTISER})
# a deferred conversion's: the record's members up to the click id's value, and the row's
# after its click id (the click id is a validated UUID: nothing in it to escape)
_RECORD_DEFERRED = _middle({**_UNATTRIBUTED, "deferred": True, "deferred_click": ""})[:-2]
_ROW_DEFERRED = _middle({**_NO_CLICK, "unattributed_reason": ""}).split(b",", 1)[1]


def _with_constants(script: str, **constants: bytes | str) -> str:
    """`script` with each @NAME@ replaced by a Lua long string of the constant's text."""
    for name, value in constants.items():
        text = value.decode() if isinstance(value, bytes) else value
        assert "]==]" not in text
        script = script.replace(f"@{name}@", f"[==[{text}]==]")
    assert "@" not in script
    return script


NEW_POSTBACK = _with_constants(
    _SCRIPT,
    RECORD_UNKNOWN=_RECORD_UNKNOWN,
    ROW_UNKNOWN=_ROW_UNKNOWN,
    RECORD_OTHER=_RECORD_OTHER,
    ROW_OTHER=_ROW_OTHER,
    RECORD_DEFERRED=_RECORD_DEFERRED,
    ROW_DEFERRED=_ROW_DEFERRED,
    BATCH_ID_FIELD=K.BATCH_ID_FIELD,
    UUID_FORMAT="-".join("%02x" * n for n in (4, 2, 2, 2, 6)),
)


class Prepared(NamedTuple):
    """One new postback ready for `NEW_POSTBACK`."""

    conversion_id: str
    keys: list[str]
    args: list[Any]


def prepare(
    conv: ConversionInput,
    *,
    ms: int,
    meta: RequestMeta,
    lookback_ms: int,
    window: hot.HotWindow,
    dedup_seconds: int,
) -> Prepared:
    """KEYS and ARGV for a postback that names a click (`conv.click_id`), stamped `ms`.
    ARGV[5] (recent: answer `retry` when the click is missing) is set by the caller.

    The row is `conversion_input.conversion_row`'s (its head and tail, the click's
    columns spliced in by the script); the record is what postback.py's reference path
    stores."""
    click_id = conv.click_id
    at = uuid7_time_ms(click_id)
    conversion_id = uuid7(ms)
    amount = conv.amount if conv.amount is not None else Decimal(0)
    head = orjson.dumps(
        conversion_input.row_head(
            conv,
            ms=ms,
            conversion_id=conversion_id,
            amount=amount,
            currency=conv.currency,
            previous_status="",
        )
    )
    tail = conversion_input.row_tail(conv, source="postback", meta=meta, payout=conv.payout)
    row_tail = orjson.dumps(tail)[1:]  # `"source":...}` (the middle ends with a comma)
    money = {"amount": str(amount), "currency": conv.currency}
    if conv.payout is not None:
        money["payout"] = str(conv.payout)
    record_tail = orjson.dumps(money)[1:]
    record_head = orjson.dumps({"conversion_id": conversion_id})[:-1] + b","
    keys = [
        K.conversion_key(conv.advertiser, conv.txid),
        K.EVENTS_STREAM,
        hot.click_hash(click_id),
        K.HOT_SINCE,
    ]
    args: list[Any] = [
        conv.status,  # 1
        "1" if conv.status in FIRST_STATUSES else "0",  # 2: may start a transaction
        "1" if ms - at <= lookback_ms else "0",  # 3: look the click up
        hot.raw_id(click_id),  # 4
        "0",  # 5: recent (set by the caller)
        window.oldest_hour(ms) * hot.HOUR_MS,  # 6
        at,  # 7
        conv.advertiser,  # 8
        dedup_seconds,  # 9
        K.CAP_DAY_TTL,  # 10
        *cap_key_parts(utc_day(ms)),  # 11-14
        record_head,  # 15
        record_tail,  # 16
        head[:-1] + b",",  # 17: the row up to the click's columns
        row_tail,  # 18
        click_id,  # 19
        format_ms(at),  # 20
        uuid7(ms),  # 21: the stream entry's batch id
    ]
    return Prepared(conversion_id, keys, args)


RECENT_ARG = 4  # index of ARGV[5] in `Prepared.args`


class NewPostback:
    """The script, loaded once per process and again when Redis has lost it. Called over
    one pipelined hiredis connection (tracker/edge/lean_redis.py): through redis-py's
    asyncio client this one call was ~70 µs more CPU per postback."""

    def __init__(self, redis: aredis.Redis) -> None:
        self._redis = LeanRedis.like(redis)
        self._sha: str | None = None

    def close(self) -> None:
        self._redis.close()

    def send(self, prepared: Prepared) -> asyncio.Future[list[Any]] | None:
        """The script called without a coroutine: its reply's future. None before the
        script is loaded or while no connection is open (`__call__` does both)."""
        if self._sha is None:
            return None
        keys = prepared.keys
        return self._redis.send("EVALSHA", self._sha, len(keys), *keys, *prepared.args)

    async def __call__(self, prepared: Prepared) -> list[Any]:
        keys = prepared.keys
        if self._sha is not None:
            try:
                return await self._redis.evalsha(self._sha, len(keys), *keys, *prepared.args)
            except NoScriptError:  # Redis restarted or flushed its scripts: load it again
                pass
        self._sha = await self._redis.script_load(NEW_POSTBACK)
        return await self._redis.evalsha(self._sha, len(keys), *keys, *prepared.args)
