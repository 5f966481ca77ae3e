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
idempotent in Redis (see writer.py), and a replayed batch's marker is kept until its
position is saved, however long that takes. Once replay reaches the end, the file is
emptied.

A full or read-only disk is not fatal: `append` raises `OSError` and leaves the file as
it was (a partly written line is cut off again), `advance` and `clear` report whether the
position reached the disk (replay goes on from the position held in memory), and a spool
found on a read-only disk at start is still read.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

CHUNK_BYTES = 4 * 1024 * 1024  # a read during replay: a few edge batches


class Spool:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.position_path = path.with_name(path.name + ".pos")
        path.parent.mkdir(parents=True, exist_ok=True)
        self._size = self._complete_size() if path.exists() else 0
        saved = self._saved_position()
        self._position = saved if saved <= self._size else 0  # stale: replay it all again

    def _complete_size(self) -> int:
        """The bytes up to the last complete line. A line a crash left half-written is cut
        off, so the next append starts a clean line (on a read-only disk it stays, and is
        never read). Reads back from the end only as far as the last newline."""
        with open(self.path, "rb") as fh:
            size = end = fh.seek(0, os.SEEK_END)
            while end > 0:
                start = max(0, end - CHUNK_BYTES)
                fh.seek(start)
                newline = fh.read(end - start).rfind(b"\n")
                if newline >= 0:
                    end = start + newline + 1
                    break
                end = start
        if end != size:
            with contextlib.suppress(OSError):
                os.truncate(self.path, end)
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
        """Add batch lines at the end. On `OSError` (disk full, read-only) nothing is
        added: a partly written line is cut off again, so later lines stay whole."""
        data = b"".join(line + b"\n" for line in lines)
        if not data:
            return
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, self._size)
            raise
        finally:
            os.close(fd)
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

    def advance(self, lines: list[bytes]) -> bool:
        """Mark these lines (the first ones from the replay position) replayed. True once
        the position is on disk; False when the disk refused it (replay goes on from the
        position in memory, and a restart replays these lines again)."""
        self._position += sum(len(line) + 1 for line in lines)
        tmp = self.position_path.with_name(self.position_path.name + ".tmp")
        try:
            tmp.write_text(str(self._position))
            os.replace(tmp, self.position_path)
        except OSError:
            return False
        return True

    def clear(self) -> bool:
        """Everything replayed: empty the file, then forget the position. True once both
        are done; False when the disk refused (the lines stay on disk and a restart
        replays them). A crash between the two leaves a position beyond the file's end,
        which the next start ignores."""
        try:
            if self.path.exists():
                os.truncate(self.path, 0)
        except OSError:
            self._position = self._size  # all replayed; new lines join the old ones' end
            return False
        self._size = self._position = 0
        try:
            self.position_path.unlink(missing_ok=True)
        except OSError:
            return False
        return True
