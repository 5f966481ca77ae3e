"""`/api/routing/campaign-caps`: click and conversion caps of whole campaigns (admin-only:
the access policy does not list these routes). A link's own rules and caps are its
`routing` field on `/api/links`."""

from __future__ import annotations

import orjson
from aiohttp import web

from tracker import redis_keys as K
from tracker.edge.admin import audit, error, json_response, read_body
from tracker.edge.keys import CAMPAIGN_CAPS, REDIS
from tracker.reasons import AdminError
from tracker.routing import campaign_caps
from tracker.routing.rules import RoutingError


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def list_caps(request: web.Request) -> web.Response:
    raw = await request.app[REDIS].hgetall(K.CAMPAIGN_CAPS_HASH)
    return json_response({_text(k): orjson.loads(v) for k, v in sorted(raw.items())})


async def put_caps(request: web.Request) -> web.Response:
    campaign_id = request.match_info["id"]
    body = await read_body(request)
    try:
        campaign_caps.parse(campaign_id, body)
    except RoutingError as exc:
        return error(400, AdminError.INVALID, str(exc))
    redis = request.app[REDIS]
    before = await redis.hget(K.CAMPAIGN_CAPS_HASH, campaign_id)
    pipe = redis.pipeline(transaction=False)
    campaign_caps.stage_save(pipe, campaign_id, body)
    await pipe.execute()
    await request.app[CAMPAIGN_CAPS].reload()  # this process at once, the others shortly
    audit(request, f"campaign_caps:{campaign_id}", before and orjson.loads(before), body)
    return json_response({"campaign_id": campaign_id, **body})


async def delete_caps(request: web.Request) -> web.Response:
    campaign_id = request.match_info["id"]
    redis = request.app[REDIS]
    before = await redis.hget(K.CAMPAIGN_CAPS_HASH, campaign_id)
    if before is None:
        return error(404, AdminError.NOT_FOUND, "that campaign has no caps")
    pipe = redis.pipeline(transaction=False)
    campaign_caps.stage_save(pipe, campaign_id, None)
    await pipe.execute()
    await request.app[CAMPAIGN_CAPS].reload()
    audit(request, f"campaign_caps:{campaign_id}", orjson.loads(before), None)
    return json_response({"deleted": campaign_id})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/routing/campaign-caps", list_caps)
    app.router.add_put("/api/routing/campaign-caps/{id}", put_caps)
    app.router.add_delete("/api/routing/campaign-caps/{id}", delete_caps)
