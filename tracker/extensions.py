"""Whether the compiled accelerators (Cython, beside their pure-Python references) are
wanted: yes unless TRACKER_NO_EXTENSIONS is set. A module uses its accelerator when this
says so and it is built, else its own Python."""

from __future__ import annotations

import os


def wanted() -> bool:
    return os.environ.get("TRACKER_NO_EXTENSIONS", "") in ("", "0")
