"""The report engine over real chDB: rollups fed by the views equal the raw tables, each
batch counted once, statuses by their latest value, time zones, compare, refusals."""

from __future__ import annotations

import dataclasses

import pytest

from tests.reports.conftest import NOW, click, conversion, insert, uid
from tracker import config, migrations
from tracker.reports import query as Q

DB_FIELDS = {"default_currency": "USD", "now": NOW}


def run(query, report: Q.Report, db: str) -> dict:
    p = Q.plan(report, db)
    return Q.assemble(p, [query(sql) for sql in p.queries])


def parse(params: dict, filters: dict | None = None, **kw) -> Q.Report:
    return Q.parse(params, filters or {}, **DB_FIELDS, **kw)


def seed(ch) -> None:
    v = uid()
    insert(
        ch,
        "clicks",
        [
            click("2030-01-10 10:00:00.000", visitor=v),
            click("2030-01-10 11:00:00.000", visitor=v),  # same visitor: one unique click
            click("2030-01-11 02:00:00.000", campaign="c2", affiliate="a2", sub1="x"),
            click("2030-01-11 09:00:00.000", is_bot=1, fraud_flags=["ip_rate"]),
        ],
    )
    insert(
        ch,
        "impressions",
        [
            {
                "event_time": "2030-01-10 09:00:00.000",
                "impression_id": uid(),
                "campaign_id": "c1",
                "affiliate_id": "a1",
            }
        ]
        * 1,
    )
    conv = uid()
    insert(
        ch,
        "conversions",
        [
            conversion("2030-01-10 12:00:00.000", amount="25.500"),
            conversion("2030-01-10 13:00:00.000", status="pending", amount="5.000", conv_id=conv),
            conversion("2030-01-11 03:00:00.000", campaign="c2", affiliate="a2", amount="7.250"),
            conversion("2030-01-11 04:00:00.000", currency="EUR", amount="99.000"),
        ],
    )
    # the pending one is approved, then reversed
    insert(
        ch,
        "conversions",
        [
            conversion(
                "2030-01-11 05:00:00.000",
                status="approved",
                previous="pending",
                amount="5.000",
                conv_id=conv,
            )
        ],
    )
    insert(
        ch,
        "conversions",
        [
            conversion(
                "2030-01-11 06:00:00.000",
                status="reversed",
                previous="approved",
                amount="5.000",
                conv_id=conv,
            )
        ],
    )


METRICS = (
    "impressions,clicks,unique_clicks,ctr,conversions,pending_conversions,cvr,amount,"
    "aov,reversal_rate,bot_rate,fraud_rate,reversed_conversions"
)


def test_rollups_answer_like_the_raw_tables(chdb_database, query):
    seed(chdb_database)
    db = chdb_database.database
    report = parse(
        {"metrics": METRICS, "group_by": "day,campaign", "from": "2030-01-10", "to": "2030-01-12"}
    )
    rolled = run(query, report, db)
    raw = run(query, dataclasses.replace(report, raw_only=True), db)
    assert rolled["sources"] == {
        "impressions": "impressions_hourly",
        "clicks": "clicks_hourly_campaign",
        "conversions": "conversions_hourly_campaign",
    }
    assert raw["sources"] == {"impressions": "raw", "clicks": "raw", "conversions": "raw"}
    assert rolled["rows"] == raw["rows"] and rolled["totals"] == raw["totals"]
    totals = rolled["totals"]
    assert totals["clicks"] == 4 and totals["unique_clicks"] == 3
    assert totals["impressions"] == 1 and totals["ctr"] == 4.0
    # approved: 25.5 and 7.25 (USD); the EUR one is counted but its amount is not USD
    assert totals["conversions"] == 3 and totals["reversed_conversions"] == 1
    assert totals["pending_conversions"] == 0
    assert totals["amount"] == "32.750" and totals["aov"] == "10.917"
    assert totals["reversal_rate"] == 0.25 and totals["cvr"] == 0.75
    assert totals["bot_rate"] == 0.25 and totals["fraud_rate"] == 0.25
    day1 = [r for r in rolled["rows"] if r["day"] == "2030-01-10"]
    assert day1 == [
        {
            "day": "2030-01-10",
            "campaign": "c1",
            **{k: day1[0][k] for k in day1[0] if k not in ("day", "campaign")},
        }
    ]
    assert day1[0]["clicks"] == 2 and day1[0]["unique_clicks"] == 1
    assert day1[0]["pending_conversions"] == 1  # pending on the 10th, approved on the 11th
    eur = run(query, dataclasses.replace(report, currency="EUR", group_by=[]), db)
    assert eur["totals"]["amount"] == "99.000"


