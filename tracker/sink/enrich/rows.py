"""Click rows enriched where they lie: the fields the steps use are read off each row's
JSON, and what the steps set is written back into the same bytes.

Decoding a whole click row into a dict and encoding it again was the largest part of the
sink's own work per row (orjson's loads and dumps, 28,000 of an enriched row's 72,000
instructions), while the steps read ten of its thirty-odd fields and add a dozen. `scan`
reads just the fields of `steps.CLICK_FIELDS` (every field a click step reads or writes)
with each value's place in the row; `splice` copies the row with the values a step
changed replaced in place and the new ones appended. A row `scan` does not read plainly
(not a flat JSON object, an escaped key, a field twice, bytes that are not UTF-8, a read
value that is not JSON) is decoded and encoded whole, as before; the fields it does not
read are left to ClickHouse, which parses every row it is given. Every row is decoded
whole when the compiled `_rows` is not built: the dict path is the fallback, and
`py_scan` the reference the compiled code is held to (a Python loop over bytes would be
slower than orjson).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import orjson

from tracker import extensions
from tracker.types import Row

# name -> (start, end, value as read): where a field's value lies in its row
Spans = dict[str, tuple[int, int, object]]


class PyFields:
    """The fields to read (the compiled `Fields` keeps them as C strings)."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = tuple(names)
        self.keys = {name.encode(): name for name in self.names}


def _string_end(line: bytes, i: int) -> int:
    """line[i] is an opening quote: the index just after its closing quote, or -1."""
    j = i + 1
    while True:
        j = line.find(b'"', j)
        if j < 0:
            return -1
        k = j - 1
        while line[k] == 0x5C:  # an odd run of backslashes escapes the quote
            k -= 1
        if (j - 1 - k) % 2 == 0:
            return j + 1
        j += 1


def _plain(value: bytes) -> bool:
    return b"\\" not in value and not any(byte < 0x20 for byte in value)


def py_scan(line: bytes, fields: PyFields) -> tuple[Row, Spans] | None:
    """The row's fields among `fields` and where each value lies, or None when the row
    is not a flat JSON object read plainly (the caller then decodes it whole). A string
    value without escapes is decoded from its bytes; any other value by orjson."""
    n = len(line)
    if n < 2 or line[0] != 0x7B or line[-1] != 0x7D:
        return None
    event: Row = {}
    spans: Spans = {}
    if n == 2:
        return event, spans
    i = 1
    while True:
        if line[i] != 0x22:
            return None
        j = _string_end(line, i)
        if j < 0 or j >= n or line[j] != 0x3A:
            return None
        key = line[i + 1 : j - 1]
        if b"\\" in key:  # an escaped key: orjson's to read
            return None
        start = j + 1
        c = line[start]
        if c == 0x22:
            end = _string_end(line, start)
            if end < 0:
                return None
        elif c == 0x5B:
            end = start + 1
            while end < n and line[end] != 0x5D:
                if line[end] == 0x22:
                    end = _string_end(line, end)
                    if end < 0:
                        return None
                elif line[end] in (0x5B, 0x7B):
                    return None
                else:
                    end += 1
            if end >= n:
                return None
            end += 1
        elif c == 0x7B:
            return None
        else:
            end = start
            while end < n and line[end] not in (0x2C, 0x7D):
                if line[end] in (0x22, 0x5B, 0x7B):
                    return None
                end += 1
            if end == start:
                return None
        if end >= n:
            return None
        name = fields.keys.get(key)
        if name is not None:
            if name in event:
                return None
            value: object
            if c == 0x22 and _plain(line[start + 1 : end - 1]):
                try:
                    value = line[start + 1 : end - 1].decode()
                except UnicodeDecodeError:
                    return None
            else:
                try:
                    value = orjson.loads(line[start:end])
                except orjson.JSONDecodeError:
                    return None
            event[name] = value
            spans[name] = (start, end, value)
        if line[end] == 0x7D:
            return (event, spans) if end == n - 1 else None
        if line[end] != 0x2C:
            return None
        i = end + 1
        if i >= n:
            return None


def py_splice(line: bytes, event: Row, spans: Spans) -> bytes:
    """The row with the event's changes: each value a step replaced (told by identity: a
    value left as read is left as it lies, but a list is written again, as a step may
    have added to it) written over the old one, each field a step added appended in
    the order it was added."""
    out: list[bytes] = []
    extra: Row | None = None
    at = kept = 0
    for name, value in event.items():
        span = spans.get(name)
        if span is None:
            if extra is None:
                extra = {}
            extra[name] = value
            continue
        kept += 1
        if span[0] < at:  # removed and set again: out of the row's order
            raise ValueError("a step removed a field of a click row")
        if value is span[2] and type(value) is not list:
            continue  # as read (a list may have been changed in place: written again)
        start, end, _ = span
        out += (line[at:start], orjson.dumps(value))
        at = end
    if kept != len(spans):
        raise ValueError("a step removed a field of a click row")
    if not out and extra is None:
        return line
    out.append(line[at : len(line) - 1])
    if extra is not None:
        if len(line) > 2:  # after the row's last field
            out.append(b",")
        out.append(orjson.dumps(extra)[1:])
    else:
        out.append(b"}")
    return b"".join(out)


def py_split_lines(parts: list[bytes]) -> list[bytes]:
    """The non-empty lines of each part, in order (the compiled one finds each newline
    with memchr: bytes.split looks at every byte, 4,000 instructions a click row)."""
    return [line for part in parts for line in part.split(b"\n") if line]


Fields: Callable[[Iterable[str]], PyFields] = PyFields
scan: Callable[[bytes, PyFields], tuple[Row, Spans] | None] = py_scan
splice: Callable[[bytes, Row, Spans], bytes] = py_splice
split_lines: Callable[[list[bytes]], list[bytes]] = py_split_lines
_compiled = extensions.load("tracker.sink.enrich._rows")
compiled = _compiled is not None
if _compiled is not None:
    Fields, scan, splice = _compiled.Fields, _compiled.scan, _compiled.splice
    split_lines = _compiled.split_lines


def enrich_lines(
    lines: list[bytes], fields: PyFields, process: Callable[[list[Row]], list[Row]]
) -> bytes:
    """`process` (the pipeline's steps over a list of events) over rows read with
    `scan`, the kept ones written back with `splice`, joined by newlines. A step returns
    the event it was given (changed in place) or drops it: an event `process` returns
    that it was not given is refused, since only its scanned fields would be written."""
    events: list[Row] = []
    found: dict[int, tuple[bytes, Spans | None]] = {}
    for line in lines:
        got = scan(line, fields)
        if got is None:
            event, spans = orjson.loads(line), None
        else:
            event, spans = got
        events.append(event)
        found[id(event)] = (line, spans)
    out: list[bytes] = []
    for event in process(events):
        given = found.get(id(event))
        if given is None:
            raise RuntimeError("an enrichment step returned a click row it was not given")
        line, spans = given
        out.append(orjson.dumps(event) if spans is None else splice(line, event, spans))
    return b"\n".join(out)
