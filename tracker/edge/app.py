"""The edge application: routes, and the resources each process opens and closes.

Startup and shutdown are aiohttp cleanup contexts: Redis connection -> link cache ->
event writer. On shutdown they unwind in reverse, so the writer flushes its buffer while
Redis is still open.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from tracker import metrics, refusals
from tracker import redis_keys as K
from tracker.advertisers import advertiser_cache
from tracker.clock import Clock, system_clock
from tracker.config import Settings
from tracker.edge import (
    access,
    admin,
    clicks,
    dashboard,
    deliveries_api,
    health,
    postback,
    privacy_api,
    programme,
    reports_api,
    routes,
    routing_api,
    tag,
)
from tracker.edge.caps import CapCounters, ConversionCounts
from tracker.edge.intake import ConversionIntake
from tracker.edge.keys import (
    ADMIN_TOKEN,
    ADVERTISER_CACHE,
    CAMPAIGN_CAPS,
    CLICKS,
    CLOCK,
    INTAKE,
    LINK_CACHE,
    MAX_LAG,
    REDIS,
    SETTINGS,
    SHARDS,
    WORKER_INDEX,
    WRITER,
)
from tracker.edge.routing import Lookups
from tracker.edge.spool import Spool
from tracker.edge.writer import EventWriter
from tracker.hashcache import HashCache
from tracker.http_limits import MAX_BODY
from tracker.ip_privacy import IpKeys
from tracker.links import link_cache
from tracker.redis_connection import async_client, is_cluster
from tracker.routing import campaign_caps

log = logging.getLogger(__name__)


def create_app(
    settings: Settings, worker_index: int = 0, clock: Clock = system_clock
) -> web.Application:
    app = web.Application(middlewares=[count_requests, access.authorize], client_max_size=MAX_BODY)
    app[SETTINGS] = settings
    app[WORKER_INDEX] = worker_index
    app[CLOCK] = clock
    app[ADMIN_TOKEN] = settings.admin_token
    app[MAX_LAG] = settings.sink.max_lag_entries
    app[SHARDS] = settings.redis.stream_shards
    app.cleanup_ctx.extend([redis_ctx, links_ctx, campaign_caps_ctx, advertisers_ctx, writer_ctx])
    routes.add_routes(app)
    postback.add_routes(app)
    tag.add_routes(app)
    admin.add_routes(app)
    access.add_routes(app)
    dashboard.add_routes(app)
    reports_api.add_routes(app)
    programme.add_routes(app)
    deliveries_api.add_routes(app)
    routing_api.add_routes(app)
    health.add_routes(app)
    privacy_api.add_routes(app)
    app.router.add_get("/metrics", metrics_page)
    return app


@web.middleware
async def count_requests(request: web.Request, handler):
    """Requests aiohttp answers, by route and status (the fast path counts its own)."""
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        resource = request.match_info.route.resource
        route = resource.canonical if resource else "unmatched"
        request.app[CLICKS].counters.requests[(route, status)] += 1


async def metrics_page(request: web.Request) -> web.Response:
    body = await asyncio.get_running_loop().run_in_executor(None, metrics.exposition)
    return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})


async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    app[REDIS] = async_client(settings.redis.url, settings.redis.timeout_seconds)
    yield
    await app[REDIS].aclose()


async def links_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    cache = link_cache(
        app[REDIS],
        settings.tracking.link_refresh_seconds,
        snapshot=settings.data_path / "links.snapshot.json",
    )
    app[LINK_CACHE] = cache
    await cache.start()
    yield
    await cache.stop()


async def campaign_caps_ctx(app: web.Application) -> AsyncIterator[None]:
    """Campaigns' click caps, reloaded like the links (empty: no click pays for them)."""
    cache = HashCache(
        app[REDIS],
        K.CAMPAIGN_CAPS_HASH,
        K.CAMPAIGN_CAPS_VERSION,
        campaign_caps.from_json,
        app[SETTINGS].tracking.link_refresh_seconds,
    )
    app[CAMPAIGN_CAPS] = cache
    await cache.start()
    yield
    await cache.stop()


async def advertisers_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    cache = advertiser_cache(
        app[REDIS],
        settings.tracking.link_refresh_seconds,
        snapshot=settings.data_path / "advertisers.snapshot.json",
    )
    app[ADVERTISER_CACHE] = cache
    app[INTAKE] = ConversionIntake(
        app[REDIS], cache, settings, settings.trusted_networks, clock=app[CLOCK]
    )
    await cache.start()
    yield
    await cache.stop()
    if app[INTAKE].new_postback is not None:  # its own connection (lean_redis.py)
        app[INTAKE].new_postback.close()


async def writer_ctx(app: web.Application) -> AsyncIterator[None]:
    s = app[SETTINGS]
    spool = Spool(s.data_path / "spool" / f"edge-{app[WORKER_INDEX]}.spool")
    writer = EventWriter(
        app[REDIS],
        spool,
        batch_max_events=s.writer.batch_max_events,
        batch_max_delay_ms=s.writer.batch_max_delay_ms,
        max_waiting_batches=s.writer.max_waiting_batches,
        compress_stream=s.writer.compress_stream,
        lookback_seconds=s.lookback_seconds,
        timeout_seconds=s.redis.timeout_seconds,
        dedup_ttl_seconds=s.redis.dedup_ttl_seconds,
        stream_shards=s.redis.stream_shards,
        hot_hours=s.tracking.hot_hours,
        cluster=is_cluster(s.redis.url),
    )
    app[WRITER] = writer
    ip_keys = IpKeys(app[REDIS], app[CLOCK]) if s.privacy.anonymize_ip else None
    # synced every 5 ms (its default): a cap overshoots by what an edge admits meanwhile
    caps = CapCounters(app[REDIS])
    # campaigns' accepted conversions, read back as often as the campaign caps reload
    conversions = ConversionCounts(
        app[REDIS], app[CAMPAIGN_CAPS], s.tracking.link_refresh_seconds, app[CLOCK]
    )
    app[CLICKS] = clicks.ClickContext(
        links=app[LINK_CACHE],
        writer=writer,
        trusted=s.trusted_networks,
        cookie_name=s.cookie.name,
        cookie_attrs=clicks.cookie_attributes(
            s.lookback_seconds, s.cookie.samesite, s.cookie.secure, s.cookie.domain
        ),
        fallback_url=s.http.fallback_url,
        max_query_bytes=s.http.max_query_bytes,
        honor_no_track=s.privacy.honor_no_track,
        ip_keys=ip_keys,
        clock=app[CLOCK],
        lookups=Lookups(s.geo.databases),
        caps=caps,
        campaign_caps=app[CAMPAIGN_CAPS],
        conversions=conversions,
    )
    await writer.start()
    await caps.start()
    await conversions.start()
    if ip_keys:
        await ip_keys.start()
    publisher = asyncio.create_task(publish_metrics(app))
    yield
    publisher.cancel()
    if ip_keys:
        await ip_keys.stop()
    await conversions.stop()
    await caps.stop()
    await writer.close()
    metrics.publish(app[CLICKS].counters, writer, app[INTAKE])


async def publish_metrics(app: web.Application) -> None:
    click_ctx, intake = app[CLICKS], app[INTAKE]
    while True:
        await asyncio.sleep(1.0)
        metrics.publish(click_ctx.counters, click_ctx.writer, intake)
        try:
            await refusals.flush(app[REDIS], intake.refused)
        except Exception as exc:  # Redis away: the counts wait for the next second
            log.warning("refused postback counts not stored yet: %r", exc)
