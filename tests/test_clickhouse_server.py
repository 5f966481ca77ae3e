"""The same schema and inserts against a ClickHouse server over HTTP(S).

Runs when TRACKER_TEST_CLICKHOUSE_URL names a server you can write to, e.g.
`http://default:password@127.0.0.1:8123`; it creates and drops its own database. Without
it this module is skipped (it is reported as skipped, never as passed).
"""

from __future__ import annotations

import os
import uuid

import orjson
import pytest

from tracker import config, migrations
from tracker.clickhouse import ClickHouse
from tracker.ids import uuid7
from tracker.timefmt import format_ms, now_ms

URL = os.environ.get("TRACKER_TEST_CLICKHOUSE_URL", "")
pytestmark = pytest.mark.skipif(not URL, reason="set TRACKER_TEST_CLICKHOUSE_URL to run")


def test_migrations_and_deduplicated_inserts_over_http(tmp_path):
    database = f"tracker_test_{uuid.uuid4().hex[:8]}"
    settings = config.load(
        env={
            "TRACKER_DATA_DIR": str(tmp_path),
            "TRACKER_CLICKHOUSE_DSN": URL,
            "TRACKER_CLICKHOUSE_DATABASE": database,
        }
    )
    ch = ClickHouse(settings.clickhouse_dsn, database)
    try:
        assert migrations.apply(ch, settings)
        assert migrations.apply(ch, settings) == []
        rows = b"\n".join(
            orjson.dumps(
                {
                    "event_time": format_ms(now_ms()),
                    "click_id": uuid7(),
                    "visitor_id": uuid7(),
                    "campaign_id": "http",
                }
            )
            for _ in range(100)
        )
        ch.insert_jsonl("clicks", rows, "http-token-1")
        ch.insert_jsonl("clicks", rows, "http-token-1")  # a retried batch
        assert ch.query(f"SELECT count() FROM {database}.clicks")[1][0][0] == 100
    finally:
        ch.command(f"DROP DATABASE IF EXISTS {database}")
        ch.close()
