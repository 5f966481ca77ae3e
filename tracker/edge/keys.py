"""The edge application's typed keys: one place for what `app[...]` holds."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tracker.access import Principal
from tracker.clock import Clock
from tracker.config import Settings
from tracker.edge.clicks import ClickContext
from tracker.edge.intake import ConversionIntake
from tracker.edge.writer import EventWriter
from tracker.hashcache import HashCache
from tracker.reports.store import ReportStore
from tracker.types import AsyncRedis

SETTINGS = web.AppKey("settings", Settings)
WORKER_INDEX = web.AppKey("worker_index", int)
REDIS: web.AppKey[AsyncRedis] = web.AppKey("redis")  # a union: no runtime type to name
LINK_CACHE = web.AppKey("link_cache", HashCache)
CAMPAIGN_CAPS = web.AppKey("campaign_caps", HashCache)  # campaign id -> routing Caps
ADVERTISER_CACHE = web.AppKey("advertiser_cache", HashCache)
WRITER = web.AppKey("writer", EventWriter)
ADMIN_TOKEN = web.AppKey("admin_token", str)
MAX_LAG = web.AppKey("max_lag", int)  # stream entries the sink may lag before /readyz fails
SHARDS = web.AppKey("shards", int)
CLOCK: web.AppKey[Clock] = web.AppKey("clock")  # the time this process stamps events with
CLICKS = web.AppKey("clicks", ClickContext)
INTAKE = web.AppKey("intake", ConversionIntake)  # postbacks and conversion pixels
REPORT_STORE = web.AppKey("report_store", ReportStore)

# what the access middleware and the handlers hand each other on one API request
PRINCIPAL = web.RequestKey("principal", Principal)  # who is calling (set once authorized)
AUDIT: web.RequestKey[dict[str, Any]] = web.RequestKey("audit")  # what a write changed