@pytest.mark.parametrize(
    ("group_by", "tz", "sources"),
    [
        ("affiliate,country", "UTC", ("clicks_daily_geo", "conversions_daily_geo")),
        ("week,advertiser,country", "UTC", ("clicks_daily_geo", "conversions_daily_geo")),
        ("day,affiliate", "Europe/Berlin", ("clicks_hourly", "conversions_hourly")),
        ("link,device", "UTC", ("clicks_hourly", "conversions_hourly")),
        ("campaign", "Europe/Berlin", ("clicks_hourly_campaign", "conversions_hourly_campaign")),
        ("campaign", "Asia/Kolkata", ("raw", "raw")),  # its midnights are not whole hours
        ("hour,campaign", "Asia/Kolkata", ("raw", "raw")),
    ],
)
def test_the_smallest_rollup_that_answers(chdb_database, query, group_by, tz, sources):
    seed(chdb_database)
    insert(chdb_database, "clicks", [click("2030-01-11 23:30:00.000", country="FR")])
    report = parse(
        {
            "metrics": "clicks,unique_clicks,conversions,amount",
            "group_by": group_by,
            "from": "2030-01-10",
            "to": "2030-01-12",
            "tz": tz,
        }
    )
    out = run(query, report, chdb_database.database)
    assert (out["sources"]["clicks"], out["sources"]["conversions"]) == sources
    raw = run(query, dataclasses.replace(report, raw_only=True), chdb_database.database)
    assert out["rows"] == raw["rows"] and out["totals"] == raw["totals"]
    assert out["totals"]["clicks"] == (5 if tz == "UTC" else raw["totals"]["clicks"])


def test_a_batch_inserted_again_is_counted_once(chdb_database, query):
    rows = [click("2030-01-10 10:00:00.000"), click("2030-01-10 10:30:00.000")]
    insert(chdb_database, "clicks", rows, token="batch-1")
    insert(chdb_database, "clicks", rows, token="batch-1")  # the sink's retry after a crash
    insert(chdb_database, "conversions", [conversion("2030-01-10 11:00:00.000")], token="b2")
    insert(chdb_database, "conversions", [conversion("2030-01-10 11:00:00.000")], token="b2")
    db = chdb_database.database
    _, [[clicks, conversions]] = query(
        f"SELECT (SELECT sum(clicks) FROM {db}.clicks_hourly), "
        f"(SELECT sum(conversions) FROM {db}.conversions_hourly)"
    )
    assert (int(clicks), int(conversions)) == (2, 1)


def test_rows_stored_before_the_rollups_are_copied_in_once(chdb_engine, tmp_path, query):
    early = tmp_path / "early"
    early.mkdir()
    for _, _, path in migrations.migration_files():
        if path.name < "0008":
            (early / path.name).write_text(path.read_text())
    env = {"TRACKER_DATA_DIR": str(tmp_path), "TRACKER_CLICKHOUSE_DATABASE": "backfill"}
    settings = config.load(env={**env, "TRACKER_CLICKHOUSE_MIGRATIONS_DIR": str(early)})
    chdb_engine.database = "backfill"
    migrations.apply(chdb_engine, settings)
    insert(chdb_engine, "clicks", [click("2030-01-10 10:00:00.000")] * 3)
    insert(chdb_engine, "conversions", [conversion("2030-01-10 11:00:00.000")])
    applied = migrations.apply(chdb_engine, config.load(env=env))
    assert {"0008_report_rollups", "0009_commission_rollup", "0015_report_rollups_coarse"} <= set(
        applied
    )
    insert(chdb_engine, "clicks", [click("2030-01-10 12:00:00.000")])  # through the view
    report = parse({"metrics": "clicks,conversions", "from": "2030-01-10", "to": "2030-01-11"})
    assert run(query, report, "backfill")["totals"] == {"clicks": 4, "conversions": 1}
    assert run(query, dataclasses.replace(report, raw_only=True), "backfill")["totals"] == {
        "clicks": 4,
        "conversions": 1,
    }


