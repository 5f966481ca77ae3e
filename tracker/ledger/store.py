"""The ledger's SQL store: an SQLAlchemy engine on SQLite (WAL, one writer at a time) or
PostgreSQL (psycopg 3), with the Alembic migrations applied when it is opened.

SQLite transactions start with BEGIN IMMEDIATE: a writer takes the write lock before it
reads, so two payout runs (or a run and the sink) serialize instead of both reading the
same available entries. On PostgreSQL the same guarantee comes from row locks
(`lock_affiliate`).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, select, text
from sqlalchemy.engine import make_url

from tracker.clock import Clock, clock_ms, system_clock
from tracker.config import ROOT
from tracker.ledger import schema as T

MIGRATIONS_DIR = ROOT / "config" / "ledger_migrations"
_PG_MIGRATION_LOCK = 7_311_402  # pg_advisory_lock key: one migrating process at a time


def engine_url(dsn: str) -> str:
    """postgres:// and postgresql:// name psycopg 3 (SQLAlchemy would pick psycopg2)."""
    for prefix in ("postgresql://", "postgres://"):
        if dsn.startswith(prefix):
            return "postgresql+psycopg://" + dsn[len(prefix) :]
    return dsn


class Store:
    def __init__(self, dsn: str, *, migrate: bool = True, clock: Clock = system_clock) -> None:
        self.dsn = dsn
        self.clock = clock  # tests pass a FixedClock to move time
        url = make_url(engine_url(dsn))
        self.sqlite = url.get_backend_name() == "sqlite"
        if self.sqlite:
            if url.database:
                Path(url.database).parent.mkdir(parents=True, exist_ok=True)
            self.engine = create_engine(url, connect_args={"timeout": 60})
            _sqlite_setup(self.engine)
        else:
            self.engine = create_engine(url, pool_size=4, max_overflow=8, pool_pre_ping=True)
        if migrate:
            self.migrate()

    def now_ms(self) -> int:
        """The store's clock in Unix ms UTC (ledger rows keep ms)."""
        return clock_ms(self.clock)

    # -- transactions ---------------------------------------------------------------------

    @contextlib.contextmanager
    def begin(self) -> Iterator[Connection]:
        """A read-write transaction (SQLite: holds the write lock from its start)."""
        with self.engine.begin() as conn:
            yield conn

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only connection: on SQLite no write lock, so readers never wait."""
        with self.engine.connect() as conn:
            if self.sqlite:
                conn = conn.execution_options(tracker_read=True)
            yield conn
            conn.rollback()

    def lock_affiliates(self, conn: Connection, affiliate_ids: list[str]) -> None:
        """Serialize payouts of these affiliates (PostgreSQL row locks, taken in id order;
        SQLite's write transactions are serialized already)."""
        if not self.sqlite and affiliate_ids:
            conn.execute(
                select(T.affiliates.c.id)
                .where(T.affiliates.c.id.in_(sorted(affiliate_ids)))
                .order_by(T.affiliates.c.id)
                .with_for_update()
            )

    def close(self) -> None:
        self.engine.dispose()

    # -- schema -----------------------------------------------------------------------------

    def migrate(self) -> None:
        """Apply the Alembic migrations not yet applied; one process at a time."""
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        logging.getLogger("alembic").setLevel(logging.WARNING)  # no lines per start
        with self._migration_lock(), self.engine.begin() as conn:
            if not self.sqlite:
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    @contextlib.contextmanager
    def _migration_lock(self) -> Iterator[None]:
        if not self.sqlite or not self.engine.url.database:
            with _THREAD_LOCK:
                yield
            return
        path = Path(self.engine.url.database + ".migrate-lock")
        with _THREAD_LOCK, open(path, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


_THREAD_LOCK = threading.Lock()


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record) -> None:
        dbapi_conn.isolation_level = None  # SQLAlchemy's begin event issues BEGIN itself
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoints, never corrupt
        cur.execute("PRAGMA busy_timeout=60000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        if conn.get_execution_options().get("tracker_read"):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")


def open_store(settings, *, migrate: bool = True, clock: Clock = system_clock) -> Store:
    return Store(settings.ledger_dsn, migrate=migrate, clock=clock)
