"""Advertisers: who may report conversions, and the token their postbacks carry.

Stored in Redis (one hash, id -> JSON) like links, and cached in each edge. The token is a
shared secret: it is accepted as a `token` parameter or used as the HMAC key of a signed
postback. It is never written to ClickHouse.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from tracker import redis_keys as K
from tracker.hashcache import HashCache
from tracker.timefmt import format_ms, now_ms

ID_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
STATUSES = ("active", "disabled")


class AdvertiserError(ValueError):
    """An advertiser definition is invalid; the message is the reason shown to the user."""


@dataclass(slots=True)
class Advertiser:
    id: str
    token: str
    status: str = "active"
    created_at: int = 0

    @property
    def active(self) -> bool:
        return self.status == "active"

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> Advertiser:
        return cls(**orjson.loads(raw))

    def public(self, with_token: bool = False) -> dict[str, Any]:
        data = {"id": self.id, "status": self.status, "created_at": format_ms(self.created_at)}
        if with_token:
            data["token"] = self.token
        return data


def new_advertiser(data: Any) -> Advertiser:
    """A validated Advertiser from user input; a token is generated when none is given."""
    if not isinstance(data, dict):
        raise AdvertiserError("body must be a JSON object")
    unknown = set(data) - {"id", "token", "status"}
    if unknown:
        raise AdvertiserError(f"unknown field: {sorted(unknown)[0]}")
    adv_id = data.get("id")
    if not isinstance(adv_id, str) or not ID_RE.match(adv_id):
        raise AdvertiserError("id must be 1-64 letters, digits, '-', '_' or '.'")
    token = data.get("token") or secrets.token_urlsafe(24)
    if not isinstance(token, str) or not 16 <= len(token) <= 256 or not token.isprintable():
        raise AdvertiserError("token must be 16 to 256 printable characters")
    status = data.get("status", "active")
    if status not in STATUSES:
        raise AdvertiserError("status must be 'active' or 'disabled'")
    return Advertiser(id=adv_id, token=token, status=status, created_at=now_ms())


def stage_save(pipe: Any, advertiser: Advertiser) -> None:
    pipe.hset(K.ADVERTISERS_HASH, advertiser.id, advertiser.to_json())
    pipe.incr(K.ADVERTISERS_VERSION)


def create(redis: Any, advertiser: Advertiser) -> bool:
    """Store a new advertiser with a sync client; False when the id is taken."""
    if not redis.hsetnx(K.ADVERTISERS_HASH, advertiser.id, advertiser.to_json()):
        return False
    pipe = redis.pipeline(transaction=False)
    stage_save(pipe, advertiser)
    pipe.execute()
    return True


def advertiser_cache(redis: Any, refresh_seconds: float, snapshot: Path | None = None):
    return HashCache(
        redis,
        K.ADVERTISERS_HASH,
        K.ADVERTISERS_VERSION,
        Advertiser.from_json,
        refresh_seconds,
        snapshot,
    )
