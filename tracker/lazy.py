"""Modules loaded on first use, for what only a rarely used route of a process needs.

An edge answers clicks all day; its admin routes for the affiliate programme need
SQLAlchemy and Alembic (the ledger), about 40 MB of its memory once imported. Those
modules are bound with `lazy_import` (the standard library's `LazyLoader`): the name is
there at once, the module runs on the first attribute read. Type checkers see the real
import under `TYPE_CHECKING`.

The first read must not race another thread's (Python 3.11's lazy modules take no lock):
call `load` once, under a lock, before such modules are shared between threads.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType


def lazy_import(name: str) -> ModuleType:
    """The module `name`, executed on its first attribute read (at once if loaded)."""
    if (module := sys.modules.get(name)) is not None:
        return module
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module


def load(*modules: ModuleType) -> None:
    """Run lazily imported modules now."""
    for module in modules:
        module.__dict__  # noqa: B018  # any attribute read runs it
