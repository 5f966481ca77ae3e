"""The SQL models agree with the Python ones, on the real schema in an in-process chDB."""

from __future__ import annotations

import random
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal

import orjson
import pytest

from attribution import MODELS, Touch, attribute, build_path
from attribution.sql import WEIGHTS, ZERO_UUID, credits_sql, report_sql
from tracker.timefmt import format_ms

DAY = 86_400_000
LOOKBACK = 30 * DAY
HALF_LIFE = 7 * DAY
# Recent times: the tables drop rows older than the retention period (TTL) on insert.
BASE = (time.time_ns() // 1_000_000 // DAY - 100) * DAY


@dataclass
class Conversion:
    conversion_id: str
    ts: int
    visitor_id: str  # ZERO_UUID when the conversion carries none
    click_id: str  # the named click, ZERO_UUID when none
    amount: Decimal
    currency: str


def uid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128)))


def jsonl(rows: list[dict]) -> bytes:
    return b"\n".join(orjson.dumps(row) for row in rows)


def click_row(visitor_id: str, touch: Touch) -> dict:
    return {
        "event_time": format_ms(touch.ts),
        "click_id": touch.click_id,
        "visitor_id": visitor_id,
        "campaign_id": touch.campaign_id,
        "affiliate_id": touch.affiliate_id,
    }


def conversion_row(
    c: Conversion, ts: int | None = None, amount: Decimal | None = None, status: str = "pending"
) -> dict:
    return {
        "event_time": format_ms(c.ts if ts is None else ts),
        "conversion_id": c.conversion_id,
        "visitor_id": c.visitor_id,
        "click_id": c.click_id,
        "amount": str(c.amount if amount is None else amount),
        "currency": c.currency,
        "status": status,
        "attributed": 1,
        # a postback names its click; without one the conversion came by pixel
        "source": "pixel" if c.click_id == ZERO_UUID else "postback",
    }


def make_journeys(rng: random.Random, count: int):
    """Visitors with 1..8 clicks over ~60 days and one (sometimes two) conversions each:
    ties in time, clicks before the lookback and after the conversion, named clicks in the
    middle, outside the window or unknown, conversions without a visitor id."""
    clicks: dict[str, list[Touch]] = {}
    conversions: list[Conversion] = []
    for _ in range(count):
        visitor = uid(rng)
        touches: list[Touch] = []
        for _ in range(rng.randint(1, 8)):
            if touches and rng.random() < 0.15:
                ts = rng.choice(touches).ts  # a tie in time
            else:
                ts = BASE + rng.randint(0, 60 * DAY)
            touches.append(
                Touch(uid(rng), ts, f"camp-{rng.randrange(12)}", f"aff-{rng.randrange(5)}")
            )
        clicks[visitor] = touches
        for _ in range(1 if rng.random() < 0.9 else 2):
            conversions.append(make_conversion(rng, visitor, touches))
    return clicks, conversions


def make_conversion(rng: random.Random, visitor: str, touches: list[Touch]) -> Conversion:
    anchor = rng.choice(touches).ts
    ts = rng.choice(
        [
            BASE + rng.randint(20 * DAY, 62 * DAY),
            anchor,  # a click exactly at the conversion time
            anchor + LOOKBACK,  # a click exactly on the lookback bound
            anchor + rng.randint(0, 3 * DAY),
        ]
    )
    in_window = build_path(touches, ts, lookback_ms=LOOKBACK)
    roll = rng.random()
    visitor_id, named = visitor, ZERO_UUID
    if roll < 0.35 and in_window:
        named = rng.choice(in_window).click_id  # often in the middle of the path
    elif roll < 0.45:
        named = rng.choice(touches).click_id  # maybe outside the window or after
    elif roll < 0.55:
        visitor_id, named = ZERO_UUID, rng.choice(touches).click_id  # found via the click
    elif roll < 0.58:
        named = uid(rng)  # a click nobody knows
    elif roll < 0.62:
        visitor_id = ZERO_UUID  # nothing to follow: no credits
    currency, scale = rng.choice([("EUR", 100), ("USD", 100), ("JPY", 1), ("KWD", 1000)])
    amount = Decimal(rng.randint(0, 10**7)) / scale
    return Conversion(uid(rng), ts, visitor_id, named, amount, currency)


