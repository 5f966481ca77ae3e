"""Events as the edge records them: plain dicts whose keys are the ClickHouse column names.

Pure functions, no I/O: the request's raw fields go in, rows come out. Keeping the keys
equal to the columns lets the sink hand rows to ClickHouse as JSONEachRow untouched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote_plus

from tracker.links import Link
from tracker.reasons import OrphanVisit
from tracker.timefmt import format_ms
from tracker.types import ClickRecord, ClickRow, ImpressionRow, OrphanRow, SubParams

SUB_KEYS = ("sub1", "sub2", "sub3", "sub4", "sub5")
UTM_KEYS = ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content")
AD_CLICK_KEYS = ("gclid", "fbclid", "msclkid")
KEPT_PARAMS = SUB_KEYS + UTM_KEYS + AD_CLICK_KEYS

MAX_PARAM = 512  # characters kept of one query parameter value
MAX_HEADER = 1024  # of a user agent, accept-language
MAX_URL = 4096  # of a referer or request URL


@dataclass(slots=True)
class RequestMeta:
    """What the edge reads off a tracking request, already bounded in size."""

    ip: str
    user_agent: str
    referer: str
    accept_language: str
    url: str
    method: str
    ip_key: str = ""  # keyed hash of the full address when `ip` is anonymised


# C0/C1 control characters, and lone surrogates (undecodable header bytes): no business
# in these fields, and a surrogate cannot even be encoded as JSON.
_UNWANTED = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def clean(value: str, limit: int) -> str:
    """Bounded text without control characters."""
    value = value[:limit]
    if value.isascii() and value.isprintable():  # the common case, fast
        return value
    return _UNWANTED.sub("", value)


def parse_query(raw: str, max_bytes: int) -> dict[str, str]:
    """The parameters of a query string; junk never raises.

    An oversized query string is ignored as a whole (the click is still recorded and
    redirected); invalid percent-encoding or UTF-8 is decoded with replacement characters.
    The first value of a repeated parameter wins. (urllib's parse_qsl gives the same
    answers; this loop is several times faster, and it runs on every click.)
    """
    if not raw or len(raw) > max_bytes:
        return {}
    params: dict[str, str] = {}
    for part in raw.split("&"):
        if not part:
            continue
        key, _, value = part.partition("=")
        if "%" in key or "+" in key:
            key = unquote_plus(key, errors="replace")
        if key in params:
            continue
        if "%" in value or "+" in value:
            value = unquote_plus(value, errors="replace")
        params[key] = clean(value, MAX_PARAM)
    return params


def sub_params(params: dict[str, str]) -> SubParams:
    get = params.get
    return {
        "sub1": get("sub1", ""),
        "sub2": get("sub2", ""),
        "sub3": get("sub3", ""),
        "sub4": get("sub4", ""),
        "sub5": get("sub5", ""),
    }


def click_row(
    *,
    ms: int,
    click_id: str,
    visitor_id: str,
    new_visitor: bool,
    link: Link,
    params: dict[str, str],
    meta: RequestMeta,
    destination: str,
) -> ClickRow:
    get = params.get
    row: ClickRow = {
        "event_time": format_ms(ms),
        "click_id": click_id,
        "visitor_id": visitor_id,
        "new_visitor": int(new_visitor),
        "link_slug": link.slug,
        "campaign_id": link.campaign_id,
        "affiliate_id": link.affiliate_id,
        "advertiser_id": link.advertiser_id,
        **sub_params(params),
        "utm_source": get("utm_source", ""),
        "utm_medium": get("utm_medium", ""),
        "utm_campaign": get("utm_campaign", ""),
        "utm_term": get("utm_term", ""),
        "utm_content": get("utm_content", ""),
        "gclid": get("gclid", ""),
        "fbclid": get("fbclid", ""),
        "msclkid": get("msclkid", ""),
        "ip": meta.ip,
        "user_agent": meta.user_agent,
        "referer": meta.referer,
        "accept_language": meta.accept_language,
        "request_url": meta.url,
        "destination_url": destination[:MAX_URL],
        "method": meta.method,
    }
    if meta.ip_key:
        row["ip_key"] = meta.ip_key
    return row


def click_record(row: ClickRow, ms: int) -> ClickRecord:
    """What Redis keeps of a click for the lookback window (read by conversions)."""
    return {
        "click_id": row["click_id"],
        "visitor_id": row["visitor_id"],
        "ts": ms,
        "link_slug": row["link_slug"],
        "campaign_id": row["campaign_id"],
        "affiliate_id": row["affiliate_id"],
        "advertiser_id": row["advertiser_id"],
        "sub1": row["sub1"],
        "sub2": row["sub2"],
        "sub3": row["sub3"],
        "sub4": row["sub4"],
        "sub5": row["sub5"],
    }


def impression_row(
    *,
    ms: int,
    impression_id: str,
    visitor_id: str,
    link: Link | None,
    campaign_id: str,
    params: dict[str, str],
    meta: RequestMeta,
) -> ImpressionRow:
    return {
        "event_time": format_ms(ms),
        "impression_id": impression_id,
        "visitor_id": visitor_id,
        "link_slug": link.slug if link else "",
        "campaign_id": link.campaign_id if link else campaign_id,
        "affiliate_id": link.affiliate_id if link else params.get("affiliate_id", ""),
        **sub_params(params),
        "ip": meta.ip,
        "user_agent": meta.user_agent,
        "referer": meta.referer,
        "request_url": meta.url,
        "method": meta.method,
    }


def orphan_row(
    *,
    ms: int,
    visit_id: str,
    visitor_id: str,
    slug: str,
    reason: OrphanVisit,
    route: str,
    meta: RequestMeta,
) -> OrphanRow:
    return {
        "event_time": format_ms(ms),
        "visit_id": visit_id,
        "visitor_id": visitor_id,
        "link_slug": slug[:128],
        "reason": reason,
        "route": route,
        "ip": meta.ip,
        "user_agent": meta.user_agent,
        "referer": meta.referer,
        "request_url": meta.url,
        "method": meta.method,
    }
