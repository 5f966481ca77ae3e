"""The fast path's core: one call from a tracking request's raw head to its answer bytes.

`ClickPath.handle` takes the bytes of a request head that llhttp has already validated
(the fast path keeps them in its buffer) and returns the whole HTTP answer, after
recording the event in memory (the writer flushes to Redis), or says that the request is
not for the fast path (`HAND_OVER`) or too large (`TOO_LARGE`).

This module is the reference and the fallback. `tracker/edge/_clickpath.pyx` is the same
class compiled with Cython (as aiohttp keeps `_http_parser.pyx` beside `http_parser.py`):
it serves the common click (a plain active link, an ASCII request) by working on the
bytes directly, and hands every other request to this module, so both give byte-identical
answers, rows and Redis records. `ClickPath` below names the compiled class when it is
built and `TRACKER_NO_EXTENSIONS` is not set; `PyClickPath` is always this one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol
from urllib.parse import unquote

from tracker import extensions, records
from tracker.edge.clicks import (
    ClickContext,
    Hit,
    Reply,
    click_reply,
    is_conversion_pixel,
    pixel_reply,
)
from tracker.http_limits import MAX_FIELD, MAX_HEADERS, MAX_LINE

HAND_OVER = 1  # not for the fast path: aiohttp answers it
TOO_LARGE = 2  # a request line or headers over the limits: 431

CLICK_ROUTE = "/c/{slug}"
PIXEL_ROUTE = "/p.gif"

REASONS = {
    200: "OK",
    302: "Found",
    400: "Bad Request",
    404: "Not Found",
    431: "Request Header Fields Too Large",
}

CLOSE = "Connection: close\r\n"

_date_line = ""
_date_second = 0


def date_header() -> str:
    """The Date header, formatted once a second."""
    global _date_line, _date_second
    now = int(time.time())
    if _date_second != now:
        _date_line = time.strftime("Date: %a, %d %b %Y %H:%M:%S GMT\r\n", time.gmtime(now))
        _date_second = now
    return _date_line


def encode(reply: Reply, head: bool, keep_alive: bool) -> bytes:
    fields = "".join([f"{name}: {value}\r\n" for name, value in reply.headers])
    data = (
        f"HTTP/1.1 {reply.status} {REASONS.get(reply.status, 'OK')}\r\n{fields}"
        f"Content-Length: {len(reply.body)}\r\n{date_header()}Server: tracker\r\n"
        f"{'' if keep_alive else CLOSE}\r\n"
    ).encode()
    return data if head else data + reply.body


def py_head_span(buffer: bytes | bytearray) -> tuple[int, int]:
    """(start, end) of the first request head in buffer: llhttp skips empty lines before a
    request line, and the head ends before the blank line (end is -1 if not there yet)."""
    start = 0
    while buffer[start : start + 2] == b"\r\n":
        start += 2
    return start, buffer.find(b"\r\n\r\n", start)


def parse_head(head: bytes) -> tuple[bytes, bytes, dict[str, str]] | int:
    """(method, request target, headers by lower-case name) of a head llhttp accepted;
    the first of a repeated header wins (as aiohttp's `.get()`)."""
    lines = head.split(b"\r\n")
    method, _, rest = lines[0].partition(b" ")
    url = rest.lstrip(b" ").partition(b" ")[0]
    if len(url) > MAX_LINE:
        return TOO_LARGE
    headers: dict[str, str] = {}
    total = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        value = value.lstrip(b" \t")
        total += len(name) + len(value)
        if len(value) > MAX_FIELD or total > MAX_HEADERS:
            return TOO_LARGE
        key = name.decode("latin-1").lower()
        if key not in headers:
            headers[key] = value.decode("utf-8", "surrogateescape")
    return method, url, headers


def is_tracking_path(path: bytes) -> bool:
    return path.startswith(b"/c/") and b"/" not in path[3:] and len(path) > 3 or path == b"/p.gif"


class PyClickPath:
    """The reference implementation (and the fallback of the compiled one)."""

    def __init__(self, ctx: ClickContext) -> None:
        self.ctx = ctx

    def handle(
        self, buffer: bytes | bytearray, start: int, end: int, peer: str | None, keep_alive: bool
    ) -> bytes | int:
        """The answer to the request head buffer[start:end], or HAND_OVER / TOO_LARGE."""
        parsed = parse_head(bytes(buffer[start:end]))
        if isinstance(parsed, int):
            return parsed
        method, url, headers = parsed
        if (
            method not in (b"GET", b"HEAD")
            or headers.get("content-length", "0") != "0"
            or "transfer-encoding" in headers
        ):
            return HAND_OVER
        if not is_tracking_path(url.split(b"?", 1)[0]):
            return HAND_OVER
        ctx = self.ctx
        raw = url.decode("utf-8", "surrogateescape")
        path, _, query = raw.partition("?")
        hit = Hit(method.decode(), raw, query, headers, peer)
        if path == "/p.gif":
            params = records.parse_query(query, ctx.max_query_bytes)
            if is_conversion_pixel(params):
                return HAND_OVER
            reply = pixel_reply(ctx, hit, params)
            route = PIXEL_ROUTE
        else:
            reply = click_reply(ctx, hit, unquote(path[3:], errors="replace"))
            route = CLICK_ROUTE
        ctx.counters.requests[(route, reply.status)] += 1
        return encode(reply, method == b"HEAD", keep_alive)


class Core(Protocol):
    """What the fast path calls: PyClickPath, or the compiled ClickPath."""

    def handle(
        self, buffer: bytes | bytearray, start: int, end: int, peer: str | None, keep_alive: bool
    ) -> bytes | int: ...


ClickPath: Callable[[ClickContext], Core] = PyClickPath
head_span = py_head_span
_compiled = extensions.load("tracker.edge._clickpath")
if _compiled is not None:
    ClickPath, head_span = _compiled.ClickPath, _compiled.head_span