def load(
    ch, clicks: dict[str, list[Touch]], conversions: list[Conversion], rng: random.Random
) -> None:
    click_rows = [click_row(v, t) for v, touches in clicks.items() for t in touches]
    rng.shuffle(click_rows)
    conversion_rows = [conversion_row(c) for c in conversions]
    # Status changes come later, with other amounts: only the first row counts.
    for c in conversions:
        if rng.random() < 0.2:
            conversion_rows.append(
                conversion_row(c, c.ts + rng.randint(1, 20 * DAY), c.amount + 1, "approved")
            )
    rng.shuffle(conversion_rows)
    for name, rows in (("clicks", click_rows), ("conversions", conversion_rows)):
        for i in range(0, len(rows), 20_000):
            ch.insert_jsonl(name, jsonl(rows[i : i + 20_000]), f"{name}-{uuid.uuid4()}")


def expected_credits(clicks, conversions, model: str) -> dict[str, list[tuple]]:
    """Python's answer: conversion id -> [(click id, position, path length, weight)]."""
    visitor_of = {t.click_id: v for v, touches in clicks.items() for t in touches}
    out: dict[str, list[tuple]] = {}
    for c in conversions:
        visitor = c.visitor_id
        if visitor == ZERO_UUID:
            visitor = visitor_of.get(c.click_id, ZERO_UUID)
        touches = clicks.get(visitor, [])
        named = None if c.click_id == ZERO_UUID else c.click_id
        credits = attribute(
            touches, c.ts, model, lookback=LOOKBACK, half_life=HALF_LIFE, named_click_id=named
        )
        if credits:
            length = len(build_path(touches, c.ts, lookback_ms=LOOKBACK, named_click_id=named))
            out[c.conversion_id] = [
                (cr.touch.click_id, cr.position, length, cr.weight) for cr in credits
            ]
    return out


def sql_credits(ch, model: str, **kwargs) -> tuple[dict[str, list[tuple]], dict[str, tuple]]:
    """SQL's answer in the same shape, and conversion id -> (time ms, amount, currency)."""
    kwargs.setdefault("statuses", ("approved", "pending"))
    query = credits_sql(ch.database, model, lookback_ms=LOOKBACK, half_life_ms=HALF_LIFE, **kwargs)
    _, rows = ch.query(
        "SELECT toString(conversion_id), toString(click_id), position, path_length, weight, "
        "toUnixTimestamp64Milli(conversion_time), toString(amount), currency "
        f"FROM ({query})"
    )
    credits: dict[str, list[tuple]] = defaultdict(list)
    conversions = {}
    for conversion_id, click_id, position, length, weight, ts, amount, currency in rows:
        credits[conversion_id].append((click_id, position, length, weight))
        conversions[conversion_id] = (ts, Decimal(amount), currency)
    return dict(credits), conversions


def assert_same(expected: dict[str, list[tuple]], got: dict[str, list[tuple]], model: str):
    assert set(got) == set(expected), model
    for conversion_id, want in expected.items():
        have = sorted(got[conversion_id], key=lambda row: row[1])
        assert [row[:3] for row in have] == [row[:3] for row in want], (model, conversion_id)
        for (*_, w_sql), (*_, w_py) in zip(have, want, strict=True):
            assert abs(w_sql - w_py) <= 1e-9, (model, conversion_id, have, want)
        assert abs(sum(row[3] for row in have) - 1.0) <= 1e-9


def test_sql_registry_matches_the_python_models():
    assert list(WEIGHTS) == list(MODELS)


