"""The hot tracking routes: `/c/{slug}` (redirect) and `/p.gif` (pixel).

Each request is a short list of steps: read the request -> build the event -> record it
(an in-memory append; the writer flushes to Redis) -> respond. Nothing here awaits I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from . import events
from .hashcache import HashCache
from .ids import ZERO_UUID, is_uuid, uuid7
from .macros import render
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
    "<!doctype html><title>Link not found</title>"
    "<h1>Link not found</h1><p>This link does not exist or is no longer active.</p>"
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


def request_meta(request: web.Request, edge: Edge) -> events.RequestMeta:
    headers = request.headers
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return events.RequestMeta(
        ip=client_ip(peer[0] if peer else None, headers.get("X-Forwarded-For"), edge.trusted),
        user_agent=events.clean(headers.get("User-Agent", ""), events.MAX_HEADER),
        referer=events.clean(headers.get("Referer", ""), events.MAX_URL),
        accept_language=events.clean(headers.get("Accept-Language", ""), events.MAX_HEADER),
        url=events.clean(request.raw_path, events.MAX_URL),
        method=request.method,
    )


def visitor(request: web.Request, edge: Edge) -> tuple[str, bool]:
    """(visitor id, new?) from the cookie, or a fresh id."""
    vid = read_cookie(request.headers.get("Cookie"), edge.cookie_name)
    return (vid, False) if vid else (uuid7(), True)


_NO = ("", "0", "false", "no")


def wants_no_track(request: web.Request, params: dict[str, str], edge: Edge) -> bool:
    """`no-track=1` on the link, or the browser's `DNT: 1` / `Sec-GPC: 1`."""
    if not edge.honor_no_track:
        return False
    headers = request.headers
    return (params.get("no-track", "0").lower() not in _NO
            or headers.get("DNT") == "1" or headers.get("Sec-GPC") == "1")


def anonymous(meta: events.RequestMeta) -> events.RequestMeta:
    """What is kept of a no-track request: no address, referer or language; the user agent
    stays for bot detection and device counts, which say nothing about the person."""
    return events.RequestMeta(ip="::", user_agent=meta.user_agent, referer="",
                              accept_language="", url=meta.url, method=meta.method)


def respond(response: web.StreamResponse, edge: Edge, visitor_id: str, new: bool):
    response.headers["Cache-Control"] = "no-store"
    if new:
        response.headers["Set-Cookie"] = f"{edge.cookie_name}={visitor_id}{edge.cookie_attrs}"
    return response


def orphan(edge: Edge, ms: int, visitor_id: str, slug: str, reason: str, route: str, meta):
    edge.writer.add(
        "orphan_visits",
        events.orphan_row(
            ms=ms, visit_id=uuid7(ms), visitor_id=visitor_id,
            slug=events.clean(slug, 128), reason=reason, route=route, meta=meta,
        ),
    )


async def click(request: web.Request) -> web.StreamResponse:
    edge: Edge = request.app[EDGE]
    slug = request.match_info["slug"]
    meta = request_meta(request, edge)
    params = events.parse_query(request.rel_url.raw_query_string, edge.max_query_bytes)
    if wants_no_track(request, params, edge):
        meta, (visitor_id, new) = anonymous(meta), (ZERO_UUID, False)
    else:
        visitor_id, new = visitor(request, edge)
    ms = now_ms()
    link = edge.links.get(slug)
    if link is None or not link.active:
        orphan(edge, ms, visitor_id, slug, "unknown_link" if link is None else "disabled_link",
               "click", meta)
        if edge.fallback_url:
            response = web.Response(status=302, headers={"Location": edge.fallback_url})
        else:
            response = web.Response(status=404, text=NOT_FOUND_PAGE, content_type="text/html")
        return respond(response, edge, visitor_id, new)

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
    response = web.Response(status=302, headers={"Location": destination})
    return respond(response, edge, visitor_id, new)


async def pixel(request: web.Request) -> web.StreamResponse:
    edge: Edge = request.app[EDGE]
    meta = request_meta(request, edge)
    visitor_id, new = visitor(request, edge)
    ms = now_ms()
    params = events.parse_query(request.rel_url.raw_query_string, edge.max_query_bytes)
    if "txid" in params or "event" in params:  # a conversion pixel on a thank-you page
        await conversion_pixel(request, params, None if new else visitor_id, meta)
        return respond(web.Response(body=PIXEL, content_type="image/gif"), edge, visitor_id, new)
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
    response = web.Response(body=PIXEL, content_type="image/gif")
    return respond(response, edge, visitor_id, new)


EDGE = web.AppKey("edge", Edge)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/c/{slug}", click)  # GET and HEAD; other methods get 405
    app.router.add_get("/p.gif", pixel)
