"""The aiohttp routes for `/c/{slug}` and `/p.gif`: thin adapters over clicks.py.

The fast path (fastpath.py) serves the same replies without aiohttp; a conversion pixel
awaits Redis, so it is always served here.
"""

from __future__ import annotations

from aiohttp import web

from tracker import records
from tracker.edge.clicks import (
    ClickContext,
    click_reply,
    finish,
    gif,
    is_conversion_pixel,
    pixel_reply,
    who,
)
from tracker.edge.hit import hit_of, to_response
from tracker.edge.keys import CLICKS
from tracker.edge.postback import conversion_pixel


async def admit(ctx: ClickContext) -> None:
    """Wait while the writer is behind Redis (the fast path stops reading then; here each
    connection's request waits, so the clients do); refuse once the edge is stopping."""
    await ctx.writer.caught_up()
    if not ctx.accepting:
        raise web.HTTPServiceUnavailable(headers={"Connection": "close"})


async def click(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CLICKS]
    await admit(ctx)
    return to_response(click_reply(ctx, hit_of(request), request.match_info["slug"]))


async def pixel(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CLICKS]
    await admit(ctx)
    hit = hit_of(request)
    params = records.parse_query(hit.query, ctx.max_query_bytes)
    if is_conversion_pixel(params):  # a thank-you page: awaits Redis, so not the fast path
        meta, visitor_id, new = who(hit, params, ctx)
        await conversion_pixel(request, params, None if new else visitor_id, meta)
        return to_response(finish(gif(), ctx, visitor_id, new))
    return to_response(pixel_reply(ctx, hit, params))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/c/{slug}", click)  # GET and HEAD; other methods get 405
    app.router.add_get("/p.gif", pixel)
