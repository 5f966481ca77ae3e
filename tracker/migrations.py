"""ClickHouse schema migrations: numbered SQL files under `config/migrations/`.

`apply` runs the files not yet recorded in `<db>.schema_migrations`, in order, and
records each one. Statements use IF NOT EXISTS, so a file interrupted half-way can run
again. Placeholders (${db}, ${retention_days}, ${dedup_window}) come from the settings.

One server or a cluster
-----------------------
The files are written for one server (or embedded chDB) and run as they are when
`[clickhouse] cluster` is empty. With a cluster name, each statement is rewritten on the
way out (`cluster_statements`), from the same files:

* CREATE DATABASE / CREATE TABLE / ALTER TABLE get `ON CLUSTER <cluster>`.
* `CREATE TABLE db.t (...) ENGINE = XMergeTree(args) <clauses>` becomes two tables:
  `db.t_local`, the same columns and clauses (PARTITION BY, ORDER BY, TTL, SETTINGS) on
  `ReplicatedXMergeTree('<zookeeper_path>', '<replica_name>', args)` (or the engine as
  written with `replicated = false`), and `db.t`, the same columns on
  `Distributed(<cluster>, db, t_local, <SHARDING_KEYS[t]>)`. Inserts and analysts' queries
  keep using `db.t`. Replicated tables deduplicate retried inserts with
  `replicated_deduplication_window` (`non_replicated_deduplication_window` applies only to
  plain MergeTree), so the setting is renamed on the local table.
* `ALTER TABLE db.t ...` goes to `db.t_local`, and also to `db.t` when every clause is a
  column change (ADD/DROP/MODIFY/RENAME/COMMENT COLUMN), which a Distributed table must
  mirror; other clauses (TTL, indexes, settings, mutations) concern the stored data only.
* `CREATE MATERIALIZED VIEW db.v TO db.t AS SELECT ... FROM db.s` gets ON CLUSTER and
  reads and writes the local tables (`db.t_local`, `db.s_local`): rows inserted through
  a Distributed table reach each shard's local table, and each shard's view fires there.
* `DROP VIEW` gets ON CLUSTER; `TRUNCATE TABLE db.t` empties `db.t_local` ON CLUSTER.
* `INSERT INTO db.t SELECT ... FROM db.s` (a rollup's backfill) runs as written, once,
  from the node applying the migrations: Distributed to Distributed.
* Anything else is refused (MigrationError) rather than run on one node only: teach
  `cluster_statements` the new kind of statement first.

`schema_migrations` is not sharded: with a cluster it is a ReplicatedMergeTree created ON
CLUSTER whose replication path has no shard in it (`{shard}` -> `all`), so every node of
every shard holds every row and any node's sink sees what was applied, wherever
`tracker migrate` ran. Its replica name is `{shard}_<replica_name>`, unique over the whole
cluster even where replica macros repeat from shard to shard. ON CLUSTER itself needs
ClickHouse Keeper, so this holds with `replicated = false` too.

`render_all(settings)` lists every statement `apply` can run, in order, for tests and for
an operator to review before pointing the service at a cluster.
"""

from __future__ import annotations

import re
from pathlib import Path
from string import Template

from tracker.clickhouse import ClickHouse
from tracker.config import RETAINED_TABLES, ROOT, Settings
from tracker.timefmt import format_ms, now_ms

MIGRATIONS_DIR = ROOT / "config" / "migrations"
_FILE_RE = re.compile(r"\A(\d{4})_([a-z0-9_]+)\.sql\Z")

