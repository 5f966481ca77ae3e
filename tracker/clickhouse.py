"""The ClickHouse client: embedded chDB (`chdb://PATH`) or a server over HTTP(S).

Both are clickhouse-connect clients; this wrapper names the few operations the service
uses. Three clients, because a client keeps settings for its session: one for inserts
(each carries its own dedup token), one for schema changes, and one for analysts.

Analysts' queries run in a session the engine keeps read-only: the limits of
`clickhouse.query_*` are set first, then `readonly=1`, after which the session can change
no setting (so no query raises its limits), write no table, run no `SYSTEM` command and
open no `file()`, `url()` or `remote()`. Two things `readonly` does not stop are refused
by the engine's own parser (`formatQuery`): `INTO OUTFILE` (a client-side feature that
chDB executes in process, as the service's user) and any statement but a read (`KILL
QUERY` is allowed to a read-only user, and every session here is the same user). The
query that runs is the engine's formatting of the one checked, a single statement (chDB
would otherwise run `SELECT 1; KILL ...` whole).

The analysts' client has its own chDB connection handle (clickhouse-connect serializes
calls per handle, and chDB runs handles concurrently), so a heavy query never holds up
the sink's inserts; inserts and schema changes share a lock with each other only.
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Mapping, Sequence
from typing import Any

import clickhouse_connect

# what an analyst may run: the first word of the engine's formatting of the statement
READ_STATEMENTS = frozenset({"SELECT", "WITH", "SHOW", "DESCRIBE", "EXPLAIN", "EXISTS"})
DEFAULT_LIMITS = {"max_execution_time": 60, "max_memory_usage": 2 << 30}


class RefusedQuery(ValueError):
    """An analyst statement that is not a plain read."""


def check_read_statement(formatted: str) -> None:
    """Refuse what `readonly=1` lets through, given the engine's formatting of a single
    statement (each clause on its own line, string literals escaped on one line)."""
    words = formatted.split(None, 1)
    if not words or words[0].upper() not in READ_STATEMENTS:
        raise RefusedQuery(
            "readonly session: only SELECT, WITH, SHOW, DESCRIBE, EXPLAIN and EXISTS run here"
        )
    if any(line.lstrip().upper().startswith("INTO OUTFILE") for line in formatted.splitlines()):
        raise RefusedQuery("readonly session: INTO OUTFILE is not allowed")


class ClickHouse:
    def __init__(
        self,
        dsn: str,
        database: str,
        cluster: str = "",
        query_limits: Mapping[str, int] | None = None,
    ) -> None:
        self.dsn = dsn
        self.database = database
        self.cluster = cluster
        self.embedded = dsn.startswith("chdb://")
        self._writer = clickhouse_connect.get_client(dsn=dsn)
        self._admin = clickhouse_connect.get_client(dsn=dsn)
        # the limits before readonly: once read-only, the session changes no setting
        limits = dict(DEFAULT_LIMITS if query_limits is None else query_limits)
        self._reader = clickhouse_connect.get_client(dsn=dsn, settings={**limits, "readonly": 1})
        self._lock = threading.Lock()  # inserts and schema changes, not analysts' reads

    def insert_jsonl(self, table: str, payload: bytes | Sequence[bytes], token: str) -> None:
        """Insert JSONEachRow bytes as they are (ClickHouse parses; Python does not).

        `payload` is one block or a sequence of blocks (rows joined by newlines), sent
        one after the other: a batch of edge entries goes in without being copied into
        one buffer first. The token makes a retried insert of the same batch a no-op.
        """
        block = payload if isinstance(payload, bytes) else _lines(payload)
        with self._lock:
            self._writer.raw_insert(
                f"{self.database}.{table}",
                None,
                block,
                settings={
                    "insert_deduplication_token": token,
                    "input_format_skip_unknown_fields": 1,
                    # on a cluster, insert into the shards before answering, so an
                    # acknowledged batch is stored, not merely queued on one node
                    **({"distributed_foreground_insert": 1} if self.cluster else {}),
                },
                fmt="JSONEachRow",
            )

    def query(self, sql: str, readonly: bool = True) -> tuple[list[str], Sequence[Sequence[Any]]]:
        """An analyst's read (`readonly`, the default: see the module's note), or one of
        the service's own queries."""
        if not readonly:
            with self._lock:
                result = self._admin.query(sql)
            return list(result.column_names), result.result_rows
        formatted = self._reader.query(
            "SELECT formatQuery({sql:String})", parameters={"sql": sql}
        ).result_rows[0][0]
        check_read_statement(formatted)
        result = self._reader.query(formatted)
        return list(result.column_names), result.result_rows

    def lookup(self, sql: str) -> Sequence[Sequence[Any]]:
        """One of the service's own reads (built from checked values, never an analyst's
        text), in the read-only session beside the analysts': it waits for no insert."""
        return self._reader.query(sql).result_rows

    def command(self, sql: str) -> Any:
        with self._lock:
            return self._admin.command(sql)

    def close(self) -> None:
        with self._lock:
            for client in (self._writer, self._admin, self._reader):
                client.close()


def _lines(parts: Sequence[bytes]) -> Generator[bytes, None, None]:
    for part in parts:
        yield part
        yield b"\n"