def test_days_in_the_callers_time_zone_one_point_each(chdb_database, query):
    insert(chdb_database, "clicks", [click("2030-01-11 03:00:00.000")])  # 22:00 on the 10th NY
    report = parse(
        {
            "metrics": "clicks",
            "group_by": "day",
            "from": "2030-01-08",
            "to": "2030-01-13",
            "tz": "America/New_York",
        }
    )
    out = run(query, report, chdb_database.database)
    assert out["sources"] == {"clicks": "clicks_hourly_campaign"}
    assert [(r["day"], r["clicks"]) for r in out["rows"]] == [
        ("2030-01-08", 0),
        ("2030-01-09", 0),
        ("2030-01-10", 1),
        ("2030-01-11", 0),
        ("2030-01-12", 0),
    ]
    assert out["from"] == "2030-01-08T00:00:00-05:00"
    # +5:30: hourly UTC rollups cannot cut its days, the raw table answers
    india = run(
        query,
        dataclasses.replace(report, tz="Asia/Kolkata", start=report.start, end=report.end),
        chdb_database.database,
    )
    assert india["sources"] == {"clicks": "raw"}
    assert sum(r["clicks"] for r in india["rows"]) == 1


def test_breakdowns_the_rollups_lack_read_the_raw_table(chdb_database, query):
    seed(chdb_database)
    report = parse(
        {
            "metrics": "clicks,conversions",
            "group_by": "sub1",
            "from": "2030-01-10",
            "to": "2030-01-12",
        }
    )
    out = run(query, report, chdb_database.database)
    assert out["sources"] == {"clicks": "raw", "conversions": "raw"}
    assert {r["sub1"]: r["clicks"] for r in out["rows"]} == {"": 3, "x": 1}


def test_clicks_by_fraud_flag(chdb_database, query):
    seed(chdb_database)
    insert(chdb_database, "clicks", [click("2030-01-10 10:00:00.000", fraud_flags=["a", "b"])])
    report = parse(
        {
            "metrics": "clicks",
            "group_by": "fraud_flag,affiliate",
            "from": "2030-01-10",
            "to": "2030-01-12",
        }
    )
    out = run(query, report, chdb_database.database)
    assert out["rows"] == [
        {"fraud_flag": "a", "affiliate": "a1", "clicks": 1},
        {"fraud_flag": "b", "affiliate": "a1", "clicks": 1},
        {"fraud_flag": "bot:", "affiliate": "a1", "clicks": 1},
        {"fraud_flag": "ip_rate", "affiliate": "a1", "clicks": 1},
    ]


def test_compare_with_the_previous_period(chdb_database, query):
    seed(chdb_database)
    report = parse(
        {"metrics": "clicks,amount", "from": "2030-01-11", "to": "2030-01-12", "compare": "1"}
    )
    out = run(query, report, chdb_database.database)
    assert out["totals"] == {"clicks": 2, "amount": "7.250"}
    assert out["previous"]["totals"] == {"clicks": 2, "amount": "25.500"}
    assert out["previous"]["from"] == "2030-01-10T00:00:00+00:00"
    assert out["change"] == {"clicks": 0.0, "amount": pytest.approx(-0.715686, abs=1e-6)}


def test_attribution_models_side_by_side(chdb_database, query):
    for model, weight in (("first_click", 1.0), ("linear", 0.5)):
        insert(
            chdb_database,
            "attribution_credits",
            [
                {
                    "event_time": "2030-01-10 10:00:00.000",
                    "conversion_id": uid(),
                    "model": model,
                    "click_id": uid(),
                    "campaign_id": "c1",
                    "affiliate_id": "a1",
                    "weight": weight,
                    "credited_amount": "10.000",
                    "currency": "USD",
                }
            ],
        )
    report = parse(
        {
            "metrics": "credited_conversions,credited_amount",
            "group_by": "model",
            "from": "2030-01-10",
            "to": "2030-01-11",
        }
    )
    out = run(query, report, chdb_database.database)
    assert out["rows"] == [
        {"model": "first_click", "credited_conversions": 1.0, "credited_amount": "10.000"},
        {"model": "linear", "credited_conversions": 0.5, "credited_amount": "10.000"},
    ]


@pytest.mark.parametrize(
    ("params", "filters", "scope", "reason"),
    [
        ({"metrics": "nope"}, {}, {}, "unknown metric"),
        ({"group_by": "day,hour"}, {}, {}, "one time bucket"),
        ({"group_by": "model"}, {}, {}, "cannot be grouped by model"),
        ({"metrics": "credited_conversions"}, {}, {}, "need group_by=model"),
        ({"metrics": "impressions"}, {"country": "DE"}, {}, "cannot be filtered by country"),
        ({"metrics": "impressions"}, {}, {"advertiser": ("adv1",)}, "filtered by advertiser"),
        ({"tz": "Mars/Base"}, {}, {}, "unknown time zone"),
        ({"from": "2030-01-10", "to": "2030-01-09"}, {}, {}, "after from"),
        ({"from": "yesterday"}, {}, {}, "must be a date"),
        ({"from": "2020-01-01", "to": "2030-01-01"}, {}, {}, "at most"),
        ({"currency": "usd"}, {}, {}, "ISO 4217"),
        ({"sort": "-revenue"}, {}, {}, "sort must name"),
        ({}, {"day": "x"}, {}, "unknown filter"),
        ({}, {"fraud_flag": "x"}, {}, "not filtered on"),
        ({"metrics": "conversions", "group_by": "fraud_flag"}, {}, {}, "cannot be grouped"),
    ],
)
def test_refusals(params, filters, scope, reason):
    with pytest.raises(Q.ReportError, match=reason):
        parse(params, filters, scope=scope)


