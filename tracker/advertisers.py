"""Advertisers: who may report conversions, and the token their postbacks carry.

Stored in Redis (one hash, id -> JSON) like links, and cached in each edge. The token is a
shared secret: it is accepted as a `token` parameter or used as the HMAC key of a signed
postback. It is never written to ClickHouse. Browser conversions (the first-party tag)
carry no secret: `allowed_origins` restricts which sites may send them (empty: any), and
`click_param` names the landing page's URL parameter that holds the click id.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from tracker import hashcache, origins
from tracker import redis_keys as K
from tracker.hashcache import HashCache, NewRecord
from tracker.timefmt import format_ms, now_ms
from tracker.types import AnyPipeline, AsyncRedis, SyncRedis

ID_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
STATUSES = ("active", "disabled")
PARAM_RE = re.compile(r"\A[A-Za-z0-9_.-]{1,64}\Z")
EDITABLE = ("status", "allowed_origins", "click_param")
TOKEN_FIELDS = ("token", "rotate_token")  # PATCH only: set or rotate the postback token


class AdvertiserError(ValueError):
    """An advertiser definition is invalid; the message is the reason shown to the user."""


@dataclass(slots=True)
class Advertiser:
    id: str
    token: str
    status: str = "active"
    created_at: int = 0
    allowed_origins: list[str] = field(default_factory=list)  # browser conversions; [] = any
    click_param: str = "click_id"

    @property
    def active(self) -> bool:
        return self.status == "active"

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> Advertiser:
        return cls(**orjson.loads(raw))

    def public(self, with_token: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "status": self.status,
            "created_at": format_ms(self.created_at),
            "allowed_origins": self.allowed_origins,
            "click_param": self.click_param,
        }
        if with_token:
            data["token"] = self.token
        return data


def new_advertiser(data: Any) -> Advertiser:
    """A validated Advertiser from user input; a token is generated when none is given."""
    if not isinstance(data, dict):
        raise AdvertiserError("body must be a JSON object")
    unknown = set(data) - {"id", "token", *EDITABLE}
    if unknown:
        raise AdvertiserError(f"unknown field: {sorted(unknown)[0]}")
    adv_id = data.get("id")
    if not isinstance(adv_id, str) or not ID_RE.match(adv_id):
        raise AdvertiserError("id must be 1-64 letters, digits, '-', '_' or '.'")
    token = data.get("token") or secrets.token_urlsafe(24)
    if not isinstance(token, str) or not 16 <= len(token) <= 256 or not token.isprintable():
        raise AdvertiserError("token must be 16 to 256 printable characters")
    advertiser = Advertiser(id=adv_id, token=token, created_at=now_ms())
    return apply_changes(advertiser, {k: v for k, v in data.items() if k in EDITABLE})


def apply_changes(advertiser: Advertiser, data: Any) -> Advertiser:
    """A copy with the editable fields in `data` changed and validated."""
    if not isinstance(data, dict):
        raise AdvertiserError("body must be a JSON object")
    unknown = set(data) - set(EDITABLE) - set(TOKEN_FIELDS)
    if unknown:
        raise AdvertiserError(f"unknown or read-only field: {sorted(unknown)[0]}")
    changes: dict[str, Any] = {}
    if "status" in data:
        if data["status"] not in STATUSES:
            raise AdvertiserError("status must be 'active' or 'disabled'")
        changes["status"] = data["status"]
    if "allowed_origins" in data:
        changes["allowed_origins"] = allowed_origins(data["allowed_origins"])
    if "click_param" in data:
        param = data["click_param"]
        if not isinstance(param, str) or not PARAM_RE.match(param):
            raise AdvertiserError("click_param must be 1-64 letters, digits, '-', '_' or '.'")
        changes["click_param"] = param
    # token rotation: a given token, or `rotate_token: true` for a generated one; the old
    # token stops working as soon as the edges reload
    rotate = data.get("rotate_token", False)
    if not isinstance(rotate, bool):
        raise AdvertiserError("rotate_token must be true or false")
    if rotate and "token" in data:
        raise AdvertiserError("give a token or rotate_token, not both")
    if rotate or "token" in data:
        token = secrets.token_urlsafe(24) if rotate else data["token"]
        if not isinstance(token, str) or not 16 <= len(token) <= 256 or not token.isprintable():
            raise AdvertiserError("token must be 16 to 256 printable characters")
        changes["token"] = token
    return replace(advertiser, **changes)


def allowed_origins(value: Any) -> list[str]:
    """A validated, normalized, de-duplicated allowlist of origins."""
    if not isinstance(value, list) or len(value) > origins.MAX_ORIGINS:
        raise AdvertiserError(
            f"allowed_origins must be a list of at most {origins.MAX_ORIGINS} origins"
        )
    result: list[str] = []
    for entry in value:
        origin = origins.normalize(entry) if isinstance(entry, str) else None
        if origin is None:
            raise AdvertiserError(
                "allowed_origins entries are origins such as https://shop.example "
                "or https://*.shop.example"
            )
        if origin not in result:
            result.append(origin)
    return result


def stage_save(pipe: AnyPipeline, advertiser: Advertiser) -> None:
    pipe.hset(K.ADVERTISERS_HASH, advertiser.id, advertiser.to_json())
    pipe.incr(K.ADVERTISERS_VERSION)


def new_record(advertiser: Advertiser) -> NewRecord:
    return NewRecord(
        K.ADVERTISERS_HASH,
        advertiser.id,
        advertiser.to_json(),
        lambda pipe: stage_save(pipe, advertiser),
    )


def create(redis: SyncRedis, advertiser: Advertiser) -> bool:
    """Store a new advertiser with a sync client; False when the id is taken."""
    return hashcache.create(redis, new_record(advertiser))


def advertiser_cache(
    redis: AsyncRedis, refresh_seconds: float, snapshot: Path | None = None
) -> HashCache[Advertiser]:
    return HashCache(
        redis,
        K.ADVERTISERS_HASH,
        K.ADVERTISERS_VERSION,
        Advertiser.from_json,
        refresh_seconds,
        snapshot,
    )
