"""Caps of a whole campaign: clicks (every link of the campaign counts towards them) and
accepted conversions, daily and/or total; past one, its clicks go to the campaign's
overflow. Stored in Redis (campaign id -> JSON), cached by every edge like the links;
validated with the same rules as a link's caps."""

from __future__ import annotations

import re
from typing import Any

import orjson

from tracker import redis_keys as K
from tracker.routing.rules import Caps, RoutingError, _caps

CAMPAIGN_RE = re.compile(r"\A[A-Za-z0-9_.:-]{1,64}\Z")


def parse(campaign_id: str, data: Any) -> Caps:
    """The campaign's caps from what the API or the CLI received (RoutingError)."""
    if not CAMPAIGN_RE.match(campaign_id):
        raise RoutingError("campaign id must be 1-64 letters, digits, '-', '_', '.' or ':'")
    caps = _caps(data, "", "caps", conversions=True)
    if caps.overflow is not None and caps.overflow.link:
        raise RoutingError("a campaign's overflow is a url (its links may be capped too)")
    return caps


def from_json(raw: bytes | str) -> Caps:
    data = orjson.loads(raw)
    return _caps(data, "", "caps", conversions=True)


def stage_save(pipe: Any, campaign_id: str, data: dict | None) -> None:
    if data is None:
        pipe.hdel(K.CAMPAIGN_CAPS_HASH, campaign_id)
    else:
        pipe.hset(K.CAMPAIGN_CAPS_HASH, campaign_id, orjson.dumps(data))
    pipe.incr(K.CAMPAIGN_CAPS_VERSION)
