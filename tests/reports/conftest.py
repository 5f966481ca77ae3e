"""Known rows in a fresh chDB database, inserted as the sink inserts them (JSONEachRow with
a token), so the rollups fill through their materialized views."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import orjson
import pytest

ZERO = "00000000-0000-0000-0000-000000000000"
_ids = itertools.count(1)


def uid() -> str:
    return f"0190a1b2-0000-7000-8000-{next(_ids):012x}"


def click(ts: str, campaign="c1", affiliate="a1", advertiser="adv1", visitor=None, **extra):
    return {
        "event_time": ts,
        "click_id": uid(),
        "visitor_id": visitor or uid(),
        "link_slug": f"{campaign}-{affiliate}",
        "campaign_id": campaign,
        "affiliate_id": affiliate,
        "advertiser_id": advertiser,
        "country": "DE",
        "device_type": "desktop",
        **extra,
    }


def conversion(ts: str, status="approved", previous="", amount="10.000", conv_id=None, **extra):
    return {
        "event_time": ts,
        "conversion_id": conv_id or uid(),
        "advertiser_id": extra.pop("advertiser", "adv1"),
        "txid": uid(),
        "status": status,
        "previous_status": previous,
        "amount": amount,
        "currency": extra.pop("currency", "USD"),
        "campaign_id": extra.pop("campaign", "c1"),
        "affiliate_id": extra.pop("affiliate", "a1"),
        "link_slug": "c1-a1",
        "country": "DE",
        "device_type": "desktop",
        **extra,
    }


def insert(ch, table: str, rows: list[dict], token: str | None = None) -> None:
    payload = b"\n".join(orjson.dumps(r) for r in rows)
    ch.insert_jsonl(table, payload, token or uid())


NOW = datetime(2030, 1, 20, 12, tzinfo=UTC)


@pytest.fixture
def query(chdb_database):
    def run(sql: str):
        columns, rows = chdb_database.query(sql)
        return columns, orjson.loads(orjson.dumps(rows, default=str))

    return run
