"""Ledger fixtures: every store test runs on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import itertools

import pytest

from tracker.clock import FixedClock
from tracker.ledger.store import Store
from tracker.testing import PostgresServer

_numbers = itertools.count()


@pytest.fixture(scope="session")
def postgres_server():
    server = PostgresServer()
    server.start()
    yield server
    server.stop()


class Clock(FixedClock):
    """The service's clock seam (seconds), pinned and kept in whole ms, so the tests can
    move it by days and milliseconds and read it back exactly."""

    def __init__(self, ms: int) -> None:
        super().__init__(ms / 1000)
        self.ms = ms

    def __call__(self) -> float:
        return self.ms / 1000

    def advance(self, days: float = 0, ms: int = 0) -> None:  # type: ignore[override]
        self.ms += int(days * 86_400_000) + ms


START_MS = 1_785_000_000_000  # 2026-07-25 UTC, a Saturday mid-month


@pytest.fixture
def clock():
    return Clock(START_MS)


@pytest.fixture(params=["sqlite", "postgres"])
def store_dsn(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    server = request.getfixturevalue("postgres_server")
    return server.create_database(f"ledger{next(_numbers)}")


@pytest.fixture
def store(store_dsn, clock):
    s = Store(store_dsn, clock=clock)
    yield s
    s.close()
