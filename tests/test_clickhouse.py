"""tracker/clickhouse.py against embedded chDB: analysts' SQL is read-only and bounded by
the engine, and never holds up inserts."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from tracker.clickhouse import ClickHouse, RefusedQuery, check_read_statement
from tracker.testing import ROOT, wait_until


def refused(ch: ClickHouse, sql: str) -> str:
    with pytest.raises(Exception) as error:  # noqa: PT011 - the engine's or ours
        ch.query(sql)
    return str(error.value)


def writes(tmp_path) -> list[str]:
    """Statements that write a file, change the server or stop other queries."""
    out = tmp_path / "out"
    return [
        f"SELECT 1 INTO OUTFILE '{out}-1'",
        f"SELECT 1 INTO OUTFILE '{out}-2' TRUNCATE",
        f"select 1 into outfile '{out}-3' and stdout",
        f"SELECT 1 UNION ALL SELECT 2 INTO OUTFILE '{out}-4'",
        f"EXPLAIN SELECT 1 INTO OUTFILE '{out}-5'",
        f"SHOW TABLES INTO OUTFILE '{out}-6'",
        f"DESCRIBE system.one INTO OUTFILE '{out}-7'",
        f"INSERT INTO FUNCTION file('{out}-8', 'CSV') SELECT 1",
        f"SELECT 1; SELECT 2 INTO OUTFILE '{out}-9'",
        "SYSTEM DROP DNS CACHE",
        "SYSTEM FLUSH LOGS",
        "KILL QUERY WHERE 1",
        "SELECT 1; KILL QUERY WHERE 1",
        "CREATE TABLE default.analyst (a Int8) ENGINE = Memory",
        "SET readonly = 0",
        "SELECT 1 SETTINGS readonly = 0",
        "SELECT * FROM file('/etc/passwd', 'LineAsString')",
        "SELECT * FROM url('http://127.0.0.1:9/', 'CSV', 'a String')",
        "SELECT * FROM executable('id', 'TSV', 'a String')",
    ]


def test_analyst_sql_cannot_write_files_or_change_the_server(chdb_engine, tmp_path):
    for sql in writes(tmp_path):
        refused(chdb_engine, sql)
    assert list(tmp_path.iterdir()) == []
    assert chdb_engine.query("SELECT 1 AS one") == (["one"], [(1,)])
    # reads of every kind still work
    assert chdb_engine.query("WITH 2 AS a SELECT a * 2 AS b")[1] == [(4,)]
    assert chdb_engine.query("SHOW DATABASES")[1]
    assert chdb_engine.query("DESCRIBE system.one")[1]
    assert chdb_engine.query("SELECT 'a\nINTO OUTFILE x' AS s")[1] == [("a\nINTO OUTFILE x",)]


def test_the_limits_cannot_be_raised_by_the_query(chdb_engine):
    ch = ClickHouse(chdb_engine.dsn, "tracker", query_limits={"max_rows_to_read": 1000})
    try:
        assert "TOO_MANY_ROWS" in refused(ch, "SELECT count() FROM numbers(100000)")
        assert "readonly" in refused(
            ch, "SELECT count() FROM numbers(100000) SETTINGS max_rows_to_read = 0"
        )
        assert ch.query("SELECT count() AS n FROM numbers(500)")[1] == [(500,)]
    finally:
        ch.close()


def test_a_long_analyst_query_is_stopped_and_does_not_hold_up_inserts(chdb_engine):
    """A query that would run for minutes stops at max_execution_time; while it runs,
    inserts go on (they used to wait for the same lock)."""
    chdb_engine.command("CREATE DATABASE IF NOT EXISTS ingest")
    chdb_engine.command("CREATE TABLE IF NOT EXISTS ingest.rows (n UInt32) ENGINE = Memory")
    sink = ClickHouse(chdb_engine.dsn, "ingest")
    analyst = ClickHouse(chdb_engine.dsn, "ingest", query_limits={"max_execution_time": 3})
    outcome: list[str] = []
    heavy_sql = "SELECT count() FROM numbers(1000000000000) WHERE sipHash64(number) = 7"

    def running() -> int:
        return sink.query(
            "SELECT count() FROM system.processes"
            " WHERE query LIKE '%sipHash64(number) = 7%' AND query NOT LIKE '%processes%'",
            readonly=False,
        )[1][0][0]

    thread = threading.Thread(target=lambda: outcome.append(refused(analyst, heavy_sql)))
    try:
        thread.start()
        wait_until(running, 10, "the heavy query to start", interval=0.01)
        for n in range(5):
            sink.insert_jsonl("rows", f'{{"n": {n}}}'.encode(), token=f"t{n}")
        inserted_while_running = thread.is_alive()
        thread.join(30)
        assert sink.query("SELECT count() FROM ingest.rows", readonly=False)[1] == [(5,)]
    finally:
        analyst.close()
        sink.close()
    assert inserted_while_running
    assert "TIMEOUT_EXCEEDED" in outcome[0]


@pytest.mark.parametrize(
    ("formatted", "ok"),
    [
        ("SELECT 1", True),
        ("WITH\n    1 AS a\nSELECT a", True),
        ("SHOW TABLES", True),
        ("SELECT 1\nINTO OUTFILE 'x'", False),
        ("KILL QUERY WHERE 1", False),
        ("SYSTEM FLUSH LOGS", False),
        ("SELECT 'a\\nINTO OUTFILE x'", True),
        ("", False),
    ],
)
def test_read_statement_rule(formatted, ok):
    if ok:
        check_read_statement(formatted)
    else:
        with pytest.raises(RefusedQuery):
            check_read_statement(formatted)


def test_tracker_sql_without_a_sink_writes_no_file(tmp_path):
    """`tracker sql` opens chDB itself when no sink runs: the same rules hold."""
    target = tmp_path / "pwned.sh"
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(ROOT),
        "TRACKER_DATA_DIR": str(tmp_path / "data"),
        "TRACKER_SINK_QUERY_PORT": "9",  # nothing listens: the CLI goes direct
    }
    run = subprocess.run(
        [sys.executable, "-m", "tracker", "sql", f"SELECT 'id' INTO OUTFILE '{target}' TRUNCATE"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0 and "INTO OUTFILE" in run.stderr
    assert not target.exists()
