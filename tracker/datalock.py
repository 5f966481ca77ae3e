"""One `tracker serve` per data folder: an exclusive lock on `<data_dir>/serve.lock`.

A second service on the same folder would share the first one's spool files, chDB files
and Redis (and answer on the same port through SO_REUSEPORT), so it is refused at start.
The lock is the kernel's (`flock`): it goes away with the process, however it ends.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO


class DataFolderBusy(Exception):
    """Another process holds the data folder."""


def hold(folder: Path) -> IO[str]:
    """Lock the folder for this process's lifetime (keep the returned file open)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "serve.lock"
    fh = open(path, "a+")  # noqa: SIM115 - held open for the process's life
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        owner = fh.read().strip() or "?"
        fh.close()
        raise DataFolderBusy(
            f"another tracker (pid {owner}) is serving from {folder}; stop it first, or give "
            "this one its own data_dir (TRACKER_DATA_DIR)"
        ) from None
    fh.seek(0)
    fh.truncate()
    fh.write(str(os.getpid()))
    fh.flush()
    return fh
