"""The one-round-trip postback script against the reference path, over a real
redis-server: for the same postback and the same Redis state both give the same reply, the
same stream row, the same stored transaction and the same cap counts (parsed JSON: cjson
may escape differently), in every attribution case; and a new postback is one Redis call.
"""

from __future__ import annotations

import time
import uuid
from decimal import Decimal

import orjson
import pytest

from tracker import config, hot
from tracker import redis_keys as K
from tracker.clock import FixedClock, clock_ms
from tracker.edge import postback
from tracker.edge.conversion_input import ConversionInput, Rejected
from tracker.edge.intake import ConversionIntake
from tracker.edge.postback import pending_postback, record, record_pending
from tracker.records import RequestMeta
from tracker.redis_connection import async_client
from tracker.testing import click_id_at
from tracker.timefmt import utc_day

NOW = FixedClock(time.time())
META = RequestMeta("203.0.113.9", "shop-backend/2.3", "", "", "/postback", "GET")
VISITOR = str(uuid.UUID(int=0x0190A0A0_0000_7000_8000_0000000000FF))


def conv(click_id: str, **over) -> ConversionInput:
    fields = {
        "advertiser": "shop",
        "txid": "t-1",
        "click_id": click_id,
        "amount": Decimal("12.50"),
        "currency": "EUR",
        "status": "pending",
        "event": "sale",
        "subs": {"sub1": "a/b", "sub2": 'ünï"code', "sub3": "", "sub4": "", "sub5": "x\ny"},
        "payout": None,
    }
    return ConversionInput(**{**fields, **over})


@pytest.fixture
async def intake(tmp_path, redis_server):
    settings = config.load(
        env={"TRACKER_DATA_DIR": str(tmp_path / "data"), "TRACKER_REDIS_URL": redis_server.url}
    )
    redis = async_client(redis_server.url, 2.0)
    yield ConversionIntake(redis, None, settings, [], clock=NOW)
    await redis.aclose()


async def record_postback(
    intake: ConversionIntake, c: ConversionInput, meta: RequestMeta
) -> postback.Answer:
    """A new postback through the one-script path, as the routes record it."""
    return await record_pending(intake, pending_postback(intake, {}, c, meta))


def state(redis_server, c: ConversionInput) -> dict:
    """What a postback left in Redis, without its generated ids."""
    r = redis_server.client()
    [(_, entry)] = r.xrange(K.EVENTS_STREAM)
    row = orjson.loads(entry[b"conversions"])
    stored = r.hgetall(K.conversion_key(c.advertiser, c.txid))
    record_ = orjson.loads(stored[b"record"])
    for item in (row, record_):
        item.pop("conversion_id")
    caps = {k.decode(): r.get(k) for k in r.keys(f"{K.PREFIX}:convcap:*") if r.type(k) == b"string"}
    return {"row": row, "record": record_, "status": stored[b"status"], "caps": caps}


def reset(redis_server, c: ConversionInput) -> None:
    r = redis_server.client()
    r.delete(K.EVENTS_STREAM, K.conversion_key(c.advertiser, c.txid), *r.keys("*convcap*"))


async def both(intake, redis_server, c: ConversionInput) -> tuple[dict, dict]:
    """(reply, state) of the reference path, then of the script, from the same Redis."""
    results = []
    for path in ("reference", "script"):
        reset(redis_server, c)
        if path == "reference":
            response = await record(intake, c, visitor_id="", source="postback", meta=META)
        else:
            before = sent(redis_server, {})
            response = await record_postback(intake, c, META)
            assert "hgetall" not in sent(redis_server, before)  # not the reference path
        body = orjson.loads(response.body)
        body.pop("conversion_id")
        results.append(({"http": response.status, **body}, state(redis_server, c)))
    return results[0], results[1]


CLICK_AGO_MS = 3_600_000


def put_click(redis_server, click_id: str, **fields) -> None:
    record_ = {"click_id": click_id, "visitor_id": VISITOR, **fields}
    hot.put(redis_server.client(), [record_])


