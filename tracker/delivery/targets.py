"""Delivery targets: where conversions are pushed, validated here, stored in Redis.

A **postback** belongs to one affiliate: a URL template with conversion macros
(tracker/macros.py `render_postback`), called with GET (or POST) for that affiliate's
conversions. One with a `campaign_id` overrides the affiliate's general postbacks for
that campaign. A **webhook** receives a signed JSON body; its optional `advertiser_id`,
`campaign_id` and `affiliate_id` narrow which conversions it hears about.

`events` chooses the triggers: `accepted` (a conversion's first report), `approved`,
`rejected`, `reversed` (its status steps).
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from tracker import redis_keys as K
from tracker.macros import DestinationError, normalize_destination

TRIGGERS = ("accepted", "approved", "rejected", "reversed")
KINDS = ("postback", "webhook")
ID_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}\Z")
FIELDS = {
    "id",
    "kind",
    "url",
    "events",
    "method",
    "affiliate_id",
    "campaign_id",
    "advertiser_id",
    "secret",
    "enabled",
}
CHANGEABLE = FIELDS - {"id", "kind"}


class TargetError(ValueError):
    """Why a target is not acceptable (the message is the reply's reason)."""


@dataclass(slots=True)
class Target:
    id: str
    kind: str
    url: str
    events: list[str] = field(default_factory=lambda: list(TRIGGERS))
    method: str = "GET"
    affiliate_id: str = ""
    campaign_id: str = ""
    advertiser_id: str = ""
    secret: str = ""  # webhooks: the HMAC key the receiver verifies with
    enabled: bool = True

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> Target:
        return cls(**orjson.loads(raw))

    def public(self, *, show_secret: bool = False) -> dict:
        out = asdict(self)
        if self.secret and not show_secret:
            out["secret"] = self.secret[:4] + "…"
        return out

    def hears(self, trigger: str, conversion: Mapping) -> bool:
        """Whether this target is called for a conversion's trigger (postback campaign
        overrides are resolved by `matching`)."""
        if not self.enabled or trigger not in self.events:
            return False
        for key in ("affiliate_id", "campaign_id", "advertiser_id"):
            wanted = getattr(self, key)
            if wanted and conversion.get(key, "") != wanted:
                return False
        return True


def _id(value: Any, what: str) -> str:
    if not isinstance(value, str) or not ID_RE.match(value):
        raise TargetError(f"{what} must be 1-64 letters, digits, '-', '_', '.' or ':'")
    return value


def _optional_id(value: Any, what: str) -> str:
    return "" if value in (None, "") else _id(value, what)


def check_url(url: Any) -> str:
    """The URL as stored: http(s), a fixed host (macros in path, query and fragment only),
    and no literal address that can never be delivered to."""
    if not isinstance(url, str):
        raise TargetError("url must be a string")
    try:
        url = normalize_destination(url)
    except DestinationError as exc:
        raise TargetError(str(exc).replace("destination", "url")) from None
    host = url.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    host = host[1:].split("]", 1)[0] if host.startswith("[") else host.rsplit(":", 1)[0]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return url
    if address.is_unspecified or address.is_multicast:
        raise TargetError("url host is not an address a request can go to")
    return url


def validate(data: Any, current: Target | None = None) -> Target:
    """A new target (current None) or a changed one; TargetError says why not."""
    if not isinstance(data, dict):
        raise TargetError("body must be a JSON object")
    allowed = CHANGEABLE if current else FIELDS
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise TargetError(f"unknown or unchangeable field: {unknown[0]}")
    merged = {**(asdict(current) if current else {}), **data}
    kind = merged.get("kind")
    if kind not in KINDS:
        raise TargetError("kind must be postback or webhook")
    events = merged.get("events", list(TRIGGERS))
    if (
        not isinstance(events, list)
        or not events
        or not all(isinstance(e, str) and e in TRIGGERS for e in events)
    ):
        raise TargetError(f"events must be a non-empty list of {', '.join(TRIGGERS)}")
    method = merged.get("method") or ("GET" if kind == "postback" else "POST")
    if kind == "webhook" and method != "POST":
        raise TargetError("a webhook is always sent with POST")
    if method not in ("GET", "POST"):
        raise TargetError("method must be GET or POST")
    enabled = merged.get("enabled", True)
    if not isinstance(enabled, bool):
        raise TargetError("enabled must be true or false")
    target = Target(
        id=_id(merged.get("id"), "id"),
        kind=kind,
        url=check_url(merged.get("url")),
        events=sorted(set(events), key=TRIGGERS.index),
        method=method,
        affiliate_id=_optional_id(merged.get("affiliate_id"), "affiliate_id"),
        campaign_id=_optional_id(merged.get("campaign_id"), "campaign_id"),
        advertiser_id=_optional_id(merged.get("advertiser_id"), "advertiser_id"),
        secret=merged.get("secret") or "",
        enabled=enabled,
    )
    if kind == "postback":
        if not target.affiliate_id:
            raise TargetError("a postback needs the affiliate_id it reports to")
        if target.secret:
            raise TargetError("a postback has no secret (its URL carries what the partner needs)")
    else:
        if not isinstance(target.secret, str) or (
            target.secret and not 16 <= len(target.secret) <= 200
        ):
            raise TargetError("secret must be 16 to 200 characters")
        target.secret = target.secret or secrets.token_urlsafe(32)
    return target


def matching(targets: list[Target], trigger: str, conversion: Mapping) -> list[Target]:
    """The targets called for one conversion trigger. An affiliate's postbacks for the
    conversion's campaign, when it has any, replace its general ones."""
    heard = [t for t in targets if t.hears(trigger, conversion)]
    campaign = conversion.get("campaign_id", "")
    overridden = {
        t.affiliate_id
        for t in targets
        if t.kind == "postback" and t.enabled and campaign and t.campaign_id == campaign
    }
    return [
        t
        for t in heard
        if not (t.kind == "postback" and not t.campaign_id and t.affiliate_id in overridden)
    ]


# -- storage (Redis) ----------------------------------------------------------------------


def save(redis: Any, target: Target) -> None:
    pipe = redis.pipeline(transaction=False)
    pipe.hset(K.DELIVERY_TARGETS_HASH, target.id, target.to_json())
    pipe.incr(K.DELIVERY_TARGETS_VERSION)
    pipe.execute()


def create(redis: Any, target: Target) -> bool:
    """False when the id is taken."""
    if not redis.hsetnx(K.DELIVERY_TARGETS_HASH, target.id, target.to_json()):
        return False
    redis.incr(K.DELIVERY_TARGETS_VERSION)
    return True


def load_all(redis: Any) -> list[Target]:
    return [Target.from_json(raw) for raw in redis.hvals(K.DELIVERY_TARGETS_HASH)]


class TargetCache:
    """The targets as one process sees them, reloaded when their version moved (checked
    at most every `refresh` seconds)."""

    def __init__(self, redis: Any, refresh: float = 1.0) -> None:
        self.redis = redis
        self.refresh = refresh
        self._version: bytes | None = None
        self._checked = float("-inf")
        self.targets: list[Target] = []
        self.by_id: dict[str, Target] = {}

    def get(self, now: float) -> list[Target]:
        if now - self._checked >= self.refresh:
            self._checked = now
            version = self.redis.get(K.DELIVERY_TARGETS_VERSION)
            if version != self._version:
                self.targets = load_all(self.redis)
                self.by_id = {t.id: t for t in self.targets}
                self._version = version
        return self.targets