# Which shard a row of each table goes to, with a cluster (the Distributed tables' sharding
# keys). Deterministic keys, never rand(): a batch the sink inserts again after a failure
# must be split across shards exactly as the first time, or the per-shard insert
# deduplication would keep some rows twice and lose others.
#
# * Events are sharded by visitor, so one visitor's clicks, impressions, visits and
#   conversions share a shard: per-visitor paths, uniq(visitor_id) and click/conversion
#   joins are shard-local. No-track traffic has the zero visitor id; hashing it would pile
#   every anonymous row on one shard, so those rows spread by their own id instead (they
#   have no path to keep together). A conversion's status changes keep its visitor id, so
#   all rows of one conversion land together either way.
# * links: by slug. ReplacingMergeTree collapses versions of a slug only within a shard,
#   so every version of one slug must land on the same shard for FINAL to be right.
# * attribution_credits: by conversion, so the credits of one conversion (every model)
#   are together and sum to its amount shard-locally.
# * commissions: by conversion, so every status step of one conversion is together.
# * deliveries: by delivery, so every attempt of one postback or webhook is together.
SHARDING_KEYS = {
    "clicks": "cityHash64(if(empty(visitor_id), click_id, visitor_id))",
    "impressions": "cityHash64(if(empty(visitor_id), impression_id, visitor_id))",
    "orphan_visits": "cityHash64(if(empty(visitor_id), visit_id, visitor_id))",
    "links": "cityHash64(slug)",
    "conversions": "cityHash64(if(empty(visitor_id), conversion_id, visitor_id))",
    "attribution_credits": "cityHash64(conversion_id)",
    # Report rollups (0008): a query aggregates over every shard, so any deterministic
    # key is right; by hour spreads a long period's rows over the shards.
    "clicks_hourly": "cityHash64(hour, campaign_id)",
    "impressions_hourly": "cityHash64(hour, campaign_id)",
    "conversions_hourly": "cityHash64(hour, campaign_id)",
    "credits_hourly": "cityHash64(hour, campaign_id)",
    "commissions": "cityHash64(conversion_id)",
    "commissions_hourly": "cityHash64(hour, campaign_id)",
    "deliveries": "cityHash64(delivery_id)",
    # coarser rollups (0015)
    "clicks_hourly_campaign": "cityHash64(hour, campaign_id)",
    "clicks_daily_geo": "cityHash64(day, campaign_id)",
    "conversions_hourly_campaign": "cityHash64(hour, campaign_id)",
    "conversions_daily_geo": "cityHash64(day, campaign_id)",
    "commissions_hourly_campaign": "cityHash64(hour, campaign_id)",
}

LOCAL_SUFFIX = "_local"

_CREATE_TABLE_RE = re.compile(
    r"\A(?P<head>CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?)(?P<db>\w+)\.(?P<table>\w+)"
    r"(?P<gap>\s*)\(",
    re.I,
)
_ENGINE_RE = re.compile(r"\A(?P<gap>\s*)ENGINE\s*=\s*(?P<engine>\w+)", re.I)
_ALTER_RE = re.compile(
    r"\A(?P<head>ALTER\s+TABLE\s+)(?P<db>\w+)\.(?P<table>\w+)(?P<rest>\s.*)\Z", re.I | re.S
)
_CREATE_DB_RE = re.compile(r"\ACREATE\s+DATABASE\s+(?:IF\s+NOT\s+EXISTS\s+)?\w+\Z", re.I)
_MV_RE = re.compile(
    r"\A(?P<head>CREATE\s+MATERIALIZED\s+VIEW\s+(?:IF\s+NOT\s+EXISTS\s+)?)(?P<db>\w+)\.(?P<view>\w+)"
    r"\s+TO\s+(?P=db)\.(?P<target>\w+)(?P<select>\s+AS\s.*)\Z",
    re.I | re.S,
)
_DROP_VIEW_RE = re.compile(r"\ADROP\s+VIEW\s+(?:IF\s+EXISTS\s+)?\w+\.\w+\Z", re.I)
_TRUNCATE_RE = re.compile(
    r"\A(?P<head>TRUNCATE\s+TABLE\s+(?:IF\s+EXISTS\s+)?)(?P<db>\w+)\.(?P<table>\w+)\Z", re.I
)
_INSERT_SELECT_RE = re.compile(r"\AINSERT\s+INTO\s+\w+\.\w+\s+SELECT\b", re.I)
_COLUMN_CLAUSE_RE = re.compile(r"\A(ADD|DROP|MODIFY|RENAME|COMMENT)\s+COLUMN\b", re.I)


class MigrationError(ValueError):
    """A migration statement cannot be rendered for the configured cluster."""


def migration_files(folder: Path = MIGRATIONS_DIR) -> list[tuple[int, str, Path]]:
    found = []
    for path in sorted(folder.glob("*.sql")):
        match = _FILE_RE.match(path.name)
        if match:
            found.append((int(match.group(1)), match.group(2), path))
    return found


