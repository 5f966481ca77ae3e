"""`GET /postback` on the fast path (tracker/edge/fastpath.py): the same answer as
aiohttp's route (`postback.answer_postback`, the same code), without aiohttp's request
and response objects, routing and middlewares, and written in one piece.

Only a bodiless `GET /postback` whose request target is plain ASCII with no fragment comes
here; anything else (a POST with its body, HEAD, bytes aiohttp would read differently) is
aiohttp's. A postback waits for Redis, so the fast path answers it from a task.
"""

from __future__ import annotations

from functools import cache
from http import HTTPStatus
from urllib.parse import parse_qsl

from tracker.edge.clickpath import CLOSE, date_header
from tracker.edge.clicks import ClickContext, Hit
from tracker.edge.intake import ConversionIntake
from tracker.edge.postback import Answer, answer_postback

ROUTE = "/postback"  # as aiohttp's route counts its requests
_STARTS = (b"GET /postback?", b"GET /postback ")
INTERNAL_ERROR = (
    b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 25\r\nConnection: close\r\n\r\n500 Internal Server Error"
)


def is_postback(buffer: bytes | bytearray, start: int) -> bool:
    """Whether the request head at `start` is a `GET /postback` (cheap: first bytes, no
    copy: every request on the fast path asks)."""
    return buffer.startswith(_STARTS, start)


def servable(url: bytes, headers: dict[str, str]) -> bool:
    """Whether the fast path answers this postback exactly as aiohttp would."""
    return (
        url.isascii()
        and b"#" not in url
        and headers.get("content-length", "0") == "0"
        and "transfer-encoding" not in headers
    )


@cache  # the statuses are the routes' own few
def _status_lines(status: int) -> str:
    return f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: application/json\r\n"


def encode(answer: Answer, keep_alive: bool) -> bytes:
    """The answer's bytes: status line, the Content-Type aiohttp sends, the JSON body."""
    body = answer.body
    return (
        f"{_status_lines(answer.status)}Content-Length: {len(body)}\r\n"
        f"{date_header()}Server: tracker\r\n{'' if keep_alive else CLOSE}\r\n"
    ).encode() + body


def query_params(query: str) -> dict[str, str]:
    """What aiohttp's route reads (`dict(parse_qsl(query, keep_blank_values=True,
    errors="replace"))`), without its cost when nothing in the query is encoded."""
    if "%" in query or "+" in query:
        return dict(parse_qsl(query, keep_blank_values=True, errors="replace"))
    params = {}
    for field in query.split("&"):
        if field:
            name, _, value = field.partition("=")
            params[name] = value
    return params


async def answer(
    intake: ConversionIntake,
    clicks: ClickContext,
    url: bytes,
    headers: dict[str, str],
    peer: str | None,
    keep_alive: bool,
) -> bytes:
    raw = url.decode("ascii")
    query = raw.partition("?")[2]
    params = query_params(query)
    hit = Hit("GET", raw, query, headers, peer)
    answer = await answer_postback(intake, hit, ROUTE, params, b"")
    clicks.counters.requests[(ROUTE, answer.status)] += 1
    return encode(answer, keep_alive)
