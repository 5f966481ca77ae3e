"""API keys and roles: who a bearer token is, and what it may see.

Roles: `admin` (everything), `analyst` (every report, read-only), `advertiser` (its own
campaigns' reports and links), `affiliate` (its own links, clicks, conversions,
commissions, balance and payouts; no revenue). The admin token from the settings stays the
bootstrap key (role admin).

A key reads `trk_<id>_<secret>`: the id finds the record, the secret proves it. Only
SHA-256 of the secret is stored: the secret is 256 random bits, so a fast hash is as
strong as a slow one and costs nothing per request. Keys are shown once, at creation, and
revoked by marking the record (kept, so the audit log still names it).

Storage: one Redis hash (id -> JSON), read on every API request, so a revocation applies
at once on every edge. The functions stage commands on a pipeline or take a client, so the
async edge and the sync CLI share them.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

import orjson

from tracker.links import ID_RE
from tracker.timefmt import format_ms, now_ms

_TOKEN_RE = re.compile(r"\Atrk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})\Z")
_NAME_RE = re.compile(r"\A[^\x00-\x1f]{0,100}\Z")
MAX_CAMPAIGNS = 1000


class Role(StrEnum):
    ADMIN = "admin"
    ANALYST = "analyst"
    ADVERTISER = "advertiser"
    AFFILIATE = "affiliate"


class KeyError_(ValueError):
    """Invalid key definition; the message is shown to the user."""


@dataclass(slots=True)
class ApiKey:
    id: str
    role: str
    subject: str = ""  # the advertiser or affiliate id the key acts for
    name: str = ""
    campaigns: list[str] = field(default_factory=list)  # an affiliate may promote these
    created_at: int = 0
    revoked_at: int = 0
    secret_sha256: str = ""

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> ApiKey:
        return cls(**orjson.loads(raw))

    def public(self) -> dict[str, Any]:
        data = asdict(self)
        del data["secret_sha256"]
        data["created_at"] = format_ms(self.created_at)
        data["revoked_at"] = format_ms(self.revoked_at) if self.revoked_at else None
        return data


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of one request."""

    role: Role
    subject: str = ""
    key_id: str = "admin-token"
    campaigns: tuple[str, ...] = ()

    def scope(self) -> dict[str, tuple[str, ...]]:
        """Forced report filters: what this caller may see of the data."""
        if self.role == Role.ADVERTISER:
            return {"advertiser": (self.subject,)}
        if self.role == Role.AFFILIATE:
            return {"affiliate": (self.subject,)}
        return {}

    def sees_link(self, link: Any) -> bool:
        if self.role == Role.ADVERTISER:
            return link.advertiser_id == self.subject
        if self.role == Role.AFFILIATE:
            return link.affiliate_id == self.subject
        return True

    def public(self) -> dict[str, Any]:
        return {
            "role": self.role.value,
            "subject": self.subject,
            "key_id": self.key_id,
            "campaigns": list(self.campaigns),
        }


BOOTSTRAP = Principal(Role.ADMIN)


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_key(data: Any) -> tuple[ApiKey, str]:
    """A validated key from user input, and its token (to show once)."""
    if not isinstance(data, dict):
        raise KeyError_("body must be a JSON object")
    unknown = set(data) - {"role", "subject", "name", "campaigns"}
    if unknown:
        raise KeyError_(f"unknown field: {sorted(unknown)[0]}")
    role = data.get("role")
    if role not in tuple(Role):
        raise KeyError_("role must be admin, analyst, advertiser or affiliate")
    subject = data.get("subject") or ""
    if not isinstance(subject, str) or not ID_RE.match(subject):
        raise KeyError_("subject must be up to 64 letters, digits, '-', '_', '.' or ':'")
    if role in (Role.ADVERTISER, Role.AFFILIATE) and not subject:
        raise KeyError_(f"an {role} key needs the {role} id as subject")
    if role in (Role.ADMIN, Role.ANALYST) and subject:
        raise KeyError_(f"an {role} key has no subject")
    name = data.get("name") or ""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise KeyError_("name must be up to 100 characters")
    campaigns = data.get("campaigns") or []
    if (
        not isinstance(campaigns, list)
        or len(campaigns) > MAX_CAMPAIGNS
        or not all(isinstance(c, str) and c and ID_RE.match(c) for c in campaigns)
    ):
        raise KeyError_("campaigns must be a list of campaign ids")
    if campaigns and role != Role.AFFILIATE:
        raise KeyError_("only an affiliate key lists campaigns to promote")
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    key = ApiKey(
        id=key_id,
        role=role,
        subject=subject,
        name=name,
        campaigns=sorted(set(campaigns)),
        created_at=now_ms(),
        secret_sha256=_hash(secret),
    )
    return key, f"trk_{key_id}_{secret}"


def split_token(token: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed key token, else None."""
    match = _TOKEN_RE.match(token)
    return (match[1], match[2]) if match else None


def verify(key: ApiKey, secret: str) -> Principal | None:
    """The principal a key stands for, when the secret matches and it is not revoked."""
    if key.revoked_at or not hmac.compare_digest(_hash(secret), key.secret_sha256):
        return None
    return Principal(Role(key.role), key.subject, key.id, tuple(key.campaigns))


def authenticate_admin(token: str, admin_token: str) -> bool:
    return hmac.compare_digest(token.encode(), admin_token.encode())


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header; None when there is none."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def is_admin(authorization: str | None, admin_token: str) -> bool:
    """The one admin check, for the edge's API and the sink's query endpoint alike."""
    token = bearer_token(authorization)
    return token is not None and authenticate_admin(token, admin_token)


def revoked(key: ApiKey) -> ApiKey:
    return ApiKey(**{**asdict(key), "revoked_at": key.revoked_at or now_ms()})
