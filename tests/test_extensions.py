"""Which accelerators a module gets (tracker/extensions.py)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from tracker import extensions
from tracker.testing import compiled_missing


def test_an_accelerator_is_loaded_only_when_wanted_and_built(monkeypatch):
    monkeypatch.setenv("TRACKER_NO_EXTENSIONS", "1")
    assert extensions.load("json") is None  # importable, but not wanted
    monkeypatch.setenv("TRACKER_NO_EXTENSIONS", "0")
    assert extensions.load("json").__name__ == "json"
    assert extensions.load("tracker._not_built_anywhere") is None  # then the Python


ACCELERATORS = {  # each accelerator, and the module that loads it in place of its Python
    "tracker.edge._clickpath": ("tracker.edge.clickpath", None),
    "tracker._ids": ("tracker.ids", None),
    "tracker._resp": ("tracker.redis_connection", None),
    "tracker._hot": ("tracker.hot", "group"),
    "tracker.sink.enrich._fraud_counts": ("tracker.sink.enrich.fraud_counts", "aggregate"),
    "tracker.sink.enrich._fraud_memory": ("tracker.sink.enrich.fraud_memory", "count_clicks"),
    "tracker.sink.enrich._rows": ("tracker.sink.enrich.rows", "scan"),
}


@pytest.mark.parametrize("accelerator", sorted(ACCELERATORS))
def test_an_accelerator_imported_first_still_loads(accelerator):
    """In a fresh interpreter, the accelerator before anything else (as setup checks the
    build): it must not import its own module half-initialised."""
    if importlib.util.find_spec(accelerator) is None:
        compiled_missing(accelerator)
    module, name = ACCELERATORS[accelerator]
    check = f"import {accelerator}, {module}"
    if name:
        check += f"; assert {module}.{name} is not None"
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