@pytest.mark.parametrize(
    "case",
    ["attributed", "no_track_click", "other_advertiser", "unknown", "deferred", "no_since"],
)
async def test_the_script_gives_what_the_reference_gives(intake, redis_server, case):
    now = clock_ms(NOW)
    click_id = click_id_at(now - CLICK_AGO_MS)
    r = redis_server.client()
    r.set(K.HOT_SINCE, now - 2 * CLICK_AGO_MS)
    fields = {
        "link_slug": "spring/sale",
        "campaign_id": "camp-1",
        "affiliate_id": "aff-\u00e9",
        "advertiser_id": "shop",
        "sub1": "s1",
        "sub3": 'q"uote',
        "sub5": "</script>",
    }
    if case == "attributed":
        put_click(redis_server, click_id, **fields)
    elif case == "no_track_click":
        hot.put(r, [{"click_id": click_id, "campaign_id": "camp-2"}])
    elif case == "other_advertiser":
        put_click(redis_server, click_id, **{**fields, "advertiser_id": "other"})
    elif case == "deferred":  # older than what this Redis holds for certain
        r.set(K.HOT_SINCE, now)
    elif case == "no_since":  # an emptied Redis vouches for nothing
        r.delete(K.HOT_SINCE)
    c = conv(click_id, payout=Decimal("1.25") if case == "attributed" else None)
    reference, script = await both(intake, redis_server, c)
    assert script == reference
    expected = {
        "attributed": (True, "online", None),
        "no_track_click": (True, "online", None),
        "other_advertiser": (False, "online", "click_of_other_advertiser"),
        "unknown": (False, "online", "unknown_or_expired_click"),
        "deferred": (None, "deferred", None),
        "no_since": (None, "deferred", None),
    }[case]
    reply, stored = script
    assert (reply["attributed"], reply["attribution"], reply["reason"]) == expected
    if case == "attributed":
        assert stored["caps"] == {
            K.conversion_cap_daily_key("camp-1", utc_day(now)): b"1",
            K.conversion_cap_total_key("camp-1"): b"1",
        }
        assert stored["row"]["sub5"] == "x\ny" and stored["record"]["click"]["sub5"] == (
            "</script>"
        )
    if case == "deferred":
        assert stored["row"]["deferred"] == 1 and stored["row"]["click_id"] == click_id


async def test_past_the_lookback_and_statuses_that_cannot_start(intake, redis_server):
    now = clock_ms(NOW)
    old = click_id_at(now - 40 * 86_400_000)
    redis_server.client().set(K.HOT_SINCE, 0)
    reference, script = await both(intake, redis_server, conv(old))
    assert script == reference
    assert script[0]["reason"] == "unknown_or_expired_click"
    reset(redis_server, conv(old))
    approved = await record_postback(intake, conv(old, status="approved", txid="t-2"), META)
    assert orjson.loads(approved.body)["status"] == "accepted"
    with pytest.raises(Rejected) as refused:
        await record_postback(intake, conv(old, status="reversed", txid="t-3"), META)
    assert (refused.value.status, refused.value.reason) == (409, "unknown_transaction")


INSIDE_SCRIPTS = {"hmget", "hget", "get", "hset", "expire", "incr", "xadd"}
OUR_OWN = {"info", "hello", "client|setinfo", "select"}  # the test's own connection


def sent(redis_server, before: dict[str, int]) -> dict[str, int]:
    """Commands sent since `before` (those the script runs itself left out)."""
    now = {
        name.removeprefix("cmdstat_"): s["calls"]
        for name, s in redis_server.client().info("commandstats").items()
    }
    return {
        k: v - before.get(k, 0)
        for k, v in now.items()
        if v != before.get(k, 0) and k not in INSIDE_SCRIPTS | OUR_OWN
    }


async def test_a_new_postback_is_one_redis_call_and_a_repeat_too(intake, redis_server):
    now = clock_ms(NOW)
    click_id = click_id_at(now - CLICK_AGO_MS)
    put_click(redis_server, click_id, campaign_id="camp-1", advertiser_id="shop")
    redis_server.client().set(K.HOT_SINCE, 0)
    await record_postback(intake, conv(click_id, txid="warm-up"), META)  # loads the script
    before = sent(redis_server, {})
    new = await record_postback(intake, conv(click_id), META)
    assert sent(redis_server, before) == {"evalsha": 1}
    before = sent(redis_server, {})
    again = await record_postback(intake, conv(click_id), META)
    assert sent(redis_server, before) == {"evalsha": 1}
    first, repeat = orjson.loads(new.body), orjson.loads(again.body)
    assert (first["status"], first["attributed"], repeat["status"]) == (
        "accepted",
        True,
        "duplicate",
    )
    assert repeat["conversion_id"] == first["conversion_id"]
    # a status change goes on through the reference path
    approved = await record_postback(intake, conv(click_id, status="approved"), META)
    body = orjson.loads(approved.body)
    assert (body["status"], body["transaction_status"]) == ("accepted", "approved")
    assert body["conversion_id"] == first["conversion_id"]


async def test_the_script_is_loaded_again_after_redis_lost_it(intake, redis_server):
    now = clock_ms(NOW)
    click_id = click_id_at(now - CLICK_AGO_MS)
    put_click(redis_server, click_id, advertiser_id="shop")
    await record_postback(intake, conv(click_id, txid="one"), META)
    redis_server.client().script_flush()
    answer = await record_postback(intake, conv(click_id, txid="two"), META)
    assert orjson.loads(answer.body)["status"] == "accepted"
    assert redis_server.client().xlen(K.EVENTS_STREAM) == 2