def test_sql_agrees_with_python_on_ten_thousand_journeys(chdb_database):
    ch = chdb_database
    rng = random.Random(20240601)
    clicks, conversions = make_journeys(rng, 10_000)
    load(ch, clicks, conversions, rng)
    by_id = {c.conversion_id: c for c in conversions}

    for model in MODELS:
        expected = expected_credits(clicks, conversions, model)
        # The data set exercises what it should, for every model: many credited, many not.
        assert 5_000 < len(expected) < len(conversions) - 1_000, model
        got, meta = sql_credits(ch, model)
        assert_same(expected, got, model)
        for conversion_id, (ts, amount, currency) in meta.items():
            c = by_id[conversion_id]
            assert (ts, amount, currency) == (c.ts, c.amount, c.currency)  # the first row

    # A date range selects conversions by their first row's time.
    date_from, date_to = BASE + 35 * DAY, BASE + 45 * DAY
    in_range = [c for c in conversions if date_from <= c.ts < date_to]
    got, _ = sql_credits(
        ch, "time_decay", date_from=format_ms(date_from)[:19], date_to=format_ms(date_to)[:19]
    )
    assert_same(expected_credits(clicks, in_range, "time_decay"), got, "time_decay")
    assert len(got) > 500


def test_report_side_by_side_on_a_small_journey_set(chdb_database):
    ch = chdb_database
    t = BASE + 50 * DAY
    ids = iter(f"00000000-0000-0000-0000-{i:012x}" for i in range(1, 100))
    a, b, c, d = (next(ids) for _ in range(4))
    a1, a2, a3, b1, b2, c1, d1 = (next(ids) for _ in range(7))
    click_rows = [
        click_row(a, Touch(a1, t - 10 * DAY, "camp-a", "aff-1")),
        click_row(a, Touch(a2, t - 5 * DAY, "camp-b", "aff-2")),
        click_row(a, Touch(a3, t - 1 * DAY, "camp-a", "aff-1")),
        click_row(b, Touch(b1, t - 3 * DAY, "camp-b", "aff-2")),
        click_row(b, Touch(b2, t - 2 * DAY, "camp-c", "aff-1")),  # after b's named click
        click_row(c, Touch(c1, t - 40 * DAY, "camp-c", "aff-1")),  # outside the lookback
        click_row(d, Touch(d1, t - 1 * DAY, "camp-c", "aff-3")),
    ]
    x = Conversion(next(ids), t, a, ZERO_UUID, Decimal("100.00"), "EUR")
    y = Conversion(next(ids), t, b, b1, Decimal("50"), "EUR")
    z = Conversion(next(ids), t, c, ZERO_UUID, Decimal("1000"), "JPY")
    w = Conversion(next(ids), t, ZERO_UUID, d1, Decimal("7"), "JPY")
    conversion_rows = [conversion_row(v) for v in (x, y, z, w)]
    conversion_rows.append(conversion_row(y, t + DAY, Decimal("0"), "approved"))
    ch.insert_jsonl("clicks", jsonl(click_rows), "report-clicks")
    ch.insert_jsonl("conversions", jsonl(conversion_rows), "report-conversions")

    models = ["first_click", "linear", "position_based", "time_decay"]
    query = report_sql(
        ch.database,
        "campaign",
        models,
        lookback_ms=LOOKBACK,
        half_life_ms=HALF_LIFE,
        statuses=("approved", "pending"),
    )
    columns, rows = ch.query(query)
    assert columns == ["campaign_id", "currency"] + [
        f"{m}_{what}" for m in models for what in ("conversions", "revenue")
    ]
    report = {(r[0], r[1]): r[2:] for r in rows}
    assert set(report) == {("camp-a", "EUR"), ("camp-b", "EUR"), ("camp-c", "JPY")}

    def pair(key, model):
        i = models.index(model) * 2
        return report[key][i], report[key][i + 1]

    a_eur, b_eur, c_jpy = ("camp-a", "EUR"), ("camp-b", "EUR"), ("camp-c", "JPY")
    assert pair(a_eur, "first_click") == (1.0, Decimal("100"))
    assert pair(b_eur, "first_click") == (1.0, Decimal("50"))
    assert pair(a_eur, "linear") == (pytest.approx(2 / 3), Decimal("66.667"))
    assert pair(b_eur, "linear") == (pytest.approx(4 / 3), Decimal("83.333"))
    assert pair(a_eur, "position_based") == (pytest.approx(0.8), Decimal("80"))
    assert pair(b_eur, "position_based") == (pytest.approx(1.2), Decimal("70"))
    for model in models:
        assert pair(c_jpy, model) == (pytest.approx(1.0), Decimal("7"))
    decay: dict[str, float] = {}
    touches = [
        Touch(a1, t - 10 * DAY, "camp-a"),
        Touch(a2, t - 5 * DAY, "camp-b"),
        Touch(a3, t - DAY, "camp-a"),
    ]
    for cr in attribute(touches, t, "time_decay"):
        decay[cr.touch.campaign_id] = decay.get(cr.touch.campaign_id, 0.0) + cr.weight
    assert pair(a_eur, "time_decay")[0] == pytest.approx(decay["camp-a"], abs=1e-12)
    assert pair(b_eur, "time_decay")[0] == pytest.approx(decay["camp-b"] + 1, abs=1e-12)
    # Every model hands out each credited conversion exactly once.
    for model in models:
        eur = [pair(key, model) for key in (a_eur, b_eur)]
        assert sum(n for n, _ in eur) == pytest.approx(2.0)
        assert sum(m for _, m in eur) == Decimal("150")

    _, rows = ch.query(
        report_sql(
            ch.database,
            "affiliate",
            ["last_click"],
            lookback_ms=LOOKBACK,
            half_life_ms=HALF_LIFE,
            statuses=("pending", "approved"),
        )
    )
    assert rows == [
        ("aff-1", "EUR", 1.0, Decimal("100")),
        ("aff-2", "EUR", 1.0, Decimal("50")),
        ("aff-3", "JPY", 1.0, Decimal("7")),
    ]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"db": "t0; DROP TABLE x"},
        {"db": "t0.clicks"},
        {"model": "u_shaped"},
        {"date_from": "2024-01-01"},
        {"date_from": "2024-01-01 00:00:00' OR 1=1 --"},
        {"date_to": "2024-02-30 00:00:00"},
        {"date_to": 20240101},
        {"lookback_ms": -1},
        {"half_life_ms": 0},
        {"lookback_ms": 1.5},
    ],
)
def test_credits_sql_refuses_what_it_cannot_bind_safely(kwargs):
    args = {
        "db": "tracker",
        "model": "linear",
        "lookback_ms": LOOKBACK,
        "half_life_ms": HALF_LIFE,
        **kwargs,
    }
    with pytest.raises(ValueError):
        credits_sql(args.pop("db"), args.pop("model"), **args)