def render(path: Path, settings: Settings) -> list[str]:
    """The statements of one migration file with its placeholders filled, as written
    (single-server form; `statements` adds the cluster rewriting)."""
    text = Template(path.read_text()).substitute(
        db=settings.clickhouse.database,
        retention_days=settings.clickhouse.retention_days,
        dedup_window=settings.clickhouse.dedup_window,
        **{f"retention_{t}": settings.clickhouse.retention_of(t) for t in RETAINED_TABLES},
    )
    lines = [line for line in text.splitlines() if not line.strip().startswith("--")]
    return [stmt.strip() for stmt in "\n".join(lines).split(";") if stmt.strip()]


def statements(path: Path, settings: Settings) -> list[str]:
    """The statements `apply` runs for one migration file, for the configured target."""
    rendered = render(path, settings)
    if not settings.clickhouse.cluster:
        return rendered
    return [out for stmt in rendered for out in cluster_statements(stmt, settings)]


def bootstrap(settings: Settings) -> list[str]:
    """The database and the `schema_migrations` bookkeeping table."""
    ch = settings.clickhouse
    db = ch.database
    if not ch.cluster:
        return [
            f"CREATE DATABASE IF NOT EXISTS {db}",
            f"CREATE TABLE IF NOT EXISTS {db}.schema_migrations "
            "(version UInt32, name String, applied_at DateTime64(3, 'UTC')) "
            "ENGINE = MergeTree ORDER BY version",
        ]
    # One replica set spanning the whole cluster (see the module docstring).
    path = ch.zookeeper_path.replace("{shard}", "all")
    replica = "{shard}_" + ch.replica_name
    return [
        f"CREATE DATABASE IF NOT EXISTS {db} ON CLUSTER {ch.cluster}",
        f"CREATE TABLE IF NOT EXISTS {db}.schema_migrations ON CLUSTER {ch.cluster} "
        "(version UInt32, name String, applied_at DateTime64(3, 'UTC')) "
        f"ENGINE = ReplicatedMergeTree('{path}', '{replica}') ORDER BY version",
    ]


def render_all(settings: Settings) -> list[str]:
    """Every statement `apply` runs on an empty database, in order (without the
    bookkeeping SELECT and INSERTs)."""
    folder = Path(settings.clickhouse.migrations_dir or MIGRATIONS_DIR)
    out = bootstrap(settings)
    for _, _, path in migration_files(folder):
        out += statements(path, settings)
    return out


def cluster_statements(statement: str, settings: Settings) -> list[str]:
    """One single-server statement rewritten for `settings.clickhouse.cluster`."""
    cluster = settings.clickhouse.cluster
    if _CREATE_DB_RE.match(statement):
        return [f"{statement} ON CLUSTER {cluster}"]
    if match := _CREATE_TABLE_RE.match(statement):
        return _create_table(statement, match, settings)
    if match := _MV_RE.match(statement):
        db = match["db"]
        for name in (match["target"],):
            if name not in SHARDING_KEYS:
                raise MigrationError(f"view {match['view']}: table {name} has no sharding key")
        select = re.sub(
            rf"\bFROM\s+{db}\.(\w+)",
            lambda m: f"FROM {db}.{m[1]}{LOCAL_SUFFIX}" if m[1] in SHARDING_KEYS else m[0],
            match["select"],
        )
        return [
            f"{match['head']}{db}.{match['view']} ON CLUSTER {cluster} "
            f"TO {db}.{match['target']}{LOCAL_SUFFIX}{select}"
        ]
    if _DROP_VIEW_RE.match(statement):
        return [f"{statement} ON CLUSTER {cluster}"]
    if match := _TRUNCATE_RE.match(statement):
        return [f"{match['head']}{match['db']}.{match['table']}{LOCAL_SUFFIX} ON CLUSTER {cluster}"]
    if _INSERT_SELECT_RE.match(statement):
        return [statement]
    if match := _ALTER_RE.match(statement):
        db, table, rest = match["db"], match["table"], match["rest"]
        columns = [bool(_COLUMN_CLAUSE_RE.match(c.strip())) for c in _split_top(rest, ",")]
        if any(columns) and not all(columns):
            raise MigrationError(
                f"ALTER TABLE {db}.{table}: put column changes and other "
                "clauses in separate statements (only the former go to "
                "the Distributed table too)"
            )
        targets = [table + LOCAL_SUFFIX] + ([table] if all(columns) else [])
        return [f"{match['head']}{db}.{name} ON CLUSTER {cluster}{rest}" for name in targets]
    raise MigrationError(
        f"cannot run on cluster {cluster!r}: only CREATE DATABASE, CREATE TABLE, ALTER "
        "TABLE, CREATE MATERIALIZED VIEW ... TO, DROP VIEW, TRUNCATE TABLE and INSERT ... "
        f"SELECT are rewritten for a cluster: {statement[:80]!r}"
    )


