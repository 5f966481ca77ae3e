"""Clicks and paths from the hot window in Redis and from ClickHouse give the same answers:
the same journeys credited with the hot window at 0 hours, 1 hour and the whole lookback
(and with an emptied Redis) give the same credits to the cent, and agree with the batch
SQL. Real redis-server and chDB."""

from __future__ import annotations

import random
import time
import uuid
from decimal import Decimal

import orjson

from attribution import MODELS
from attribution.sql import credits_sql
from tracker import hot
from tracker import redis_keys as K
from tracker.ids import ZERO_UUID, uuid7_time_ms
from tracker.reasons import UnattributedReason
from tracker.sink.attributor import Attributor
from tracker.sink.deferred import resolve, resolve_payload
from tracker.sink.enrich.steps import ExclusionMarks
from tracker.sink.history import ClickHistory
from tracker.testing import click_id_at as id_at
from tracker.timefmt import format_ms, utc_day

HOUR = 3_600_000
DAY = 24 * HOUR
LOOKBACK = 30 * DAY
HALF_LIFE = 7 * DAY
ALL_HOURS = 40 * 24  # more than any click's age here: Redis holds everything


def make_journeys(rng: random.Random, now: int, visitors: int = 150):
    """Clicks over the last 35 days (a few in this hour and the last), some flagged, and
    a conversion per visitor from just now to 5 days ago, naming a click or not."""
    clicks: list[dict] = []
    conversions: list[dict] = []
    for _ in range(visitors):
        visitor = str(uuid.UUID(int=rng.getrandbits(128)))
        ages = sorted(
            (rng.choice([rng.randint(0, 35 * DAY), rng.randint(0, 2 * HOUR)]) for _ in range(6)),
            reverse=True,
        )[: rng.randint(1, 6)]
        first = id_at(now - ages[0])
        if rng.random() < 0.5:  # a visitor made by a click has that click's id (hot.py)
            visitor = first
        mine = []
        for n, age in enumerate(ages):
            click = {
                "click_id": id_at(now - age) if n else first,
                "visitor_id": visitor,
                "link_slug": f"l{rng.randrange(9)}",
                "campaign_id": f"camp-{rng.randrange(7)}",
                "affiliate_id": f"aff-{rng.randrange(4)}",
                "advertiser_id": "shop",
                "sub1": rng.choice(["", "s1"]),
                "is_bot": int(rng.random() < 0.08),
                "fraud_flags": ["duplicate_click"] if rng.random() < 0.08 else [],
            }
            mine.append(click)
        clicks += mine
        at = now - rng.choice([0, rng.randint(0, HOUR), rng.randint(0, 5 * DAY)])
        named = rng.choice(mine)["click_id"] if rng.random() < 0.4 else ZERO_UUID
        conversions.append(
            {
                "event_time": format_ms(at),
                "conversion_id": id_at(at),
                "advertiser_id": "shop",
                "txid": f"t{len(conversions)}",
                "visitor_id": visitor,
                "click_id": named,
                "source": "postback" if named != ZERO_UUID else "pixel",
                "amount": str(Decimal(rng.randint(1, 10**6)) / 100),
                "currency": "EUR",
                "status": "approved",
                "previous_status": "",
                "attributed": 1,
                "unattributed_reason": "",
            }
        )
    return clicks, conversions


def store_clicks(ch, clicks: list[dict]) -> None:
    rows = [{**c, "event_time": format_ms(uuid7_time_ms(c["click_id"]))} for c in clicks]
    ch.insert_jsonl("clicks", b"\n".join(orjson.dumps(r) for r in rows), f"c-{uuid.uuid4()}")


def fill_redis(redis, clicks: list[dict], hours: int) -> None:
    """What the edges and the sink leave in Redis with this hot window: older hours'
    hashes expire at once (their expiry is in the past)."""
    redis.flushall()
    redis.set(K.HOT_SINCE, 0)  # a Redis that has run for ever
    hot.put(redis, clicks, hours)
    ExclusionMarks(redis, hours).prepare(clicks)


def online_credits(redis, ch, conversions: list[dict], hours: int) -> tuple[list, int]:
    history = ClickHistory(redis, ch, hours)
    attributor = Attributor(redis, list(MODELS), LOOKBACK, HALF_LIFE, history=history)
    payload = b"\n".join(orjson.dumps(c) for c in conversions)
    rows = [orjson.loads(r) for r in attributor.credit_rows(payload)]
    credits = sorted(
        (r["conversion_id"], r["model"], r["position"], r["click_id"], r["credited_amount"])
        for r in rows
    )
    return credits, history.clickhouse_reads