def test_report_sql_refuses_bad_groupings_and_models():
    for by, models in (("country", ["linear"]), ("campaign", []), ("campaign", ["nope"])):
        with pytest.raises(ValueError):
            report_sql("tracker", by, models, lookback_ms=LOOKBACK, half_life_ms=HALF_LIFE)


def test_flagged_clicks_and_conversions_are_left_out(chdb_database):
    ch = chdb_database
    now = int(time.time() * 1000)
    visitor = "01900000-0000-7000-8000-00000000aaaa"
    clicks = [
        {
            "event_time": format_ms(now - 3000),
            "click_id": "01900000-0000-7000-8000-000000000001",
            "visitor_id": visitor,
            "campaign_id": "ok",
        },
        {
            "event_time": format_ms(now - 2000),
            "click_id": "01900000-0000-7000-8000-000000000002",
            "visitor_id": visitor,
            "campaign_id": "bot",
            "is_bot": 1,
        },
        {
            "event_time": format_ms(now - 1000),
            "click_id": "01900000-0000-7000-8000-000000000003",
            "visitor_id": visitor,
            "campaign_id": "fraud",
            "fraud_flags": ["ip_flood"],
        },
    ]
    ch.insert_jsonl("clicks", jsonl(clicks), "flag-clicks")
    conversions = [
        {
            "event_time": format_ms(now),
            "conversion_id": "01900000-0000-7000-8000-0000000000c1",
            "visitor_id": visitor,
            "amount": "10",
            "currency": "USD",
            "status": "approved",
            "attributed": 1,
            "source": "pixel",
        },
        {
            "event_time": format_ms(now),
            "conversion_id": "01900000-0000-7000-8000-0000000000c2",
            "visitor_id": visitor,
            "amount": "10",
            "currency": "USD",
            "status": "approved",
            "attributed": 1,
            "source": "pixel",
            "fraud_flags": ["fast_conversion"],
        },
    ]
    ch.insert_jsonl("conversions", jsonl(conversions), "flag-conversions")
    sql = credits_sql(ch.database, "linear", lookback_ms=LOOKBACK, half_life_ms=HALF_LIFE)
    _, rows = ch.query(sql)
    assert [(str(r[0])[-2:], r[2], r[5]) for r in rows] == [("c1", "ok", 1)]
    with_flagged = credits_sql(
        ch.database, "linear", lookback_ms=LOOKBACK, half_life_ms=HALF_LIFE, credit_flagged=True
    )
    _, rows = ch.query(with_flagged)
    assert sorted(str(r[0])[-2:] for r in rows) == ["c1", "c2"]