def _create_table(statement: str, match: re.Match, settings: Settings) -> list[str]:
    ch = settings.clickhouse
    db, table = match["db"], match["table"]
    if table not in SHARDING_KEYS:
        raise MigrationError(f"table {table}: no sharding key; add it to SHARDING_KEYS")
    open_at = match.end() - 1
    close_at = _closing(statement, open_at)
    columns = statement[open_at : close_at + 1]
    engine = _ENGINE_RE.match(statement[close_at + 1 :])
    if not engine:
        raise MigrationError(f"table {table}: expected ENGINE = ... after the columns")
    name = engine["engine"]
    after = close_at + 1 + engine.end()
    args = ""
    if statement[after : after + 1] == "(":
        args_end = _closing(statement, after)
        args = statement[after + 1 : args_end].strip()
        after = args_end + 1
    clauses = statement[after:]
    if not name.endswith("MergeTree") or name.startswith("Replicated"):
        raise MigrationError(f"table {table}: engine {name} is not a plain *MergeTree")
    if ch.replicated:
        replication = f"'{ch.zookeeper_path}', '{ch.replica_name}'"
        name = "Replicated" + name
        args = f"{replication}, {args}" if args else replication
        clauses = re.sub(
            r"\bnon_replicated_deduplication_window\b", "replicated_deduplication_window", clauses
        )
    engine_clause = f"ENGINE = {name}" + (f"({args})" if args else "")
    on_cluster = f" ON CLUSTER {ch.cluster}"
    local = table + LOCAL_SUFFIX
    return [
        f"{match['head']}{db}.{local}{on_cluster}{match['gap']}{columns}{engine['gap']}"
        f"{engine_clause}{clauses}",
        f"{match['head']}{db}.{table}{on_cluster}{match['gap']}{columns}{engine['gap']}"
        f"ENGINE = Distributed({ch.cluster}, {db}, {local}, {SHARDING_KEYS[table]})",
    ]


def _outside_quotes(text: str, start: int = 0):
    """(index, character, parenthesis depth after it) for each character of text from
    start that is not inside a quoted string or identifier."""
    depth, quote, i = 0, "", start
    while i < len(text):
        char = text[i]
        if quote:
            if char == "\\":
                i += 1
            elif char == quote:
                quote = ""
        elif char in "'`\"":
            quote = char
        else:
            depth += (char == "(") - (char == ")")
            yield i, char, depth
        i += 1


def _closing(text: str, open_at: int) -> int:
    """The index of the parenthesis closing the one at open_at (quotes respected)."""
    for i, char, depth in _outside_quotes(text, open_at):
        if char == ")" and depth == 0:
            return i
    raise MigrationError(f"unbalanced parentheses: {text[open_at : open_at + 80]!r}")


def _split_top(text: str, separator: str) -> list[str]:
    """text split at separators outside parentheses and quotes."""
    parts, start = [], 0
    for i, char, depth in _outside_quotes(text):
        if char == separator and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def apply(ch: ClickHouse, settings: Settings) -> list[str]:
    """Apply pending migrations; returns the names applied (empty when up to date)."""
    db = settings.clickhouse.database
    for statement in bootstrap(settings):
        ch.command(statement)
    _, rows = ch.query(f"SELECT version FROM {db}.schema_migrations", readonly=False)
    done = {row[0] for row in rows}
    applied = []
    folder = Path(settings.clickhouse.migrations_dir or MIGRATIONS_DIR)
    for version, name, path in migration_files(folder):
        if version in done:
            continue
        for statement in statements(path, settings):
            ch.command(statement)
        ch.command(
            f"INSERT INTO {db}.schema_migrations VALUES "
            f"({version}, '{name}', '{format_ms(now_ms())}')"
        )
        applied.append(f"{version:04d}_{name}")
    return applied
