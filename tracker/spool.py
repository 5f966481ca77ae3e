"""The local spool: an append-only file of batches that could not reach Redis.

One file per edge worker (`<data_dir>/spool/edge-<n>.spool`), one JSON batch per line,
appended in order and replayed in the same order when Redis answers again. A restart
replays what a crash left behind. The file is written through the OS (no fsync per
batch): a process crash loses nothing; a power cut may lose the last moments, as Redis'
own AOF `everysec` would.
"""

from __future__ import annotations

import os
from pathlib import Path


class Spool:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._size = self._drop_torn_tail() if path.exists() else 0

    def _drop_torn_tail(self) -> int:
        """Cut a line a crash left half-written, so the next append starts a clean line."""
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end != len(data):
            os.truncate(self.path, end)
        return end

    @property
    def pending(self) -> bool:
        return self._size > 0

    @property
    def size(self) -> int:
        return self._size

    def append(self, lines: list[bytes]) -> None:
        data = b"".join(line + b"\n" for line in lines)
        with open(self.path, "ab") as fh:
            fh.write(data)
        self._size += len(data)

    def read(self) -> list[bytes]:
        """Every complete batch line, oldest first."""
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        return [line for line in lines[:-1] if line]

    def keep(self, lines: list[bytes]) -> None:
        """Replace the spool with the batches still to replay (atomically)."""
        if not lines:
            self.clear()
            return
        tmp = self.path.with_suffix(".tmp")
        data = b"".join(line + b"\n" for line in lines)
        tmp.write_bytes(data)
        os.replace(tmp, self.path)
        self._size = len(data)

    def clear(self) -> None:
        if self.path.exists():
            os.truncate(self.path, 0)
        self._size = 0
