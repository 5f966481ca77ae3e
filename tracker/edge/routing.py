"""A routed click at the edge: the link's rules (tracker/routing/rules.py) evaluated
against what the request is, looking up geo and device only when that link's rules ask.

Links without `routing` never come here (clicks.py checks one attribute), so they pay
nothing. The compiled rules are cached per link version.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from geo import GeoReader, open_geo
from tracker import redis_keys as K
from tracker.edge.caps import CapCounters, ConversionCounts
from tracker.links import Link
from tracker.records import RequestMeta
from tracker.routing.rules import (
    CAMPAIGN_CAP,
    NO_RULE,
    Caps,
    Decision,
    Router,
    Target,
    Visit,
    compile_routing,
    decide,
    over_cap,
    over_conversion_cap,
)
from tracker.timefmt import utc_day

_routers: dict[tuple[str, int], Router] = {}
_draw = random.Random()


@dataclass(slots=True)
class Lookups:
    """The edge's geo database, opened the first time a link's rules need it."""

    geo_paths: list[str]
    _geo: GeoReader | None = None
    _opened: bool = False

    def geo(self) -> GeoReader | None:
        if not self._opened:
            self._opened = True
            self._geo = open_geo(self.geo_paths)
        return self._geo


def router_of(link: Link) -> Router:
    key = (link.slug, link.updated_at)
    router = _routers.get(key)
    if router is None:
        if len(_routers) > 50_000:
            _routers.clear()
        router = _routers[key] = compile_routing(link.routing, link.slug)
    return router


def _overflow(target: Target | None, fallback_url: str) -> Target | None:
    """Past a cap: the overflow, else the fallback URL, else (None) the own destination."""
    if target is None and fallback_url:
        return Target(url=fallback_url)
    return target


def route(
    link: Link,
    lookups: Lookups,
    params: dict[str, str],
    meta: RequestMeta,
    visitor_id: str | None,
    ms: int,
    caps: CapCounters | None = None,
    fallback_url: str = "",
    campaign_caps: Caps | None = None,
    conversions: ConversionCounts | None = None,
) -> Decision:
    """`campaign_caps`: the link's campaign's, when it has some."""
    day = utc_day(ms)
    if campaign_caps is not None:
        if campaign_caps.counts_conversions and conversions is not None:
            counted = conversions.counts(link.campaign_id, day)
            reason = over_conversion_cap(campaign_caps, *counted)
            if reason:  # not a click the campaign's click caps count either
                return Decision(reason, "", _overflow(campaign_caps.overflow, fallback_url))
        if campaign_caps.counts_clicks and caps is not None:
            name = K.campaign_cap_name(link.campaign_id)
            reason = over_cap(campaign_caps, *caps.counts(name, day))
            if reason:
                overflow = _overflow(campaign_caps.overflow, fallback_url)
                return Decision(CAMPAIGN_CAP[reason], "", overflow)
            caps.add(name, day)
    if link.routing is None:
        return NO_RULE
    router = router_of(link)
    if router.caps is not None and caps is not None:
        reason = over_cap(router.caps, *caps.counts(link.slug, day))
        if reason:
            return Decision(reason, "", _overflow(router.caps.overflow, fallback_url))
        caps.add(link.slug, day)
    visit = Visit(params=params, accept_language=meta.accept_language, now_ms=ms)
    needs = router.needs
    if needs:
        if "geo" in needs:
            reader = lookups.geo()
            if reader is not None and meta.ip not in ("", "::"):
                info = reader.lookup(meta.ip)
                visit.country, visit.region, visit.asn = info.country, info.region, info.asn
        if "device" in needs:  # the sink's parser (imported only where a rule needs it)
            from tracker.sink.enrich.device import parse_device

            device = parse_device(meta.user_agent)
            visit.device_type, visit.os, visit.browser = (
                device.device_type,
                device.os,
                device.browser,
            )
        if "bot" in needs:
            from tracker.sink.enrich.bots import bot_reason

            visit.is_bot = bool(bot_reason(meta.user_agent, meta.method))
    return decide(router, visit, link.slug, visitor_id, _draw.getrandbits(64))
