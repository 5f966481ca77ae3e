"""The click and pixel core: a `Hit` in, a `Reply` out, for `/c/{slug}` and `/p.gif`.

Each request is a short list of steps: read the request -> build the event -> record it
(an in-memory append; the writer flushes to Redis) -> reply. Nothing here awaits I/O and
nothing here knows aiohttp: the aiohttp routes (routes.py) and the lean fast path
(fastpath.py) are thin adapters over these functions, so both give the same answers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from tracker import records
from tracker.clock import Clock, clock_ms, system_clock
from tracker.edge.caps import CapCounters, ConversionCounts
from tracker.edge.client_ip import Network, client_ip
from tracker.edge.routing import Lookups, route
from tracker.edge.writer import EventWriter
from tracker.hashcache import HashCache
from tracker.ids import ZERO_UUID, is_uuid, uuid7
from tracker.ip_privacy import IpKeys, anonymize_ip
from tracker.links import Link
from tracker.macros import render
from tracker.metrics import EdgeCounters
from tracker.reasons import OrphanVisit
from tracker.routing.rules import Decision

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
class ClickContext:
    """What the tracking routes need, prepared once per process."""

    links: HashCache
    writer: EventWriter
    trusted: list[Network]
    cookie_name: str
    cookie_attrs: str  # "; Max-Age=...; Path=/; ..." appended to the visitor id
    fallback_url: str
    max_query_bytes: int
    honor_no_track: bool = True
    ip_keys: IpKeys | None = None  # set: `privacy.anonymize_ip` (tracker/ip_privacy.py)
    clock: Clock = system_clock  # stamps every event
    counters: EdgeCounters = field(default_factory=EdgeCounters)
    lookups: Lookups = field(default_factory=lambda: Lookups([]))  # geo for routed links
    caps: CapCounters | None = None  # click caps of routed links, shared by the edges
    campaign_caps: HashCache | None = None  # campaign id -> Caps (tracker/routing/campaign_caps)
    conversions: ConversionCounts | None = None  # accepted conversions of capped campaigns
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


def request_meta(
    hit: Hit, trusted: list[Network], anonymize: bool = False, ip_keys: IpKeys | None = None
) -> records.RequestMeta:
    """The request's fields as recorded. Anonymising (`anonymize`, or `ip_keys` given):
    the address is truncated here, before anything holds it, and its keyed hash kept
    for the per-IP fraud counters."""
    headers = hit.headers
    ip = client_ip(hit.peer, headers.get("x-forwarded-for"), trusted)
    key = ""
    if anonymize or ip_keys is not None:
        key = ip_keys.key_of(ip) if ip_keys is not None else ""
        ip = anonymize_ip(ip)
    return records.RequestMeta(
        ip=ip,
        ip_key=key,
        user_agent=records.clean(headers.get("user-agent", ""), records.MAX_HEADER),
        referer=records.clean(headers.get("referer", ""), records.MAX_URL),
        accept_language=records.clean(headers.get("accept-language", ""), records.MAX_HEADER),
        url=records.clean(hit.raw_path, records.MAX_URL),
        method=hit.method,
    )


def visitor(hit: Hit, ctx: ClickContext, mint: bool = True) -> tuple[str, bool]:
    """(visitor id, new?) from the cookie, or a fresh id ("" unless `mint`: a click
    gives a new visitor its own id, tracker/hot.py)."""
    vid = read_cookie(hit.headers.get("cookie"), ctx.cookie_name)
    return (vid, False) if vid else (uuid7() if mint else "", True)


_NO = ("", "0", "false", "no")


def wants_no_track(hit: Hit, params: dict[str, str], ctx: ClickContext) -> bool:
    """`no-track=1` on the link, or the browser's `DNT: 1` / `Sec-GPC: 1`."""
    if not ctx.honor_no_track:
        return False
    headers = hit.headers
    return (
        params.get("no-track", "0").lower() not in _NO
        or headers.get("dnt") == "1"
        or headers.get("sec-gpc") == "1"
    )


def anonymous(meta: records.RequestMeta) -> records.RequestMeta:
    """What is kept of a no-track request: no address, referer or language; the user agent
    stays for bot detection and device counts, which say nothing about the person."""
    return records.RequestMeta(
        ip="::",
        user_agent=meta.user_agent,
        referer="",
        accept_language="",
        url=meta.url,
        method=meta.method,
    )


def who(hit: Hit, params: dict[str, str], ctx: ClickContext, mint: bool = True):
    """(request meta, visitor id, new visitor?), honouring no-track (`mint`: `visitor`)."""
    meta = request_meta(hit, ctx.trusted, ip_keys=ctx.ip_keys)
    if wants_no_track(hit, params, ctx):
        return anonymous(meta), ZERO_UUID, False
    return (meta, *visitor(hit, ctx, mint))


