"""`/healthz` (the process answers) and `/readyz` (Redis answers, this edge can store what
it answers for, the sink keeps up)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from tracker.edge.admin import json_response
from tracker.edge.keys import MAX_LAG, REDIS, SHARDS, WRITER
from tracker.stream_lag import stream_lag_async, streams


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    redis = request.app[REDIS]
    problems: list[str] = []
    lag = None
    try:
        await asyncio.wait_for(redis.ping(), 1.0)
        lag = await asyncio.wait_for(stream_lag_async(redis, streams(request.app[SHARDS])), 1.0)
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
        problems.append(f"redis unreachable: {type(exc).__name__}")
    if WRITER in request.app and request.app[WRITER].losing:
        problems.append("events dropped: neither redis nor the spool takes them")
    if lag is not None and lag > request.app[MAX_LAG]:
        problems.append(f"sink lag {lag} stream entries")
    body: dict[str, object] = {
        "status": "ready" if not problems else "not ready",
        "sink_lag": lag,
    }
    if problems:
        body["problems"] = problems
    return json_response(body, 200 if not problems else 503)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
