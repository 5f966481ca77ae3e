"""`GET /postback` on the fast path (tracker/edge/fastpath.py): the same answer as
aiohttp's route (`postback.answer_postback`, the same code), without aiohttp's request
and response objects, routing and middlewares, and written in one piece.

Only a bodiless `GET /postback` whose request target is plain ASCII with no fragment comes
here; anything else (a POST with its body, HEAD, bytes aiohttp would read differently) is
aiohttp's. A postback waits for Redis: the fast path writes its answer when it is settled
(`start`).
"""

from __future__ import annotations

import asyncio
from functools import cache, partial
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

from redis.exceptions import NoScriptError

from tracker.edge import postback_script
from tracker.edge.clickpath import CLOSE, date_header
from tracker.edge.clicks import ClickContext, Hit
from tracker.edge.conversion_input import Rejected
from tracker.edge.intake import ConversionIntake
from tracker.edge.postback import (
    Answer,
    Pending,
    check_postback,
    failed,
    finish_postback,
    refuse,
    settle,
)

ROUTE = "/postback"  # as aiohttp's route counts its requests
# How the head of a postback the fast path answers starts (a test of the buffer's first
# bytes, no copy: every request on the fast path asks).
STARTS = (b"GET /postback?", b"GET /postback ")
INTERNAL_ERROR = (
    b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 25\r\nConnection: close\r\n\r\n500 Internal Server Error"
)


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


def start(
    intake: ConversionIntake,
    clicks: ClickContext,
    url: bytes,
    headers: dict[str, str],
    peer: str | None,
    keep_alive: bool,
) -> bytes | asyncio.Future[bytes]:
    """The answer's bytes, at once (a refusal), or their future.

    A new postback is usually recorded without a task: the script's call goes out at
    once and its reply's callback settles the answer (a task and its hops cost ~5 µs a
    postback). The first postbacks (the script to load, a connection to open), a click of
    the last seconds (the script may answer `retry`), a status change and a Cluster go
    through `finish_postback`, the coroutine aiohttp's route awaits."""
    raw = url.decode("ascii")
    query = raw.partition("?")[2]
    params = query_params(query)
    pending = check_postback(intake, Hit("GET", raw, query, headers, peer), ROUTE, params, b"")
    if isinstance(pending, Answer):
        return respond(clicks, pending, keep_alive)
    call = None
    if pending.prepared is not None and not pending.recent:
        pending.prepared.args[postback_script.RECENT_ARG] = "0"
        call = intake.new_postback.send(pending.prepared)
    if call is None:
        return asyncio.ensure_future(finish(intake, clicks, pending, keep_alive))
    answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    call.add_done_callback(partial(settled, intake, clicks, pending, keep_alive, answer))
    return answer


def settled(
    intake: ConversionIntake,
    clicks: ClickContext,
    pending: Pending,
    keep_alive: bool,
    answer: asyncio.Future[bytes],
    call: asyncio.Future[list[Any]],
) -> None:
    """The script's reply is in: settle the answer, or leave it to `finish_postback`."""
    if call.cancelled():
        answer.cancel()
        return
    script_settled = True
    settled_answer: Answer | None
    try:
        settled_answer = settle(intake, pending, call.result())
    except Rejected as exc:
        settled_answer = refuse(intake, pending.params, exc)
    except NoScriptError:  # Redis lost its scripts: nothing was recorded; load it again
        settled_answer, script_settled = None, False
    except Exception as exc:  # Redis away or slow: 503, as the coroutine answers
        settled_answer = failed(intake, exc, "postback")
    if settled_answer is not None:
        answer.set_result(respond(clicks, settled_answer, keep_alive))
        return
    task = asyncio.ensure_future(finish(intake, clicks, pending, keep_alive, script_settled))
    task.add_done_callback(partial(_copy, answer))


def _copy(answer: asyncio.Future[bytes], task: asyncio.Future[bytes]) -> None:
    if task.cancelled():
        answer.cancel()
    elif (exc := task.exception()) is not None:
        answer.set_exception(exc)
    else:
        answer.set_result(task.result())


async def finish(
    intake: ConversionIntake,
    clicks: ClickContext,
    pending: Pending,
    keep_alive: bool,
    script_settled: bool = False,
) -> bytes:
    answer = await finish_postback(intake, pending, script_settled=script_settled)
    return respond(clicks, answer, keep_alive)


def respond(clicks: ClickContext, answer: Answer, keep_alive: bool) -> bytes:
    clicks.counters.requests[(ROUTE, answer.status)] += 1
    return encode(answer, keep_alive)
