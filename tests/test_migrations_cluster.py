"""tracker/migrations.py: the single-server DDL stays as it was; with `[clickhouse] cluster`
the same files render ON CLUSTER with <table>_local (Replicated) + Distributed tables.

What chDB can run: the single-server rendering in full (the `chdb_database` fixture). The
shared in-process engine has no clusters (`system.clusters` is empty), so there every
cluster statement is only parsed (`EXPLAIN AST`). A second chDB, in a subprocess started
with a config file that defines a one-shard cluster, macros and an in-memory Keeper
(`testkeeper`), creates the Replicated and Distributed tables as rendered (only
`ON CLUSTER` stripped: chDB has no distributed DDL queue), and runs the whole rendering
with the Replicated engines swapped for their plain twins, including the ALTERs and rows
inserted through the Distributed tables (chDB's Replicated tables stay read-only: no
replication threads).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from string import Template

import pytest

from tracker import config, migrations
from tracker.config import ConfigError

CLUSTER = "tracker_cluster"
TOKEN = "test-admin-token-0123456789"
REPLICATION = "'/clickhouse/tables/{shard}/{database}/{table}', '{replica}'"


def load(tmp_path: Path, **env: str) -> config.Settings:
    return config.load(env={"TRACKER_DATA_DIR": str(tmp_path), "TRACKER_ADMIN_TOKEN": TOKEN, **env})


def cluster_settings(tmp_path: Path, **env: str) -> config.Settings:
    return load(
        tmp_path,
        TRACKER_CLICKHOUSE_CLUSTER=CLUSTER,
        TRACKER_CLICKHOUSE_DSN="http://ch.example:8123",
        **env,
    )


def legacy_render(path: Path, settings: config.Settings) -> list[str]:
    """migrations.render as it was before clusters, copied verbatim: the reference."""
    text = Template(path.read_text()).substitute(
        db=settings.clickhouse.database,
        retention_days=settings.clickhouse.retention_days,
        dedup_window=settings.clickhouse.dedup_window,
        # per-table retention (migration 0012) came later: its placeholders
        **{f"retention_{t}": settings.clickhouse.retention_of(t) for t in config.RETAINED_TABLES},
    )
    lines = [line for line in text.splitlines() if not line.strip().startswith("--")]
    return [stmt.strip() for stmt in "\n".join(lines).split(";") if stmt.strip()]


def legacy_all(settings: config.Settings) -> list[str]:
    """Every statement the pre-cluster `apply` ran on an empty database, in order."""
    db = settings.clickhouse.database
    out = [
        f"CREATE DATABASE IF NOT EXISTS {db}",
        f"CREATE TABLE IF NOT EXISTS {db}.schema_migrations "
        "(version UInt32, name String, applied_at DateTime64(3, 'UTC')) "
        "ENGINE = MergeTree ORDER BY version",
    ]
    for _, _, path in migrations.migration_files():
        out += legacy_render(path, settings)
    return out


CREATE_RE = re.compile(
    r"\ACREATE TABLE IF NOT EXISTS (\w+)\.(\w+)(?: ON CLUSTER (\w+))?"
    r"(\s*\(.*\n\))\s*ENGINE = (\w+)(?:\((.*?)\))?(\n.*)?\Z",
    re.S,
)
ALTER_RE = re.compile(r"\AALTER TABLE (\w+)\.(\w+)(?: ON CLUSTER (\w+))?(\s.*)\Z", re.S)


def creates(statements: list[str]) -> dict[str, re.Match]:
    """The CREATE TABLE statements of the migration files by table name (not bootstrap)."""
    found = {}
    for stmt in statements:
        match = CREATE_RE.match(stmt)
        if match and match[2] != "schema_migrations":
            found[match[2]] = match
    return found


def alters(statements: list[str], ttl: bool = False) -> list[re.Match]:
    """The column changes (or with `ttl`, the TTL changes) among the statements."""
    found = [m for m in map(ALTER_RE.match, statements) if m]
    if ttl:
        return [m for m in found if "MODIFY TTL" in m[4]]
    return [m for m in found if COLUMN_CHANGE.match(m[4])]


# the clauses a Distributed table must mirror; any other ALTER concerns the stored data
COLUMN_CHANGE = re.compile(r"\s*(ADD|DROP|MODIFY|RENAME|COMMENT) COLUMN\b")


OUTLINE_RE = re.compile(
    r"\A(CREATE DATABASE|CREATE TABLE|ALTER TABLE|CREATE MATERIALIZED VIEW|DROP VIEW"
    r"|TRUNCATE TABLE|INSERT INTO) (?:IF NOT EXISTS |IF EXISTS )?(\w+)(?:\.(\w+))?"
    r"(?: ON CLUSTER (\w+))?(?:\s|\Z)"
)


def outline(statements: list[str]) -> list[tuple[str, str, str | None, str | None]]:
    """(statement kind, database, table, cluster) of each statement, in order."""
    found = []
    for stmt in statements:
        match = OUTLINE_RE.match(stmt)
        assert match, stmt
        found.append(match.groups())
    return found


# -- single server: exactly today's DDL ---------------------------------------------------


def test_single_server_rendering_is_unchanged(tmp_path):
    for env in (
        {},
        {
            "TRACKER_CLICKHOUSE_DATABASE": "events",
            "TRACKER_CLICKHOUSE_RETENTION_DAYS": "30",
            "TRACKER_CLICKHOUSE_DEDUP_WINDOW": "500",
        },
    ):
        settings = load(tmp_path, **env)
        assert settings.clickhouse.cluster == ""
        assert migrations.render_all(settings) == legacy_all(settings)
        for _, _, path in migrations.migration_files():
            assert migrations.statements(path, settings) == legacy_render(path, settings)
            assert migrations.render(path, settings) == legacy_render(path, settings)
    assert not any(
        "ON CLUSTER" in s or "Distributed" in s or "Replicated" in s
        for s in migrations.render_all(load(tmp_path))
    )


class Recorder:
    """Stands in for ClickHouse: records what apply() sends."""

    def __init__(self) -> None:
        self.commands: list[str] = []

    def command(self, sql: str) -> None:
        self.commands.append(sql)

    def query(self, sql: str, readonly: bool = True):
        return ["version"], []


@pytest.mark.parametrize("clustered", [False, True])
def test_apply_runs_exactly_render_all(tmp_path, clustered):
    settings = cluster_settings(tmp_path) if clustered else load(tmp_path)
    ch = Recorder()
    applied = migrations.apply(ch, settings)  # type: ignore[arg-type]
    assert applied == [f"{v:04d}_{n}" for v, n, _ in migrations.migration_files()]
    bookkeeping = "INSERT INTO tracker.schema_migrations"
    ddl = [c for c in ch.commands if not c.startswith(bookkeeping)]
    if not clustered:
        assert ddl == legacy_all(settings)
    else:  # the single-server statements, each on the cluster, tables as local + Distributed
        expected = []
        single = legacy_all(load(tmp_path))
        data_only = {  # TTL, skip indexes: the stored data's, so the shards' tables only
            i
            for i, match in enumerate(map(ALTER_RE.match, single))
            if match and not COLUMN_CHANGE.match(match[4])
        }
        for i, (kind, db, table, _) in enumerate(outline(single)):
            if i in data_only:
                expected.append((kind, db, f"{table}_local", CLUSTER))
            elif (
                kind in ("CREATE DATABASE", "CREATE MATERIALIZED VIEW", "DROP VIEW")
                or table == "schema_migrations"
            ):
                expected.append((kind, db, table, CLUSTER))
            elif kind == "TRUNCATE TABLE":  # empties the shards' tables
                expected.append((kind, db, f"{table}_local", CLUSTER))
            elif kind == "INSERT INTO":  # a backfill: once, through the Distributed tables
                expected.append((kind, db, table, None))
            else:
                expected += [(kind, db, f"{table}_local", CLUSTER), (kind, db, table, CLUSTER)]
        assert outline(ddl) == expected
    inserts = [c for c in ch.commands if c.startswith(bookkeeping)]
    assert len(inserts) == len(applied)
    assert all(c.startswith("INSERT INTO tracker.schema_migrations VALUES") for c in inserts)


# -- cluster rendering ----------------------------------------------------------------------


def test_every_cluster_statement_runs_on_the_cluster(tmp_path):
    statements = migrations.render_all(cluster_settings(tmp_path))
    head = re.compile(
        r"\A(CREATE DATABASE IF NOT EXISTS \w+|CREATE TABLE IF NOT EXISTS \w+\.\w+"
        r"|CREATE MATERIALIZED VIEW IF NOT EXISTS \w+\.\w+|DROP VIEW IF EXISTS \w+\.\w+"
        r"|TRUNCATE TABLE IF EXISTS \w+\.\w+_local|ALTER TABLE \w+\.\w+)"
        rf" ON CLUSTER {CLUSTER}(\s|\Z)"
    )
    # a rollup's backfill runs once, from one node, Distributed table to Distributed table
    backfill = re.compile(r"\AINSERT INTO tracker\.(\w+)\s+SELECT .*\sFROM tracker\.(\w+)\s", re.S)
    for statement in statements:
        if match := backfill.match(statement):
            assert match[1] in migrations.SHARDING_KEYS and match[2] in migrations.SHARDING_KEYS
        else:
            assert head.match(statement), statement[:120]
    assert statements[0] == f"CREATE DATABASE IF NOT EXISTS tracker ON CLUSTER {CLUSTER}"


def test_documented_sharding_keys():
    keys = migrations.SHARDING_KEYS
    # a visitor's clicks and conversions share a shard; anonymous (zero) visitors spread
    assert keys["clicks"] == "cityHash64(if(empty(visitor_id), click_id, visitor_id))"
    assert keys["conversions"] == "cityHash64(if(empty(visitor_id), conversion_id, visitor_id))"
    assert keys["links"] == "cityHash64(slug)"  # ReplacingMergeTree versions stay together
    assert keys["attribution_credits"] == "cityHash64(conversion_id)"
    assert not any("rand()" in key for key in keys.values())  # retries must shard the same


def test_every_table_becomes_local_replicated_plus_distributed(tmp_path):
    settings = cluster_settings(tmp_path)
    single = creates(migrations.render_all(load(tmp_path)))
    clustered = creates(migrations.render_all(settings))
    assert set(single) == set(migrations.SHARDING_KEYS)  # every table has a key, no stale ones
    assert set(clustered) == set(single) | {f"{t}_local" for t in single}
    for table, original in single.items():
        local, dist = clustered[f"{table}_local"], clustered[table]
        db, _, _, columns, engine, args, clauses = original.groups()
        # the local table: same columns and clauses, Replicated engine, replicated dedup
        assert local[1] == db and local[3] == CLUSTER
        assert local[4] == columns
        assert local[5] == f"Replicated{engine}"
        assert local[6] == (f"{REPLICATION}, {args}" if args else REPLICATION)
        assert "non_replicated_deduplication_window" in clauses
        assert local[7] == clauses.replace(
            "non_replicated_deduplication_window", "replicated_deduplication_window"
        )
        assert "SETTINGS replicated_deduplication_window = 10000" in local[7]
        # the Distributed table: the original name, same columns, nothing else
        assert dist[1] == db and dist[3] == CLUSTER and dist[4] == columns
        assert dist[5] == "Distributed" and dist[7] is None
        assert dist[6] == f"{CLUSTER}, {db}, {table}_local, {migrations.SHARDING_KEYS[table]}"
    statements = migrations.render_all(settings)
    assert not any("non_replicated_deduplication_window" in s for s in statements)
    links = clustered["links_local"]
    assert links[5] == "ReplicatedReplacingMergeTree" and links[6].endswith(", updated_at")
    # the local table is created before the Distributed one that points at it
    for table in single:
        assert statements.index(clustered[f"{table}_local"][0]) < statements.index(
            clustered[table][0]
        )


def test_alters_hit_local_and_distributed_tables(tmp_path):
    single = alters(migrations.render_all(load(tmp_path)))
    clustered = alters(migrations.render_all(cluster_settings(tmp_path)))
    assert single and len(clustered) == 2 * len(single)
    pairs = zip(clustered[::2], clustered[1::2], strict=True)
    for original, (local, dist) in zip(single, pairs, strict=True):
        assert (local[2], dist[2]) == (f"{original[2]}_local", original[2])
        assert local[3] == dist[3] == CLUSTER
        assert local[4] == dist[4] == original[4]
        assert local[4].lstrip().startswith("ADD COLUMN IF NOT EXISTS")


def test_skip_indexes_hit_local_tables_only(tmp_path):
    """A Distributed table holds no data to index: ADD / MATERIALIZE INDEX go to the
    shards' tables only."""
    single = [s for s in migrations.render_all(load(tmp_path)) if " INDEX " in s]
    clustered = [s for s in migrations.render_all(cluster_settings(tmp_path)) if " INDEX " in s]
    assert single and len(clustered) == len(single)
    pairs = zip(map(ALTER_RE.match, single), map(ALTER_RE.match, clustered), strict=True)
    for original, local in pairs:
        assert original and local
        assert (local[2], local[3]) == (f"{original[2]}_local", CLUSTER)
        assert local[4] == original[4]


