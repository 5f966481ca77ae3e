"""The postback route in process (the edge app over a real redis-server): refusals come
from the closed set in tracker.reasons, and failures are told apart (503 retry vs 500 bug).
"""

from __future__ import annotations

import logging
import random
import string
import uuid

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from tracker import config, hot
from tracker import redis_keys as K
from tracker.clock import FixedClock
from tracker.edge.app import create_app
from tracker.edge.keys import INTAKE
from tracker.ids import uuid7
from tracker.metrics import REJECTIONS
from tracker.reasons import PostbackRefusal
from tracker.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from tracker.testing import TOKEN

ADV_TOKEN = "adv-token-0123456789abcdef"


CLOCK = FixedClock(1_767_225_600.0)  # 2026-01-01 00:00:00 UTC, pinned


@pytest.fixture
async def client(tmp_path, redis_server):
    settings = config.load(
        env={
            "TRACKER_DATA_DIR": str(tmp_path / "data"),
            "TRACKER_REDIS_URL": redis_server.url,
            "TRACKER_ADMIN_TOKEN": TOKEN,
            "TRACKER_REDIS_TIMEOUT_SECONDS": "0.5",
        }
    )
    async with TestClient(TestServer(create_app(settings, clock=CLOCK))) as client:
        r = await client.post(
            "/api/advertisers",
            json={"id": "shop", "token": ADV_TOKEN},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert r.status == 201
        yield client


def rejections() -> dict[str, float]:
    """The refusals published to Prometheus so far, by reason."""
    return {
        sample.labels["reason"]: sample.value
        for metric in REJECTIONS.collect()
        for sample in metric.samples
        if sample.name.endswith("_total")
    }


async def post_json(client: TestClient, body: bytes):
    r = await client.post(
        f"/postback?advertiser=shop&token={ADV_TOKEN}",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    return r.status, await r.json()


async def test_random_json_keys_add_no_metric_series(client):
    """2,000 bodies, each with a fresh key holding a list: one reason, and the offending
    key only in the reply (a client must not grow the metrics without bound)."""
    rng = random.Random(11)
    before = rejections()
    keys = set()
    for _ in range(2000):
        key = "".join(rng.choices(string.ascii_lowercase, k=12))
        keys.add(key)
        status, body = await post_json(client, orjson.dumps({"txid": "t1", key: [1, 2]}))
        assert status == 400
        assert body == {
            "status": "rejected",
            "reason": "invalid_field",
            "conversion_id": None,
            "field": key,
        }
    ctx = client.server.app[INTAKE]
    assert set(ctx.rejections) <= {PostbackRefusal.INVALID_FIELD}
    # what the app does once a second (it may have published part of them already)
    ctx.publish_metrics()
    after = rejections()
    assert after["invalid_field"] - before.get("invalid_field", 0) == 2000
    assert {reason for reason in after if after[reason] != before.get(reason, 0)} == {
        "invalid_field"
    }
    assert set(after) <= {str(reason) for reason in PostbackRefusal}
    assert not keys & set(after)


async def test_a_long_offending_key_is_cut_in_the_reply(client):
    status, body = await post_json(client, orjson.dumps({"k" * 500: {"a": 1}}))
    assert (status, body["reason"], body["field"]) == (400, "invalid_field", "k" * 64)


async def test_deeply_nested_json_is_a_bad_request(client):
    for body in (b"[" * 20_000, b'{"a":' * 5_000 + b"1" + b"}" * 5_000):
        status, reply = await post_json(client, body)
        assert (status, reply["reason"]) == (400, "invalid_json")


async def test_a_bug_is_a_500_with_its_traceback_logged(client, redis_server, caplog):
    """A stored transaction that cannot be read is our bug, not a reason to retry."""
    redis_server.client().hset(
        K.conversion_key("shop", "broken"), mapping={"status": "pending", "record": "{not json"}
    )
    click = "01900000-0000-7000-8000-000000000001"
    with caplog.at_level(logging.ERROR, logger="tracker.edge.postback"):
        r = await client.get(
            f"/postback?advertiser=shop&token={ADV_TOKEN}&txid=broken&click_id={click}"
            "&status=approved"
        )
        body = await r.json()
    assert (r.status, body["reason"]) == (500, "internal_error")
    errors = [rec for rec in caplog.records if rec.levelno == logging.ERROR]
    assert errors and errors[0].exc_info is not None


async def test_redis_away_is_a_503(client, redis_server):
    click = "01900000-0000-7000-8000-000000000001"
    redis_server.stop()
    r = await client.get(f"/postback?advertiser=shop&token={ADV_TOKEN}&txid=t9&click_id={click}")
    body = await r.json()
    assert (r.status, body["reason"]) == (503, "temporarily_unavailable")


async def signed_post(client: TestClient, ts: float, body: bytes, signed: bytes | None = None):
    """POST body with a signature of `signed` (default: the body itself) made at ts."""
    query = "advertiser=shop"
    stamp = str(int(ts))
    r = await client.post(
        f"/postback?{query}",
        data=body,
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            TIMESTAMP_HEADER: stamp,
            SIGNATURE_HEADER: sign(ADV_TOKEN, stamp, "POST", "/postback", query, signed or body),
        },
    )
    return r.status, await r.json()


@pytest.mark.parametrize(
    ("offset", "status", "reason"),
    [
        (-301, 401, "stale_signature"),
        (-300, 200, None),  # the window's edges are inside it
        (0, 200, None),
        (300, 200, None),
        (301, 401, "stale_signature"),  # a timestamp from the future is no better
        (3600, 401, "stale_signature"),
    ],
)
async def test_signature_window_at_its_edges(client, offset, status, reason):
    """The edge's clock stands still: a timestamp exactly 300 s away is the last one in."""
    click = "01900000-0000-7000-8000-000000000001"
    body = f"txid=w{offset + 5000}&click_id={click}&amount=5".encode()
    code, answer = await signed_post(client, CLOCK() + offset, body)
    assert (code, answer["reason"] if code != 200 else None) == (status, reason), answer
    if code == 200:
        assert answer["status"] == "accepted"


async def test_a_replayed_signed_post_is_a_duplicate(client, redis_server):
    """The same signed request with its body, sent again inside the window: the signature
    still holds, and the transaction's dedup answers `duplicate` with the first id."""
    click = "01900000-0000-7000-8000-000000000001"
    body = f"txid=replay-1&click_id={click}&amount=12.50&currency=EUR".encode()
    first = await signed_post(client, CLOCK() - 10, body)
    again = await signed_post(client, CLOCK() - 10, body)
    assert first[0] == again[0] == 200
    assert (first[1]["status"], again[1]["status"]) == ("accepted", "duplicate")
    assert again[1]["reason"] == "duplicate_transaction"
    assert again[1]["conversion_id"] == first[1]["conversion_id"]
    assert redis_server.client().xlen(K.EVENTS_STREAM) == 1  # stored once
    # the old signature over a changed body is refused, not taken for a duplicate
    tampered = await signed_post(client, CLOCK() - 10, body.replace(b"12.50", b"99"), body)
    assert (tampered[0], tampered[1]["reason"]) == (401, "bad_signature")


# -- conversion pixels: unauthenticated, so bounded -----------------------------------------


def redis_calls(redis_server, command: str) -> int:
    stats = redis_server.client().info("commandstats")
    return stats.get(f"cmdstat_{command}", {}).get("calls", 0)


async def pixel(client: TestClient, visitor: str | None = None, **params) -> None:
    params = {"event": "sale", "advertiser": "shop", "amount": "10", **params}
    client.session.cookie_jar.clear()  # the visitor is only the one named here
    headers = {"Cookie": f"vid={visitor}"} if visitor else {}
    r = await client.get("/p.gif", params=params, headers=headers)
    assert r.status == 200 and (await r.read()).startswith(b"GIF89a")


def stored_conversions(redis_server) -> list[dict]:
    rows = []
    for _, fields in redis_server.client().xrange(K.EVENTS_STREAM):
        if b"conversions" in fields:
            rows += [orjson.loads(line) for line in fields[b"conversions"].split(b"\n")]
    return rows


async def test_a_made_up_fresh_click_id_costs_a_pixel_three_reads(client, redis_server):
    """A pixel naming a click id that looks a moment old waits for it to appear a little
    (it used to poll Redis 100 times, 1.3 s); an authenticated postback a little longer."""
    from tracker.clock import clock_ms
    from tracker.ids import uuid7

    fresh = uuid7(clock_ms(CLOCK))
    redis_server.client().set(K.HOT_SINCE, 0)  # this Redis holds every click since ever
    before = redis_calls(redis_server, "hget")
    await pixel(client, click_id=fresh, txid="made-up-1")
    assert redis_calls(redis_server, "hget") - before == 3 + 1  # + the recording script's
    before = redis_calls(redis_server, "hget")
    r = await client.get(
        "/postback",
        params={"advertiser": "shop", "token": ADV_TOKEN, "click_id": fresh, "txid": "pb-1"},
    )
    assert r.status == 200
    assert redis_calls(redis_server, "hget") - before <= 7 + 1
    assert [row["unattributed_reason"] for row in stored_conversions(redis_server)] == [
        "unknown_or_expired_click",
        "unknown_or_expired_click",
    ]


async def test_pixels_are_rate_limited_per_visitor_and_address(client, redis_server):
    visitor = "0190a0a0-0000-7000-8000-000000000001"
    for n in range(22):
        await pixel(client, visitor, txid=f"v-{n}")
    assert len(stored_conversions(redis_server)) == 20  # pixel_per_visitor_per_hour
    for n in range(200):  # fresh visitors, one address
        await pixel(client, None, txid=f"ip-{n}")
    # pixel_per_ip_per_hour counts every attempt: 22 + 178 of these were let through
    assert len(stored_conversions(redis_server)) == 20 + 178
    client.app[INTAKE].publish_metrics()
    assert rejections().get("rate_limited", 0) >= 22


async def test_a_pixel_cannot_set_a_status_or_claim_another_visitors_click(client, redis_server):
    await pixel(client, txid="approve-me", status="approved")
    assert stored_conversions(redis_server) == []
    mine, theirs = uuid7(), uuid7()
    click_id = uuid7()
    hot.put(redis_server.client(), [{"click_id": click_id, "visitor_id": theirs}])
    await pixel(client, mine, txid="claim", click_id=click_id)
    [row] = stored_conversions(redis_server)
    assert (row["attributed"], row["unattributed_reason"]) == (0, "click_of_other_visitor")


async def test_a_click_older_than_the_hot_window_is_left_to_the_sink(client, redis_server):
    """Redis holds 48 hours of clicks: a postback naming an older click is accepted and
    says its attribution is deferred; its row (and a later status change's) carries the
    click id for the sink to find in ClickHouse."""
    from tracker.clock import clock_ms
    from tracker.testing import click_id_at

    redis = redis_server.client()
    redis.set(K.HOT_SINCE, 0)
    now = clock_ms(CLOCK)
    old = click_id_at(now - 3 * 86_400_000)
    query = {"advertiser": "shop", "token": ADV_TOKEN, "click_id": old, "txid": "old-1"}
    r = await client.get("/postback", params=query)
    body = await r.json()
    assert (r.status, body["status"], body["attribution"]) == (200, "accepted", "deferred")
    assert body["attributed"] is None and body["reason"] is None
    r = await client.get("/postback", params={**query, "status": "approved"})
    assert (await r.json())["status"] == "accepted"
    rows = stored_conversions(redis_server)
    assert [(row["click_id"], row["deferred"], row["status"]) for row in rows] == [
        (old, 1, "pending"),
        (old, 1, "approved"),
    ]

    # past the lookback: unknown at once, no lookup
    query = {**query, "click_id": click_id_at(now - 31 * 86_400_000), "txid": "old-2"}
    body = await (await client.get("/postback", params=query)).json()
    assert (body["attributed"], body["reason"]) == (False, "unknown_or_expired_click")

    # a Redis emptied by a restart vouches for nothing: a click of this hour is deferred too
    redis.delete(K.HOT_SINCE)
    query = {**query, "click_id": click_id_at(now - 60_000), "txid": "recent"}
    assert (await (await client.get("/postback", params=query)).json())["attribution"] == (
        "deferred"
    )
    # a pixel whose visitor has no click in the window may have older ones
    redis.set(K.HOT_SINCE, 0)
    await pixel(client, str(uuid.uuid4()), txid="px-old")
    assert stored_conversions(redis_server)[-1]["deferred"] == 1


async def test_a_click_in_the_hot_window_is_attributed_at_once(client, redis_server):
    from tracker.clock import clock_ms
    from tracker.testing import click_id_at

    redis = redis_server.client()
    visitor = str(uuid.uuid4())
    click_id = click_id_at(clock_ms(CLOCK) - 3_600_000)
    record = {"click_id": click_id, "visitor_id": visitor, "campaign_id": "c", "sub2": "x"}
    # the edge's own clock is pinned in the past: the hash must outlive this test
    hot.put(redis, [record], hot_hours=24 * 3650)
    redis.set(K.HOT_SINCE, 0)
    query = {"advertiser": "shop", "token": ADV_TOKEN, "click_id": click_id, "txid": "hot"}
    body = await (await client.get("/postback", params=query)).json()
    assert (body["attributed"], body["attribution"]) == (True, "online")
    await pixel(client, visitor, txid="hot-px")
    rows = stored_conversions(redis_server)
    assert [(r["click_id"], r["campaign_id"], r["attributed"]) for r in rows] == [
        (click_id, "c", 1),
        (click_id, "c", 1),
    ]
    assert all("deferred" not in r for r in rows)


async def test_a_visitor_made_by_a_click_is_found_by_their_own_id(client, redis_server):
    """A visitor's first click has the visitor's id and no path entry (tracker/hot.py): a
    pixel finds it by the cookie alone; a cookie naming someone else's click finds none in
    the hot window."""
    from tracker.clock import clock_ms
    from tracker.testing import click_id_at

    redis = redis_server.client()
    redis.set(K.HOT_SINCE, 0)
    now = clock_ms(CLOCK)
    visitor = click_id_at(now - 3_600_000)  # their first click, an hour before the clock
    returning, later = uuid7(), click_id_at(now - 60_000)  # another's click, by a path
    for click_id, owner in ((visitor, visitor), (later, returning)):
        record = {"click_id": click_id, "visitor_id": owner, "advertiser_id": "shop"}
        # no expiry: the pinned clock's hours are long gone by the wall clock's
        redis.hset(hot.click_hash(click_id), hot.raw_id(click_id), hot.encode(record))
    redis.hset(
        hot.path_hash(hot.hour_of(later), returning), hot.raw_id(returning), hot.raw_id(later)
    )
    await pixel(client, visitor, txid="first")
    await pixel(client, returning, txid="returning")
    await pixel(client, later, txid="forged")  # a cookie holding another visitor's click id
    rows = {row["txid"]: row for row in stored_conversions(redis_server)}
    assert (rows["first"]["click_id"], rows["first"]["attributed"]) == (visitor, 1)
    assert (rows["returning"]["click_id"], rows["returning"]["attributed"]) == (later, 1)
    # nothing in the hot window: left to the sink, which looks in ClickHouse by visitor
    assert (rows["forged"]["attributed"], rows["forged"]["deferred"]) == (0, 1)
    assert rows["forged"]["click_id"] != later