def test_filter_values_are_quoted(chdb_database, query):
    insert(chdb_database, "clicks", [click("2030-01-10 10:00:00.000", campaign="it's")])
    report = parse(
        {"metrics": "clicks", "from": "2030-01-10", "to": "2030-01-11"},
        {"campaign": "it's,x\\' OR 1=1 --"},
    )
    assert run(query, report, chdb_database.database)["totals"] == {"clicks": 1}


def test_buckets_cover_the_period():
    def labels(group, frm, to, tz="UTC"):
        return Q.buckets(parse({"group_by": group, "from": frm, "to": to, "tz": tz}))

    assert labels("week", "2030-01-01", "2030-01-15") == ["2029-12-31", "2030-01-07", "2030-01-14"]
    assert labels("month", "2030-01-20", "2030-03-02") == ["2030-01-01", "2030-02-01", "2030-03-01"]
    assert len(labels("hour", "2030-03-10", "2030-03-11", "America/New_York")) == 23  # DST


def test_the_readme_defines_every_metric():
    from tracker.reports.metrics import definitions
    from tracker.testing import ROOT

    readme = (ROOT / "README.md").read_text()
    for name, definition in definitions():
        assert f"| `{name}` | {definition} |" in readme, name


def commission(ts, status, level, payout="0", revenue="0", affiliate="a1", **extra):
    return {
        "event_time": ts,
        "conversion_id": extra.pop("conv", uid()),
        "commission_id": uid(),
        "advertiser_id": "adv1",
        "campaign_id": "c1",
        "affiliate_id": affiliate,
        "level": level,
        "status": status,
        "payout": payout,
        "revenue": revenue,
        "currency": "USD",
        **extra,
    }


def test_revenue_payout_profit_roi_epc(chdb_database, query):
    insert(chdb_database, "clicks", [click("2030-01-10 10:00:00.000")] * 4)
    conv = uid()
    insert(
        chdb_database,
        "commissions",
        [
            # approved: revenue 30 (level 0), payout 10 to a1 and 2 to its referrer r1
            commission("2030-01-10 11:00:00.000", "approved", 0, revenue="30.000", conv=conv),
            commission("2030-01-10 11:00:00.000", "approved", 1, payout="10.000", conv=conv),
            commission(
                "2030-01-10 11:00:00.000", "approved", 2, payout="2.000", affiliate="r1", conv=conv
            ),
            commission("2030-01-10 12:00:00.000", "pending", 1, payout="4.000"),
        ],
    )
    db = chdb_database.database
    params = {
        "metrics": "revenue,payout,pending_payout,profit,roi,epc",
        "from": "2030-01-10",
        "to": "2030-01-11",
    }
    out = run(query, parse(params), db)
    assert out["sources"] == {
        "clicks": "clicks_hourly_campaign",
        "commissions": "commissions_hourly_campaign",
    }
    assert out["totals"] == {
        "revenue": "30.000",
        "payout": "12.000",
        "pending_payout": "4.000",
        "profit": "18.000",
        "roi": 1.5,
        "epc": "7.500",
    }
    assert (
        run(query, dataclasses.replace(parse(params), raw_only=True), db)["totals"] == out["totals"]
    )
    # an affiliate's EPC is what it earns per click
    mine = run(query, parse({**params, "metrics": "payout,epc"}, scope={"affiliate": ("a1",)}), db)
    assert mine["totals"] == {"payout": "10.000", "epc": "2.500"}
    by = run(query, parse({**params, "metrics": "payout", "group_by": "affiliate"}), db)
    assert by["rows"] == [
        {"affiliate": "a1", "payout": "10.000"},
        {"affiliate": "r1", "payout": "2.000"},
    ]
    with pytest.raises(Q.ReportError, match="cannot be grouped by country"):
        parse({**params, "group_by": "country"})
