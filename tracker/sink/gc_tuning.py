"""The sink's garbage collector, set for a loop that makes and drops containers by the
million.

The enrichment decodes each row into a dict and groups each chunk of clicks in small
lists and dicts; a slice of rows lives across many of Python's young collections (one
every 700 containers made), is promoted and then walked again by the old generations'
collections, together with the long-lived caches (user agents, addresses). At Python's
defaults the collector cost the sink 15 µs per enriched row, as much as the fraud rules
(`python -m loadtest.sink_bench`: 40.4 µs of loop CPU per row at the defaults, 23.2 with
the young generation collected every 50,000 containers, 25.5 with the collector off).
The young threshold is raised, not the collector turned off: reference cycles (rare
here) are still freed.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 50_000  # containers made (less those freed) between young collections


def tune() -> None:
    """What startup made (modules, settings, clients) is never garbage: frozen, so no
    collection walks it again; then the young threshold raised."""
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
