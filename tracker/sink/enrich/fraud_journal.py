"""The journal of the in-memory fraud counters (fraud_memory.py): what each stored batch
counted, appended to files in the sink's data folder, replayed at start.

One JSON line per stored batch: its stream, last entry id and clicks (event time, IP,
visitor, link slug); one per erasure: the visitors taken out. A new file every
`SEGMENT_SECONDS`; a file is deleted once its newest line is older than the counts can
reach back (`keep_ms`), so the folder holds a few hours of clicks. Written before the
batch is acknowledged and flushed to the operating system at once; synced to disk at most
once a second (as Redis's `appendfsync everysec`): a machine that loses power may forget
the last second's counts, never count them twice. A line cut short by a crash is the last
of its file and is skipped when replayed.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import orjson

log = logging.getLogger(__name__)

SEGMENT_SECONDS = 600
SYNC_SECONDS = 1.0
PREFIX, SUFFIX = "counts-", ".jsonl"


class Journal:
    BATCH, FORGET = "b", "f"  # a line's kind, its first value

    def __init__(self, folder: Path, keep_ms: int) -> None:
        self.folder = folder
        self.keep_ms = keep_ms
        folder.mkdir(parents=True, exist_ok=True)
        self._file: IO[bytes] | None = None
        self._opened = 0.0  # wall time the current file was started
        self._synced = 0.0

    def load(self) -> Iterator[tuple]:
        """Every line of every file, oldest first; old files deleted first."""
        self._delete_old()
        for path in self._segments():
            with path.open("rb") as f:
                for n, line in enumerate(f, 1):
                    try:
                        yield tuple(orjson.loads(line))
                    except orjson.JSONDecodeError:
                        log.warning("fraud counts journal %s: line %d cut short; skipped", path, n)

    def append(self, stream: str, last_id: str, clicks: list) -> None:
        self._write([self.BATCH, stream, last_id, clicks])

    def forget(self, visitors: list[str]) -> None:
        self._write([self.FORGET, visitors])

    def close(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None

    def _write(self, record: list) -> None:
        now = time.time()
        if self._file is None or now - self._opened >= SEGMENT_SECONDS:
            self.close()
            self._delete_old()
            # named by its start, so names sort in writing order
            path = self.folder / f"{PREFIX}{time.time_ns():020d}{SUFFIX}"
            self._file = path.open("ab")
            self._opened = now
        self._file.write(orjson.dumps(record) + b"\n")
        self._file.flush()
        if now - self._synced >= SYNC_SECONDS:
            os.fsync(self._file.fileno())
            self._synced = now

    def _segments(self) -> list[Path]:
        return sorted(self.folder.glob(f"{PREFIX}*{SUFFIX}"))

    def _delete_old(self) -> None:
        """Files last written before the counts' reach (their mtime: the newest line)."""
        horizon = time.time() - self.keep_ms / 1000
        current = self._file.name if self._file is not None else None
        for path in self._segments():
            if str(path) != current and path.stat().st_mtime < horizon:
                path.unlink(missing_ok=True)