def test_same_credits_from_redis_clickhouse_or_both(chdb_database, redis_server):
    ch, redis = chdb_database, redis_server.client()
    now = int(time.time() * 1000)
    clicks, conversions = make_journeys(random.Random(19), now)
    store_clicks(ch, clicks)

    answers = {}
    for hours in (0, 1, 48, ALL_HOURS):
        fill_redis(redis, clicks, hours)
        answers[hours] = online_credits(redis, ch, conversions, hours)
    redis.flushall()  # a restarted Redis with empty memory: everything from ClickHouse
    answers["empty"] = online_credits(redis, ch, conversions, 48)

    credits = answers[ALL_HOURS][0]
    assert len({c[0] for c in credits}) > 100  # most conversions were credited
    for hours, (got, _) in answers.items():
        assert got == credits, hours  # to the cent, click by click, every model
    assert answers[ALL_HOURS][1] == 0  # Redis alone answered
    assert answers[0][1] == answers["empty"][1] == 1  # one ClickHouse read per batch

    # the batch SQL over ClickHouse agrees with the online credits (weights)
    ch.insert_jsonl("conversions", b"\n".join(orjson.dumps(c) for c in conversions), "conv-hot")
    history = ClickHistory(redis, ch, 0)
    attributor = Attributor(redis, list(MODELS), LOOKBACK, HALF_LIFE, history=history)
    online = {
        (r["conversion_id"], r["model"], r["click_id"]): r["weight"]
        for r in map(
            orjson.loads,
            attributor.credit_rows(b"\n".join(orjson.dumps(c) for c in conversions)),
        )
    }
    batch = {}
    for model in MODELS:
        query = credits_sql(
            ch.database,
            model,
            lookback_ms=LOOKBACK,
            half_life_ms=HALF_LIFE,
            statuses=("approved",),
        )
        _, rows = ch.query(
            f"SELECT toString(conversion_id), toString(click_id), weight FROM ({query})"
        )
        batch.update({(conv, model, click): w for conv, click, w in rows})
    assert set(batch) == set(online)
    assert all(abs(batch[k] - online[k]) < 1e-9 for k in online)


def test_a_visitor_made_by_a_click_has_it_in_the_hot_path_and_no_one_else_does(
    chdb_database, redis_server
):
    """A new visitor's id is their first click's (tracker/hot.py): that click is in no path
    hash, yet it is in their path; another's visitor id naming it finds nothing."""
    redis = redis_server.client()
    redis.flushall()
    redis.set(K.HOT_SINCE, 0)
    now = int(time.time() * 1000)
    first = id_at(now - 2 * HOUR)
    later = id_at(now - HOUR)
    other = id_at(now - 3 * HOUR)  # a returning visitor's click
    returning = str(uuid.uuid4())
    base = {"campaign_id": "c", "advertiser_id": "shop"}
    hot.put(
        redis,
        [
            {**base, "click_id": first, "visitor_id": first},
            {**base, "click_id": later, "visitor_id": first},
            {**base, "click_id": other, "visitor_id": returning},
        ],
    )
    assert (
        hot.paths_from([redis.hget(hot.path_hash(hot.hour_of(first), first), hot.raw_id(first))])
        == []
    )
    history = ClickHistory(redis, chdb_database, 48)
    paths = history.paths(
        [(first, now - DAY, now), (other, now - DAY, now), (returning, now - DAY, now)]
    )
    assert [c.record["click_id"] for c in paths[(first, now - DAY, now)]] == [first, later]
    assert paths[(other, now - DAY, now)] == []  # a click id, but not of visitor `other`
    assert [c.record["click_id"] for c in paths[(returning, now - DAY, now)]] == [other]
    assert history.clickhouse_reads == 0


def test_flagged_clicks_stay_out_of_clickhouse_sourced_paths(chdb_database, redis_server):
    ch, redis = chdb_database, redis_server.client()
    now = int(time.time() * 1000)
    visitor = str(uuid.uuid4())
    base = {"visitor_id": visitor, "campaign_id": "c", "advertiser_id": "shop"}
    good = {**base, "click_id": id_at(now - 10 * DAY)}
    bot = {**base, "click_id": id_at(now - 9 * DAY), "is_bot": 1}
    fraud = {**base, "click_id": id_at(now - 8 * DAY), "fraud_flags": ["ip_flood"]}
    store_clicks(ch, [good, bot, fraud])
    history = ClickHistory(redis, ch, 48)
    [path] = history.paths([(visitor, now - LOOKBACK, now)]).values()
    assert [(c.record["click_id"], c.excluded) for c in path] == [
        (good["click_id"], False),
        (bot["click_id"], True),
        (fraud["click_id"], True),
    ]
    attributor = Attributor(redis, ["linear"], LOOKBACK, HALF_LIFE, history=history)
    assert [t.click_id for t in attributor.path(visitor, now)] == [good["click_id"]]


