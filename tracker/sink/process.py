"""The sink process: applies migrations, serves local SQL, runs the sink loop.

SIGTERM / SIGINT: finish the batch in hand, drain what is already in the stream (a few
seconds at most), close chDB, exit 0.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading

from geo import open_geo
from tracker import migrations, privacy_ops, rebuild_hot
from tracker import redis_keys as K
from tracker.clickhouse import ClickHouse
from tracker.config import Settings
from tracker.delivery.enqueue import Enqueuer
from tracker.ledger import auto_approve
from tracker.ledger.commissions import Engine
from tracker.ledger.store import open_store
from tracker.redis_connection import sync_client
from tracker.sink import gc_tuning, query_server
from tracker.sink.attributor import Attributor
from tracker.sink.consumer import Sink
from tracker.sink.counter_lease import CounterLease
from tracker.sink.enrich import steps as enrichment
from tracker.sink.erasures import Erasures
from tracker.sink.history import ClickHistory
from tracker.timefmt import now_ms

log = logging.getLogger(__name__)


def consumer_name(settings: Settings) -> str:
    return settings.sink.consumer or f"sink-{socket.gethostname()}"


def yield_cpu(settings: Settings) -> None:
    """Answering clicks comes first: the sink runs below the edges (and the threads it
    starts after this, chDB's too) and catches up after a burst."""
    os.nice(settings.sink.nice)
    if settings.sink.idle_priority and hasattr(os, "SCHED_IDLE"):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def run(settings: Settings) -> None:
    yield_cpu(settings)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    redis = sync_client(settings.redis.url)
    if settings.fraud.counters == "memory":  # one sink counts: refused before it starts
        CounterLease(redis, consumer_name(settings)).hold(stop)
    ch = ClickHouse(
        settings.clickhouse_dsn,
        settings.clickhouse.database,
        settings.clickhouse.cluster,
        query_limits=settings.clickhouse.query_limits(),
    )
    applied = migrations.apply(ch, settings)
    if applied:
        log.info("migrations applied: %s", ", ".join(applied))
    server = query_server.make_server(
        ch,
        settings.admin_token,
        settings.sink.query_host,
        settings.sink.query_port,
        migrate=lambda: migrations.apply(ch, settings),
        actions={
            "/privacy/export": lambda body: privacy_ops.export(
                ch, redis, body.get("visitor_id"), settings.tracking.hot_hours
            ),
            "/rebuild-hot": lambda body: rebuild_hot.rebuild(
                ch, redis, settings.tracking.hot_hours
            ),
            "/privacy/erase": lambda body: privacy_ops.erase(
                ch,
                redis,
                body.get("visitor_id"),
                settings.clickhouse.cluster,
                settings.tracking.hot_hours,
            ),
        },
    )
    query_server.start(server)
    history = ClickHistory(redis, ch, settings.tracking.hot_hours)
    attributor = Attributor(
        redis,
        settings.attribution.models,
        lookback_ms=settings.lookback_seconds * 1000,
        half_life_ms=int(settings.attribution.half_life_days * 86400 * 1000),
        credit_flagged=settings.fraud.credit_flagged_conversions,
        history=history,
    )
    store = open_store(settings)
    commissions = Engine(
        store,
        max_levels=settings.commissions.max_levels,
        path=attributor.path,
        lookback_ms=settings.lookback_seconds * 1000,
        half_life_ms=int(settings.attribution.half_life_days * 86400 * 1000),
    )
    geo_reader = open_geo(settings.geo.databases)
    sink = Sink(
        redis,
        ch,
        consumer=consumer_name(settings),
        read_entries=settings.sink.read_entries,
        block_ms=settings.sink.block_ms,
        insert_interval_ms=settings.sink.insert_interval_ms,
        reclaim_idle_ms=settings.sink.reclaim_idle_seconds * 1000,
        stop=stop,
        attributor=attributor,
        pipeline=enrichment.build(settings, redis, geo_reader),
        streams=[K.events_stream(i) for i in range(settings.redis.stream_shards)],
        commissions=commissions,
        auto_approve=lambda: auto_approve.tick(store, redis, settings, now_ms()),
        auto_approve_seconds=settings.commissions.auto_approve_interval_seconds,
        deliveries=Enqueuer(redis, history),
        history=history,
        lookback_ms=settings.lookback_seconds * 1000,
        erasures=Erasures(redis, ch, settings.clickhouse.cluster, settings.tracking.hot_hours),
    )
    log.info(
        "sink %s running; SQL endpoint on %s:%d",
        sink.consumer,
        settings.sink.query_host,
        settings.sink.query_port,
    )
    gc_tuning.tune()
    try:
        sink.run()
    finally:
        server.shutdown()
        server.server_close()
        ch.close()
        store.close()
        log.info("sink stopped: %d batches, rows %s", sink.batches, dict(sink.rows_inserted))
