"""ClickHouse schema migrations: numbered SQL files under `config/migrations/`.

`apply` runs the files not yet recorded in `<db>.schema_migrations`, in order, and
records each one. Statements use IF NOT EXISTS, so a file interrupted half-way can run
again. Placeholders (${db}, ${retention_days}, ${dedup_window}) come from the settings.
"""

from __future__ import annotations

import re
from pathlib import Path
from string import Template

from .clickhouse import ClickHouse
from .config import ROOT, Settings
from .timefmt import format_ms, now_ms

MIGRATIONS_DIR = ROOT / "config" / "migrations"
_FILE_RE = re.compile(r"\A(\d{4})_([a-z0-9_]+)\.sql\Z")


def migration_files(folder: Path = MIGRATIONS_DIR) -> list[tuple[int, str, Path]]:
    found = []
    for path in sorted(folder.glob("*.sql")):
        match = _FILE_RE.match(path.name)
        if match:
            found.append((int(match.group(1)), match.group(2), path))
    return found


def render(path: Path, settings: Settings) -> list[str]:
    """The statements of one migration file with its placeholders filled."""
    text = Template(path.read_text()).substitute(
        db=settings.clickhouse.database,
        retention_days=settings.clickhouse.retention_days,
        dedup_window=settings.clickhouse.dedup_window,
    )
    lines = [line for line in text.splitlines() if not line.strip().startswith("--")]
    return [stmt.strip() for stmt in "\n".join(lines).split(";") if stmt.strip()]


def apply(ch: ClickHouse, settings: Settings) -> list[str]:
    """Apply pending migrations; returns the names applied (empty when up to date)."""
    db = settings.clickhouse.database
    ch.command(f"CREATE DATABASE IF NOT EXISTS {db}")
    ch.command(
        f"CREATE TABLE IF NOT EXISTS {db}.schema_migrations "
        "(version UInt32, name String, applied_at DateTime64(3, 'UTC')) "
        "ENGINE = MergeTree ORDER BY version"
    )
    _, rows = ch.query(f"SELECT version FROM {db}.schema_migrations", readonly=False)
    done = {row[0] for row in rows}
    applied = []
    folder = Path(settings.clickhouse.migrations_dir or MIGRATIONS_DIR)
    for version, name, path in migration_files(folder):
        if version in done:
            continue
        for statement in render(path, settings):
            ch.command(statement)
        ch.command(
            f"INSERT INTO {db}.schema_migrations VALUES "
            f"({version}, '{name}', '{format_ms(now_ms())}')"
        )
        applied.append(f"{version:04d}_{name}")
    return applied
