"""The local spool: an append-only file of batches that could not reach Redis.

One file per edge worker (`<data_dir>/spool/edge-<n>.spool`), one JSON batch per line,
appended in order and replayed in the same order when Redis answers again. A restart
replays what a crash left behind. The file is written through the OS (no fsync per
batch): a process crash loses nothing; a power cut may lose the last moments, as Redis'
own AOF `everysec` would.

Replay reads a chunk at a time from the replay position, so a spool that grew during a
long outage is never read into memory whole. The position is kept beside the file
(`edge-<n>.spool.pos`) after each chunk; after a crash, replay resumes there. Batches
sent after the last saved position are sent again, which is harmless: every batch is
idempotent in Redis (see writer.py). Once replay reaches the end, the file is emptied.
"""

from __future__ import annotations

import os
from pathlib import Path

CHUNK_BYTES = 4 * 1024 * 1024  # a read during replay: a few edge batches


class Spool:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.position_path = path.with_name(path.name + ".pos")
        path.parent.mkdir(parents=True, exist_ok=True)
        self._size = self._drop_torn_tail() if path.exists() else 0
        saved = self._saved_position()
        self._position = saved if saved <= self._size else 0  # stale: replay it all again

    def _drop_torn_tail(self) -> int:
        """Cut a line a crash left half-written, so the next append starts a clean line.
        Reads back from the end only as far as the last newline."""
        with open(self.path, "rb+") as fh:
            end = fh.seek(0, os.SEEK_END)
            while end > 0:
                start = max(0, end - CHUNK_BYTES)
                fh.seek(start)
                newline = fh.read(end - start).rfind(b"\n")
                if newline >= 0:
                    end = start + newline + 1
                    break
                end = start
            if end != fh.seek(0, os.SEEK_END):
                fh.truncate(end)
        return end

    def _saved_position(self) -> int:
        try:
            return int(self.position_path.read_text() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    @property
    def pending(self) -> bool:
        """Batches are waiting to be replayed."""
        return self._size > self._position

    @property
    def size(self) -> int:
        """Bytes still to replay."""
        return self._size - self._position

    def append(self, lines: list[bytes]) -> None:
        data = b"".join(line + b"\n" for line in lines)
        with open(self.path, "ab") as fh:
            fh.write(data)
        self._size += len(data)

    def read_chunk(self, max_bytes: int | None = None) -> list[bytes]:
        """The next complete batch lines from the replay position, about `max_bytes` of
        them (always at least one line, however long). `advance` past them once sent."""
        if not self.pending:
            return []
        max_bytes = max_bytes or CHUNK_BYTES
        with open(self.path, "rb") as fh:
            fh.seek(self._position)
            data = fh.read(min(max_bytes, self._size - self._position))
            while b"\n" not in data and self._position + len(data) < self._size:
                data += fh.read(min(max_bytes, self._size - self._position - len(data)))
        return data[: data.rfind(b"\n") + 1].split(b"\n")[:-1]

    def read(self) -> list[bytes]:
        """Every batch line still to replay, oldest first, read whole (for tests and
        tools; replay goes by `read_chunk`)."""
        if not self.pending:
            return []
        with open(self.path, "rb") as fh:
            fh.seek(self._position)
            data = fh.read(self._size - self._position)
        return [line for line in data.split(b"\n") if line]

    def advance(self, lines: list[bytes]) -> None:
        """Mark these lines (the first ones from the replay position) replayed."""
        self._position += sum(len(line) + 1 for line in lines)
        tmp = self.position_path.with_name(self.position_path.name + ".tmp")
        tmp.write_text(str(self._position))
        os.replace(tmp, self.position_path)

    def clear(self) -> None:
        """Everything replayed: forget the position, then empty the file (a crash between
        the two replays batches again, which is harmless; the other order could leave a
        stale position that skips batches appended later)."""
        self.position_path.unlink(missing_ok=True)
        if self.path.exists():
            os.truncate(self.path, 0)
        self._size = self._position = 0
