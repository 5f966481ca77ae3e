"""Tracking links: the model, its validation, its Redis storage and each edge's cache.

Redis holds the links (one hash, slug -> JSON) and is the source of truth. Each change
also appends a row to the events stream, so the sink mirrors links into ClickHouse for
analysts. Storage functions stage commands on a pipeline, so the async edge and the sync
CLI share them and only differ in how they execute it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from tracker import hashcache
from tracker import redis_keys as K
from tracker.hashcache import HashCache, NewRecord, parse_hash
from tracker.ids import uuid7
from tracker.macros import DestinationError, normalize_destination, validate_destination
from tracker.timefmt import format_ms, now_ms
from tracker.types import AnyPipeline, AsyncRedis, SyncRedis

log = logging.getLogger(__name__)

SLUG_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
ID_RE = re.compile(r"\A[A-Za-z0-9_.:-]{0,64}\Z")
STATUSES = ("active", "disabled")
EDITABLE = ("destination", "campaign_id", "affiliate_id", "advertiser_id", "status", "routing")


class LinkError(ValueError):
    """A link definition is invalid; the message is the reason shown to the user."""


@dataclass(slots=True)
class Link:
    slug: str
    destination: str
    campaign_id: str = ""
    affiliate_id: str = ""
    advertiser_id: str = ""
    status: str = "active"
    created_at: int = 0  # Unix ms
    updated_at: int = 0
    routing: dict | None = None  # rules and splits (tracker/routing/rules.py); None: none

    @property
    def active(self) -> bool:
        return self.status == "active"

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> Link:
        return cls(**orjson.loads(raw))

    def public(self) -> dict[str, Any]:
        """The link as the admin API shows it (times as UTC strings)."""
        data = asdict(self)
        data["created_at"] = format_ms(self.created_at)
        data["updated_at"] = format_ms(self.updated_at)
        return data


def new_link(data: Any) -> Link:
    """A validated Link from user input (admin API body or CLI arguments)."""
    if not isinstance(data, dict):
        raise LinkError("body must be a JSON object")
    unknown = set(data) - {"slug", *EDITABLE}
    if unknown:
        raise LinkError(f"unknown field: {sorted(unknown)[0]}")
    slug = data.get("slug")
    if not isinstance(slug, str) or not SLUG_RE.match(slug):
        raise LinkError("slug must be 1-64 letters, digits, '-', '_' or '.'")
    ts = now_ms()
    link = Link(slug=slug, destination="", created_at=ts, updated_at=ts)
    return apply_changes(link, {"destination": data.get("destination"), **data}, ts)


def apply_changes(link: Link, changes: Any, ts: int | None = None) -> Link:
    """A copy of link with the editable fields in changes applied and validated."""
    if not isinstance(changes, dict):
        raise LinkError("body must be a JSON object")
    values = asdict(link)
    for key, value in changes.items():
        if key == "slug":
            if value != link.slug:
                raise LinkError("slug cannot be changed")
            continue
        if key not in EDITABLE:
            raise LinkError(f"unknown field: {key}")
        if key == "routing":
            values[key] = _routing(value, link.slug)
            continue
        if not isinstance(value, str):
            raise LinkError(f"{key} must be a string")
        values[key] = value
    try:
        values["destination"] = normalize_destination(values["destination"])
    except DestinationError as exc:
        raise LinkError(str(exc)) from None
    for key in ("campaign_id", "affiliate_id", "advertiser_id"):
        if not ID_RE.match(values[key]):
            raise LinkError(f"{key} must be up to 64 letters, digits, '-', '_', '.' or ':'")
    if values["status"] not in STATUSES:
        raise LinkError("status must be 'active' or 'disabled'")
    values["updated_at"] = ts or now_ms()
    return Link(**values)


def _routing(value: Any, slug: str) -> dict | None:
    """The routing as stored (None or no rules: none); RoutingError as a LinkError."""
    from tracker.routing.rules import RoutingError, compile_routing

    if value is None or value == {} or value == {"rules": []}:
        return None
    try:
        compile_routing(value, slug)
    except RoutingError as exc:
        raise LinkError(str(exc)) from None
    return value


def routing_graph(links: dict[str, Link]) -> dict[str, frozenset[str]]:
    """slug -> the slugs its rules route to (for the cycle check)."""
    from tracker.routing.rules import compile_routing

    return {
        slug: compile_routing(link.routing, slug).links
        for slug, link in links.items()
        if link.routing is not None
    }


def check_routes(link: Link, links: dict[str, Link]) -> None:
    """A link's rules may name only existing links, and no chain of rules may lead back
    to it. `links`: every link as stored (this one's new version replaces its old)."""
    if link.routing is None:
        return
    from tracker.routing.rules import compile_routing, find_cycle

    everything = {**links, link.slug: link}
    for other in sorted(compile_routing(link.routing, link.slug).links):
        if other not in everything:
            raise LinkError(f"routing names link {other!r}, which does not exist")
    cycle = find_cycle(link.slug, routing_graph(everything))
    if cycle:
        raise LinkError(f"routing makes a cycle of links: {' -> '.join(cycle)}")


def mirror_row(link: Link, deleted: bool = False) -> bytes:
    """The row for ClickHouse `links` (ReplacingMergeTree: the newest updated_at wins)."""
    row = link.public()
    row.pop("routing", None)  # not a column of ClickHouse `links`
    if deleted:
        row["status"] = "deleted"
    return orjson.dumps(row)


def stage_save(pipe: AnyPipeline, link: Link, deleted: bool = False) -> None:
    """Queue the commands that store (or delete) a link and mirror the change."""
    if deleted:
        pipe.hdel(K.LINKS_HASH, link.slug)
    else:
        pipe.hset(K.LINKS_HASH, link.slug, link.to_json())
    pipe.incr(K.LINKS_VERSION)
    pipe.xadd(K.EVENTS_STREAM, {K.BATCH_ID_FIELD: uuid7(), "links": mirror_row(link, deleted)})


def save(redis: SyncRedis, link: Link, deleted: bool = False) -> None:
    """Store (or delete) a link now, with a sync client (CLI, start-up)."""
    pipe = redis.pipeline(transaction=False)
    stage_save(pipe, link, deleted)
    pipe.execute()


def new_record(link: Link) -> NewRecord:
    return NewRecord(K.LINKS_HASH, link.slug, link.to_json(), lambda pipe: stage_save(pipe, link))


def create(redis: SyncRedis, link: Link) -> bool:
    """Store a new link with a sync client; False when the slug is taken."""
    return hashcache.create(redis, new_record(link))


def parse_all(raw: dict) -> dict[str, Link]:
    return parse_hash(raw, Link.from_json)


def link_cache(
    redis: AsyncRedis, refresh_seconds: float, snapshot: Path | None = None
) -> HashCache:
    """Each edge process's copy of the links (see HashCache)."""
    return HashCache(redis, K.LINKS_HASH, K.LINKS_VERSION, servable, refresh_seconds, snapshot)


def servable(raw: bytes | str) -> Link:
    """A link as the edge serves it. One saved before destinations were checked as they
    are now (a macro in the host, user info) could send a click anywhere: it is served as
    disabled (an orphan visit, never a redirect) until someone saves a safe destination."""
    link = Link.from_json(raw)
    if link.active and validate_destination(link.destination) is not None:
        link.status = "disabled"
    return link
