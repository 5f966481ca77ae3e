"""tracker/privacy_ops.py against chDB (real migrations) and a real Redis: export and erase
one visitor; retention per table."""

from __future__ import annotations

import orjson

from tracker import config, hot, migrations
from tracker import redis_keys as K
from tracker.ids import ZERO_UUID, uuid7
from tracker.privacy_ops import erase, export, hot_path

# GONE arrived by a click, so their first click has their id (tracker/hot.py); KEPT came
# with an id of their own
GONE, KEPT = uuid7(), "0190a0a0-0000-7000-8000-0000000000bb"
DUPLICATES = K.fraud_duplicates_key(60, 28_333_333, 0)


def seed(ch, r) -> dict[str, list[str]]:
    clicks = {GONE: [GONE, uuid7()], KEPT: [uuid7()]}
    for visitor, ids in clicks.items():
        rows = [
            {
                "event_time": "2026-01-01 00:00:00.000",
                "click_id": c,
                "visitor_id": visitor,
                "ip": "203.0.113.7",
                "user_agent": "UA",
                "link_slug": "s",
                "campaign_id": "c",
            }
            for c in ids
        ]
        ch.insert_jsonl("clicks", b"\n".join(map(orjson.dumps, rows)), f"c-{visitor}")
        ch.insert_jsonl(
            "impressions",
            orjson.dumps(
                {
                    "event_time": "2026-01-01 00:00:00.000",
                    "impression_id": uuid7(),
                    "visitor_id": visitor,
                    "ip": "203.0.113.7",
                }
            ),
            f"i-{visitor}",
        )
        conversion = {
            "event_time": "2026-01-01 00:00:01.000",
            "conversion_id": uuid7(),
            "advertiser_id": "shop",
            "txid": f"t-{visitor}",
            "visitor_id": visitor,
            "click_id": ids[-1],
            "amount": "10",
            "currency": "USD",
            "ip": "203.0.113.7",
            "user_agent": "UA",
            "country": "NL",
        }
        ch.insert_jsonl("conversions", orjson.dumps(conversion), f"v-{visitor}")
        hot.put(r, [{"click_id": c, "visitor_id": visitor} for c in ids])
        r.hset(
            K.conversion_key("shop", f"t-{visitor}"),
            "record",
            orjson.dumps({"visitor_id": visitor, "click": {"visitor_id": visitor}}),
        )
    for visitor in (GONE, KEPT):  # a duplicate-click time of each, in one hash
        r.hset(DUPLICATES, K.fraud_duplicate_field(visitor, "s"), 1_700_000_000_000)
    return clicks


def test_export_then_erase_one_visitor(chdb_database, redis_server):
    ch, r = chdb_database, redis_server.client()
    clicks = seed(ch, r)

    data = export(ch, r, GONE.upper())
    assert sorted(c["click_id"] for c in data["clickhouse"]["clicks"]) == sorted(clicks[GONE])
    assert len(data["clickhouse"]["impressions"]) == 1
    assert [c["txid"] for c in data["clickhouse"]["conversions"]] == [f"t-{GONE}"]
    assert sorted(c["click_id"] for c in data["redis"]["clicks"]) == sorted(clicks[GONE])
    orjson.dumps(data)  # all of it JSON

    counts = erase(ch, r, GONE)
    assert counts["clicks"] == 2 and counts["impressions"] == 1 and counts["conversions"] == 1
    db = ch.database
    left = ch.query(f"SELECT toString(visitor_id) FROM {db}.clicks", readonly=False)[1]
    assert left == [(KEPT,)]
    assert ch.query(f"SELECT count() FROM {db}.impressions", readonly=False)[1] == [(1,)]
    conversions = {
        row[0]: row[1:]
        for row in ch.query(
            f"SELECT txid, toString(visitor_id), toString(ip), user_agent, country, amount "
            f"FROM {db}.conversions",
            readonly=False,
        )[1]
    }
    assert conversions[f"t-{GONE}"][:4] == (ZERO_UUID, "::", "", "")  # anonymised...
    assert str(conversions[f"t-{GONE}"][4]) == "10.000"  # ...the money stays
    assert conversions[f"t-{KEPT}"][0] == KEPT
    assert not r.hexists(DUPLICATES, K.fraud_duplicate_field(GONE, "s"))
    assert r.hexists(DUPLICATES, K.fraud_duplicate_field(KEPT, "s"))
    assert hot_path(r, GONE, 48) == []
    assert not any(hot.get(r, c) for c in clicks[GONE])
    assert all(hot.get(r, c) for c in clicks[KEPT])
    assert [c for _, ids in hot_path(r, KEPT, 48) for c in ids] == clicks[KEPT]
    record = orjson.loads(r.hget(K.conversion_key("shop", f"t-{GONE}"), "record"))
    assert record == {"visitor_id": ZERO_UUID, "click": {"visitor_id": ZERO_UUID}}
    assert export(ch, r, GONE)["clickhouse"]["clicks"] == []


def test_retention_per_table_is_applied_to_existing_tables(chdb_engine, tmp_path):
    path = tmp_path / "tracker.toml"
    path.write_text("[clickhouse]\nretention_days = 400\n[clickhouse.retention]\nclicks = 30\n")
    settings = config.load(
        path,
        env={"TRACKER_DATA_DIR": str(tmp_path), "TRACKER_CLICKHOUSE_DATABASE": "retention"},
    )
    chdb_engine.database = "retention"
    migrations.apply(chdb_engine, settings)

    def ttl(table: str) -> str:
        create = chdb_engine.query(f"SHOW CREATE TABLE retention.{table}", readonly=False)[1]
        return create[0][0].split("TTL", 1)[1].split("SETTINGS")[0]

    assert "toIntervalDay(30)" in ttl("clicks")
    assert "toIntervalDay(400)" in ttl("impressions")
