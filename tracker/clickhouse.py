"""The ClickHouse client: embedded chDB (`chdb://PATH`) or a server over HTTP(S).

Both are clickhouse-connect clients; this wrapper adds the one lock chDB needs (one
engine per process, shared by the sink loop and the query endpoint) and names the few
operations the service uses.

Three clients, because a chDB client keeps settings for its session: one for inserts
(each carries its own dedup token), one for schema changes, and one created with
`readonly=1` for analysts' queries.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

import clickhouse_connect


class ClickHouse:
    def __init__(self, dsn: str, database: str, cluster: str = "") -> None:
        self.dsn = dsn
        self.database = database
        self.cluster = cluster
        self.embedded = dsn.startswith("chdb://")
        self._writer = clickhouse_connect.get_client(dsn=dsn)
        self._admin = clickhouse_connect.get_client(dsn=dsn)
        self._reader = clickhouse_connect.get_client(dsn=dsn, settings={"readonly": 1})
        self._lock = threading.Lock()

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

    def query(self, sql: str, readonly: bool = True) -> tuple[list[str], list[tuple]]:
        with self._lock:
            result = (self._reader if readonly else self._admin).query(sql)
        return list(result.column_names), result.result_rows

    def command(self, sql: str) -> Any:
        with self._lock:
            return self._admin.command(sql)

    def close(self) -> None:
        with self._lock:
            for client in (self._writer, self._admin, self._reader):
                client.close()


def _lines(parts: Sequence[bytes]) -> Iterator[bytes]:
    for part in parts:
        yield part
        yield b"\n"