def finish(reply: Reply, ctx: ClickContext, visitor_id: str, new: bool) -> Reply:
    reply.headers.append(("Cache-Control", "no-store"))
    if new:
        reply.headers.append(("Set-Cookie", f"{ctx.cookie_name}={visitor_id}{ctx.cookie_attrs}"))
    return reply


def orphan(
    ctx: ClickContext,
    ms: int,
    visitor_id: str,
    slug: str,
    reason: OrphanVisit,
    route: str,
    meta: records.RequestMeta,
) -> None:
    ctx.writer.add(
        "orphan_visits",
        records.orphan_row(
            ms=ms,
            visit_id=uuid7(ms),
            visitor_id=visitor_id,
            slug=records.clean(slug, 128),
            reason=reason,
            route=route,
            meta=meta,
        ),
    )


def click_reply(ctx: ClickContext, hit: Hit, slug: str) -> Reply:
    """GET /c/{slug}: read -> build the click -> record it (in memory) -> redirect."""
    params = records.parse_query(hit.query, ctx.max_query_bytes)
    meta, visitor_id, new = who(hit, params, ctx, mint=False)
    ms = clock_ms(ctx.clock)
    link = ctx.links.get(slug)
    if link is None or not link.active:
        if new:  # no click: an id of the visitor's own
            visitor_id = uuid7()
        orphan(
            ctx,
            ms,
            visitor_id,
            slug,
            OrphanVisit.UNKNOWN_LINK if link is None else OrphanVisit.DISABLED_LINK,
            "click",
            meta,
        )
        if ctx.fallback_url:
            reply = Reply(302, [("Location", ctx.fallback_url)])
        else:
            reply = Reply(404, [("Content-Type", "text/html; charset=utf-8")], NOT_FOUND_PAGE)
        return finish(reply, ctx, visitor_id, new)

    click_id = uuid7(ms)
    if new:  # the visitor's first click: its id is the visitor's (tracker/hot.py)
        visitor_id = click_id
    template = link.destination
    decision = None
    ccaps = ctx.campaign_caps
    capped = ccaps.items.get(link.campaign_id) if ccaps is not None and ccaps.items else None
    if link.routing is not None or capped is not None:  # other links skip all of this
        decision = route(
            link,
            ctx.lookups,
            params,
            meta,
            None if visitor_id == ZERO_UUID else visitor_id,
            ms,
            ctx.caps,
            ctx.fallback_url,
            capped,
            ctx.conversions,
        )
        template = _target_template(ctx, link, decision)
    destination = render(
        template,
        {
            "click_id": click_id,
            "visitor_id": visitor_id,
            "campaign_id": link.campaign_id,
            "affiliate_id": link.affiliate_id,
            **{key: params.get(key, "") for key in records.SUB_KEYS},
        },
    )
    row = records.click_row(
        ms=ms,
        click_id=click_id,
        visitor_id=visitor_id,
        new_visitor=new,
        link=link,
        params=params,
        meta=meta,
        destination=destination,
    )
    if decision is not None:
        row["route_rule"] = decision.rule
        row["variant"] = decision.variant
    ctx.writer.add_click(row, records.click_record(row, ms), ms)
    return finish(Reply(302, [("Location", destination)]), ctx, visitor_id, new)


def _target_template(ctx: ClickContext, link: Link, decision: Decision) -> str:
    """The destination template a routing decision names: its URL, or the destination
    of the link it names (that link's own rules are not followed); the link's own
    destination when no rule matched or the named link is gone or disabled."""
    target = decision.target
    if target is None:
        return link.destination
    if target.url:
        return target.url
    other = ctx.links.get(target.link)
    return other.destination if other is not None and other.active else link.destination


def is_conversion_pixel(params: dict[str, str]) -> bool:
    return "txid" in params or "event" in params


def pixel_reply(ctx: ClickContext, hit: Hit, params: dict[str, str]) -> Reply:
    """GET /p.gif (an impression): record it and answer the 1x1 GIF."""
    meta, visitor_id, new = who(hit, params, ctx)
    ms = clock_ms(ctx.clock)
    slug = params.get("slug", "")
    link = ctx.links.get(slug) if slug else None
    campaign_id = params.get("campaign_id", "")
    if slug and link is None:
        orphan(ctx, ms, visitor_id, slug, OrphanVisit.UNKNOWN_LINK, "pixel", meta)
    elif link is None and not campaign_id:
        orphan(ctx, ms, visitor_id, "", OrphanVisit.NO_LINK_OR_CAMPAIGN, "pixel", meta)
    else:
        ctx.writer.add(
            "impressions",
            records.impression_row(
                ms=ms,
                impression_id=uuid7(ms),
                visitor_id=visitor_id,
                link=link,
                campaign_id=records.clean(campaign_id, 64),
                params=params,
                meta=meta,
            ),
        )
    return finish(gif(), ctx, visitor_id, new)


def gif() -> Reply:
    return Reply(200, [("Content-Type", "image/gif")], PIXEL)
