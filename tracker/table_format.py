"""Rows as the CLI prints them: a table, JSON or CSV (shared by every command group)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

import orjson


def format_rows(columns: list[str], rows: Sequence[Sequence[Any]], fmt: str) -> str:
    if fmt == "json":
        return orjson.dumps([dict(zip(columns, row, strict=True)) for row in rows]).decode() + "\n"
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
        return out.getvalue()
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+\n"
    head = "|" + "|".join(f" {c:<{w}} " for c, w in zip(columns, widths, strict=True)) + "|\n"
    body = "".join(
        "|" + "|".join(f" {v:<{w}} " for v, w in zip(r, widths, strict=True)) + "|\n" for r in cells
    )
    return line + head + line + body + line + f"({len(rows)} row{'s' * (len(rows) != 1)})\n"


def _cell(value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, (list, dict)):
        return orjson.dumps(value).decode()
    return str(value)
