"""Prometheus metrics, shared by every process of one service.

prometheus_client's multiprocess mode: each process writes its samples to files in
`<data_dir>/metrics` (PROMETHEUS_MULTIPROC_DIR, chosen by tracker.metrics_dir before this
module is first imported), and `GET /metrics` on any edge process, or on the sink's local
endpoint, adds them all up. The hot path never touches these objects per request: each
owner (EdgeCounters, the event writer, the conversion intake) counts in plain integers and
moves its own counts here when `publish` asks it, once a second.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client import Counter as PromCounter

CONTENT_TYPE = CONTENT_TYPE_LATEST

REQUESTS = PromCounter("tracker_requests_total", "HTTP requests answered", ["route", "status"])
EVENTS = PromCounter("tracker_events_recorded_total", "Events recorded by the edge", ["table"])
CLICKS = PromCounter("tracker_clicks_total", "Clicks recorded by the edge")
SPOOL = PromCounter(
    "tracker_spool_batches_total", "Batches written to or replayed from the local spool", ["action"]
)
DROPPED = PromCounter(
    "tracker_events_dropped_total",
    "Events an edge answered for but could not store (neither Redis nor the spool took them)",
    ["reason"],
)
HELD = PromCounter(
    "tracker_edge_reads_held_total",
    "Times an edge stopped reading requests while Redis took its events slower than they came",
)
SPOOL_BYTES = Gauge(
    "tracker_spool_bytes", "Bytes waiting in the spool files", multiprocess_mode="livesum"
)
REDIS_FLUSH = Histogram(
    "tracker_redis_flush_seconds",
    "Time to write one batch to Redis",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2),
)
STREAM_LAG = Gauge(
    "tracker_stream_lag_events",
    "Events in the stream not yet read by the sink",
    multiprocess_mode="max",
)
SINK_ROWS = PromCounter("tracker_sink_rows_total", "Rows inserted into ClickHouse", ["table"])
SINK_BATCHES = PromCounter("tracker_sink_batches_total", "Batches stored and acknowledged")
SINK_FAILURES = PromCounter(
    "tracker_sink_insert_failures_total", "Failed ClickHouse inserts (retried)"
)
SINK_DROPPED = PromCounter(
    "tracker_sink_dropped_total", "Stream content the sink left out, by reason", ["reason"]
)
SINK_BATCH_SECONDS = Histogram(
    "tracker_sink_batch_seconds",
    "Time to store one batch",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
)
SINK_BATCH_ROWS = Histogram(
    "tracker_sink_batch_rows",
    "Rows per stored batch",
    buckets=(1, 10, 100, 1000, 5000, 10000, 25000, 50000),
)
STEP_SECONDS = PromCounter(
    "tracker_enrichment_step_seconds_total", "Time spent in each enrichment step", ["step"]
)
FLAGS = PromCounter(
    "tracker_flagged_events_total", "Events flagged by enrichment", ["table", "flag"]
)
CONVERSIONS = PromCounter("tracker_conversions_total", "Conversion reports by outcome", ["outcome"])
REJECTIONS = PromCounter(
    "tracker_postback_rejections_total", "Refused conversion reports", ["reason"]
)
CREDITED = PromCounter(
    "tracker_attributed_amount_minor_total",
    "Amount credited to clicks, in the currency's minor units",
    ["model", "currency"],
)
DELIVERIES = PromCounter(
    "tracker_deliveries_total",
    "Postback and webhook delivery attempts by outcome",
    ["kind", "outcome"],
)
DELIVERY_SECONDS = Histogram(
    "tracker_delivery_seconds",
    "Time of one delivery attempt",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
DELIVERY_QUEUE = Gauge(
    "tracker_delivery_queue",
    "Deliveries waiting, by state (queued, retrying, dead)",
    ["state"],
    multiprocess_mode="max",
)


def exposition() -> bytes:
    """Every process's samples, added up, in the Prometheus text format."""
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:  # a lone process: its own samples
        return generate_latest()
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry)


def mark_dead(pid: int) -> None:
    multiprocess.mark_process_dead(pid)


class Publishes(Protocol):
    """Something that counts in plain integers on the hot path and moves its own counts
    into Prometheus when asked (each owner clears only what it owns)."""

    def publish_metrics(self) -> None: ...


def publish(*sources: Publishes) -> None:
    for source in sources:
        source.publish_metrics()


class EdgeCounters:
    """Requests answered, by route and status: counted by both servers, published once a
    second with the writer's and the conversion intake's own counts."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, int]] = Counter()

    def publish_metrics(self) -> None:
        for (route, status), n in self.requests.items():
            REQUESTS.labels(route, str(status)).inc(n)
        self.requests.clear()
