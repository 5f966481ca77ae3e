"""An edge does not load what only its rarely used routes need (tracker/lazy.py): the
ledger's SQLAlchemy and Alembic, and the ClickHouse client, are about 45 MB of memory;
maxminddb (geo/reader.py) 1.4 MB, loaded when a geo database is opened."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tracker.lazy import lazy_import, load

HEAVY = ("sqlalchemy", "alembic", "clickhouse_connect", "chdb", "maxminddb")


def loaded_after(statement: str) -> list[str]:
    code = f"import sys\n{statement}\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_an_edge_starts_without_the_ledger_or_clickhouse_modules():
    assert loaded_after("import tracker.edge.server") == []
    # the command line (`tracker edge` starts through it) builds every command's parser
    assert loaded_after("from tracker import cli\ncli.build_parser()") == []


def test_an_edge_loads_nothing_of_the_sink():
    code = "import sys\nimport tracker.edge.server\n" + (
        "print(' '.join(m for m in sys.modules if m.startswith('tracker.sink')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == []


def test_the_programme_routes_load_the_ledger_on_first_use():
    statement = "from tracker.edge import programme\nfrom tracker.lazy import load\n" + (
        "load(programme.records)"
    )
    assert "sqlalchemy" in loaded_after(statement)


def test_a_lazy_module_is_the_module_once_read():
    module = lazy_import("tracker.ledger.plans")
    load(module)
    assert module is sys.modules["tracker.ledger.plans"] and callable(module.__dict__["parse_rule"])


def test_an_unknown_module_is_refused_at_once():
    with pytest.raises(ModuleNotFoundError):
        lazy_import("tracker.no_such_module")
