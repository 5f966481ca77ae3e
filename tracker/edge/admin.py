"""The admin API: `/api/links`, `/api/advertisers`. Errors are 4xx JSON with a short reason.

Who may call what is decided before a handler runs (tracker/edge/access.py); handlers
narrow what a caller sees to its own (`request[PRINCIPAL]`) and say what each write
changed (`audit`), which the access middleware appends to the audit log.
"""

from __future__ import annotations

import secrets
from typing import Any

import orjson
from aiohttp import web

from tracker import redis_keys as K
from tracker.access import BOOTSTRAP, Principal, Role
from tracker.advertisers import Advertiser, AdvertiserError, new_advertiser
from tracker.advertisers import apply_changes as change_advertiser
from tracker.advertisers import new_record as advertiser_record
from tracker.advertisers import stage_save as stage_advertiser
from tracker.edge import tag
from tracker.edge.keys import ADVERTISER_CACHE, AUDIT, LINK_CACHE, PRINCIPAL, REDIS, SETTINGS
from tracker.hashcache import create_async, parse_hash
from tracker.links import (
    SLUG_RE,
    Link,
    LinkError,
    apply_changes,
    check_routes,
    new_link,
    parse_all,
    stage_save,
)
from tracker.links import new_record as link_record
from tracker.reasons import AdminError
from tracker.records import SUB_KEYS