def test_retention_alters_hit_local_tables_only(tmp_path):
    env = {"TRACKER_CLICKHOUSE_RETENTION_DAYS": "400"}
    single = alters(migrations.render_all(load(tmp_path, **env)), ttl=True)
    clustered = alters(migrations.render_all(cluster_settings(tmp_path, **env)), ttl=True)
    assert len(single) == len(clustered) == len(config.RETAINED_TABLES)
    for original, local in zip(single, clustered, strict=True):
        assert (local[2], local[3]) == (f"{original[2]}_local", CLUSTER)
        assert local[4] == original[4] and "INTERVAL 400 DAY" in local[4]


def test_schema_migrations_is_replicated_on_every_node(tmp_path):
    create = migrations.render_all(cluster_settings(tmp_path))[1]
    assert create == (
        f"CREATE TABLE IF NOT EXISTS tracker.schema_migrations ON CLUSTER {CLUSTER} "
        "(version UInt32, name String, applied_at DateTime64(3, 'UTC')) "
        "ENGINE = ReplicatedMergeTree('/clickhouse/tables/all/{database}/{table}', "
        "'{shard}_{replica}') ORDER BY version"
    )
    assert not any(
        "schema_migrations_local" in s for s in migrations.render_all(cluster_settings(tmp_path))
    )


