"""`POST /api/privacy/erase` and `GET /api/privacy/export` (admin only; tracker/privacy_ops.py).

The edge holds no ClickHouse, so it asks the sink's query endpoint to do the work, as the
report API does; an erase is recorded in the audit log with what it found.
"""

from __future__ import annotations

import aiohttp
import orjson
from aiohttp import web

from tracker.edge.admin import audit, error, json_response, read_body
from tracker.edge.keys import SETTINGS
from tracker.privacy_ops import PrivacyError, checked
from tracker.reasons import AdminError


async def _ask_sink(request: web.Request, action: str, visitor: str) -> web.Response | dict:
    s = request.app[SETTINGS]
    url = f"http://{s.sink.query_host}:{s.sink.query_port}/privacy/{action}"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session,
            session.post(
                url,
                data=orjson.dumps({"visitor_id": visitor}),
                headers={"Authorization": f"Bearer {s.admin_token}"},
            ) as response,
        ):
            body = orjson.loads(await response.read())
    except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
        return error(503, AdminError.REPORT_STORE, f"the sink did not answer: {type(exc).__name__}")
    if response.status != 200:
        return error(400, AdminError.INVALID, str(body.get("error", response.status))[:300])
    return body


def _visitor(value) -> str:
    try:
        return checked(value)
    except PrivacyError as exc:
        raise web.HTTPBadRequest(
            body=orjson.dumps({"error": AdminError.INVALID, "reason": str(exc)}),
            content_type="application/json",
        ) from None


async def erase(request: web.Request) -> web.Response:
    body = await read_body(request)
    visitor = _visitor(body.get("visitor_id") if isinstance(body, dict) else None)
    answer = await _ask_sink(request, "erase", visitor)
    if isinstance(answer, web.Response):
        return answer
    audit(request, visitor, None, answer)
    return json_response({"visitor_id": visitor, "erased": answer})


async def export(request: web.Request) -> web.Response:
    visitor = _visitor(request.query.get("visitor_id"))
    answer = await _ask_sink(request, "export", visitor)
    return answer if isinstance(answer, web.Response) else json_response(answer)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/privacy/erase", erase)
    app.router.add_get("/api/privacy/export", export)