def test_reports_follow_each_conversions_latest_status(chdb_database):
    """Approved by default, pending on request; rejected and reversed never, even when
    the reversal came after the reported period."""
    ch = chdb_database
    t = BASE + 50 * DAY
    ids = iter(f"00000000-0000-0000-0001-{i:012x}" for i in range(1, 100))
    visitors = {name: next(ids) for name in "abcde"}
    clicks = [
        click_row(v, Touch(next(ids), t - DAY, f"camp-{name}", "aff"))
        for name, v in visitors.items()
    ]
    conv = {
        name: Conversion(next(ids), t, v, ZERO_UUID, Decimal("10"), "EUR")
        for name, v in visitors.items()
    }
    rows = [
        conversion_row(conv["a"], status="approved"),
        conversion_row(conv["b"]),  # still pending
        conversion_row(conv["c"]),
        conversion_row(conv["c"], t + DAY, status="rejected"),
        conversion_row(conv["d"], status="approved"),
        conversion_row(conv["d"], t + 40 * DAY, status="reversed"),  # after the period
        conversion_row(conv["e"]),
        conversion_row(conv["e"], t + DAY, status="approved"),
    ]
    ch.insert_jsonl("clicks", jsonl(clicks), "latest-clicks")
    ch.insert_jsonl("conversions", jsonl(rows), "latest-conversions")

    def campaigns(**kwargs) -> list[str]:
        query = report_sql(
            ch.database,
            "campaign",
            ["last_click"],
            lookback_ms=LOOKBACK,
            half_life_ms=HALF_LIFE,
            date_to=format_ms(t + 2 * DAY)[:19],
            **kwargs,
        )
        return [row[0] for row in ch.query(query)[1]]

    assert campaigns() == ["camp-a", "camp-e"]
    assert campaigns(statuses=("approved", "pending")) == ["camp-a", "camp-b", "camp-e"]
    credited = ch.query(
        credits_sql(ch.database, "linear", lookback_ms=LOOKBACK, half_life_ms=HALF_LIFE)
    )[1]
    assert sorted(row[2] for row in credited) == ["camp-a", "camp-e"]
    with pytest.raises(ValueError):
        campaigns(statuses=("rejected",))