def test_sharded_without_replication(tmp_path):
    settings = cluster_settings(tmp_path, TRACKER_CLICKHOUSE_REPLICATED="false")
    single = creates(migrations.render_all(load(tmp_path)))
    clustered = creates(migrations.render_all(settings))
    for table, original in single.items():
        local = clustered[f"{table}_local"]
        # engine, arguments, clauses exactly as written
        assert local.groups()[4:] == original.groups()[4:]
        assert clustered[table][5] == "Distributed"
    assert "ReplicatedMergeTree" in migrations.render_all(settings)[1]  # schema_migrations


def test_custom_replication_path_and_replica(tmp_path):
    settings = cluster_settings(
        tmp_path,
        TRACKER_CLICKHOUSE_ZOOKEEPER_PATH="/ch/{cluster}/{shard}/{uuid}",
        TRACKER_CLICKHOUSE_REPLICA_NAME="{hostname}",
    )
    statements = migrations.render_all(settings)
    assert "ReplicatedMergeTree('/ch/{cluster}/all/{uuid}', '{shard}_{hostname}')" in statements[1]
    local = creates(statements)["clicks_local"]
    assert local[6] == "'/ch/{cluster}/{shard}/{uuid}', '{hostname}'"


def test_statements_that_cannot_be_rewritten_are_refused(tmp_path):
    settings = cluster_settings(tmp_path)
    rewrite = migrations.cluster_statements
    assert rewrite(
        "ALTER TABLE tracker.clicks MODIFY TTL toDateTime(event_time) + INTERVAL 30 DAY", settings
    ) == [
        f"ALTER TABLE tracker.clicks_local ON CLUSTER {CLUSTER} MODIFY TTL "
        "toDateTime(event_time) + INTERVAL 30 DAY"
    ]
    assert (
        len(rewrite("ALTER TABLE tracker.links DROP COLUMN x, RENAME COLUMN a TO b", settings)) == 2
    )
    with pytest.raises(migrations.MigrationError, match="separate statements"):
        rewrite(
            "ALTER TABLE tracker.clicks ADD COLUMN x UInt8, MODIFY TTL "
            "toDateTime(event_time) + INTERVAL 30 DAY",
            settings,
        )
    with pytest.raises(migrations.MigrationError, match="no sharding key"):
        rewrite(
            "CREATE TABLE IF NOT EXISTS tracker.new_table (a UInt8) ENGINE = MergeTree ORDER BY a",
            settings,
        )
    with pytest.raises(migrations.MigrationError, match="only CREATE DATABASE"):
        rewrite("CREATE MATERIALIZED VIEW tracker.mv AS SELECT 1", settings)
    with pytest.raises(migrations.MigrationError, match="not a plain"):
        rewrite("CREATE TABLE IF NOT EXISTS tracker.links (a UInt8) ENGINE = Memory", settings)


