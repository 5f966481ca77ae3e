"""Whether the compiled accelerators (Cython, beside their pure-Python references) are
wanted: yes unless TRACKER_NO_EXTENSIONS is set. A module uses its accelerator when this
says so and it is built (`load`), else its own Python."""

from __future__ import annotations

import importlib
import os
from types import ModuleType


def wanted() -> bool:
    return os.environ.get("TRACKER_NO_EXTENSIONS", "") in ("", "0")


def load(name: str) -> ModuleType | None:
    """The accelerator module `name`, or None when it is not wanted or not built (a source
    checkout without a compiler): the caller then keeps its pure-Python reference."""
    if not wanted():
        return None
    try:
        return importlib.import_module(name)
    except ImportError:
        return None
