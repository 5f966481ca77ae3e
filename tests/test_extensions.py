"""Which accelerators a module gets (tracker/extensions.py)."""

from __future__ import annotations

from tracker import extensions


def test_an_accelerator_is_loaded_only_when_wanted_and_built(monkeypatch):
    monkeypatch.setenv("TRACKER_NO_EXTENSIONS", "1")
    assert extensions.load("json") is None  # importable, but not wanted
    monkeypatch.setenv("TRACKER_NO_EXTENSIONS", "0")
    assert extensions.load("json").__name__ == "json"
    assert extensions.load("tracker._not_built_anywhere") is None  # then the Python
