"""The hot tracking routes: `/c/{slug}` (redirect) and `/p.gif` (pixel).

Each request is a short list of steps: read the request -> build the event -> record it
(an in-memory append; the writer flushes to Redis) -> reply. Nothing here awaits I/O.
The steps work on a `Hit` and return a `Reply`, so the aiohttp routes below and the lean
fast path (fastpath.py) give the same answers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from aiohttp import web
from multidict import CIMultiDict

from . import events
from .hashcache import HashCache
from .ids import ZERO_UUID, is_uuid, uuid7
from .macros import render
from .metrics import EdgeCounters
from .netaddr import Network, client_ip
from .postback import conversion_pixel
from .timefmt import now_ms
from .writer import EventWriter

# The smallest transparent GIF (43 bytes).
PIXEL = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00"
    b"\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
NOT_FOUND_PAGE = (
    b"<!doctype html><title>Link not found</title>"
    b"<h1>Link not found</h1><p>This link does not exist or is no longer active.</p>"
)
MAX_COOKIE_HEADER = 4096  # a longer Cookie header is ignored (the visitor gets a new id)


@dataclass(slots=True)
class Edge:
    """What the tracking routes need, prepared once per process."""

    links: HashCache
    writer: EventWriter
    trusted: list[Network]
    cookie_name: str
    cookie_attrs: str  # "; Max-Age=...; Path=/; ..." appended to the visitor id
    fallback_url: str
    max_query_bytes: int
    honor_no_track: bool = True
    counters: EdgeCounters = field(default_factory=EdgeCounters)
    # False from the moment the process is asked to stop: a click answered after the
    # writer's last flush would be acknowledged and lost, so none is answered then.
    accepting: bool = True


def cookie_attributes(max_age: int, samesite: str, secure: bool, domain: str) -> str:
    attrs = f"; Max-Age={max_age}; Path=/; SameSite={samesite}; HttpOnly"
    if secure:
        attrs += "; Secure"
    if domain:
        attrs += f"; Domain={domain}"
    return attrs


def read_cookie(header: str | None, name: str) -> str | None:
    """The visitor id from the Cookie header, or None when absent or not a valid id."""
    if not header or len(header) > MAX_COOKIE_HEADER:
        return None
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            value = value.strip('"')
            return value if is_uuid(value) else None
    return None


@dataclass(slots=True)
class Hit:
    """A tracking request as either server reads it (aiohttp, or the fast path)."""

    method: str
    raw_path: str  # path and query string as sent
    query: str  # the raw query string
    headers: Mapping[str, str]  # looked up by lower-case name
    peer: str | None


@dataclass(slots=True)
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""


def request_meta(hit: Hit, edge: Edge) -> events.RequestMeta:
    headers = hit.headers
    return events.RequestMeta(
        ip=client_ip(hit.peer, headers.get("x-forwarded-for"), edge.trusted),
        user_agent=events.clean(headers.get("user-agent", ""), events.MAX_HEADER),
        referer=events.clean(headers.get("referer", ""), events.MAX_URL),
        accept_language=events.clean(headers.get("accept-language", ""), events.MAX_HEADER),
        url=events.clean(hit.raw_path, events.MAX_URL),
        method=hit.method,
    )


def visitor(hit: Hit, edge: Edge) -> tuple[str, bool]:
    """(visitor id, new?) from the cookie, or a fresh id."""
    vid = read_cookie(hit.headers.get("cookie"), edge.cookie_name)
    return (vid, False) if vid else (uuid7(), True)


_NO = ("", "0", "false", "no")


def wants_no_track(hit: Hit, params: dict[str, str], edge: Edge) -> bool:
    """`no-track=1` on the link, or the browser's `DNT: 1` / `Sec-GPC: 1`."""
    if not edge.honor_no_track:
        return False
    headers = hit.headers
    return (params.get("no-track", "0").lower() not in _NO
            or headers.get("dnt") == "1" or headers.get("sec-gpc") == "1")


def anonymous(meta: events.RequestMeta) -> events.RequestMeta:
    """What is kept of a no-track request: no address, referer or language; the user agent
    stays for bot detection and device counts, which say nothing about the person."""
    return events.RequestMeta(ip="::", user_agent=meta.user_agent, referer="",
                              accept_language="", url=meta.url, method=meta.method)


def who(hit: Hit, params: dict[str, str], edge: Edge):
    """(request meta, visitor id, new visitor?), honouring no-track."""
    meta = request_meta(hit, edge)
    if wants_no_track(hit, params, edge):
        return anonymous(meta), ZERO_UUID, False
    return (meta, *visitor(hit, edge))