def json_response(data, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def error(status: int, code: AdminError, reason: str) -> web.Response:
    return json_response({"error": code, "reason": reason}, status)


def principal(request: web.Request) -> Principal:
    return request.get(PRINCIPAL) or BOOTSTRAP


def audit(request: web.Request, target: str, before: Any = None, after: Any = None) -> None:
    """What the audit entry of this write shows (the access middleware appends it)."""
    request[AUDIT] = {"target": target, "before": before, "after": after}


async def read_body(request: web.Request):
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


async def _check_routes(request: web.Request, link: Link) -> None:
    """Rules may name only existing links and make no cycle (LinkError otherwise)."""
    if link.routing is not None:
        check_routes(link, parse_all(await request.app[REDIS].hgetall(K.LINKS_HASH)))


async def create_link(request: web.Request) -> web.Response:
    body = await read_body(request)
    who = principal(request)
    subs: dict[str, str] = {}
    try:
        if who.role == Role.AFFILIATE:
            link, subs = await _affiliate_link(request, who, body)
        else:
            link = new_link(body)
        await _check_routes(request, link)
    except LinkError as exc:
        return error(400, AdminError.INVALID_LINK, str(exc))
    except PermissionError as exc:
        return error(403, AdminError.FORBIDDEN, str(exc))
    if not await create_async(request.app[REDIS], link_record(link)):
        return error(409, AdminError.EXISTS, f"link {link.slug!r} already exists")
    await request.app[LINK_CACHE].reload()  # this process sees the change at once
    audit(request, link.slug, None, link.public())
    url = request.url.with_path(f"/c/{link.slug}").with_query(subs)
    return json_response({**link.public(), "url": str(url)}, 201)


async def _affiliate_link(request: web.Request, who: Principal, body: Any):
    """An affiliate's own link: a copy of the campaign's offer link (the active link of
    that campaign with no affiliate, which the admin creates), for a campaign the key may
    promote. The destination is never the affiliate's to choose (no open redirect); sub
    ids go into the tracking URL it returns."""
    if not isinstance(body, dict):
        raise LinkError("body must be a JSON object")
    unknown = set(body) - {"campaign_id", "slug", *SUB_KEYS}
    if unknown:
        raise LinkError(f"unknown field: {sorted(unknown)[0]}")
    campaign = body.get("campaign_id")
    if not isinstance(campaign, str) or campaign not in who.campaigns:
        raise PermissionError("this key may not promote that campaign")
    subs = {}
    for key in SUB_KEYS:
        value = body.get(key, "")
        if not isinstance(value, str) or len(value) > 200:
            raise LinkError(f"{key} must be a string of up to 200 characters")
        if value:
            subs[key] = value
    links = parse_all(await request.app[REDIS].hgetall(K.LINKS_HASH))
    offers = [
        link
        for _, link in sorted(links.items())
        if link.campaign_id == campaign and not link.affiliate_id and link.active
    ]
    if not offers:
        raise LinkError(f"campaign {campaign!r} has no offer link yet")
    slug = body.get("slug") or f"{campaign}-{who.subject}-{secrets.token_hex(3)}"[-64:]
    if not isinstance(slug, str) or not SLUG_RE.match(slug):
        raise LinkError("slug must be 1-64 letters, digits, '-', '_' or '.'")
    link = new_link(
        {
            "slug": slug,
            "destination": offers[0].destination,
            "campaign_id": campaign,
            "affiliate_id": who.subject,
            "advertiser_id": offers[0].advertiser_id,
        }
    )
    return link, subs


async def list_links(request: web.Request) -> web.Response:
    links = parse_all(await request.app[REDIS].hgetall(K.LINKS_HASH))
    status = request.query.get("status")
    who = principal(request)
    items = [
        link.public()
        for slug, link in sorted(links.items())
        if (status is None or link.status == status) and who.sees_link(link)
    ]
    return json_response({"links": items, "count": len(items)})


async def get_link(request: web.Request) -> web.Response:
    slug = request.match_info["slug"]
    link = await _load(request, slug)
    if link is None or not principal(request).sees_link(link):  # others' links: unknown
        return error(404, AdminError.NOT_FOUND, f"no link {slug!r}")
    return json_response(link.public())


async def update_link(request: web.Request) -> web.Response:
    slug = request.match_info["slug"]
    link = await _load(request, slug)
    if link is None:
        return error(404, AdminError.NOT_FOUND, f"no link {slug!r}")
    try:
        changed = apply_changes(link, await read_body(request))
        await _check_routes(request, changed)
    except LinkError as exc:
        return error(400, AdminError.INVALID_LINK, str(exc))
    await _save(request, changed)
    audit(request, slug, link.public(), changed.public())
    return json_response(changed.public())


async def delete_link(request: web.Request) -> web.Response:
    slug = request.match_info["slug"]
    link = await _load(request, slug)
    if link is None:
        return error(404, AdminError.NOT_FOUND, f"no link {slug!r}")
    await _save(request, apply_changes(link, {}), deleted=True)
    audit(request, slug, link.public(), None)
    return json_response({"deleted": slug})


async def create_advertiser(request: web.Request) -> web.Response:
    try:
        advertiser = new_advertiser(await read_body(request))
    except AdvertiserError as exc:
        return error(400, AdminError.INVALID_ADVERTISER, str(exc))
    if not await create_async(request.app[REDIS], advertiser_record(advertiser)):
        return error(409, AdminError.EXISTS, f"advertiser {advertiser.id!r} already exists")
    await request.app[ADVERTISER_CACHE].reload()
    audit(request, advertiser.id, None, advertiser.public())
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


async def update_advertiser(request: web.Request) -> web.Response:
    adv_id = request.match_info["id"]
    redis = request.app[REDIS]
    raw = await redis.hget(K.ADVERTISERS_HASH, adv_id)
    if raw is None:
        return error(404, AdminError.NOT_FOUND, f"no advertiser {adv_id!r}")
    before = Advertiser.from_json(raw)
    try:
        advertiser = change_advertiser(before, await read_body(request))
    except AdvertiserError as exc:
        return error(400, AdminError.INVALID_ADVERTISER, str(exc))
    pipe = redis.pipeline(transaction=False)
    stage_advertiser(pipe, advertiser)
    await pipe.execute()
    await request.app[ADVERTISER_CACHE].reload()
    audit(request, advertiser.id, before.public(), advertiser.public())
    # a new token is shown once, to whoever rotated it
    return json_response(advertiser.public(with_token=advertiser.token != before.token))


async def advertiser_tag(request: web.Request) -> web.Response:
    """The first-party tag's script tags for this advertiser, with the current version."""
    adv_id = request.match_info["id"]
    raw = await request.app[REDIS].hget(K.ADVERTISERS_HASH, adv_id)
    if raw is None:
        return error(404, AdminError.NOT_FOUND, f"no advertiser {adv_id!r}")
    advertiser = Advertiser.from_json(raw)
    base = f"{request.scheme}://{request.host}"
    return json_response(
        {
            "version": tag.tag().version,
            **tag.snippets(
                base,
                advertiser.id,
                advertiser.click_param,
                request.app[SETTINGS].tracking.lookback_days,
            ),
        }
    )


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/advertisers", create_advertiser)
    app.router.add_patch("/api/advertisers/{id}", update_advertiser)
    app.router.add_get("/api/advertisers", list_advertisers)
    app.router.add_get("/api/advertisers/{id}", get_advertiser)
    app.router.add_patch("/api/advertisers/{id}", update_advertiser)
    app.router.add_get("/api/advertisers/{id}/tag", advertiser_tag)
    app.router.add_post("/api/links", create_link)
    app.router.add_get("/api/links", list_links)
    app.router.add_get("/api/links/{slug}", get_link)
    app.router.add_patch("/api/links/{slug}", update_link)
    app.router.add_delete("/api/links/{slug}", delete_link)
