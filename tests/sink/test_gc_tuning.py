"""The sink process's garbage collector settings (gc_tuning.py)."""

from __future__ import annotations

import subprocess
import sys

from tracker.sink import gc_tuning

PROBE = """
import gc
from tracker.sink import gc_tuning
made_at_start = [[n] for n in range(1000)]  # containers made before tuning
gc_tuning.tune()
print(gc.get_threshold()[0], gc.get_freeze_count() >= len(made_at_start), gc.isenabled())
"""


def test_tuning_freezes_what_startup_made_and_raises_the_young_threshold():
    # in a process of its own: the settings are the whole interpreter's
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == [str(gc_tuning.YOUNG_THRESHOLD), "True", "True"]  # still collecting cycles