def finish(reply: Reply, edge: Edge, visitor_id: str, new: bool) -> Reply:
    reply.headers.append(("Cache-Control", "no-store"))
    if new:
        reply.headers.append(("Set-Cookie", f"{edge.cookie_name}={visitor_id}{edge.cookie_attrs}"))
    return reply


def orphan(edge: Edge, ms: int, visitor_id: str, slug: str, reason: str, route: str, meta):
    edge.writer.add(
        "orphan_visits",
        events.orphan_row(
            ms=ms, visit_id=uuid7(ms), visitor_id=visitor_id,
            slug=events.clean(slug, 128), reason=reason, route=route, meta=meta,
        ),
    )


def click_reply(edge: Edge, hit: Hit, slug: str) -> Reply:
    """GET /c/{slug}: read -> build the click -> record it (in memory) -> redirect."""
    params = events.parse_query(hit.query, edge.max_query_bytes)
    meta, visitor_id, new = who(hit, params, edge)
    ms = now_ms()
    link = edge.links.get(slug)
    if link is None or not link.active:
        orphan(edge, ms, visitor_id, slug, "unknown_link" if link is None else "disabled_link",
               "click", meta)
        if edge.fallback_url:
            reply = Reply(302, [("Location", edge.fallback_url)])
        else:
            reply = Reply(404, [("Content-Type", "text/html; charset=utf-8")], NOT_FOUND_PAGE)
        return finish(reply, edge, visitor_id, new)

    click_id = uuid7(ms)
    destination = render(
        link.destination,
        {
            "click_id": click_id,
            "visitor_id": visitor_id,
            "campaign_id": link.campaign_id,
            "affiliate_id": link.affiliate_id,
            **{key: params.get(key, "") for key in events.SUB_KEYS},
        },
    )
    row = events.click_row(
        ms=ms, click_id=click_id, visitor_id=visitor_id, new_visitor=new, link=link,
        params=params, meta=meta, destination=destination,
    )
    edge.writer.add_click(row, events.click_record(row, ms), ms)
    return finish(Reply(302, [("Location", destination)]), edge, visitor_id, new)


def is_conversion_pixel(params: dict[str, str]) -> bool:
    return "txid" in params or "event" in params


def pixel_reply(edge: Edge, hit: Hit, params: dict[str, str]) -> Reply:
    """GET /p.gif (an impression): record it and answer the 1x1 GIF."""
    meta, visitor_id, new = who(hit, params, edge)
    ms = now_ms()
    slug = params.get("slug", "")
    link = edge.links.get(slug) if slug else None
    campaign_id = params.get("campaign_id", "")
    if slug and link is None:
        orphan(edge, ms, visitor_id, slug, "unknown_link", "pixel", meta)
    elif link is None and not campaign_id:
        orphan(edge, ms, visitor_id, "", "no_link_or_campaign", "pixel", meta)
    else:
        edge.writer.add(
            "impressions",
            events.impression_row(
                ms=ms, impression_id=uuid7(ms), visitor_id=visitor_id, link=link,
                campaign_id=events.clean(campaign_id, 64), params=params, meta=meta,
            ),
        )
    return finish(gif(), edge, visitor_id, new)


def gif() -> Reply:
    return Reply(200, [("Content-Type", "image/gif")], PIXEL)


# -- the aiohttp routes (the fast path in fastpath.py serves the same replies) -------------


def hit_of(request: web.Request) -> Hit:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return Hit(request.method, request.raw_path, request.rel_url.raw_query_string,
               request.headers, peer[0] if peer else None)


def to_response(reply: Reply) -> web.Response:
    return web.Response(status=reply.status, body=reply.body, headers=CIMultiDict(reply.headers))


def refuse_when_stopping(edge: Edge) -> None:
    if not edge.accepting:
        raise web.HTTPServiceUnavailable(headers={"Connection": "close"})


async def click(request: web.Request) -> web.StreamResponse:
    refuse_when_stopping(request.app[EDGE])
    return to_response(click_reply(request.app[EDGE], hit_of(request),
                                   request.match_info["slug"]))


async def pixel(request: web.Request) -> web.StreamResponse:
    edge: Edge = request.app[EDGE]
    refuse_when_stopping(edge)
    hit = hit_of(request)
    params = events.parse_query(hit.query, edge.max_query_bytes)
    if is_conversion_pixel(params):  # a thank-you page: awaits Redis, so not the fast path
        meta, visitor_id, new = who(hit, params, edge)
        await conversion_pixel(request, params, None if new else visitor_id, meta)
        return to_response(finish(gif(), edge, visitor_id, new))
    return to_response(pixel_reply(edge, hit, params))


EDGE = web.AppKey("edge", Edge)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/c/{slug}", click)  # GET and HEAD; other methods get 405
    app.router.add_get("/p.gif", pixel)
