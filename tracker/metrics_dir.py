"""The folder where a service's processes pool their metrics, chosen before
prometheus_client loads.

prometheus_client picks its storage when it is first imported: with
PROMETHEUS_MULTIPROC_DIR set, samples go to files in that folder and `GET /metrics` on any
process adds them all up; without it, each process keeps its own in memory. So the folder
must be named before anything imports `tracker.metrics`. `use` is that step, run by the
service commands (`tracker serve|edge|sink`, cli.service_process) before they import their
modules, and it refuses to run too late instead of leaving a process's samples silently
out of /metrics.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"


class TooLate(RuntimeError):
    """prometheus_client was imported before the metrics folder was chosen."""


def use(folder: Path) -> Path:
    """Pool this process's metrics in `folder`, unless the environment already names one
    (a child of the supervisor inherits its folder). Returns the folder in use."""
    if "prometheus_client" in sys.modules and ENV not in os.environ:
        raise TooLate(f"{ENV} must be set before prometheus_client is imported")
    chosen = Path(os.environ.setdefault(ENV, str(folder)))
    chosen.mkdir(parents=True, exist_ok=True)
    return chosen


def clear(folder: Path) -> None:
    """Forget the samples of processes that ran before (the supervisor, at start)."""
    for stale in folder.glob("*.db"):
        stale.unlink()
