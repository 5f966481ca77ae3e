"""The admin API: `/api/links` (bearer token). Errors are 4xx JSON with a short reason."""

from __future__ import annotations

import hmac

import orjson
from aiohttp import web

from tracker import redis_keys as K
from tracker.advertisers import Advertiser, AdvertiserError, new_advertiser
from tracker.advertisers import stage_save as stage_advertiser
from tracker.edge.keys import ADMIN_TOKEN, ADVERTISER_CACHE, LINK_CACHE, REDIS
from tracker.hashcache import parse_hash
from tracker.links import Link, LinkError, apply_changes, new_link, parse_all, stage_save
from tracker.reasons import AdminError


def json_response(data, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def error(status: int, code: AdminError, reason: str) -> web.Response:
    return json_response({"error": code, "reason": reason}, status)


@web.middleware
async def require_token(request: web.Request, handler):
    """Every /api/ route needs `Authorization: Bearer <admin token>`."""
    if request.path.startswith("/api/"):
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        expected = request.app[ADMIN_TOKEN]
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), expected.encode()
        ):
            return error(401, AdminError.UNAUTHORIZED, "missing or wrong bearer token")
    return await handler(request)


async def _body(request: web.Request):
    try:
        return orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise web.HTTPBadRequest(
            body=orjson.dumps(
                {"error": AdminError.INVALID_JSON, "reason": "body is not valid JSON"}
            ),
            content_type="application/json",
        ) from None


async def _load(request: web.Request, slug: str) -> Link | None:
    raw = await request.app[REDIS].hget(K.LINKS_HASH, slug)
    return Link.from_json(raw) if raw else None


async def _save(request: web.Request, link: Link, deleted: bool = False) -> None:
    pipe = request.app[REDIS].pipeline(transaction=False)
    stage_save(pipe, link, deleted)
    await pipe.execute()
    await request.app[LINK_CACHE].reload()  # this process sees the change at once


async def create_link(request: web.Request) -> web.Response:
    try:
        link = new_link(await _body(request))
    except LinkError as exc:
        return error(400, AdminError.INVALID_LINK, str(exc))
    redis = request.app[REDIS]
    if not await redis.hsetnx(K.LINKS_HASH, link.slug, link.to_json()):
        return error(409, AdminError.EXISTS, f"link {link.slug!r} already exists")
    await _save(request, link)
    return json_response(link.public(), 201)


async def list_links(request: web.Request) -> web.Response:
    links = parse_all(await request.app[REDIS].hgetall(K.LINKS_HASH))
    status = request.query.get("status")
    items = [
        link.public()
        for slug, link in sorted(links.items())
        if status is None or link.status == status
    ]
    return json_response({"links": items, "count": len(items)})


async def get_link(request: web.Request) -> web.Response:
    slug = request.match_info["slug"]
    link = await _load(request, slug)
    if link is None:
        return error(404, AdminError.NOT_FOUND, f"no link {slug!r}")
    return json_response(link.public())


async def update_link(request: web.Request) -> web.Response:
    slug = request.match_info["slug"]
    link = await _load(request, slug)
    if link is None:
        return error(404, AdminError.NOT_FOUND, f"no link {slug!r}")
    try:
        link = apply_changes(link, await _body(request))
    except LinkError as exc:
        return error(400, AdminError.INVALID_LINK, str(exc))
    await _save(request, link)
    return json_response(link.public())


async def delete_link(request: web.Request) -> web.Response:
    slug = request.match_info["slug"]
    link = await _load(request, slug)
    if link is None:
        return error(404, AdminError.NOT_FOUND, f"no link {slug!r}")
    await _save(request, apply_changes(link, {}), deleted=True)
    return json_response({"deleted": slug})


async def create_advertiser(request: web.Request) -> web.Response:
    try:
        advertiser = new_advertiser(await _body(request))
    except AdvertiserError as exc:
        return error(400, AdminError.INVALID_ADVERTISER, str(exc))
    redis = request.app[REDIS]
    if not await redis.hsetnx(K.ADVERTISERS_HASH, advertiser.id, advertiser.to_json()):
        return error(409, AdminError.EXISTS, f"advertiser {advertiser.id!r} already exists")
    pipe = redis.pipeline(transaction=False)
    stage_advertiser(pipe, advertiser)
    await pipe.execute()
    await request.app[ADVERTISER_CACHE].reload()
    return json_response(advertiser.public(with_token=True), 201)


async def list_advertisers(request: web.Request) -> web.Response:
    items = parse_hash(await request.app[REDIS].hgetall(K.ADVERTISERS_HASH), Advertiser.from_json)
    data = [adv.public() for _, adv in sorted(items.items())]
    return json_response({"advertisers": data, "count": len(data)})


async def get_advertiser(request: web.Request) -> web.Response:
    adv_id = request.match_info["id"]
    raw = await request.app[REDIS].hget(K.ADVERTISERS_HASH, adv_id)
    if raw is None:
        return error(404, AdminError.NOT_FOUND, f"no advertiser {adv_id!r}")
    return json_response(Advertiser.from_json(raw).public(with_token=True))


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/advertisers", create_advertiser)
    app.router.add_get("/api/advertisers", list_advertisers)
    app.router.add_get("/api/advertisers/{id}", get_advertiser)
    app.router.add_post("/api/links", create_link)
    app.router.add_get("/api/links", list_links)
    app.router.add_get("/api/links/{slug}", get_link)
    app.router.add_patch("/api/links/{slug}", update_link)
    app.router.add_delete("/api/links/{slug}", delete_link)