def test_deferred_conversions_are_resolved_from_clickhouse(chdb_database, redis_server):
    ch, redis = chdb_database, redis_server.client()
    now = int(time.time() * 1000)
    visitor = str(uuid.uuid4())
    old = {
        "click_id": id_at(now - 5 * DAY),
        "visitor_id": visitor,
        "link_slug": "old",
        "campaign_id": "camp",
        "affiliate_id": "aff",
        "advertiser_id": "shop",
    }
    other = {**old, "click_id": id_at(now - 4 * DAY), "advertiser_id": "elsewhere"}
    store_clicks(ch, [old, other])
    redis.set(K.HOT_SINCE, 0)

    def row(click_id: str, source: str = "postback", visitor_id: str = ZERO_UUID) -> dict:
        return {
            "event_time": format_ms(now),
            "advertiser_id": "shop",
            "click_id": click_id,
            "visitor_id": visitor_id,
            "source": source,
            "attributed": 0,
            "unattributed_reason": "",
            "deferred": 1,
        }

    rows = [
        row(old["click_id"]),
        row(other["click_id"]),
        row(id_at(now - 6 * DAY)),  # nobody's click
        row(id_at(now - 31 * DAY)),  # past the lookback
        row(ZERO_UUID, "pixel", visitor),  # the visitor's last click
        row(ZERO_UUID, "pixel", str(uuid.uuid4())),  # a visitor without clicks
    ]
    assert resolve(ClickHistory(redis, ch, 48), rows, LOOKBACK) == 6
    assert all("deferred" not in r for r in rows)
    found = rows[0]
    assert (found["attributed"], found["click_id"], found["visitor_id"]) == (
        1,
        old["click_id"],
        visitor,
    )
    assert (found["campaign_id"], found["affiliate_id"], found["link_slug"]) == (
        "camp",
        "aff",
        "old",
    )
    assert [r["unattributed_reason"] for r in rows[1:4]] == [
        UnattributedReason.CLICK_OF_OTHER_ADVERTISER,
        UnattributedReason.UNKNOWN_OR_EXPIRED_CLICK,
        UnattributedReason.UNKNOWN_OR_EXPIRED_CLICK,
    ]
    assert rows[4]["click_id"] == other["click_id"]  # the last click, whoever's advertiser
    assert rows[5]["unattributed_reason"] == UnattributedReason.NO_CLICK_IN_LOOKBACK


def test_deferred_conversions_count_towards_their_campaigns_cap_once(chdb_database, redis_server):
    """The edge could not count them (it did not know the campaign): the sink does, for a
    new transaction only, and not again when its batch is handled a second time."""
    ch, redis = chdb_database, redis_server.client()
    now = int(time.time() * 1000)
    old = {
        "click_id": id_at(now - 5 * DAY),
        "visitor_id": str(uuid.uuid4()),
        "link_slug": "old",
        "campaign_id": "capped",
        "affiliate_id": "aff",
        "advertiser_id": "shop",
    }
    store_clicks(ch, [old])
    redis.set(K.HOT_SINCE, 0)

    def row(txid: str, previous_status: str = "", click_id: str = old["click_id"]) -> dict:
        return {
            "event_time": format_ms(now),
            "conversion_id": f"conv-{txid}",
            "txid": txid,
            "previous_status": previous_status,
            "advertiser_id": "shop",
            "click_id": click_id,
            "visitor_id": ZERO_UUID,
            "source": "postback",
            "attributed": 0,
            "unattributed_reason": "",
            "deferred": 1,
        }

    parts = [
        b"\n".join(
            orjson.dumps(r)
            for r in (
                row("a"),
                row("b"),
                row("a", previous_status="pending"),  # a status change: counted before
                row("c", click_id=id_at(now - 6 * DAY)),  # unattributed: no campaign
            )
        )
    ]
    history = ClickHistory(redis, ch, 48)
    for _ in range(2):  # the same batch again, as after a sink restart
        resolved = resolve_payload(history, parts, LOOKBACK, redis)
        assert [orjson.loads(line)["campaign_id"] for line in resolved[0].split(b"\n")] == [
            "capped",
            "capped",
            "capped",
            "",
        ]
    day = utc_day(now)
    assert redis.get(K.conversion_cap_daily_key("capped", day)) == b"2"
    assert redis.get(K.conversion_cap_total_key("capped")) == b"2"
    assert 0 < redis.ttl(K.conversion_cap_daily_key("capped", day)) <= K.CAP_DAY_TTL