@pytest.mark.parametrize(
    ("env", "key"),
    [
        (
            {
                "TRACKER_CLICKHOUSE_CLUSTER": "bad-name",
                "TRACKER_CLICKHOUSE_DSN": "http://ch.example:8123",
            },
            "clickhouse.cluster",
        ),
        ({"TRACKER_CLICKHOUSE_CLUSTER": CLUSTER}, "clickhouse.cluster"),  # chDB has no clusters
        (
            {"TRACKER_CLICKHOUSE_ZOOKEEPER_PATH": "/clickhouse/tables/{table}"},
            "clickhouse.zookeeper_path",
        ),
        (
            {"TRACKER_CLICKHOUSE_ZOOKEEPER_PATH": "clickhouse/{shard}/{table}"},
            "clickhouse.zookeeper_path",
        ),
        ({"TRACKER_CLICKHOUSE_REPLICA_NAME": "r'1"}, "clickhouse.replica_name"),
        ({"TRACKER_CLICKHOUSE_REPLICA_NAME": ""}, "clickhouse.replica_name"),
        ({"TRACKER_CLICKHOUSE_REPLICATED": "maybe"}, "clickhouse.replicated"),
    ],
)
def test_cluster_settings_are_validated(tmp_path, env, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        load(tmp_path, **env)


def test_cluster_settings_defaults(tmp_path):
    ch = load(tmp_path).clickhouse
    assert (ch.cluster, ch.replicated) == ("", True)
    assert (ch.zookeeper_path, ch.replica_name) == (
        "/clickhouse/tables/{shard}/{database}/{table}",
        "{replica}",
    )


# -- executed on chDB -------------------------------------------------------------------


def test_single_server_tables_on_chdb(chdb_database):
    db = chdb_database.database
    _, rows = chdb_database.query(
        f"SELECT name, engine, engine_full FROM system.tables WHERE database = '{db}'"
    )
    engines = {name: engine for name, engine, _ in rows}
    assert engines == {
        "schema_migrations": "MergeTree",
        "clicks": "MergeTree",
        "impressions": "MergeTree",
        "orphan_visits": "MergeTree",
        "links": "ReplacingMergeTree",
        "conversions": "MergeTree",
        "attribution_credits": "MergeTree",
        "clicks_hourly": "AggregatingMergeTree",
        "impressions_hourly": "SummingMergeTree",
        "conversions_hourly": "SummingMergeTree",
        "credits_hourly": "SummingMergeTree",
        "clicks_hourly_mv": "MaterializedView",
        "impressions_hourly_mv": "MaterializedView",
        "conversions_hourly_mv": "MaterializedView",
        "credits_hourly_mv": "MaterializedView",
        "commissions_hourly": "SummingMergeTree",
        "commissions_hourly_mv": "MaterializedView",
        **{
            name: engine
            for table, engine in (
                ("clicks_hourly_campaign", "AggregatingMergeTree"),
                ("clicks_daily_geo", "AggregatingMergeTree"),
                ("conversions_hourly_campaign", "SummingMergeTree"),
                ("conversions_daily_geo", "SummingMergeTree"),
                ("commissions_hourly_campaign", "SummingMergeTree"),
            )
            for name, engine in ((table, engine), (f"{table}_mv", "MaterializedView"))
        },
        "commissions": "MergeTree",
        "deliveries": "MergeTree",
    }
    for name, engine, full in rows:
        if name != "schema_migrations" and engine != "MaterializedView":
            assert "non_replicated_deduplication_window = 10000" in full, name
    _, columns = chdb_database.query(
        f"SELECT table FROM system.columns WHERE database = '{db}' AND name = 'fraud_flags'"
    )
    assert sorted(t for (t,) in columns) == ["clicks", "conversions"]


def test_cluster_statements_parse_on_chdb(chdb_engine, tmp_path):
    """The in-process engine knows no cluster; each statement, as rendered, still parses."""
    for statement in migrations.render_all(cluster_settings(tmp_path)):
        _, rows = chdb_engine.query(f"EXPLAIN AST {statement}")
        assert rows, statement


def strip_on_cluster(statement: str) -> str:
    return re.sub(rf" ON CLUSTER {CLUSTER}\b", "", statement)


def plain_twin(statement: str) -> str:
    """ReplicatedXMergeTree('path', 'replica'[, args]) -> XMergeTree([args]), with the
    non-replicated deduplication setting back."""
    statement = re.sub(
        r"ENGINE = Replicated(\w*MergeTree)\('[^']*', '[^']*'(?:, )?", r"ENGINE = \1(", statement
    )
    return statement.replace(
        "SETTINGS replicated_deduplication_window", "SETTINGS non_replicated_deduplication_window"
    )


CHDB_CONFIG = f"""<clickhouse>
  <tcp_port>9000</tcp_port>
  <remote_servers><{CLUSTER}><shard><replica><host>localhost</host><port>9000</port>
  </replica></shard></{CLUSTER}></remote_servers>
  <macros><shard>01</shard><replica>r1</replica></macros>
  <zookeeper><implementation>testkeeper</implementation></zookeeper>
</clickhouse>
"""

# Runs in its own process (chDB: one engine per process, started with a config file).
# os._exit: chDB with a Keeper session can hang while shutting down.
CHDB_SCRIPT = """
import json, os, sys
import chdb
job = json.load(sys.stdin)
conn = chdb.connect(job["path"] + "?config-file=" + job["config"])
cur = conn.cursor()
out = {}
for label, sql in job["steps"]:
    try:
        cur.execute(sql)
        rows = cur.fetchall()
    except Exception as exc:
        out = {"error": str(exc), "sql": sql}
        break
    if label:
        out[label] = [list(row) for row in rows]
sys.stdout.write(json.dumps(out, default=str))
sys.stdout.flush()
os._exit(0)
"""


def run_chdb_with_cluster(tmp_path: Path, steps: list[tuple[str, str]]) -> dict:
    cfg = tmp_path / "cluster.xml"
    cfg.write_text(CHDB_CONFIG)
    job = {"path": str(tmp_path / "chdb"), "config": str(cfg), "steps": steps}
    done = subprocess.run(
        [sys.executable, "-c", CHDB_SCRIPT],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout)
    assert "error" not in out, out
    return out


def test_cluster_rendering_executes_on_chdb_with_a_cluster(tmp_path):
    rendered = migrations.render_all(cluster_settings(tmp_path, TRACKER_CLICKHOUSE_DATABASE="ct_r"))
    twins = migrations.render_all(cluster_settings(tmp_path, TRACKER_CLICKHOUSE_DATABASE="ct_t"))
    click = (
        "INSERT INTO ct_t.clicks (event_time, click_id, visitor_id, campaign_id, country, "
        "fraud_flags) SETTINGS distributed_foreground_insert = 1 VALUES "
        "('2030-01-02 03:04:05.678', '{id}', '{visitor}', 'camp', 'DE', ['fast'])"
    )
    zero = "00000000-0000-0000-0000-000000000000"
    steps = [
        ("clusters", "SELECT cluster, is_local FROM system.clusters"),
        # as rendered (ON CLUSTER aside): Replicated engines with macros, Distributed tables;
        # the ALTERs, TRUNCATEs and INSERTs need writable replicas, which chDB does not
        # have (and the views read columns the ALTERs add)
        *[
            ("", strip_on_cluster(s))
            for s in rendered
            if not s.startswith(("ALTER", "TRUNCATE", "INSERT", "CREATE MATERIALIZED"))
        ],
        (
            "rendered",
            "SELECT name, engine, engine_full FROM system.tables "
            "WHERE database = 'ct_r' ORDER BY name",
        ),
        (
            "replicas",
            "SELECT table, replica_path FROM system.replicas "
            "WHERE database = 'ct_r' ORDER BY table",
        ),
        # everything, ALTERs included, on the plain twins, and rows through Distributed
        *[("", plain_twin(strip_on_cluster(s))) for s in twins],
        ("", click.format(id="0190a1b2-0000-7000-8000-000000000001", visitor=zero)),
        (
            "",
            click.format(
                id="0190a1b2-0000-7000-8000-000000000002",
                visitor="0190a1b2-0000-7000-8000-0000000000aa",
            ),
        ),
        (
            "",
            "INSERT INTO ct_t.links (slug, destination, updated_at) SETTINGS "
            "distributed_foreground_insert = 1 VALUES ('s', 'https://a.example/', 1), "
            "('s', 'https://b.example/', 2)",
        ),
        (
            "local",
            "SELECT click_id, country, arrayStringConcat(fraud_flags, ',') "
            "FROM ct_t.clicks_local ORDER BY 1",
        ),
        (
            "distributed",
            "SELECT click_id, country, arrayStringConcat(fraud_flags, ',') "
            "FROM ct_t.clicks ORDER BY 1",
        ),
        ("links", "SELECT destination FROM ct_t.links FINAL"),
        # each shard's view fed its local rollup; the Distributed rollup merges them
        (
            "rollup",
            "SELECT country, sum(clicks), uniqMerge(visitors) FROM ct_t.clicks_hourly "
            "GROUP BY country",
        ),
        (
            "columns",
            "SELECT table, arrayStringConcat(groupArray(name || ' ' || type), ', ') "
            "FROM "
            "(SELECT * FROM system.columns WHERE database = 'ct_t' "
            "ORDER BY table, position) GROUP BY table",
        ),
        ("engines", "SELECT name, engine FROM system.tables WHERE database = 'ct_t'"),
    ]
    out = run_chdb_with_cluster(tmp_path, steps)
    assert out["clusters"] == [[CLUSTER, 1]]

    tables = {name: (engine, full) for name, engine, full in out["rendered"]}
    for table, key in migrations.SHARDING_KEYS.items():
        engine, full = tables[f"{table}_local"]
        assert engine.startswith("Replicated") and engine.endswith("MergeTree")
        assert f"('/clickhouse/tables/{{shard}}/ct_r/{table}_local', '{{replica}}'" in full
        assert "replicated_deduplication_window = 10000" in full
        assert "non_replicated" not in full
        assert "TTL" in full or table == "links"
        engine, full = tables[table]
        assert engine == "Distributed"
        assert full == f"Distributed('{CLUSTER}', 'ct_r', '{table}_local', {key})"
    assert tables["schema_migrations"][0] == "ReplicatedMergeTree"
    assert (
        "ReplicatedMergeTree('/clickhouse/tables/all/ct_r/schema_migrations', '{shard}_{replica}')"
    ) in tables["schema_migrations"][1]
    replicas = dict(out["replicas"])
    assert replicas["schema_migrations"] == (
        "/clickhouse/tables/all/ct_r/schema_migrations/replicas/01_r1"
    )
    assert replicas["clicks_local"] == "/clickhouse/tables/01/ct_r/clicks_local/replicas/r1"

    engines = dict(out["engines"])
    assert {engines[t] for t in migrations.SHARDING_KEYS} == {"Distributed"}
    assert engines["links_local"] == "ReplacingMergeTree"
    rows = [
        ["0190a1b2-0000-7000-8000-000000000001", "DE", "fast"],
        ["0190a1b2-0000-7000-8000-000000000002", "DE", "fast"],
    ]
    assert out["local"] == out["distributed"] == rows
    assert out["links"] == [["https://b.example/"]]
    assert out["rollup"] == [["DE", 2, 2]]
    columns = {table: cols for table, cols in out["columns"]}
    for table in migrations.SHARDING_KEYS:
        assert columns[table] == columns[f"{table}_local"], table
    assert "fraud_flags Array(LowCardinality(String))" in columns["conversions"]
